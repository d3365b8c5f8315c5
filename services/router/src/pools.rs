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
//! window of [`TTFT_WINDOW`] and writes the window's p90 (the autoscaler's TTFT signal).

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
/// Fewer answers than this in the window say nothing about a pool's latency.
const TTFT_MIN_SAMPLES: u32 = 5;
/// Buckets of [`TtftHistogram`]: bucket `i` holds times up to `5 ms × 1.35^i` (the last, from
/// about 40 s, holds everything longer).
const TTFT_BUCKETS: usize = 32;
const TTFT_FIRST_MS: f64 = 5.0;
const TTFT_GROWTH: f64 = 1.35;

/// Times to first token, counted in buckets growing by 35 %: recording is one relaxed atomic
/// add; collecting swaps every bucket to zero.
#[derive(Debug, Default)]
pub struct TtftHistogram {
    buckets: [AtomicU32; TTFT_BUCKETS],
}

type Counts = [u32; TTFT_BUCKETS];

fn bucket_of(elapsed: Duration) -> usize {
    let ms = elapsed.as_secs_f64() * 1000.0;
    if ms <= TTFT_FIRST_MS {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = ((ms / TTFT_FIRST_MS).ln() / TTFT_GROWTH.ln()).ceil() as usize;
    index.min(TTFT_BUCKETS - 1)
}

/// The upper bound of bucket `index`, in ms.
fn bucket_ms(index: usize) -> f64 {
    TTFT_FIRST_MS * TTFT_GROWTH.powi(i32::try_from(index).unwrap_or(i32::MAX))
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

/// The p90 of `counts` in ms (the upper bound of the bucket it falls in); `None` with too few.
fn p90_ms(counts: &Counts) -> Option<f64> {
    let total: u32 = counts.iter().sum();
    if total < TTFT_MIN_SAMPLES {
        return None;
    }
    let rank = total - total / 10;
    let mut seen = 0;
    counts
        .iter()
        .position(|count| {
            seen += count;
            seen >= rank
        })
        .map(bucket_ms)
}

/// Each pool's collected counts per flush, over [`TTFT_WINDOW`].
#[derive(Default)]
struct TtftWindows {
    pools: HashMap<DeploymentId, VecDeque<(Instant, Counts)>>,
}

impl TtftWindows {
    /// Collects every pool worker's counts, and returns each pool's p90 over the window.
    fn collect(&mut self, fleet: &Fleet, now: Instant) -> Vec<(DeploymentId, f64)> {
        let mut fresh: HashMap<DeploymentId, Counts> = HashMap::new();
        for worker in fleet.snapshot().iter() {
            if let Some(pool) = worker.pool {
                worker.ttft.collect(fresh.entry(pool).or_insert([0; TTFT_BUCKETS]));
            }
        }
        for (pool, counts) in fresh {
            self.pools.entry(pool).or_default().push_back((now, counts));
        }
        let mut p90s = Vec::new();
        self.pools.retain(|pool, window| {
            while window.front().is_some_and(|(at, _)| now.duration_since(*at) > TTFT_WINDOW) {
                window.pop_front();
            }
            let mut sum: Counts = [0; TTFT_BUCKETS];
            for (_, counts) in window.iter() {
                for (total, count) in sum.iter_mut().zip(counts) {
                    *total = total.saturating_add(*count);
                }
            }
            p90s.extend(p90_ms(&sum).map(|p90| (*pool, p90)));
            !window.is_empty()
        });
        p90s
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
                tx.note_pool_ttft(&ttft, now).await?;
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
        assert!((40.0..40.0 * TTFT_GROWTH).contains(&p90), "{p90}");
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
