-- Leases for periodic jobs (reconciliation, deadline sweeps): one replica at a time runs each.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
