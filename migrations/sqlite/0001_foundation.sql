-- Foundation: tenancy, users, the transactional outbox, consumer idempotency and action logs.
-- Same schema as migrations/postgres; UUIDs are 16-byte BLOBs, timestamps RFC 3339 TEXT in UTC,
-- JSON is TEXT.

CREATE TABLE organizations (
    id          BLOB PRIMARY KEY,
    name        TEXT NOT NULL,
    slug        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    CONSTRAINT organizations_slug_key UNIQUE (slug)
);

CREATE TABLE users (
    id                 BLOB PRIMARY KEY,
    organization_id    BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    username           TEXT NOT NULL,
    email              TEXT NOT NULL,
    first_name         TEXT NOT NULL DEFAULT '',
    last_name          TEXT NOT NULL DEFAULT '',
    role               TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash      TEXT NOT NULL,
    is_platform_admin  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_email_key UNIQUE (email)
);
CREATE INDEX users_organization_idx ON users (organization_id);

CREATE TABLE outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             BLOB NOT NULL,
    channel        TEXT NOT NULL,
    message_type   TEXT NOT NULL,
    payload        TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    claimed_until  TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    published_at   TEXT,
    CONSTRAINT outbox_id_key UNIQUE (id)
);
CREATE INDEX outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL;

CREATE TABLE processed_events (
    consumer      TEXT NOT NULL,
    event_id      BLOB NOT NULL,
    processed_at  TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE action_logs (
    id               BLOB PRIMARY KEY,
    organization_id  BLOB REFERENCES organizations (id) ON DELETE CASCADE,
    component        TEXT NOT NULL,
    action_type      TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('started', 'succeeded', 'failed')),
    duration_ms      INTEGER,
    instance_id      BLOB,
    user_id          BLOB,
    error            TEXT,
    metadata         TEXT NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE INDEX action_logs_organization_idx ON action_logs (organization_id, id DESC);
