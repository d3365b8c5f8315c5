-- Foundation: tenancy, users, the transactional outbox, consumer idempotency and action logs.

CREATE TABLE organizations (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    slug        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    CONSTRAINT organizations_slug_key UNIQUE (slug)
);

CREATE TABLE users (
    id                 UUID PRIMARY KEY,
    organization_id    UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    username           TEXT NOT NULL,
    email              TEXT NOT NULL,
    first_name         TEXT NOT NULL DEFAULT '',
    last_name          TEXT NOT NULL DEFAULT '',
    role               TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash      TEXT NOT NULL,
    is_platform_admin  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_email_key UNIQUE (email)
);
CREATE INDEX users_organization_idx ON users (organization_id);

-- Messages written in the same transaction as the state change that caused them; the relay
-- publishes them in `seq` order and marks them.
CREATE TABLE outbox (
    seq            BIGSERIAL PRIMARY KEY,
    id             UUID NOT NULL,
    channel        TEXT NOT NULL,
    message_type   TEXT NOT NULL,
    payload        TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    claimed_until  TIMESTAMPTZ,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    published_at   TIMESTAMPTZ,
    CONSTRAINT outbox_id_key UNIQUE (id)
);
CREATE INDEX outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL;

-- One row per (consumer, envelope id) handled: a redelivered message is recognised and skipped.
CREATE TABLE processed_events (
    consumer      TEXT NOT NULL,
    event_id      UUID NOT NULL,
    processed_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE action_logs (
    id               UUID PRIMARY KEY,
    organization_id  UUID REFERENCES organizations (id) ON DELETE CASCADE,
    component        TEXT NOT NULL,
    action_type      TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('started', 'succeeded', 'failed')),
    duration_ms      BIGINT,
    instance_id      UUID,
    user_id          UUID,
    error            TEXT,
    metadata         JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX action_logs_organization_idx ON action_logs (organization_id, id DESC);
