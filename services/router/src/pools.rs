//! What the router tells pools, and how it waits for one: every request marks the worker it goes
//! to (one relaxed atomic store, [`crate::fleet::Upstream::start`]), and once a second
//! ([`FLUSH_EVERY`]) the pools of the marked workers get `requested_at` (the autoscaler's idle
//! clock) in one transaction. A request for a model that no worker serves now
//! but that a pool of the organization serves (scaled to zero, or still starting) is **held**:
//! its pool is marked at once, which wakes it, and the request waits for a worker for up to
//! [`HOLD_FOR`]; past that, or when [`MAX_HELD`] requests already wait, it gets 503
//! `no_available_worker` with `Retry-After`.
//!
//! Each worker of a pool also counts its times to first token in a histogram of atomic buckets
//! ([`TtftHistogram`], one relaxed add per answer); each flush collects them per pool into a
//! window of [`TTFT_WINDOW`] and writes the window's counts under this router's id: the pool
//! controller sums every router's (the autoscaler's TTFT signal is the p90 of all answers).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qm_domain::{DeploymentId, OrganizationId};
use qm_runtime::Shutdown;
use qm_store::Store;

use crate::fleet::Fleet;
use tokio::sync::{Notify, Semaphore};

pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long a held request waits for its pool's first worker.
pub const HOLD_FOR: Duration = Duration::from_secs(300);
/// Requests held at once, over all pools.
pub const MAX_HELD: usize = 1_024;
/// How long a lookup of the pool serving a model is reused (no worker serves it meanwhile).
const LOOKUP_TTL: Duration = Duration::from_secs(2);
const MAX_LOOKUPS: usize = 10_000;

/// The p90 written for a pool covers this much of the past.
pub const TTFT_WINDOW: Duration = Duration::from_secs(30);
use qm_domain::ttft::{BUCKETS as TTFT_BUCKETS, Counts, bucket_of};

/// Times to first token, counted in buckets growing by 35 %: recording is one relaxed atomic
/// add; collecting swaps every bucket to zero.
#[derive(Debug, Default)]
pub struct TtftHistogram {
    buckets: [AtomicU32; TTFT_BUCKETS],
}

impl TtftHistogram {
    pub fn record(&self, elapsed: Duration) {
        self.buckets[bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last collection, added to `into`.
    fn collect(&self, into: &mut Counts) {
        for (bucket, total) in self.buckets.iter().zip(into.iter_mut()) {
            *total = total.saturating_add(bucket.swap(0, Ordering::Relaxed));
        }
    }
}

/// Each pool's collected counts per flush, over [`TTFT_WINDOW`].
#[derive(Default)]
struct TtftWindows {
    pools: HashMap<DeploymentId, VecDeque<(Instant, Counts)>>,
}

impl TtftWindows {
    /// Collects every pool worker's counts, and returns each pool's counts over the window
    /// (the controller merges them with the other routers').
    fn collect(&mut self, fleet: &Fleet, now: Instant) -> Vec<(DeploymentId, Counts)> {
        let mut fresh: HashMap<DeploymentId, Counts> = HashMap::new();
        for worker in fleet.snapshot().iter() {
            if let Some(pool) = worker.pool {
                worker.ttft.collect(fresh.entry(pool).or_insert([0; TTFT_BUCKETS]));
            }
        }
        for (pool, counts) in fresh {
            self.pools.entry(pool).or_default().push_back((now, counts));
        }
        let mut sums = Vec::new();
        self.pools.retain(|pool, window| {
            while window.front().is_some_and(|(at, _)| now.duration_since(*at) > TTFT_WINDOW) {
                window.pop_front();
            }
            let mut sum: Counts = [0; TTFT_BUCKETS];
            for (_, counts) in window.iter() {
                qm_domain::ttft::add(&mut sum, counts);
            }
            if sum.iter().any(|count| *count > 0) {
                sums.push((*pool, sum));
            }
            !window.is_empty()
        });
        sums
    }
}

/// A model of an organization, and the pool serving it when it was looked up.
type Lookups = HashMap<(OrganizationId, String), (Instant, Option<DeploymentId>)>;

pub struct PoolActivity {
    store: Arc<dyn Store>,
    /// Pools with a held request, written at once.
    woken: Mutex<HashSet<DeploymentId>>,
    wake: Notify,
    lookups: Mutex<Lookups>,
    pub held: Semaphore,
    ttft: Mutex<TtftWindows>,
    /// This router, in the store's per-router TTFT windows.
    id: String,
}

impl PoolActivity {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            woken: Mutex::default(),
            wake: Notify::new(),
            lookups: Mutex::default(),
            held: Semaphore::new(MAX_HELD),
            ttft: Mutex::default(),
            id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// A request is held for `pool`: written at once.
    pub fn wake(&self, pool: DeploymentId) {
        self.woken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(pool);
        self.wake.notify_one();
    }

    /// The live pool of `organization` serving `model`, looked up at most every
    /// [`LOOKUP_TTL`].
    ///
    /// # Errors
    /// The store's.
    pub async fn pool_for(
        &self,
        organization: OrganizationId,
        model: &str,
    ) -> Result<Option<DeploymentId>, qm_store::StoreError> {
        let key = (organization, model.to_owned());
        {
            let lookups = self.lookups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, pool)) = lookups.get(&key)
                && at.elapsed() < LOOKUP_TTL
            {
                return Ok(*pool);
            }
        }
        let pool = self.store.pool_for_model(organization, model).await?.map(|pool| pool.id);
        let mut lookups = self.lookups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if lookups.len() >= MAX_LOOKUPS {
            lookups.clear();
        }
        lookups.insert(key, (Instant::now(), pool));
        Ok(pool)
    }

    /// Writes the marks of `fleet`'s workers every [`FLUSH_EVERY`], or at once when a request
    /// is held, until shutdown. Marks whose write fails are kept for the next.
    pub async fn run(self: Arc<Self>, fleet: Arc<Fleet>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(FLUSH_EVERY) => {}
                () = self.wake.notified() => {}
            }
            let mut marked: HashSet<DeploymentId> =
                self.woken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain().collect();
            marked
                .extend(fleet.snapshot().iter().filter(|worker| worker.take_asked()).filter_map(|worker| worker.pool));
            let marked: Vec<DeploymentId> = marked.into_iter().collect();
            let ttft =
                self.ttft.lock().unwrap_or_else(std::sync::PoisonError::into_inner).collect(&fleet, Instant::now());
            if marked.is_empty() && ttft.is_empty() {
                continue;
            }
            let written = async {
                let mut tx = self.store.begin().await?;
                let now = qm_store::now();
                tx.note_pool_requests(&marked, now).await?;
                tx.note_pool_ttft(&self.id, &ttft, now).await?;
                tx.commit().await
            };
            if let Err(error) = written.await {
                tracing::warn!(%error, "could not record pool activity; kept for the next write");
                self.woken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(marked);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use qm_domain::ttft::p90_ms;

    use super::*;

    #[test]
    fn the_p90_falls_in_the_bucket_of_the_ninetieth_answer() {
        let histogram = TtftHistogram::default();
        for _ in 0..90 {
            histogram.record(Duration::from_millis(40));
        }
        for _ in 0..10 {
            histogram.record(Duration::from_secs(2));
        }
        let mut counts = [0; TTFT_BUCKETS];
        histogram.collect(&mut counts);
        let p90 = p90_ms(&counts).expect("enough samples");
        assert!((40.0..40.0 * 1.35).contains(&p90), "{p90}");
        histogram.record(Duration::from_secs(2));
        let mut again = [0; TTFT_BUCKETS];
        histogram.collect(&mut again);
        assert_eq!(again.iter().sum::<u32>(), 1, "collecting empties the buckets");
        assert_eq!(p90_ms(&again), None, "too few to say");
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_secs(3_600)), TTFT_BUCKETS - 1);
        // 11 slow of 100: the p90 is slow.
        let mut slow = [0; TTFT_BUCKETS];
        slow[bucket_of(Duration::from_millis(40))] = 89;
        slow[bucket_of(Duration::from_secs(2))] = 11;
        assert!(p90_ms(&slow).is_some_and(|p90| p90 >= 2_000.0));
    }
}
