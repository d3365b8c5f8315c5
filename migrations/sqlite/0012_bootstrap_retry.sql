-- A provisioning saga run again (its orchestrator died after the provider's create, before
-- recording it) issues a second bootstrap token, while the instance the provider already runs
-- carries the first: until a worker registers, either registers it (docs/decisions.md 111).
ALTER TABLE workers ADD COLUMN previous_bootstrap_token_hash TEXT;
