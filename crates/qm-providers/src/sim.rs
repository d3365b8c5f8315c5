//! `sim`: an in-memory cloud for scale and chaos tests. Instances boot after a configurable
//! delay; zones have capacity; calls are rate limited; faults are injected at configured rates
//! (a create that fails, a create that succeeds but answers with a timeout, an instance that
//! vanishes, a terminate that fails a few times first). Every random choice comes from one
//! seeded generator, so a given sequence of calls behaves the same on every run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use qm_domain::InstanceId;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;

use crate::{CloudProvider, CreateRequest, ErrorKind, ProviderError, ProviderInstance, ProviderOffer, ProviderStatus};

pub const NAME: &str = "sim";

/// Fault rates (probabilities per call, 0 to 1) and counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// A create fails (transient) and creates nothing.
    pub create_fails: f64,
    /// A create succeeds but the caller gets a transient "timed out" error.
    pub create_times_out: f64,
    /// A running instance disappears when next described or listed.
    pub vanishes: f64,
    /// Each terminate of an instance fails (transient) this many times before it succeeds.
    pub terminate_failures: u32,
}

impl Faults {
    /// Every kind of fault at `rate`, terminates failing once.
    pub fn all(rate: f64) -> Self {
        Self { create_fails: rate, create_times_out: rate, vanishes: rate, terminate_failures: 1 }
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    /// From start to running.
    pub boot_delay: Duration,
    /// Live instances per zone; zones not named are unlimited.
    pub zone_capacity: BTreeMap<String, usize>,
    /// Calls per second before `Throttled`; `None` = unlimited.
    pub calls_per_second: Option<u32>,
    pub faults: Faults,
    pub seed: u64,
    pub offers: Vec<ProviderOffer>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            boot_delay: Duration::from_millis(200),
            zone_capacity: BTreeMap::new(),
            calls_per_second: None,
            faults: Faults::default(),
            seed: 42,
            offers: default_offers(),
        }
    }
}

/// The offers of the `sim` provider in `seeds/catalog.json`.
pub fn default_offers() -> Vec<ProviderOffer> {
    // (type, GPU model and memory, vCPUs, RAM GB, price): as in seeds/catalog.json.
    type Spec = (&'static str, Option<(&'static str, i32)>, i32, i32, i64);
    let types: [Spec; 3] = [
        ("sim.cpu", None, 2, 4, 80_000),
        ("sim.l4", Some(("L4", 24)), 8, 32, 700_000),
        ("sim.h100", Some(("H100", 80)), 24, 240, 2_500_000),
    ];
    let mut offers = Vec::new();
    for (region, zone) in [("sim-eu", "sim-eu-1"), ("sim-eu", "sim-eu-2"), ("sim-us", "sim-us-1")] {
        for (instance_type, gpu, vcpus, memory_gb, price) in types {
            if instance_type == "sim.h100" && zone == "sim-eu-2" {
                continue;
            }
            offers.push(ProviderOffer {
                region: region.into(),
                zone: zone.into(),
                instance_type: instance_type.into(),
                gpu_model: gpu.map(|(model, _)| model.into()),
                gpu_count: i32::from(gpu.is_some()),
                gpu_memory_gb: gpu.map_or(0, |(_, memory)| memory),
                vcpus,
                memory_gb,
                hourly_price_micros: price,
                currency: "EUR".into(),
                available: true,
            });
        }
    }
    offers
}

struct SimInstance {
    record: ProviderInstance,
    started_at: Option<Instant>,
    terminated: bool,
    /// Stopped behind Quartermaster's back (its agent stops too).
    stopped: bool,
    terminate_failures_left: u32,
    user_data: String,
    /// Tells the simulated agent to stop.
    gone: Arc<AtomicBool>,
}

struct State {
    rng: StdRng,
    instances: BTreeMap<String, SimInstance>,
    by_instance_id: HashMap<InstanceId, String>,
    created: u64,
    calls: u64,
    window_start: Instant,
    window_calls: u32,
}

/// What the cloud holds, for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Instances ever created (a duplicate would show here).
    pub created: u64,
    /// Instances not terminated.
    pub live: usize,
    /// Calls received, throttled ones included.
    pub calls: u64,
}

pub struct SimCloud {
    config: SimConfig,
    state: Mutex<State>,
}

impl SimCloud {
    pub fn new(config: SimConfig) -> Self {
        let state = State {
            rng: StdRng::seed_from_u64(config.seed),
            instances: BTreeMap::new(),
            by_instance_id: HashMap::new(),
            created: 0,
            calls: 0,
            window_start: Instant::now(),
            window_calls: 0,
        };
        Self { config, state: Mutex::new(state) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The GPUs an instance of `instance_type` has, as its simulated agent reports them.
    fn gpus_of(&self, instance_type: &str) -> Vec<qm_events::worker::GpuInfo> {
        let Some(offer) = self.config.offers.iter().find(|offer| offer.instance_type == instance_type) else {
            return Vec::new();
        };
        let Some(model) = &offer.gpu_model else { return Vec::new() };
        let memory_total_mb = u64::try_from(offer.gpu_memory_gb).unwrap_or(0) * 1024;
        (0..u32::try_from(offer.gpu_count).unwrap_or(0))
            .map(|index| qm_events::worker::GpuInfo {
                index,
                name: format!("NVIDIA {model} (simulated)"),
                memory_total_mb,
            })
            .collect()
    }

    fn error(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
        ProviderError::new(NAME, kind, message)
    }

    /// Counts the call against the rate limit.
    fn admit(&self, state: &mut State) -> Result<(), ProviderError> {
        state.calls += 1;
        let Some(limit) = self.config.calls_per_second else { return Ok(()) };
        let now = Instant::now();
        if now.duration_since(state.window_start) >= Duration::from_secs(1) {
            state.window_start = now;
            state.window_calls = 0;
        }
        state.window_calls += 1;
        if state.window_calls > limit {
            return Err(Self::error(ErrorKind::Throttled, format!("more than {limit} calls per second")));
        }
        Ok(())
    }

    fn roll(state: &mut State, rate: f64) -> bool {
        rate > 0.0 && state.rng.random_bool(rate.clamp(0.0, 1.0))
    }

    /// The instance as described now: boots complete with time; faults may make it vanish.
    fn observe(&self, state: &mut State, provider_id: &str) -> Option<ProviderInstance> {
        let vanishes = {
            let instance = state.instances.get(provider_id)?;
            !instance.terminated && instance.record.status == ProviderStatus::Running
        } && Self::roll(state, self.config.faults.vanishes);
        let instance = state.instances.get_mut(provider_id)?;
        if vanishes {
            instance.terminated = true;
            instance.gone.store(true, Ordering::Relaxed);
        }
        if instance.terminated {
            instance.record.status = ProviderStatus::Terminated;
        } else if instance.stopped {
            instance.record.status = ProviderStatus::Stopped;
        } else if let Some(started_at) = instance.started_at
            && Instant::now().duration_since(started_at) >= self.config.boot_delay
        {
            instance.record.status = ProviderStatus::Running;
        }
        let mut observed = instance.record.clone();
        // Like a dynamic public IP, the address is known once the instance runs.
        if observed.status != ProviderStatus::Running {
            observed.address = None;
        }
        Some(observed)
    }

    /// Stops an instance as if someone did in the provider's console (or its machine died).
    pub fn stop(&self, provider_id: &str) -> bool {
        self.behind_our_back(provider_id, |instance| instance.stopped = true)
    }

    /// Changes an instance as the provider or its console would, and stops its simulated agent;
    /// `false` for an unknown instance.
    fn behind_our_back(&self, provider_id: &str, change: impl FnOnce(&mut SimInstance)) -> bool {
        let mut state = self.state();
        state.instances.get_mut(provider_id).is_some_and(|instance| {
            change(instance);
            instance.gone.store(true, Ordering::Relaxed);
            true
        })
    }

    /// Removes an instance as if the provider (or someone in its console) deleted it.
    pub fn vanish(&self, provider_id: &str) -> bool {
        self.behind_our_back(provider_id, |instance| instance.terminated = true)
    }

    /// Creates a tagged instance behind Quartermaster's back (an orphan for reconciliation).
    pub fn plant(&self, instance_id: InstanceId, zone: &str, instance_type: &str) -> String {
        let mut state = self.state();
        insert(&mut state, instance_id, zone, instance_type)
    }

    /// The most provider instances ever created for one Quartermaster instance id (1 means no
    /// duplicate was ever made).
    pub fn most_creates_per_instance(&self) -> usize {
        let state = self.state();
        let mut counts: HashMap<InstanceId, usize> = HashMap::new();
        for instance in state.instances.values() {
            if let Some(id) = instance.record.instance_id {
                *counts.entry(id).or_default() += 1;
            }
        }
        counts.values().copied().max().unwrap_or(0)
    }

    pub fn stats(&self) -> SimStats {
        let state = self.state();
        SimStats {
            created: state.created,
            live: state.instances.values().filter(|instance| !instance.terminated).count(),
            calls: state.calls,
        }
    }
}

fn insert(state: &mut State, instance_id: InstanceId, zone: &str, instance_type: &str) -> String {
    state.created += 1;
    let provider_id = format!("sim-{:08x}", state.created);
    let octets = state.created.to_be_bytes();
    let record = ProviderInstance {
        provider_id: provider_id.clone(),
        instance_id: Some(instance_id),
        zone: zone.to_owned(),
        instance_type: instance_type.to_owned(),
        status: ProviderStatus::Pending,
        address: Some(format!("10.{}.{}.{}", octets[5], octets[6], octets[7])),
        created_at: chrono::Utc::now(),
    };
    state.instances.insert(
        provider_id.clone(),
        SimInstance {
            record,
            started_at: None,
            terminated: false,
            stopped: false,
            terminate_failures_left: 0,
            user_data: String::new(),
            gone: Arc::new(AtomicBool::new(false)),
        },
    );
    state.by_instance_id.insert(instance_id, provider_id.clone());
    provider_id
}

#[async_trait]
impl CloudProvider for SimCloud {
    fn name(&self) -> &str {
        NAME
    }

    async fn create(&self, request: &CreateRequest) -> Result<ProviderInstance, ProviderError> {
        let mut state = self.state();
        self.admit(&mut state)?;
        if let Some(existing) = state.by_instance_id.get(&request.instance_id).cloned()
            && let Some(instance) = self.observe(&mut state, &existing)
            && instance.status != ProviderStatus::Terminated
        {
            return Ok(instance);
        }
        let offered = self
            .config
            .offers
            .iter()
            .any(|offer| offer.zone == request.zone && offer.instance_type == request.instance_type);
        if !offered {
            return Err(Self::error(
                ErrorKind::Invalid,
                format!("instance type `{}` is not offered in zone `{}`", request.instance_type, request.zone),
            ));
        }
        if let Some(capacity) = self.config.zone_capacity.get(&request.zone) {
            let used = state
                .instances
                .values()
                .filter(|instance| !instance.terminated && instance.record.zone == request.zone)
                .count();
            if used >= *capacity {
                return Err(Self::error(ErrorKind::Capacity, format!("zone `{}` has no capacity left", request.zone)));
            }
        }
        if Self::roll(&mut state, self.config.faults.create_fails) {
            return Err(Self::error(ErrorKind::Transient, "injected fault: create failed"));
        }
        let provider_id = insert(&mut state, request.instance_id, &request.zone, &request.instance_type);
        if let Some(instance) = state.instances.get_mut(&provider_id) {
            instance.terminate_failures_left = self.config.faults.terminate_failures;
            instance.user_data.clone_from(&request.user_data);
        }
        if Self::roll(&mut state, self.config.faults.create_times_out) {
            return Err(Self::error(ErrorKind::Transient, "injected fault: create timed out (it did succeed)"));
        }
        self.observe(&mut state, &provider_id).ok_or_else(|| Self::error(ErrorKind::Transient, "instance lost"))
    }

    async fn start(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        let mut state = self.state();
        self.admit(&mut state)?;
        let instance = state
            .instances
            .get_mut(provider_id)
            .filter(|instance| !instance.terminated)
            .ok_or_else(|| Self::error(ErrorKind::NotFound, format!("no instance `{provider_id}`")))?;
        if instance.started_at.is_none() {
            instance.started_at = Some(Instant::now());
            // A real instance runs an agent that registers once booted; so does a simulated one.
            if let Some(config) = crate::agent::BootConfig::parse(&instance.user_data) {
                let gpus = self.gpus_of(&instance.record.instance_type);
                tokio::spawn(crate::agent::run(config, self.config.boot_delay, gpus, instance.gone.clone()));
            }
        }
        self.observe(&mut state, provider_id).ok_or_else(|| Self::error(ErrorKind::NotFound, "instance lost"))
    }

    async fn describe(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        let mut state = self.state();
        self.admit(&mut state)?;
        self.observe(&mut state, provider_id)
            .ok_or_else(|| Self::error(ErrorKind::NotFound, format!("no instance `{provider_id}`")))
    }

    async fn list(&self) -> Result<Vec<ProviderInstance>, ProviderError> {
        let mut state = self.state();
        self.admit(&mut state)?;
        let ids: Vec<String> = state.instances.keys().cloned().collect();
        let mut listed = Vec::new();
        for id in ids {
            if let Some(instance) = self.observe(&mut state, &id)
                && instance.status != ProviderStatus::Terminated
            {
                listed.push(instance);
            }
        }
        Ok(listed)
    }

    async fn terminate(&self, provider_id: &str) -> Result<(), ProviderError> {
        let mut state = self.state();
        self.admit(&mut state)?;
        let Some(instance) = state.instances.get_mut(provider_id) else { return Ok(()) };
        if instance.terminated {
            return Ok(());
        }
        if instance.terminate_failures_left > 0 {
            instance.terminate_failures_left -= 1;
            return Err(Self::error(ErrorKind::Transient, "injected fault: terminate failed"));
        }
        instance.terminated = true;
        instance.record.status = ProviderStatus::Terminated;
        instance.gone.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        let mut state = self.state();
        self.admit(&mut state)?;
        let mut offers = self.config.offers.clone();
        for offer in &mut offers {
            if let Some(capacity) = self.config.zone_capacity.get(&offer.zone) {
                let used = state
                    .instances
                    .values()
                    .filter(|instance| !instance.terminated && instance.record.zone == offer.zone)
                    .count();
                offer.available = used < *capacity;
            }
        }
        Ok(offers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(zone: &str) -> CreateRequest {
        CreateRequest {
            instance_id: InstanceId::new(),
            zone: zone.into(),
            instance_type: "sim.l4".into(),
            user_data: String::new(),
            tags: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn a_full_zone_answers_capacity_and_another_zone_still_works() {
        let config = SimConfig { zone_capacity: BTreeMap::from([("sim-eu-1".to_owned(), 1)]), ..SimConfig::default() };
        let cloud = SimCloud::new(config);
        cloud.create(&request("sim-eu-1")).await.expect("first fits");
        let error = cloud.create(&request("sim-eu-1")).await.expect_err("full");
        assert_eq!(error.kind, ErrorKind::Capacity);
        assert!(error.calls_for_failover());
        cloud.create(&request("sim-eu-2")).await.expect("the other zone has room");
        let offers = cloud.offers().await.expect("offers");
        assert!(offers.iter().filter(|offer| offer.zone == "sim-eu-1").all(|offer| !offer.available));
    }

    #[tokio::test]
    async fn a_create_that_times_out_after_succeeding_is_found_again_not_duplicated() {
        let faults = Faults { create_times_out: 1.0, ..Faults::default() };
        let cloud = SimCloud::new(SimConfig { faults, ..SimConfig::default() });
        let request = request("sim-eu-1");
        let error = cloud.create(&request).await.expect_err("timed out");
        assert!(error.is_retryable());
        let instance = cloud.create(&request).await.expect("the retry finds it");
        assert_eq!(instance.instance_id, Some(request.instance_id));
        assert_eq!((cloud.stats().created, cloud.stats().live), (1, 1));
    }

    #[tokio::test]
    async fn terminate_fails_the_configured_number_of_times_then_succeeds() {
        let faults = Faults { terminate_failures: 2, ..Faults::default() };
        let cloud = SimCloud::new(SimConfig { faults, ..SimConfig::default() });
        let instance = cloud.create(&request("sim-eu-1")).await.expect("create");
        for _ in 0..2 {
            assert_eq!(cloud.terminate(&instance.provider_id).await.expect_err("injected").kind, ErrorKind::Transient);
        }
        cloud.terminate(&instance.provider_id).await.expect("third time");
        assert_eq!(cloud.stats().live, 0);
    }

    #[tokio::test]
    async fn calls_over_the_rate_limit_are_throttled() {
        let cloud = SimCloud::new(SimConfig { calls_per_second: Some(3), ..SimConfig::default() });
        for _ in 0..3 {
            cloud.list().await.expect("within the limit");
        }
        let error = cloud.list().await.expect_err("over");
        assert_eq!(error.kind, ErrorKind::Throttled);
        assert!(error.is_retryable());
    }

    #[tokio::test]
    async fn the_same_seed_injects_the_same_faults() {
        let outcomes = |seed: u64| async move {
            let cloud = SimCloud::new(SimConfig { faults: Faults::all(0.3), seed, ..SimConfig::default() });
            let mut outcomes = Vec::new();
            for _ in 0..50 {
                outcomes.push(cloud.create(&request("sim-eu-1")).await.is_ok());
            }
            outcomes
        };
        assert_eq!(outcomes(7).await, outcomes(7).await);
        assert_ne!(outcomes(7).await, outcomes(8).await);
    }

    #[tokio::test]
    async fn a_vanished_instance_is_gone_from_the_listing() {
        let cloud = SimCloud::new(SimConfig::default());
        let instance = cloud.create(&request("sim-eu-1")).await.expect("create");
        assert!(cloud.vanish(&instance.provider_id));
        assert!(cloud.list().await.expect("list").is_empty());
        assert_eq!(cloud.describe(&instance.provider_id).await.expect("described").status, ProviderStatus::Terminated);
    }
}
