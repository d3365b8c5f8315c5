-- Each router's window of time-to-first-token counts per pool (docs/pools.md): the controller
-- sums the fresh ones, so the pool's p90 covers the answers of every router.
CREATE TABLE pool_ttft (
    pool_id     UUID NOT NULL,
    router      TEXT NOT NULL,
    counts      JSONB NOT NULL,
    written_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (pool_id, router)
);
CREATE INDEX pool_ttft_written_at ON pool_ttft (written_at);
