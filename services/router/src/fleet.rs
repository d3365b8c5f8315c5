//! The workers the router sends to: discovered from the control plane (ready instances with a
//! registered, unrevoked worker), each reached at the address its *provider* reports with the
//! engine port its agent registered, never at a host the agent named. Each carries its
//! in-flight count and a circuit breaker; [`Fleet::choose`] balances over them.
//!
//! Balancing: with an affinity key (a session, or the prompt's leading text) the workers are
//! ranked by rendezvous hashing (each worker scores `hash(key, worker)`, the highest wins: the
//! same key keeps reaching the same worker, and only the keys of a worker that goes move) and the
//! first whose load is within [`LOAD_BOUND`] of the average takes it (bounded-load consistent
//! hashing), so a hot prefix spills over instead of queueing. Without one, the power of two
//! choices: two workers at random, the one with fewer requests in flight (then the shorter
//! engine queue) wins.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use qm_domain::{InstanceId, InstanceState, OrganizationId};
use qm_runtime::Shutdown;
use qm_store::{InstanceFilter, Store};
use rand::Rng as _;

/// How often discovery reads the fleet.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// A worker may take an affine request while its load is at most this times the average (+1).
pub const LOAD_BOUND: f64 = 1.25;
/// Consecutive failures that open a worker's breaker, and how long it stays open.
const BREAKER_FAILURES: u32 = 3;
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);
/// The most ready instances discovery reads.
const MAX_WORKERS: u32 = 5_000;

/// One worker.
#[derive(Debug)]
pub struct Upstream {
    pub instance_id: InstanceId,
    pub organization_id: OrganizationId,
    pub model: String,
    /// `http://host:port`, no trailing slash.
    pub base: String,
    pub provider: String,
    pub zone: String,
    pub instance_type: String,
    in_flight: AtomicU32,
    /// The engine's queue as the agent last reported it.
    queue_depth: AtomicU32,
    breaker: Breaker,
}

impl Upstream {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn succeeded(&self) {
        self.breaker.success();
    }

    pub fn failed(&self) {
        self.breaker.failure();
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }
}

/// A request in flight on an upstream.
pub struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closed until [`BREAKER_FAILURES`] failures in a row; then open for [`BREAKER_OPEN_FOR`];
/// then one trial request at a time (half-open) until one succeeds (closed) or fails (open).
#[derive(Debug, Default)]
struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    trial_running: bool,
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a request may go now; in half-open, only the one trial.
    fn admit(&self) -> bool {
        let mut state = self.lock();
        match state.open_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) if state.trial_running => false,
            Some(_) => {
                state.trial_running = true;
                true
            }
        }
    }

    fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    fn success(&self) {
        let mut state = self.lock();
        *state = BreakerState::default();
    }

    fn failure(&self) {
        let mut state = self.lock();
        state.failures += 1;
        state.trial_running = false;
        if state.failures >= BREAKER_FAILURES || state.open_until.is_some() {
            state.open_until = Some(Instant::now() + BREAKER_OPEN_FOR);
        }
    }
}

/// The workers, swapped whole on each refresh (an upstream that stays keeps its counters).
#[derive(Default)]
pub struct Fleet {
    workers: RwLock<Arc<Vec<Arc<Upstream>>>>,
}

/// The host of a provider-reported address (`10.0.0.5`, `10.0.0.5:8090`, `[::1]:8090`,
/// `host.example`), as it goes in a URL; `None` for anything else.
pub fn url_host(address: &str) -> Option<String> {
    let ip = address
        .parse::<SocketAddr>()
        .map(|socket| socket.ip())
        .or_else(|_| address.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>());
    if let Ok(ip) = ip {
        return Some(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    let host =
        address.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(address, |(host, _)| host);
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.');
    valid.then(|| host.to_ascii_lowercase())
}

fn score(key: u64, instance: InstanceId) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    instance.as_uuid().hash(&mut hasher);
    hasher.finish()
}

impl Fleet {
    pub fn snapshot(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.workers.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The models `organization` can reach now.
    pub fn models(&self, organization: OrganizationId) -> Vec<String> {
        let mut models: Vec<String> = self
            .snapshot()
            .iter()
            .filter(|worker| worker.organization_id == organization)
            .map(|worker| worker.model.clone())
            .collect();
        models.sort();
        models.dedup();
        models
    }

    /// Workers of `organization` serving `model`.
    pub fn serving(&self, organization: OrganizationId, model: &str) -> Vec<Arc<Upstream>> {
        self.snapshot()
            .iter()
            .filter(|worker| worker.organization_id == organization && worker.model == model)
            .cloned()
            .collect()
    }

    /// Picks a worker among `candidates` not in `tried` whose breaker admits a request.
    pub fn choose(candidates: &[Arc<Upstream>], affinity: Option<u64>, tried: &[InstanceId]) -> Option<Arc<Upstream>> {
        let open: Vec<&Arc<Upstream>> =
            candidates.iter().filter(|worker| !tried.contains(&worker.instance_id)).collect();
        if open.is_empty() {
            return None;
        }
        let load = |worker: &Upstream| (worker.in_flight(), worker.queue_depth.load(Ordering::Relaxed));
        if let Some(key) = affinity {
            let total: u32 = open.iter().map(|worker| worker.in_flight()).sum();
            #[allow(clippy::cast_precision_loss)]
            let bound = ((f64::from(total) + 1.0) / open.len() as f64 * LOAD_BOUND).ceil() + 1.0;
            let mut ranked = open.clone();
            ranked.sort_by_key(|worker| std::cmp::Reverse(score(key, worker.instance_id)));
            if let Some(worker) =
                ranked.into_iter().find(|worker| f64::from(worker.in_flight()) < bound && worker.breaker.admit())
            {
                return Some((*worker).clone());
            }
        }
        let mut rng = rand::rng();
        let mut remaining = open;
        while !remaining.is_empty() {
            let first = rng.random_range(0..remaining.len());
            let pick = if remaining.len() == 1 {
                first
            } else {
                let mut second = rng.random_range(0..remaining.len() - 1);
                if second >= first {
                    second += 1;
                }
                if load(remaining[second]) < load(remaining[first]) { second } else { first }
            };
            if remaining[pick].breaker.admit() {
                return Some(remaining[pick].clone());
            }
            remaining.swap_remove(pick);
        }
        None
    }

    /// Reads the fleet once and swaps it in.
    ///
    /// # Errors
    /// When the store cannot answer (the previous fleet stays).
    pub async fn refresh(&self, store: &dyn Store) -> Result<usize, qm_store::StoreError> {
        let filter =
            InstanceFilter { state: Some(InstanceState::Ready), limit: MAX_WORKERS, ..InstanceFilter::default() };
        let instances = store.instances(&filter).await?;
        let ids: Vec<InstanceId> = instances.iter().map(|instance| instance.id).collect();
        let workers: HashMap<InstanceId, qm_store::Worker> =
            store.workers_of(&ids).await?.into_iter().map(|worker| (worker.instance_id, worker)).collect();
        let previous: HashMap<InstanceId, Arc<Upstream>> =
            self.snapshot().iter().map(|worker| (worker.instance_id, worker.clone())).collect();
        let mut next = Vec::with_capacity(instances.len());
        for instance in instances {
            let Some(worker) = workers.get(&instance.id) else { continue };
            if !worker.registered || worker.revoked || worker.status.as_deref() == Some("draining") {
                continue;
            }
            let (Some(port), Some(model)) = (worker.engine_port, worker.model.clone()) else { continue };
            let Some(host) = instance.address.as_deref().and_then(url_host) else { continue };
            let Ok(port) = u16::try_from(port) else { continue };
            let base = format!("http://{host}:{port}");
            let queue = u32::try_from(worker.queue_depth.unwrap_or(0)).unwrap_or(0);
            match previous.get(&instance.id) {
                Some(kept) if kept.base == base && kept.model == model => {
                    kept.queue_depth.store(queue, Ordering::Relaxed);
                    next.push(kept.clone());
                }
                _ => next.push(Arc::new(Upstream {
                    instance_id: instance.id,
                    organization_id: instance.organization_id,
                    model,
                    base,
                    provider: instance.provider.clone(),
                    zone: instance.zone.clone(),
                    instance_type: instance.instance_type.clone(),
                    in_flight: AtomicU32::new(0),
                    queue_depth: AtomicU32::new(queue),
                    breaker: Breaker::default(),
                })),
            }
        }
        let count = next.len();
        *self.workers.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        Ok(count)
    }

    /// Refreshes every [`REFRESH_EVERY`] until shutdown.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, shutdown: Shutdown) {
        loop {
            if let Err(error) = self.refresh(&*store).await {
                tracing::warn!(%error, "could not read the fleet; routing to the last one known");
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
        }
    }

    /// Tests and benches: a fleet of fixed workers.
    pub fn fixed(workers: Vec<(InstanceId, OrganizationId, String, String)>) -> Self {
        let upstreams = workers
            .into_iter()
            .map(|(instance_id, organization_id, model, base)| {
                Arc::new(Upstream {
                    instance_id,
                    organization_id,
                    model,
                    base,
                    provider: "local".into(),
                    zone: String::new(),
                    instance_type: String::new(),
                    in_flight: AtomicU32::new(0),
                    queue_depth: AtomicU32::new(0),
                    breaker: Breaker::default(),
                })
            })
            .collect();
        Self { workers: RwLock::new(Arc::new(upstreams)) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_provider_addresses_only_in_url_form() {
        assert_eq!(url_host("10.0.0.5").as_deref(), Some("10.0.0.5"));
        assert_eq!(url_host("127.0.0.1:8090").as_deref(), Some("127.0.0.1"));
        assert_eq!(url_host("[::1]:8090").as_deref(), Some("[::1]"));
        assert_eq!(url_host("::1").as_deref(), Some("[::1]"));
        assert_eq!(url_host("Worker-1.example:22").as_deref(), Some("worker-1.example"));
        for bad in ["", "a b", "evil.example/path", "user@host", "h?x=1"] {
            assert_eq!(url_host(bad), None, "{bad:?}");
        }
    }

    fn fleet(count: usize) -> Vec<Arc<Upstream>> {
        let organization = OrganizationId::new();
        let workers = (0..count)
            .map(|index| (InstanceId::new(), organization, "m".to_owned(), format!("http://w{index}")))
            .collect();
        Fleet::fixed(workers).snapshot().as_ref().clone()
    }

    #[test]
    fn one_prefix_keeps_its_worker_until_it_is_overloaded() {
        let workers = fleet(4);
        let first = Fleet::choose(&workers, Some(42), &[]).unwrap();
        let mut held = Vec::new();
        for _ in 0..2 {
            let again = Fleet::choose(&workers, Some(42), &[]).unwrap();
            assert_eq!(again.instance_id, first.instance_id, "the same prefix, the same warm worker");
            held.push(again.start());
        }
        // Two in flight on it, none elsewhere: at the bound (1.25 x the average of 3/4, + 1),
        // the prefix spills to another worker.
        let spilled = Fleet::choose(&workers, Some(42), &[]).unwrap();
        assert_ne!(spilled.instance_id, first.instance_id);
        drop(held);
        // Different prefixes spread over the workers.
        let distinct: std::collections::HashSet<_> =
            (0..64).map(|key| Fleet::choose(&workers, Some(key), &[]).unwrap().instance_id).collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn two_choices_avoid_the_busy_worker_and_an_open_breaker_is_skipped() {
        let workers = fleet(2);
        let _busy: Vec<_> = (0..5).map(|_| workers[0].start()).collect();
        for _ in 0..20 {
            assert_eq!(Fleet::choose(&workers, None, &[]).unwrap().instance_id, workers[1].instance_id);
        }
        for _ in 0..BREAKER_FAILURES {
            workers[1].failed();
        }
        assert!(workers[1].breaker_open());
        assert_eq!(Fleet::choose(&workers, None, &[]).unwrap().instance_id, workers[0].instance_id);
        assert!(Fleet::choose(&workers, None, &[workers[0].instance_id]).is_none(), "open and tried: none");
    }

    #[test]
    fn a_half_open_breaker_lets_one_trial_through() {
        let breaker = Breaker::default();
        for _ in 0..BREAKER_FAILURES {
            breaker.failure();
        }
        assert!(!breaker.admit());
        breaker.lock().open_until = Some(Instant::now());
        assert!(breaker.admit(), "the trial");
        assert!(!breaker.admit(), "only one");
        breaker.failure();
        assert!(!breaker.admit(), "open again");
        breaker.lock().open_until = Some(Instant::now());
        assert!(breaker.admit());
        breaker.success();
        assert!(breaker.admit() && breaker.admit(), "closed");
    }
}
