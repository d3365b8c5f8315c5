//! Reconciliation (DESIGN section 5): what the database believes against what each provider
//! runs. An instance the provider no longer has is `terminated` with `deleted_by_provider`; an
//! instance the provider runs under Quartermaster's tag that the database does not know, or
//! knows as finished, is an orphan and is terminated; what finished instances left behind and
//! still bills (Scaleway's detached root volumes) is deleted. Instances that are being created or
//! terminated (`requested`, `provisioning`, `terminating`) belong to the saga and are left alone.
//! Runs periodically and on `fleet.reconcile`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_domain::{InstanceId, InstanceState};
use qm_providers::CloudProvider;
use qm_runtime::Shutdown;
use qm_store::{InstanceAnnotation, Store};

use crate::saga::{Saga, SagaError, Step};

/// States in which an instance must exist at its provider.
const RUNNING_STATES: [InstanceState; 4] =
    [InstanceState::Booting, InstanceState::Ready, InstanceState::Unhealthy, InstanceState::Draining];

/// What one pass found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub listed: usize,
    pub checked: usize,
    /// Recorded instances the provider no longer has.
    pub gone: usize,
    /// Provider instances terminated as orphans.
    pub orphans: usize,
    /// Billing leftovers of finished instances removed (detached volumes).
    pub leftovers: usize,
}

pub struct Reconciler {
    pub store: Arc<dyn Store>,
    pub saga: Arc<Saga>,
    pub providers: BTreeMap<String, Arc<dyn CloudProvider>>,
    pub every: Duration,
}

impl Reconciler {
    /// One pass over `provider` (all when `None`).
    ///
    /// # Errors
    /// When a provider cannot be listed or the store fails; what was done until then stays done.
    pub async fn reconcile(&self, provider: Option<&str>) -> Result<Report, SagaError> {
        let mut report = Report::default();
        for (name, cloud) in &self.providers {
            if provider.is_some_and(|wanted| wanted != name) {
                continue;
            }
            let pass = self.reconcile_provider(name, &**cloud).await?;
            report.listed += pass.listed;
            report.checked += pass.checked;
            report.gone += pass.gone;
            report.orphans += pass.orphans;
            report.leftovers += pass.leftovers;
        }
        Ok(report)
    }

    async fn reconcile_provider(&self, name: &str, cloud: &dyn CloudProvider) -> Result<Report, SagaError> {
        let started = Instant::now();
        let listed = cloud.list().await.map_err(|error| SagaError::Retry(error.to_string()))?;
        let mut report = Report { listed: listed.len(), ..Report::default() };
        let present: HashSet<InstanceId> = listed.iter().filter_map(|found| found.instance_id).collect();

        let recorded = self.store.instances_on_provider(name, &RUNNING_STATES).await?;
        report.checked = recorded.len();
        for instance in recorded.iter().filter(|instance| !present.contains(&instance.id)) {
            let mut tx = self.store.begin().await?;
            let annotation = InstanceAnnotation { deleted_by_provider: Some(true), ..InstanceAnnotation::default() };
            tx.annotate_instance(instance.id, &annotation).await?;
            tx.commit().await?;
            let reason = "gone at the provider (found by reconciliation)";
            let step = Step {
                cause: None,
                to: InstanceState::Terminated,
                reason,
                progress_percent: None,
                started,
                then_terminate: false,
            };
            report.gone += usize::from(self.saga.apply(instance, &step).await?.is_some());
        }

        let ids: Vec<InstanceId> = present.iter().copied().collect();
        let known = self.states(&ids).await?;
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
                    report.orphans += 1;
                    tracing::warn!(provider = name, provider_id = %found.provider_id, instance = %id, "terminated an orphan");
                    self.log_orphan(name, found, known.get(&id).copied()).await?;
                }
                Err(error) => {
                    tracing::warn!(%error, provider_id = %found.provider_id, "could not terminate an orphan; next pass")
                }
            }
        }
        report.leftovers = self.remove_leftovers(name, cloud).await?;
        Ok(report)
    }

    /// The recorded state of each of `ids` that the database knows.
    async fn states(&self, ids: &[InstanceId]) -> Result<HashMap<InstanceId, InstanceState>, SagaError> {
        let instances = self.store.instances_by_ids(ids).await?;
        Ok(instances.into_iter().map(|instance| (instance.id, instance.state)).collect())
    }

    /// Removes what finished (or unknown) instances left behind at the provider.
    async fn remove_leftovers(&self, name: &str, cloud: &dyn CloudProvider) -> Result<usize, SagaError> {
        let leftovers = cloud.leftovers().await.map_err(|error| SagaError::Retry(error.to_string()))?;
        if leftovers.is_empty() {
            return Ok(0);
        }
        let ids: Vec<InstanceId> = leftovers.iter().filter_map(|leftover| leftover.instance_id).collect();
        let states = self.states(&ids).await?;
        let mut removed = 0;
        for leftover in leftovers {
            let state = leftover.instance_id.and_then(|id| states.get(&id).copied());
            if state.is_some_and(|state| !state.is_terminal()) {
                continue;
            }
            if let Err(error) = cloud.remove_leftover(&leftover).await {
                tracing::warn!(%error, leftover = %leftover.id, "could not remove a leftover; next pass");
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
        Ok(removed)
    }

    async fn log_orphan(
        &self,
        provider: &str,
        found: &qm_providers::ProviderInstance,
        state: Option<InstanceState>,
    ) -> Result<(), SagaError> {
        let mut tx = self.store.begin().await?;
        let mut entry =
            qm_store::NewActionLog::new(crate::NAME, "fleet.orphan_terminated", qm_store::ActionStatus::Succeeded);
        entry.metadata = serde_json::json!({
            "provider": provider, "provider_instance_id": found.provider_id, "instance_id": found.instance_id,
            "recorded_state": state, "zone": found.zone, "instance_type": found.instance_type,
        });
        tx.insert_action_log(&entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Reconciles every `every` while this replica holds the `orchestrator.reconcile` lease.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let holder = uuid::Uuid::new_v4().to_string();
        while !shutdown.is_triggered() {
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(self.every) => {}
            }
            let leased = self.store.acquire_lease("orchestrator.reconcile", &holder, self.every * 3).await;
            let outcome = match leased {
                Ok(true) => self.reconcile(None).await,
                Ok(false) => Ok(Report::default()),
                Err(error) => Err(error.into()),
            };
            match outcome {
                Ok(report) if report.gone + report.orphans + report.leftovers > 0 => {
                    tracing::info!(?report, "reconciliation repaired drift")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "reconciliation failed; trying again next time"),
            }
        }
    }
}
