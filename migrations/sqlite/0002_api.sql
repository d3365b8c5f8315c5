-- The control-plane API: sessions, API keys, the catalog, deployments and instances.
-- Same schema as migrations/postgres (UUIDs BLOB, timestamps TEXT, JSON TEXT).

-- Events in the outbox carry their organization so that the SSE feed can serve them per tenant.
ALTER TABLE outbox ADD COLUMN organization_id BLOB;
CREATE INDEX outbox_feed_idx ON outbox (organization_id, seq) WHERE channel = 'evt';

CREATE TABLE sessions (
    id             BLOB PRIMARY KEY,
    user_id        BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash     TEXT NOT NULL,
    client_address TEXT,
    created_at     TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    revoked_at     TEXT,
    CONSTRAINT sessions_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

CREATE TABLE api_keys (
    id               BLOB PRIMARY KEY,
    organization_id  BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    created_by       BLOB REFERENCES users (id) ON DELETE SET NULL,
    name             TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    prefix           TEXT NOT NULL,
    key_hash         TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    last_used_at     TEXT,
    revoked_at       TEXT,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_organization_idx ON api_keys (organization_id, id DESC);

CREATE TABLE providers (
    name          TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    active        BOOLEAN NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE TABLE regions (
    id          BLOB PRIMARY KEY,
    provider    TEXT NOT NULL REFERENCES providers (name) ON DELETE CASCADE,
    code        TEXT NOT NULL,
    name        TEXT NOT NULL,
    active      BOOLEAN NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    CONSTRAINT regions_code_key UNIQUE (provider, code)
);

CREATE TABLE zones (
    id          BLOB PRIMARY KEY,
    region_id   BLOB NOT NULL REFERENCES regions (id) ON DELETE CASCADE,
    code        TEXT NOT NULL,
    name        TEXT NOT NULL,
    active      BOOLEAN NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    CONSTRAINT zones_code_key UNIQUE (region_id, code)
);

CREATE TABLE instance_types (
    id                   BLOB PRIMARY KEY,
    provider             TEXT NOT NULL REFERENCES providers (name) ON DELETE CASCADE,
    code                 TEXT NOT NULL,
    gpu_model            TEXT,
    gpu_count            INTEGER NOT NULL CHECK (gpu_count >= 0),
    gpu_memory_gb        INTEGER NOT NULL CHECK (gpu_memory_gb >= 0),
    vcpus                INTEGER NOT NULL CHECK (vcpus > 0),
    memory_gb            INTEGER NOT NULL CHECK (memory_gb > 0),
    hourly_price_micros  BIGINT NOT NULL CHECK (hourly_price_micros >= 0),
    currency             TEXT NOT NULL,
    active               BOOLEAN NOT NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    CONSTRAINT instance_types_code_key UNIQUE (provider, code)
);

-- Which instance types a zone offers (an "offer").
CREATE TABLE instance_type_zones (
    instance_type_id  BLOB NOT NULL REFERENCES instance_types (id) ON DELETE CASCADE,
    zone_id           BLOB NOT NULL REFERENCES zones (id) ON DELETE CASCADE,
    PRIMARY KEY (instance_type_id, zone_id)
);
CREATE INDEX instance_type_zones_zone_idx ON instance_type_zones (zone_id);

CREATE TABLE deployments (
    id               BLOB PRIMARY KEY,
    organization_id  BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    created_by       BLOB,
    model            TEXT NOT NULL,
    count            INTEGER NOT NULL,
    request          TEXT NOT NULL,
    placements       TEXT NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE INDEX deployments_organization_idx ON deployments (organization_id, id DESC);

-- Zone and instance type are copied (id and code) rather than referenced: an instance keeps what
-- it was launched as even when the catalog changes.
CREATE TABLE instances (
    id                    BLOB PRIMARY KEY,
    organization_id       BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    deployment_id         BLOB REFERENCES deployments (id) ON DELETE SET NULL,
    provider              TEXT NOT NULL,
    zone_id               BLOB NOT NULL,
    zone                  TEXT NOT NULL,
    instance_type_id      BLOB NOT NULL,
    instance_type         TEXT NOT NULL,
    model                 TEXT NOT NULL,
    state                 TEXT NOT NULL,
    state_changed_at      TEXT NOT NULL,
    progress_percent      INTEGER NOT NULL DEFAULT 0,
    provider_instance_id  TEXT,
    address               TEXT,
    hourly_price_micros   BIGINT NOT NULL,
    currency              TEXT NOT NULL,
    failure_reason        TEXT,
    deleted_by_provider   BOOLEAN NOT NULL DEFAULT FALSE,
    archived              BOOLEAN NOT NULL DEFAULT FALSE,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL
);
CREATE INDEX instances_organization_idx ON instances (organization_id, archived, id DESC);
CREATE INDEX instances_state_idx ON instances (state);

CREATE TABLE instance_state_history (
    id           BLOB PRIMARY KEY,
    instance_id  BLOB NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    reason       TEXT,
    occurred_at  TEXT NOT NULL
);
CREATE INDEX instance_state_history_instance_idx ON instance_state_history (instance_id, id);

CREATE INDEX action_logs_type_idx ON action_logs (organization_id, action_type);
CREATE INDEX action_logs_instance_idx ON action_logs (instance_id);
