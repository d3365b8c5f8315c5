-- Issue 11: keys that expire, bootstrap tokens that expire, and the engine port a worker
-- registered (the router reaches a worker at its provider-reported address and this port).

ALTER TABLE api_keys ADD COLUMN expires_at TIMESTAMPTZ;

ALTER TABLE workers ADD COLUMN bootstrap_expires_at TIMESTAMPTZ;
ALTER TABLE workers ADD COLUMN engine_port INTEGER;
-- Tokens issued before this migration expire an hour after they were issued.
UPDATE workers SET bootstrap_expires_at = created_at + INTERVAL '1 hour';
