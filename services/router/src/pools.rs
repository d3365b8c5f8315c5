//! What the router tells pools, and how it waits for one: every request marks the worker it goes
//! to (one relaxed atomic store, [`crate::fleet::Upstream::start`]), and once a second
//! ([`FLUSH_EVERY`]) the pools of the marked workers get `requested_at` (the autoscaler's idle
//! clock) in one transaction. A request for a model that no worker serves now
//! but that a pool of the organization serves (scaled to zero, or still starting) is **held**:
//! its pool is marked at once, which wakes it, and the request waits for a worker for up to
//! [`HOLD_FOR`]; past that, or when [`MAX_HELD`] requests already wait, it gets 503
//! `no_available_worker` with `Retry-After`.

use std::collections::{HashMap, HashSet};
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

/// A model of an organization, and the pool serving it when it was looked up.
type Lookups = HashMap<(OrganizationId, String), (Instant, Option<DeploymentId>)>;

pub struct PoolActivity {
    store: Arc<dyn Store>,
    /// Pools with a held request, written at once.
    woken: Mutex<HashSet<DeploymentId>>,
    wake: Notify,
    lookups: Mutex<Lookups>,
    pub held: Semaphore,
}

impl PoolActivity {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            woken: Mutex::default(),
            wake: Notify::new(),
            lookups: Mutex::default(),
            held: Semaphore::new(MAX_HELD),
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
            if marked.is_empty() {
                continue;
            }
            let written = async {
                let mut tx = self.store.begin().await?;
                tx.note_pool_requests(&marked, qm_store::now()).await?;
                tx.commit().await
            };
            if let Err(error) = written.await {
                tracing::warn!(%error, "could not record pool activity; kept for the next write");
                self.woken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(marked);
            }
        }
    }
}
