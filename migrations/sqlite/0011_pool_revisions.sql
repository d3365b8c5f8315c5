-- Rolling updates (docs/pools.md): a pool's engine settings and its revision, bumped when its
-- model or engine settings change; each replica records the revision it was created for.
ALTER TABLE deployments ADD COLUMN engine TEXT;
ALTER TABLE deployments ADD COLUMN revision INTEGER NOT NULL DEFAULT 1 CHECK (revision >= 1);
ALTER TABLE instances ADD COLUMN revision INTEGER;
-- The routers' p90 time to first token for the pool over their last window, and when it was
-- written (an autoscaling signal).
ALTER TABLE deployments ADD COLUMN ttft_p90_ms REAL;
ALTER TABLE deployments ADD COLUMN ttft_at TEXT;
