-- The share of the engine's KV cache in use (0 to 1) at the worker's last heartbeat: a
-- balancing tie-breaker for the router and a signal for pools.
ALTER TABLE workers ADD COLUMN kv_cache_usage REAL CHECK (kv_cache_usage >= 0 AND kv_cache_usage <= 1);
