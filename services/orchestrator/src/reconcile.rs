//! Reconciliation (DESIGN section 5): what the database believes against what each provider
//! runs. An instance the provider no longer has is `terminated` with `deleted_by_provider`; one
//! the provider reports stopped while it should run (a local agent that died with `qm dev`, an
//! instance stopped in a console) serves nothing and is terminated; an instance the provider
//! runs under Quartermaster's tag that the database does not know, or knows as finished, is an
//! orphan and is terminated; what finished instances left behind and still bills (Scaleway's
//! detached root volumes) is deleted. Instances that are being created or terminated
//! (`requested`, `provisioning`, `terminating`) belong to the saga and are left alone.
//!
//! The database is read *before* the provider is listed, so an instance created during a pass
//! is not in the snapshot and cannot be judged gone; every repair is a conditional update on
//! the state the snapshot saw. A provider that cannot be listed, or a row that cannot be
//! repaired, is counted as a failure and the pass goes on with the rest.
//! Runs periodically and on `fleet.reconcile`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_domain::{InstanceId, InstanceState};
use qm_providers::{CloudProvider, ProviderStatus};
use qm_runtime::Shutdown;
use qm_runtime::singleton::{Lease, Singleton};
use qm_store::{Instance, InstanceAnnotation, Store};

use crate::saga::{Saga, SagaError, Step};

/// States in which an instance must exist at its provider.
const RUNNING_STATES: [InstanceState; 4] =
    [InstanceState::Booting, InstanceState::Ready, InstanceState::Unhealthy, InstanceState::Draining];

/// How long a `booting` instance reported stopped is left alone: a provider may still report an
/// instance it has just been asked to start as stopped.
const STOPPED_GRACE: chrono::Duration = chrono::Duration::seconds(30);

/// Repairs committed together.
const REPAIR_BATCH: usize = 100;

/// How soon after start the first pass runs.
pub const FIRST_PASS_AFTER: Duration = Duration::from_secs(10);

/// What one pass found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub listed: usize,
    pub checked: usize,
    /// Recorded instances the provider no longer has.
    pub gone: usize,
    /// Provider instances terminated as orphans.
    pub orphans: usize,
    /// Recorded instances the provider reports stopped, sent to termination.
    pub stopped: usize,
    /// Billing leftovers of finished instances removed (detached volumes).
    pub leftovers: usize,
    /// Providers that could not be listed and repairs that failed (each logged); the pass went on.
    pub failures: usize,
}

impl Report {
    fn add(&mut self, other: Report) {
        self.listed += other.listed;
        self.checked += other.checked;
        self.gone += other.gone;
        self.orphans += other.orphans;
        self.stopped += other.stopped;
        self.leftovers += other.leftovers;
        self.failures += other.failures;
    }

    /// How many repairs the pass made.
    pub fn repaired(&self) -> usize {
        self.gone + self.orphans + self.stopped + self.leftovers
    }
}

/// Reconciles the providers of its saga (wrapped with retries and breakers).
pub struct Reconciler {
    pub store: Arc<dyn Store>,
    pub saga: Arc<Saga>,
    pub every: Duration,
}

impl Reconciler {
    /// One pass over `provider` (all when `None`).
    ///
    /// # Errors
    /// Only when the store fails for a whole provider's pass; a provider that cannot be listed
    /// and a row that cannot be repaired are counted in [`Report::failures`] and skipped.
    pub async fn reconcile(&self, provider: Option<&str>) -> Result<Report, SagaError> {
        let mut report = Report::default();
        for (name, cloud) in self.saga.providers() {
            if provider.is_some_and(|wanted| wanted != name) {
                continue;
            }
            match self.reconcile_provider(name, &**cloud).await {
                Ok(pass) => {
                    let [gone, orphan, stopped, leftover] = crate::saga::REPAIR_KINDS;
                    let repairs = [
                        (gone, pass.gone),
                        (orphan, pass.orphans),
                        (stopped, pass.stopped),
                        (leftover, pass.leftovers),
                    ];
                    self.saga.count_repairs(name, &repairs);
                    report.add(pass);
                }
                Err(error) => {
                    tracing::warn!(provider = %name, %error, "reconciliation of a provider failed; the others go on");
                    report.failures += 1;
                }
            }
        }
        Ok(report)
    }

    async fn reconcile_provider(&self, name: &str, cloud: &dyn CloudProvider) -> Result<Report, SagaError> {
        let started = Instant::now();
        // The snapshot comes first: whatever is created after it is not judged by this pass.
        let recorded = self.store.instances_on_provider(name, &RUNNING_STATES).await?;
        let listed = cloud.list().await.map_err(|error| SagaError::Retry(error.to_string()))?;
        let mut report = Report { listed: listed.len(), checked: recorded.len(), ..Report::default() };
        let status: HashMap<InstanceId, ProviderStatus> =
            listed.iter().filter_map(|found| found.instance_id.map(|id| (id, found.status))).collect();

        let (mut gone, mut stopped) = (Vec::new(), Vec::new());
        for instance in &recorded {
            match status.get(&instance.id) {
                None => gone.push(instance),
                Some(ProviderStatus::Stopped | ProviderStatus::Terminated)
                    if instance.state != InstanceState::Booting
                        || instance.state_changed_at < qm_store::now() - STOPPED_GRACE =>
                {
                    stopped.push(instance);
                }
                Some(_) => {}
            }
        }
        let gone_step = Step {
            cause: None,
            to: InstanceState::Terminated,
            reason: "gone at the provider (found by reconciliation)",
            progress_percent: None,
            started,
            then_terminate: false,
        };
        let deleted = InstanceAnnotation { deleted_by_provider: Some(true), ..InstanceAnnotation::default() };
        report.gone = self.repair(&gone, &gone_step, Some(&deleted), &mut report.failures).await;
        // Stopped: it serves nothing (and may still bill for its disks), so it is terminated.
        let stopped_step = Step {
            cause: None,
            to: InstanceState::Terminating,
            reason: "stopped at the provider (found by reconciliation)",
            progress_percent: None,
            started,
            then_terminate: true,
        };
        report.stopped = self.repair(&stopped, &stopped_step, None, &mut report.failures).await;

        let ids: Vec<InstanceId> = status.keys().copied().collect();
        let known = self.states(&ids).await?;
        let mut terminated = Vec::new();
        for found in &listed {
            let Some(id) = found.instance_id else { continue };
            let orphan = match known.get(&id) {
                None => true,
                Some(state) => state.is_terminal(),
            };
            if !orphan {
                continue;
            }
            match cloud.terminate(&found.provider_id).await {
                Ok(()) => {
                    tracing::warn!(provider = name, provider_id = %found.provider_id, instance = %id, "terminated an orphan");
                    terminated.push((found, known.get(&id).copied()));
                }
                Err(error) => {
                    tracing::warn!(%error, provider_id = %found.provider_id, "could not terminate an orphan; next pass");
                    report.failures += 1;
                }
            }
        }
        report.orphans = terminated.len();
        if let Err(error) = self.log_orphans(name, &terminated).await {
            tracing::warn!(%error, "could not log the orphans' termination");
            report.failures += 1;
        }
        match self.remove_leftovers(name, cloud).await {
            Ok((removed, failed)) => {
                report.leftovers = removed;
                report.failures += failed;
            }
            Err(error) => {
                tracing::warn!(%error, provider = name, "could not look for leftovers; next pass");
                report.failures += 1;
            }
        }
        Ok(report)
    }

    /// Applies `step` to `instances` in batches of [`REPAIR_BATCH`] (one commit each); a batch
    /// that fails is retried one instance at a time, so one bad row costs only itself. Returns
    /// how many moved; failures are counted in `failures`.
    async fn repair(
        &self,
        instances: &[&Instance],
        step: &Step<'_>,
        annotation: Option<&InstanceAnnotation>,
        failures: &mut usize,
    ) -> usize {
        let mut moved = 0;
        for batch in instances.chunks(REPAIR_BATCH) {
            match self.saga.apply_batch(batch, step, annotation).await {
                Ok(done) => moved += done.len(),
                Err(error) => {
                    tracing::warn!(%error, "a batch of repairs failed; one at a time");
                    for instance in batch {
                        match self.saga.apply_batch(&[*instance], step, annotation).await {
                            Ok(done) => moved += done.len(),
                            Err(error) => {
                                tracing::warn!(instance = %instance.id, %error, "could not repair an instance; next pass");
                                *failures += 1;
                            }
                        }
                    }
                }
            }
        }
        moved
    }

    /// The recorded state of each of `ids` that the database knows.
    async fn states(&self, ids: &[InstanceId]) -> Result<HashMap<InstanceId, InstanceState>, SagaError> {
        let instances = self.store.instances_by_ids(ids).await?;
        Ok(instances.into_iter().map(|instance| (instance.id, instance.state)).collect())
    }

    /// Removes what finished (or unknown) instances left behind at the provider.
    /// Returns how many were removed and how many removals failed.
    async fn remove_leftovers(&self, name: &str, cloud: &dyn CloudProvider) -> Result<(usize, usize), SagaError> {
        let leftovers = cloud.leftovers().await.map_err(|error| SagaError::Retry(error.to_string()))?;
        if leftovers.is_empty() {
            return Ok((0, 0));
        }
        let ids: Vec<InstanceId> = leftovers.iter().filter_map(|leftover| leftover.instance_id).collect();
        let states = self.states(&ids).await?;
        let (mut removed, mut failed) = (0, 0);
        for leftover in leftovers {
            let state = leftover.instance_id.and_then(|id| states.get(&id).copied());
            if state.is_some_and(|state| !state.is_terminal()) {
                continue;
            }
            if let Err(error) = cloud.remove_leftover(&leftover).await {
                tracing::warn!(%error, leftover = %leftover.id, "could not remove a leftover; next pass");
                failed += 1;
                continue;
            }
            removed += 1;
            let mut tx = self.store.begin().await?;
            let mut entry =
                qm_store::NewActionLog::new(crate::NAME, "fleet.leftover_removed", qm_store::ActionStatus::Succeeded);
            entry.instance_id = leftover.instance_id.filter(|id| states.contains_key(id));
            entry.metadata = serde_json::json!({
                "provider": name, "kind": leftover.kind, "id": leftover.id, "instance_id": leftover.instance_id,
                "recorded_state": state,
            });
            tx.insert_action_log(&entry).await?;
            tx.commit().await?;
        }
        Ok((removed, failed))
    }

    /// Logs terminated orphans (with the state the database knew them in), in one transaction.
    async fn log_orphans(
        &self,
        provider: &str,
        terminated: &[(&qm_providers::ProviderInstance, Option<InstanceState>)],
    ) -> Result<(), SagaError> {
        if terminated.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        for (found, state) in terminated {
            let mut entry =
                qm_store::NewActionLog::new(crate::NAME, "fleet.orphan_terminated", qm_store::ActionStatus::Succeeded);
            entry.metadata = serde_json::json!({
                "provider": provider, "provider_instance_id": found.provider_id, "instance_id": found.instance_id,
                "recorded_state": state, "zone": found.zone, "instance_type": found.instance_type,
            });
            tx.insert_action_log(&entry).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Reconciles every `every` while this replica holds the `orchestrator.reconcile` lease
    /// (renewed every few seconds, so a survivor takes over within 25 s of a holder's death);
    /// the first pass comes [`FIRST_PASS_AFTER`] after start, so drift from while the control
    /// plane was down (agents that died with it) is repaired at once.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let singleton = Singleton::new(self.store.clone(), "orchestrator.reconcile", Lease::default());
        let first = FIRST_PASS_AFTER.min(self.every);
        singleton
            .run(self.every, first, shutdown, || {
                let reconciler = Arc::clone(&self);
                async move {
                    match reconciler.reconcile(None).await {
                        Ok(report) if report.repaired() + report.failures > 0 => {
                            tracing::info!(?report, "reconciliation repaired drift")
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, "reconciliation failed; trying again next time"),
                    }
                }
            })
            .await;
    }
}
