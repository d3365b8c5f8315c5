-- Pools: a deployment the orchestrator keeps at a size (docs/pools.md). A plain deployment is a
-- pool that is not managed (min = max = count, never healed or scaled).
ALTER TABLE deployments ADD COLUMN managed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE deployments ADD COLUMN name TEXT;
ALTER TABLE deployments ADD COLUMN min_replicas INTEGER CHECK (min_replicas >= 0);
ALTER TABLE deployments ADD COLUMN max_replicas INTEGER CHECK (max_replicas >= min_replicas);
ALTER TABLE deployments ADD COLUMN desired INTEGER CHECK (desired >= 0);
-- The scaling policy, and the controller's last view (counts, conditions, recent decisions).
ALTER TABLE deployments ADD COLUMN policy TEXT;
ALTER TABLE deployments ADD COLUMN status TEXT;
-- When a router last had a request for the pool (its activity, and its wake-up from zero).
ALTER TABLE deployments ADD COLUMN requested_at TEXT;
ALTER TABLE deployments ADD COLUMN deleted_at TEXT;
CREATE INDEX deployments_managed_idx ON deployments (managed, organization_id, model);
