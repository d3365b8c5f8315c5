//! In-memory limits of one API replica: token buckets per key (heartbeats per worker, costly
//! commands per organization) and caps on concurrent long-lived streams. Each map is bounded,
//! so no caller can grow it without limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Past this many keys, idle ones are forgotten on the next call.
const SWEEP_THRESHOLD: usize = 10_000;

/// `burst` calls at once per key, refilled at `per_second`.
pub struct KeyedBucket {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl KeyedBucket {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst: f64::from(burst), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `key`, or `Err(seconds until one is free)`.
    pub fn take(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > SWEEP_THRESHOLD {
            let full_after = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, (_, at)| now.duration_since(*at) < full_after);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            // Whole seconds, rounded up, at least one.
            let wait = ((1.0 - *tokens) / self.per_second).ceil();
            Err(if wait.is_finite() && wait >= 1.0 { wait as u64 } else { 1 })
        }
    }
}

/// At most `per_key` open at once per key and `total` in all.
pub struct ConcurrencyCap {
    per_key: usize,
    total: usize,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// Why a stream was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Key,
    Total,
}

/// An open slot; dropping it frees the slot.
pub struct Slot {
    cap: Arc<ConcurrencyCap>,
    key: String,
}

impl ConcurrencyCap {
    pub fn new(per_key: usize, total: usize) -> Arc<Self> {
        Arc::new(Self { per_key, total, open: Mutex::new((0, HashMap::new())) })
    }

    /// # Errors
    /// [`Refused`] when the key or the replica is at its cap.
    pub fn acquire(self: &Arc<Self>, key: &str) -> Result<Slot, Refused> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.0 >= self.total {
            return Err(Refused::Total);
        }
        let count = open.1.entry(key.to_owned()).or_default();
        if *count >= self.per_key {
            return Err(Refused::Key);
        }
        *count += 1;
        open.0 += 1;
        Ok(Slot { cap: self.clone(), key: key.to_owned() })
    }

    /// Open slots in all.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(count) = open.1.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.1.remove(&self.key);
            }
        }
    }
}

/// One async lock per key (an organization), so that work deciding on a key's totals runs one
/// at a time on this replica before it takes the database's lock for the other replicas: waiting
/// requests then wait here, not holding database connections.
#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if locks.len() > SWEEP_THRESHOLD {
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(key.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_wait() {
        let bucket = KeyedBucket::new(0.5, 3);
        for _ in 0..3 {
            assert!(bucket.take("a").is_ok());
        }
        assert_eq!(bucket.take("a"), Err(2));
        assert!(bucket.take("b").is_ok(), "keys are independent");
    }

    #[test]
    fn a_cap_counts_per_key_and_in_all_and_frees_on_drop() {
        let cap = ConcurrencyCap::new(2, 3);
        let first = cap.acquire("a").expect("slot");
        let _second = cap.acquire("a").expect("slot");
        assert_eq!(cap.acquire("a").err(), Some(Refused::Key));
        let _third = cap.acquire("b").expect("slot");
        assert_eq!(cap.acquire("c").err(), Some(Refused::Total));
        drop(first);
        assert!(cap.acquire("a").is_ok());
    }
}
