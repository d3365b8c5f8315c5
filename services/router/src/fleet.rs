//! The workers the router sends to: discovered from the control plane (ready instances with a
//! registered, unrevoked worker), each reached at the address its *provider* reports with the
//! engine port its agent registered, never at a host the agent named. Each carries its
//! in-flight count and a circuit breaker; [`Fleet::choose`] balances over them.
//!
//! Balancing: an affinity key (a session, or the model and the prompt's leading text) is
//! assigned a home worker, which keeps its requests, and so its KV cache, warm. A new key goes to
//! the first worker, in rendezvous-hashing order (each worker scores `hash(key, worker)`: the
//! same order on every replica, and only the keys of a worker that goes move), that holds no more
//! than its share of the assigned keys (bounded-load consistent hashing over keys with no
//! slack), so that keys, and with them load and cache footprint, spread evenly. A home worker
//! more than [`OVERLOAD`] times the average in flight sends the request elsewhere for now,
//! without moving the key. Once a second, when the busiest worker's keys get a quarter more
//! requests than the idlest's (rates decaying over 10 s), the key that best closes the gap moves
//! (its cache is cold once): unequal tenants still spread evenly. Without a key, the power of two choices: two workers at random, the
//! one with fewer requests in flight (then the shorter engine queue) wins.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use qm_domain::{InstanceId, InstanceState, OrganizationId};
use qm_runtime::Shutdown;
use qm_store::{InstanceFilter, Store};
use rand::Rng as _;

/// How often discovery reads the events written since its last look (the outbox, where every
/// state change is written in its own transaction) for one that changes the fleet.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);
/// How often discovery reads the fleet whatever happened (engine queues, missed changes).
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// The events that change which workers are routable.
const FLEET_EVENTS: [&str; 2] = ["instance.state_changed", "worker.registered"];
/// A home worker keeps its keys' requests while its in-flight count is under this times the
/// average (+2); past it, a request goes to the least loaded of two others.
pub const OVERLOAD: f64 = 2.0;
/// A key unused this long loses its home (its cache entries are long evicted).
const AFFINITY_TTL: Duration = Duration::from_secs(600);
/// Keys remembered at most; past it the assignments start over.
const MAX_KEYS: usize = 100_000;
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
    /// The pool (or deployment) the instance belongs to.
    pub pool: Option<qm_domain::DeploymentId>,
    /// A request went to it since the pools' activity was last written.
    asked: AtomicBool,
    /// Its times to first token since they were last collected (for its pool's autoscaler).
    pub ttft: crate::pools::TtftHistogram,
    in_flight: AtomicU32,
    /// The engine's queue as the agent last reported it.
    queue_depth: AtomicU32,
    /// The engine's KV-cache use as the agent last reported it, in thousandths.
    kv_cache_permille: AtomicU32,
    breaker: Breaker,
}

impl Upstream {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops (and marks the worker asked).
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.asked.store(true, Ordering::Relaxed);
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

    /// Whether a request went to it since the last call.
    pub fn take_asked(&self) -> bool {
        self.asked.swap(false, Ordering::Relaxed)
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

/// Retries allowed across all requests (Finagle's retry budget): each request deposits
/// [`RETRY_RATIO`] of a retry, each retry withdraws one, and [`RETRY_FLOOR`] a second are always
/// allowed. When most workers fail at once, retries stay a fraction of the traffic instead of
/// multiplying it by the attempts.
#[derive(Debug)]
pub struct RetryBudget {
    /// Retries saved up, in thousandths: deposits are one atomic add, no lock on the hot path.
    saved: AtomicI64,
    /// When the floor was last added (only retries, which are rare, take this lock).
    floored: Mutex<Instant>,
}

/// The share of requests that may be retried, in thousandths of a retry.
pub const RETRY_RATIO_MILLI: i64 = 200;
/// Retries a second allowed whatever the traffic.
pub const RETRY_FLOOR: f64 = 10.0;
/// The most retries saved up, in thousandths.
const RETRY_SAVED_MILLI: i64 = 1_000_000;
const ONE_RETRY: i64 = 1_000;

impl Default for RetryBudget {
    fn default() -> Self {
        #[allow(clippy::cast_possible_truncation)]
        let floor = (RETRY_FLOOR * 1000.0) as i64;
        Self { saved: AtomicI64::new(floor), floored: Mutex::new(Instant::now()) }
    }
}

impl RetryBudget {
    /// A request arrives.
    pub fn deposit(&self) {
        self.saved.fetch_add(RETRY_RATIO_MILLI, Ordering::Relaxed);
    }

    /// Whether one more retry may go now (and takes it). The balance is capped here, where
    /// it is spent, rather than on every deposit.
    pub fn withdraw(&self) -> bool {
        let mut floored = self.floored.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        #[allow(clippy::cast_possible_truncation)]
        let floor = (now.duration_since(*floored).as_secs_f64() * RETRY_FLOOR * 1000.0) as i64;
        *floored = now;
        let mut granted = false;
        let _ = self.saved.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |saved| {
            let saved = saved.min(RETRY_SAVED_MILLI).saturating_add(floor).min(RETRY_SAVED_MILLI);
            granted = saved >= ONE_RETRY;
            Some(if granted { saved - ONE_RETRY } else { saved })
        });
        granted
    }
}

/// The workers, swapped whole on each refresh (an upstream that stays keeps its counters), and
/// the affinity keys' homes.
#[derive(Default)]
pub struct Fleet {
    workers: RwLock<Arc<Vec<Arc<Upstream>>>>,
    homes: Mutex<Homes>,
    /// Shared by every request to every worker.
    pub retries: RetryBudget,
}

/// Affinity keys and their home workers, with how many keys each worker holds.
#[derive(Default)]
struct Homes {
    by_key: HashMap<u64, Home>,
    counts: HashMap<InstanceId, usize>,
    /// When each pool last had a key moved (or was looked at for it).
    rebalanced: HashMap<u64, Instant>,
}

/// Where a key lives, how busy it is, and which pool (set of workers) it was placed among.
struct Home {
    worker: InstanceId,
    used: Instant,
    /// Requests, decaying with [`RATE_WINDOW`] as time constant.
    rate: f64,
    pool: u64,
}

impl Home {
    fn rate_now(&self, now: Instant) -> f64 {
        self.rate * (-now.duration_since(self.used).as_secs_f64() / RATE_WINDOW.as_secs_f64()).exp()
    }
}

/// The time constant of a key's request rate.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// How often keys may move between workers to even the load.
const REBALANCE_EVERY: Duration = Duration::from_secs(1);

/// An order-free name for a set of workers.
fn pool_of(workers: &[&Arc<Upstream>]) -> u64 {
    workers.iter().fold(0, |pool, worker| pool ^ score(0x5eed, worker.instance_id))
}

impl Homes {
    /// Records a request of `key` at its home.
    fn touch(&mut self, key: u64) {
        let now = Instant::now();
        if let Some(home) = self.by_key.get_mut(&key) {
            home.rate = home.rate_now(now) + 1.0;
            home.used = now;
        }
    }

    fn assign(&mut self, key: u64, worker: InstanceId, pool: u64) {
        let home = Home { worker, used: Instant::now(), rate: 1.0, pool };
        if let Some(previous) = self.by_key.insert(key, home)
            && let Some(count) = self.counts.get_mut(&previous.worker)
        {
            *count = count.saturating_sub(1);
        }
        *self.counts.entry(worker).or_default() += 1;
    }

    /// Moves one key of `pool` from the busiest to the idlest of `open` when their request
    /// rates differ by more than a quarter (and a request a second): the one whose rate best
    /// closes the gap. Its cache is cold once at its new home; the load evens out.
    fn rebalance(&mut self, open: &[&Arc<Upstream>], pool: u64) {
        let now = Instant::now();
        if self.rebalanced.get(&pool).is_some_and(|at| now.duration_since(*at) < REBALANCE_EVERY) {
            return;
        }
        self.rebalanced.insert(pool, now);
        let mut scores: HashMap<InstanceId, f64> = open.iter().map(|worker| (worker.instance_id, 0.0)).collect();
        for home in self.by_key.values().filter(|home| home.pool == pool) {
            if let Some(score) = scores.get_mut(&home.worker) {
                *score += home.rate_now(now);
            }
        }
        let by_score = |a: &(&InstanceId, &f64), b: &(&InstanceId, &f64)| a.1.total_cmp(b.1);
        let (Some((&busiest, &most)), Some((&idlest, &least))) =
            (scores.iter().max_by(by_score), scores.iter().min_by(by_score))
        else {
            return;
        };
        if most <= least * 1.25 + RATE_WINDOW.as_secs_f64() {
            return;
        }
        let gap = (most - least) / 2.0;
        let moved = self
            .by_key
            .iter()
            .filter(|(_, home)| home.pool == pool && home.worker == busiest && home.rate_now(now) < most - least)
            .min_by(|a, b| (a.1.rate_now(now) - gap).abs().total_cmp(&(b.1.rate_now(now) - gap).abs()))
            .map(|(key, _)| *key);
        if let Some(key) = moved
            && let Some(home) = self.by_key.get_mut(&key)
        {
            home.worker = idlest;
            if let Some(count) = self.counts.get_mut(&busiest) {
                *count = count.saturating_sub(1);
            }
            *self.counts.entry(idlest).or_default() += 1;
        }
    }

    /// Forgets keys unused for [`AFFINITY_TTL`] and those of workers no longer in `live`.
    fn prune(&mut self, live: &std::collections::HashSet<InstanceId>) {
        if self.by_key.len() > MAX_KEYS {
            self.by_key.clear();
        }
        self.by_key.retain(|_, home| live.contains(&home.worker) && home.used.elapsed() < AFFINITY_TTL);
        self.rebalanced.retain(|_, at| at.elapsed() < AFFINITY_TTL);
        self.counts.clear();
        for home in self.by_key.values() {
            *self.counts.entry(home.worker).or_default() += 1;
        }
    }
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

    /// Picks a worker among `candidates` not in `tried` whose breaker admits a request: the
    /// affinity key's home, or a new home for it, or two random choices.
    pub fn choose(
        &self,
        candidates: &[Arc<Upstream>],
        affinity: Option<u64>,
        tried: &[InstanceId],
    ) -> Option<Arc<Upstream>> {
        let open: Vec<&Arc<Upstream>> =
            candidates.iter().filter(|worker| !tried.contains(&worker.instance_id)).collect();
        if open.is_empty() {
            return None;
        }
        if let Some(key) = affinity
            && let Some(home) = self.home(&open, key)
        {
            return Some(home);
        }
        Self::two_choices(open)
    }

    /// The home of `key` among `open` (assigning one when it has none there), unless it is
    /// overloaded or its breaker refuses.
    fn home(&self, open: &[&Arc<Upstream>], key: u64) -> Option<Arc<Upstream>> {
        let total: u32 = open.iter().map(|worker| worker.in_flight()).sum();
        #[allow(clippy::cast_precision_loss)]
        let overload = ((f64::from(total) + 1.0) / open.len() as f64 * OVERLOAD).ceil() + 2.0;
        let usable = |worker: &Upstream| f64::from(worker.in_flight()) < overload;
        let pool = pool_of(open);
        let mut homes = self.homes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        homes.rebalance(open, pool);
        let current = homes.by_key.get(&key).map(|home| home.worker);
        if let Some(worker) = current.and_then(|home| open.iter().find(|worker| worker.instance_id == home)) {
            homes.touch(key);
            return (usable(worker) && worker.breaker.admit()).then(|| (*worker).clone());
        }
        // A new home: the first in rendezvous order holding at most its share of the keys.
        let held = |worker: &Upstream| homes.counts.get(&worker.instance_id).copied().unwrap_or(0);
        let assigned: usize = open.iter().map(|worker| held(worker)).sum();
        let share = (assigned + 1).div_ceil(open.len());
        let mut ranked = open.to_vec();
        ranked.sort_by_key(|worker| std::cmp::Reverse(score(key, worker.instance_id)));
        let chosen =
            ranked.into_iter().find(|worker| held(worker) < share && usable(worker) && worker.breaker.admit())?;
        homes.assign(key, chosen.instance_id, pool);
        Some(chosen.clone())
    }

    /// Two workers at random; the one with fewer requests in flight (then the shorter engine
    /// queue, then the emptier KV cache, as the agents last reported them) that its breaker
    /// admits.
    fn two_choices(mut remaining: Vec<&Arc<Upstream>>) -> Option<Arc<Upstream>> {
        let load = |worker: &Upstream| {
            (
                worker.in_flight(),
                worker.queue_depth.load(Ordering::Relaxed),
                worker.kv_cache_permille.load(Ordering::Relaxed),
            )
        };
        let mut rng = rand::rng();
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
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let kv_cache = (worker.kv_cache_usage.unwrap_or(0.0).clamp(0.0, 1.0) * 1000.0) as u32;
            match previous.get(&instance.id) {
                Some(kept) if kept.base == base && kept.model == model => {
                    kept.queue_depth.store(queue, Ordering::Relaxed);
                    kept.kv_cache_permille.store(kv_cache, Ordering::Relaxed);
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
                    pool: instance.deployment_id,
                    asked: AtomicBool::new(false),
                    ttft: crate::pools::TtftHistogram::default(),
                    in_flight: AtomicU32::new(0),
                    queue_depth: AtomicU32::new(queue),
                    kv_cache_permille: AtomicU32::new(kv_cache),
                    breaker: Breaker::default(),
                })),
            }
        }
        let count = next.len();
        let live = next.iter().map(|worker| worker.instance_id).collect();
        self.homes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).prune(&live);
        *self.workers.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        Ok(count)
    }

    /// Refreshes on every event that changes the fleet (looked for every [`WATCH_EVERY`]) and
    /// every [`REFRESH_EVERY`] anyway, until shutdown.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, shutdown: Shutdown) {
        let mut seen = store.feed_head().await.unwrap_or(0);
        let mut refreshed: Option<Instant> = None;
        loop {
            let mut due = refreshed.is_none_or(|at| at.elapsed() >= REFRESH_EVERY);
            match store.feed(seen, None, None, 1_000).await {
                Ok(entries) => {
                    for entry in &entries {
                        seen = seen.max(entry.seq);
                        due |= FLEET_EVENTS.contains(&entry.envelope.message_type.as_str());
                    }
                }
                Err(error) => tracing::warn!(%error, "could not read the event feed"),
            }
            if due {
                match self.refresh(&*store).await {
                    Ok(_) => refreshed = Some(Instant::now()),
                    Err(error) => tracing::warn!(%error, "could not read the fleet; routing to the last one known"),
                }
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(WATCH_EVERY) => {}
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
                    pool: None,
                    asked: AtomicBool::new(false),
                    ttft: crate::pools::TtftHistogram::default(),
                    in_flight: AtomicU32::new(0),
                    queue_depth: AtomicU32::new(0),
                    kv_cache_permille: AtomicU32::new(0),
                    breaker: Breaker::default(),
                })
            })
            .collect();
        Self { workers: RwLock::new(Arc::new(upstreams)), ..Self::default() }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_fifth_of_the_requests_beyond_a_floor() {
        let budget = RetryBudget::default();
        // The floor saved up at the start, then nothing more within the same instant.
        let mut allowed = 0;
        while budget.withdraw() {
            allowed += 1;
            assert!(allowed <= 11, "the floor is ten a second");
        }
        assert!(allowed >= 10, "{allowed}");
        // 100 requests pay for 20 retries.
        for _ in 0..100 {
            budget.deposit();
        }
        let mut paid = 0;
        while budget.withdraw() {
            paid += 1;
            assert!(paid <= 21, "more retries than a fifth of the requests");
        }
        assert!(paid >= 20, "{paid}");
    }

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

    fn fleet(count: usize) -> (Fleet, Vec<Arc<Upstream>>) {
        let organization = OrganizationId::new();
        let workers = (0..count)
            .map(|index| (InstanceId::new(), organization, "m".to_owned(), format!("http://w{index}")))
            .collect();
        let fleet = Fleet::fixed(workers);
        let snapshot = fleet.snapshot().as_ref().clone();
        (fleet, snapshot)
    }

    #[test]
    fn a_prefix_keeps_its_home_spills_when_it_is_overloaded_and_comes_back() {
        let (fleet, workers) = fleet(4);
        let home = fleet.choose(&workers, Some(42), &[]).unwrap();
        let mut held = vec![home.start()];
        let spilled = loop {
            let again = fleet.choose(&workers, Some(42), &[]).unwrap();
            if again.instance_id != home.instance_id {
                break again;
            }
            held.push(again.start());
            assert!(held.len() <= 8, "never spilled");
        };
        assert!(held.len() >= 3, "the home took {} before spilling", held.len());
        assert_ne!(spilled.instance_id, home.instance_id);
        drop(held);
        assert_eq!(fleet.choose(&workers, Some(42), &[]).unwrap().instance_id, home.instance_id, "still its home");
    }

    #[test]
    fn keys_spread_evenly_over_the_workers() {
        let (fleet, workers) = fleet(4);
        let mut homes: HashMap<InstanceId, usize> = HashMap::new();
        for key in 0..16 {
            *homes.entry(fleet.choose(&workers, Some(key), &[]).unwrap().instance_id).or_default() += 1;
        }
        assert_eq!(homes.values().copied().collect::<Vec<_>>(), [4, 4, 4, 4], "{homes:?}");
        // A key keeps its home once assigned.
        let home = fleet.choose(&workers, Some(3), &[]).unwrap().instance_id;
        assert_eq!(fleet.choose(&workers, Some(3), &[]).unwrap().instance_id, home);
    }

    #[test]
    fn a_busy_worker_hands_a_key_to_an_idle_one() {
        let (fleet, workers) = fleet(2);
        let home_of = |key: u64| fleet.homes.lock().unwrap().by_key[&key].worker;
        // Key 1, and the first key placed beside it, on one worker; the others on the other.
        fleet.choose(&workers, Some(1), &[]).unwrap();
        let hot = home_of(1);
        let beside = (2..100).find(|key| fleet.choose(&workers, Some(*key), &[]).unwrap().instance_id == hot).unwrap();
        // Key 1 gets hot; the next look at the pool moves the warm key beside it away.
        for _ in 0..200 {
            fleet.choose(&workers, Some(1), &[]).unwrap();
        }
        fleet.homes.lock().unwrap().rebalanced.clear();
        fleet.choose(&workers, Some(1), &[]).unwrap();
        assert_ne!(home_of(beside), hot, "the warm key left the hot worker");
        assert_eq!(home_of(1), hot, "the hot key stays (moving it would only move the imbalance)");
    }

    #[test]
    fn two_choices_avoid_the_busy_worker_and_an_open_breaker_is_skipped() {
        let (fleet, workers) = fleet(2);
        let _busy: Vec<_> = (0..5).map(|_| workers[0].start()).collect();
        for _ in 0..20 {
            assert_eq!(fleet.choose(&workers, None, &[]).unwrap().instance_id, workers[1].instance_id);
        }
        for _ in 0..BREAKER_FAILURES {
            workers[1].failed();
        }
        assert!(workers[1].breaker_open());
        assert_eq!(fleet.choose(&workers, None, &[]).unwrap().instance_id, workers[0].instance_id);
        assert!(fleet.choose(&workers, None, &[workers[0].instance_id]).is_none(), "open and tried: none");
    }

    #[test]
    fn at_equal_load_the_shorter_queue_then_the_emptier_kv_cache_wins() {
        let (fleet, workers) = fleet(2);
        workers[0].kv_cache_permille.store(900, Ordering::Relaxed);
        for _ in 0..20 {
            assert_eq!(fleet.choose(&workers, None, &[]).unwrap().instance_id, workers[1].instance_id);
        }
        workers[1].queue_depth.store(3, Ordering::Relaxed);
        for _ in 0..20 {
            assert_eq!(fleet.choose(&workers, None, &[]).unwrap().instance_id, workers[0].instance_id);
        }
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
