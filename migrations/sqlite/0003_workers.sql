-- The worker protocol (DESIGN section 6): one row per instance's agent.
-- Same schema as migrations/postgres (UUIDs BLOB, timestamps TEXT, JSON TEXT).

CREATE TABLE workers (
    instance_id            BLOB PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    bootstrap_token_hash   TEXT NOT NULL,
    bootstrap_used_at      TEXT,
    token_hash             TEXT,
    -- The token replaced by the last rotation, accepted until previous_valid_until.
    previous_token_hash    TEXT,
    previous_valid_until   TEXT,
    revoked_at             TEXT,
    agent_version          TEXT,
    engine_url             TEXT,
    model                  TEXT,
    gpus                   TEXT,
    status                 TEXT,
    queue_depth            INTEGER,
    in_flight              INTEGER,
    gpu_metrics            TEXT,
    registered_at          TEXT,
    last_heartbeat_at      TEXT,
    created_at             TEXT NOT NULL
);
CREATE INDEX workers_token_idx ON workers (token_hash);
CREATE INDEX workers_previous_token_idx ON workers (previous_token_hash);
