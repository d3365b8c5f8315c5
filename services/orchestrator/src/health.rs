//! Deadlines and probes on the lifecycle (DESIGN section 5), swept periodically by the replica
//! holding the `orchestrator.health` lease:
//!
//! - `booting` (or `ready`) without an address (the provider had none yet when it started the
//!   instance): the provider is listed once and the addresses recorded in one transaction (a
//!   provider that lost the instance meanwhile is reconciliation's to find);
//! - `booting` past the startup deadline → `startup_failed` → terminated;
//! - `booting` for a while without a ready heartbeat: the agent's `/readyz` answering 200 makes
//!   it `ready` (an agent that serves but cannot reach the api still counts);
//! - `ready` without a heartbeat for the heartbeat timeout: probed (`/readyz`, then TCP :22);
//!   still `ready` while `/readyz` answers 200, otherwise `unhealthy` with what the probes found
//!   (a later ready heartbeat brings it back);
//! - stuck in a transitional state: `provisioning` past its deadline → `provisioning_failed`
//!   (anything the provider did create is then an orphan that reconciliation terminates);
//!   `draining` past its deadline → `terminating`;
//!   `terminating` past its deadline → the `instance.terminate` command is issued again.
//!
//! Every move is a conditional update, so replicas sweeping at once cannot both apply it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use qm_domain::{InstanceId, InstanceState};
use qm_events::Envelope;
use qm_events::payloads::InstanceTerminate;
use qm_runtime::Shutdown;
use qm_store::{ActionStatus, Instance, InstanceAnnotation, NewActionLog, Store};

use crate::probe::{Evidence, Prober};
use crate::saga::{Saga, SagaError};

#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// From `booting` to `ready`.
    pub startup: Duration,
    /// Silence after which a `ready` instance is probed, and `unhealthy` unless `/readyz` answers.
    pub heartbeat: Duration,
    /// How long an instance boots before its `/readyz` is probed.
    pub probe_after: Duration,
    /// Each probe's timeout.
    pub probe_timeout: Duration,
    /// How long an instance may stay `provisioning`.
    pub provisioning: Duration,
    /// How long an instance may stay `terminating` before its command is issued again.
    pub terminating: Duration,
    /// How long a worker may drain before its instance is terminated.
    pub draining: Duration,
    pub sweep_every: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            startup: Duration::from_secs(10 * 60),
            heartbeat: Duration::from_secs(30),
            probe_after: Duration::from_secs(20),
            probe_timeout: Duration::from_secs(2),
            // Longer than a saga can take: create and start, with retries on each.
            provisioning: Duration::from_secs(15 * 60),
            terminating: Duration::from_secs(15 * 60),
            draining: Duration::from_secs(10 * 60),
            sweep_every: Duration::from_secs(5),
        }
    }
}

/// States in which an instance should have an address.
const ADDRESSED_STATES: [InstanceState; 3] = [InstanceState::Booting, InstanceState::Ready, InstanceState::Unhealthy];

/// At most this many instances are looked at per kind and sweep.
const BATCH: u32 = 200;
/// Probes in flight at once.
const PROBES_AT_ONCE: usize = 32;

pub struct Health {
    store: Arc<dyn Store>,
    saga: Arc<Saga>,
    deadlines: Deadlines,
    prober: Prober,
    /// When this replica last issued a stuck termination again.
    retried: Mutex<HashMap<InstanceId, Instant>>,
    /// `qm_instances{provider,state}`, exported by the replica holding the lease only.
    fleet: Option<prometheus::IntGaugeVec>,
}

fn before(duration: Duration) -> chrono::DateTime<chrono::Utc> {
    let now = qm_store::now();
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|duration| now.checked_sub_signed(duration))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

impl Health {
    pub fn new(store: Arc<dyn Store>, saga: Arc<Saga>, deadlines: Deadlines) -> Self {
        let prober = Prober::new(deadlines.probe_timeout);
        Self { store, saga, deadlines, prober, retried: Mutex::new(HashMap::new()), fleet: None }
    }

    /// Exports the fleet gauge `qm_instances{provider,state}` in `registry`.
    pub fn with_metrics(mut self, registry: &prometheus::Registry) -> Self {
        self.fleet = Some(qm_telemetry::metrics::gauge_vec(
            registry,
            "qm_instances",
            "Unarchived instances by provider and state (exported by the replica running the health sweep)",
            &["provider", "state"],
        ));
        self
    }

    /// Counts the fleet into the gauge, or empties it on a replica without the lease.
    async fn count_fleet(&self, leased: bool) {
        let Some(gauge) = &self.fleet else { return };
        if !leased {
            gauge.reset();
            return;
        }
        match self.store.count_instances_by_state().await {
            Ok(counts) => {
                let values: Vec<(Vec<String>, i64)> = counts
                    .into_iter()
                    .map(|(provider, state, count)| (vec![provider, state.as_str().to_owned()], count))
                    .collect();
                qm_telemetry::metrics::set_all(gauge, &values);
            }
            Err(error) => tracing::warn!(%error, "cannot count the fleet"),
        }
    }

    /// One sweep; returns how many instances it moved (or whose command it issued again).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn sweep(&self) -> Result<usize, SagaError> {
        let started = Instant::now();
        let mut moved = self.record_addresses().await?;
        let startup = format!("not ready within {} s of booting", self.deadlines.startup.as_secs());
        for instance in
            self.store.instances_in_state_since(InstanceState::Booting, before(self.deadlines.startup), BATCH).await?
        {
            if let Some(failed) =
                self.saga.transition(None, &instance, InstanceState::StartupFailed, &startup, None, started).await?
            {
                moved += 1;
                self.terminate(&failed, &startup, started).await?;
            }
        }
        // Failed starts left behind by a crash between the two steps above.
        for instance in
            self.store.instances_in_state_since(InstanceState::StartupFailed, qm_store::now(), BATCH).await?
        {
            moved += usize::from(self.terminate(&instance, &startup, started).await?);
        }

        let booting = self
            .store
            .instances_in_state_since(InstanceState::Booting, before(self.deadlines.probe_after), BATCH)
            .await?;
        for (instance, evidence) in self.probe(booting).await {
            if evidence == Some(Evidence::Ready) {
                let reason = Evidence::Ready.to_string();
                moved += usize::from(
                    self.saga
                        .transition(None, &instance, InstanceState::Ready, &reason, Some(100), started)
                        .await?
                        .is_some(),
                );
            }
        }

        let silent = self.store.silent_ready_instances(before(self.deadlines.heartbeat), BATCH).await?;
        for (instance, evidence) in self.probe(silent).await {
            if evidence == Some(Evidence::Ready) {
                tracing::debug!(instance = %instance.id, "no heartbeat, but /readyz answers: still ready");
                continue;
            }
            let found = evidence.map_or_else(|| "no address to probe".to_owned(), |evidence| evidence.to_string());
            let reason = format!("no heartbeat for {} s; {found}", self.deadlines.heartbeat.as_secs());
            moved += usize::from(
                self.saga
                    .transition(None, &instance, InstanceState::Unhealthy, &reason, None, started)
                    .await?
                    .is_some(),
            );
        }

        let stuck = format!("still provisioning after {} s", self.deadlines.provisioning.as_secs());
        for instance in self
            .store
            .instances_in_state_since(InstanceState::Provisioning, before(self.deadlines.provisioning), BATCH)
            .await?
        {
            let failed =
                self.saga.transition(None, &instance, InstanceState::ProvisioningFailed, &stuck, None, started).await?;
            moved += usize::from(failed.is_some());
        }
        let drained = format!("still draining after {} s", self.deadlines.draining.as_secs());
        for instance in
            self.store.instances_in_state_since(InstanceState::Draining, before(self.deadlines.draining), BATCH).await?
        {
            moved += usize::from(self.terminate(&instance, &drained, started).await?);
        }
        for instance in self
            .store
            .instances_in_state_since(InstanceState::Terminating, before(self.deadlines.terminating), BATCH)
            .await?
        {
            moved += usize::from(self.retry_termination(&instance).await?);
        }
        Ok(moved)
    }

    /// Records the address of instances started without one (`booting`, or already `ready` when
    /// the agent was quicker than the address), from one listing per provider that has any;
    /// returns how many it recorded. A provider that cannot be listed now is tried again next
    /// sweep.
    async fn record_addresses(&self) -> Result<usize, SagaError> {
        let mut recorded = 0;
        for (name, provider) in self.saga.providers() {
            let awaiting = self.store.instances_awaiting_address(name, &ADDRESSED_STATES).await?;
            let waiting: HashMap<&str, &Instance> = awaiting
                .iter()
                .filter_map(|instance| instance.provider_instance_id.as_deref().map(|id| (id, instance)))
                .collect();
            if waiting.is_empty() {
                continue;
            }
            let listed = match provider.list().await {
                Ok(listed) => listed,
                Err(error) => {
                    tracing::warn!(%error, provider = %name, "cannot list to record addresses; next sweep");
                    continue;
                }
            };
            let mut tx = self.store.begin().await?;
            for found in listed {
                let (Some(address), Some(instance)) = (found.address, waiting.get(found.provider_id.as_str())) else {
                    continue;
                };
                let annotation = InstanceAnnotation { address: Some(address), ..InstanceAnnotation::default() };
                tx.annotate_instance(instance.id, &annotation).await?;
                recorded += 1;
            }
            tx.commit().await?;
        }
        Ok(recorded)
    }

    /// Probes every instance with an address, a bounded number at a time.
    async fn probe(&self, instances: Vec<Instance>) -> Vec<(Instance, Option<Evidence>)> {
        futures::stream::iter(instances)
            .map(|instance| async move {
                let evidence = match &instance.address {
                    Some(address) => self.prober.probe(address).await,
                    None => None,
                };
                (instance, evidence)
            })
            .buffer_unordered(PROBES_AT_ONCE)
            .collect()
            .await
    }

    async fn terminate(&self, instance: &Instance, reason: &str, started: Instant) -> Result<bool, SagaError> {
        Ok(self.saga.terminate_instance(instance, reason, started).await?.is_some())
    }

    /// Issues `instance.terminate` again for an instance stuck in `terminating` (at most once per
    /// deadline per instance), with an action log; the saga's termination is idempotent.
    async fn retry_termination(&self, instance: &Instance) -> Result<bool, SagaError> {
        {
            let mut retried = self.retried.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            retried.retain(|_, at| at.elapsed() < self.deadlines.terminating);
            if retried.contains_key(&instance.id) {
                return Ok(false);
            }
            retried.insert(instance.id, Instant::now());
        }
        let reason = format!("still terminating after {} s", self.deadlines.terminating.as_secs());
        let payload = InstanceTerminate { instance_id: instance.id, reason: reason.clone(), requested_by: None };
        let command = Envelope::of(&payload, crate::NAME, Some(instance.organization_id));
        let mut entry = NewActionLog::new(crate::NAME, "instance.terminate_retried", ActionStatus::Succeeded);
        entry.organization_id = Some(instance.organization_id);
        entry.instance_id = Some(instance.id);
        entry.metadata = serde_json::json!({ "reason": reason, "since": instance.state_changed_at });
        let mut tx = self.store.begin().await?;
        tx.enqueue(&command).await?;
        tx.insert_action_log(&entry).await?;
        tx.commit().await?;
        tracing::warn!(instance = %instance.id, "termination stuck; command issued again");
        Ok(true)
    }

    /// Sweeps every `sweep_every` while this replica holds the `orchestrator.health` lease.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let holder = uuid::Uuid::new_v4().to_string();
        while !shutdown.is_triggered() {
            let leased = self.store.acquire_lease("orchestrator.health", &holder, self.deadlines.sweep_every * 3).await;
            self.count_fleet(matches!(leased, Ok(true))).await;
            // Every replica has its own breakers: each exports its own.
            self.saga.export_circuits();
            let outcome = match leased {
                Ok(true) => self.sweep().await,
                Ok(false) => Ok(0),
                Err(error) => Err(error.into()),
            };
            match outcome {
                Ok(0) => {}
                Ok(moved) => tracing::info!(moved, "health sweep moved instances"),
                Err(error) => tracing::warn!(%error, "health sweep failed; trying again next time"),
            }
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(self.deadlines.sweep_every) => {}
            }
        }
    }
}
