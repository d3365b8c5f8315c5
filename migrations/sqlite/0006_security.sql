-- Issue 11: keys that expire, bootstrap tokens that expire, and the engine port a worker
-- registered (the router reaches a worker at its provider-reported address and this port).
-- Same schema as migrations/postgres.

ALTER TABLE api_keys ADD COLUMN expires_at TEXT;

ALTER TABLE workers ADD COLUMN bootstrap_expires_at TEXT;
ALTER TABLE workers ADD COLUMN engine_port INTEGER;
-- Unused tokens issued before this migration no longer register (SQLite is the development
-- store; an instance still booting then fails its startup deadline and is replaced).
UPDATE workers SET bootstrap_expires_at = created_at;
