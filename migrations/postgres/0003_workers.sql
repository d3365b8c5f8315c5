-- The worker protocol (DESIGN section 6): one row per instance's agent.

CREATE TABLE workers (
    instance_id            UUID PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    bootstrap_token_hash   TEXT NOT NULL,
    bootstrap_used_at      TIMESTAMPTZ,
    token_hash             TEXT,
    -- The token replaced by the last rotation, accepted until previous_valid_until.
    previous_token_hash    TEXT,
    previous_valid_until   TIMESTAMPTZ,
    revoked_at             TIMESTAMPTZ,
    agent_version          TEXT,
    engine_url             TEXT,
    model                  TEXT,
    gpus                   JSONB,
    status                 TEXT,
    queue_depth            INTEGER,
    in_flight              INTEGER,
    gpu_metrics            JSONB,
    registered_at          TIMESTAMPTZ,
    last_heartbeat_at      TIMESTAMPTZ,
    created_at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX workers_token_idx ON workers (token_hash);
CREATE INDEX workers_previous_token_idx ON workers (previous_token_hash);
