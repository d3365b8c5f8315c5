//! Provisioning and termination (DESIGN section 5).
//!
//! Provisioning is a saga: `requested → provisioning`, then for each placement in order:
//! create (idempotent on the instance id, so a retry after a timeout finds the instance rather
//! than making a second), start, record `booting`, and release the command. Nothing waits for
//! the boot here: the address is filled in by the health sweep when the provider did not report
//! it at start, `booting → ready` comes from the agent (heartbeat or `/readyz`), and the startup
//! deadline fails what never gets there. Capacity and quota errors fail over to the next
//! placement and mark the offer exhausted for a while; throttling and transient errors are
//! retried by the [`Resilient`](crate::resilient::Resilient) wrapper every provider call goes
//! through; anything else fails fast. A failure after creation terminates what was created
//! (compensation) before the instance is marked `provisioning_failed` with the reason.
//!
//! Every step commits on its own (provider calls never run inside a database transaction), and
//! every step is safe to repeat: a redelivered command resumes from the state it finds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qm_domain::{Currency, ExchangeRates, InstanceId, InstanceState, InstanceTypeId, MicroUnits, ZoneId};
use qm_events::Envelope;
use qm_events::payloads::{InstanceBillingStarted, InstanceProvision, InstanceTerminate};
use qm_providers::{CloudProvider, CreateRequest, ProviderStatus};
use qm_store::{
    ActionStatus, Instance, InstanceAnnotation, NewActionLog, Offer, RecordedTransition, Store, StoreError,
    record_transition,
};

/// Progress after each provisioning step (DESIGN section 5).
pub mod progress {
    pub const CREATED: i32 = 20;
    pub const STARTED: i32 = 40;
    /// The provider reported the instance's address.
    pub const ADDRESS: i32 = 60;
}

/// How long an offer that answered "no capacity" is skipped.
pub const EXHAUSTED_FOR: Duration = Duration::from_secs(5 * 60);

/// What reconciliation repairs, as counted in `qm_reconcile_repairs_total{kind}`.
pub const REPAIR_KINDS: [&str; 4] = ["gone", "orphan", "stopped", "leftover"];

#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// Try the whole command again later (a provider or the database is unavailable).
    #[error("{0}")]
    Retry(String),
    /// The command can never be carried out (malformed).
    #[error("{0}")]
    Reject(String),
}

impl From<StoreError> for SagaError {
    fn from(error: StoreError) -> Self {
        if error.is_retryable() { SagaError::Retry(error.to_string()) } else { SagaError::Reject(error.to_string()) }
    }
}

/// A command of another version or shape can never be carried out: it is dead-lettered.
impl From<qm_events::DecodeError> for SagaError {
    fn from(error: qm_events::DecodeError) -> Self {
        SagaError::Reject(error.to_string())
    }
}

/// Prefix of the one-time bootstrap tokens handed to instances.
pub const BOOTSTRAP_TOKEN_PREFIX: &str = "qmb_";
/// How long a bootstrap token may wait for its agent's registration: the provisioning and
/// boot deadlines, with margin. An unused token then no longer registers anything.
pub const BOOTSTRAP_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(60 * 60);

pub use crate::resilient::Retry;

/// One move of an instance as the orchestrator makes it.
pub(crate) struct Step<'a> {
    /// The command that caused it (for the event's correlation), if any.
    pub cause: Option<&'a Envelope>,
    pub to: InstanceState,
    pub reason: &'a str,
    pub progress_percent: Option<i32>,
    pub started: Instant,
    /// Also write an `instance.terminate` command (a move to `terminating`).
    pub then_terminate: bool,
}

/// What [`Saga::boot`] needs of the provisioning in progress.
#[derive(Clone, Copy)]
struct Booting<'a> {
    command: &'a Envelope,
    placement: &'a Offer,
    model: &'a str,
    started: Instant,
}

/// How [`Saga::boot`] ended.
enum Booted {
    /// Booting, compensated or failed: the command is done.
    Done,
    /// The placement had no capacity to start the instance; what was created is removed.
    NoCapacity(Box<Instance>, String),
}

pub struct Saga {
    /// Where agents register (`QM_API_URL`); without it instances get no way to register.
    api_url: Option<String>,
    /// How instances get their agent and engine.
    boot_plan: qm_providers::agent::BootPlan,
    store: Arc<dyn Store>,
    /// Each wrapped in [`Resilient`](crate::resilient::Resilient).
    providers: BTreeMap<String, Arc<dyn CloudProvider>>,
    exhausted: Mutex<HashMap<(ZoneId, InstanceTypeId), Instant>>,
    exchange_rates: Option<ExchangeRates>,
    /// `qm_orchestrator_terminations_blocked_total`.
    blocked_terminations: Option<prometheus::IntCounter>,
    /// `qm_provider_circuit_open{provider}` and `qm_reconcile_repairs_total{provider,kind}`.
    circuits: Option<prometheus::IntGaugeVec>,
    repairs: Option<prometheus::IntCounterVec>,
}

impl Saga {
    /// A saga over `providers`, each wrapped in [`Resilient`](crate::resilient::Resilient) with
    /// `retry`: the reconciler, catalog sync and health sweep use [`Saga::providers`], so every
    /// call to one provider shares its retries and its circuit breaker.
    pub fn new(store: Arc<dyn Store>, providers: BTreeMap<String, Arc<dyn CloudProvider>>, retry: Retry) -> Self {
        Self {
            api_url: None,
            boot_plan: qm_providers::agent::BootPlan::default(),
            store,
            providers: crate::resilient::Resilient::wrap_all(providers, &retry),
            exhausted: Mutex::new(HashMap::new()),
            exchange_rates: None,
            blocked_terminations: None,
            circuits: None,
            repairs: None,
        }
    }

    /// Counts terminations refused for a provider that is not enabled, in `registry`.
    pub fn with_metrics(mut self, registry: &prometheus::Registry) -> Self {
        let counter = qm_telemetry::metrics::counter_vec(
            registry,
            "qm_orchestrator_terminations_blocked_total",
            "Terminations that cannot be carried out because the instance's provider is not enabled",
            &[],
        );
        self.blocked_terminations = Some(counter.with_label_values::<&str>(&[]));
        self.circuits = Some(qm_telemetry::metrics::gauge_vec(
            registry,
            "qm_provider_circuit_open",
            "1 while this orchestrator's circuit breaker refuses calls to the provider",
            &["provider"],
        ));
        self.repairs = Some(qm_telemetry::metrics::counter_vec(
            registry,
            "qm_reconcile_repairs_total",
            "Repairs made by reconciliation: gone (recorded, not at the provider), orphan (at the provider, not recorded), stopped, leftover",
            &["provider", "kind"],
        ));
        // Every series exists from the start (at 0), so that alerts and dashboards see them.
        for name in self.providers.keys() {
            self.count_repairs(name, &REPAIR_KINDS.map(|kind| (kind, 0)));
        }
        self.export_circuits();
        self
    }

    /// Exports whether each provider's circuit is open now.
    pub fn export_circuits(&self) {
        let Some(gauge) = &self.circuits else { return };
        for (name, provider) in &self.providers {
            gauge.with_label_values(&[name.as_str()]).set(i64::from(provider.circuit_open()));
        }
    }

    /// Counts a reconciliation pass's repairs of `provider` (kinds of [`REPAIR_KINDS`]).
    pub fn count_repairs(&self, provider: &str, repairs: &[(&str, usize)]) {
        let Some(counter) = &self.repairs else { return };
        for (kind, count) in repairs {
            counter.with_label_values(&[provider, kind]).inc_by(u64::try_from(*count).unwrap_or(0));
        }
    }

    /// The providers, wrapped.
    pub fn providers(&self) -> &BTreeMap<String, Arc<dyn CloudProvider>> {
        &self.providers
    }

    /// Rates for the reporting-currency price that billing captures (without them, billing is
    /// in the provider's currency).
    pub fn with_exchange_rates(mut self, rates: ExchangeRates) -> Self {
        self.exchange_rates = Some(rates);
        self
    }

    pub fn with_api_url(mut self, api_url: Option<String>) -> Self {
        self.api_url = api_url;
        self
    }

    /// Where instances get their agent and engine from (default: the pinned images).
    pub fn with_boot_plan(mut self, plan: qm_providers::agent::BootPlan) -> Self {
        self.boot_plan = plan;
        self
    }

    /// The agent's boot configuration for a new instance, with a fresh one-time bootstrap token
    /// (its hash stored); rendered per placement by [`Saga::user_data`]. Once a provider
    /// instance is recorded no token is issued again: the instance already holds its own, and a
    /// create is then answered with the existing instance.
    async fn boot_config(
        &self,
        instance: &Instance,
        model: &str,
        engine: &qm_domain::engine::EngineSettings,
    ) -> Result<Option<qm_providers::agent::BootConfig>, SagaError> {
        let Some(api_url) = &self.api_url else {
            tracing::warn!(instance = %instance.id, "QM_API_URL is not set: the instance's agent cannot register");
            return Ok(None);
        };
        if instance.provider_instance_id.is_some() {
            return Ok(None);
        }
        let token = qm_runtime::tokens::generate(BOOTSTRAP_TOKEN_PREFIX);
        let mut tx = self.store.begin().await?;
        let expires_at = qm_store::now() + chrono::Duration::from_std(BOOTSTRAP_TOKEN_TTL).unwrap_or_default();
        tx.issue_bootstrap_token(instance.id, &qm_runtime::tokens::hash(&token), expires_at).await?;
        tx.commit().await?;
        Ok(Some(qm_providers::agent::BootConfig {
            api_url: api_url.clone(),
            instance_id: instance.id.to_string(),
            bootstrap_token: token,
            model: model.to_owned(),
            engine_args: engine.args.clone(),
        }))
    }

    /// The `#cloud-config` for `placement`: with the engine where it has GPUs.
    fn user_data(&self, config: Option<&qm_providers::agent::BootConfig>, placement: &Offer) -> String {
        config.map(|config| config.render(&self.boot_plan.for_gpus(placement.gpu_count > 0))).unwrap_or_default()
    }

    /// Announces `instance.billing_started` once the provider has created the instance (once per
    /// instance, however often the saga resumes), with the price in the provider's currency and
    /// in the reporting currency at today's rate.
    async fn start_billing(
        &self,
        command: &Envelope,
        instance: &Instance,
        placement: &Offer,
        model: &str,
    ) -> Result<(), SagaError> {
        let price = MicroUnits::new(placement.hourly_price_micros);
        let converted = match (&self.exchange_rates, Currency::parse(&placement.currency)) {
            (Some(configured), Ok(currency)) => {
                let rates = qm_store::finops::effective_rates(&*self.store, configured).await?;
                rates.convert(price, currency).map(|converted| (rates.reporting().to_string(), converted))
            }
            _ => None,
        };
        let (reporting_currency, reporting_price) = converted.unwrap_or_else(|| {
            tracing::warn!(currency = %placement.currency, "no exchange rate: billing in the provider's currency");
            (placement.currency.clone(), price)
        });
        let at = qm_store::now();
        let mut tx = self.store.begin().await?;
        if tx.start_billing(instance.id, at).await? {
            let started = InstanceBillingStarted {
                instance_id: instance.id,
                provider: placement.provider.clone(),
                region: placement.region.clone(),
                zone: placement.zone.clone(),
                instance_type: placement.instance_type.clone(),
                model: model.to_owned(),
                currency: placement.currency.clone(),
                hourly_price_micros: placement.hourly_price_micros,
                reporting_currency,
                reporting_hourly_price_micros: reporting_price.get(),
                started_at: at,
            };
            tx.enqueue(&command.caused_by(&started, crate::NAME)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn is_exhausted(&self, offer: &Offer) -> bool {
        let exhausted = self.exhausted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        exhausted.get(&(offer.zone_id, offer.instance_type_id)).is_some_and(|since| since.elapsed() < EXHAUSTED_FOR)
    }

    fn exhaust(&self, offer: &Offer) {
        let mut exhausted = self.exhausted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        exhausted.insert((offer.zone_id, offer.instance_type_id), Instant::now());
    }

    /// Moves the instance if it is still in its state, with its history, action log and event
    /// (caused by `cause`, when a command caused it). Returns `None` when it had moved on.
    pub(crate) async fn transition(
        &self,
        cause: Option<&Envelope>,
        instance: &Instance,
        to: InstanceState,
        reason: &str,
        progress_percent: Option<i32>,
        started: Instant,
    ) -> Result<Option<Instance>, SagaError> {
        let step = Step { cause, to, reason, progress_percent, started, then_terminate: false };
        self.apply(instance, &step).await
    }

    /// Applies a step in one transaction: the conditional transition, its history, action log
    /// and `instance.state_changed`, and, for a move to `terminating`, the `instance.terminate`
    /// command that carries it out.
    /// Moves `instance` to `terminating` and issues its `instance.terminate` command, in one
    /// transaction; `None` when it had moved on meanwhile.
    pub(crate) async fn terminate_instance(
        &self,
        instance: &Instance,
        reason: &str,
        started: Instant,
    ) -> Result<Option<Instance>, SagaError> {
        let step = Step {
            cause: None,
            to: InstanceState::Terminating,
            reason,
            progress_percent: None,
            started,
            then_terminate: true,
        };
        self.apply(instance, &step).await
    }

    pub(crate) async fn apply(&self, instance: &Instance, step: &Step<'_>) -> Result<Option<Instance>, SagaError> {
        Ok(self.apply_batch(&[instance], step, None).await?.into_iter().next())
    }

    /// [`Saga::apply`] to each of `instances` that is still in its state, in one transaction (one
    /// commit for a batch of repairs), with `annotation` recorded on each instance moved.
    /// Returns the instances moved.
    pub(crate) async fn apply_batch(
        &self,
        instances: &[&Instance],
        step: &Step<'_>,
        annotation: Option<&InstanceAnnotation>,
    ) -> Result<Vec<Instance>, SagaError> {
        let mut tx = self.store.begin().await?;
        let mut moved_all = Vec::with_capacity(instances.len());
        for instance in instances {
            let change = RecordedTransition {
                to: step.to,
                reason: step.reason,
                progress_percent: step.progress_percent,
                component: crate::NAME,
                cause: step.cause,
                traceparent: qm_telemetry::traceparent::current(),
                duration: Some(step.started.elapsed()),
            };
            let Some((moved, event)) = record_transition(&mut *tx, instance, &change).await? else { continue };
            let moved = match annotation {
                Some(annotation) => tx.annotate_instance(moved.id, annotation).await?.unwrap_or(moved),
                None => moved,
            };
            if step.then_terminate {
                let terminate =
                    InstanceTerminate { instance_id: moved.id, reason: step.reason.to_owned(), requested_by: None };
                tx.enqueue(&event.caused_by(&terminate, crate::NAME)).await?;
            }
            moved_all.push(moved);
        }
        tx.commit().await?;
        Ok(moved_all)
    }

    async fn annotate(&self, id: InstanceId, annotation: InstanceAnnotation) -> Result<Option<Instance>, SagaError> {
        let mut tx = self.store.begin().await?;
        let instance = tx.annotate_instance(id, &annotation).await?;
        tx.commit().await?;
        Ok(instance)
    }

    async fn log(
        &self,
        instance: &Instance,
        action_type: &str,
        status: ActionStatus,
        error: Option<String>,
        metadata: serde_json::Value,
    ) -> Result<(), SagaError> {
        let mut tx = self.store.begin().await?;
        let mut entry = NewActionLog::new(crate::NAME, action_type, status);
        entry.organization_id = Some(instance.organization_id);
        entry.instance_id = Some(instance.id);
        entry.error = error;
        entry.metadata = metadata;
        tx.insert_action_log(&entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Carries out an `instance.provision` command.
    ///
    /// # Errors
    /// [`SagaError::Retry`] when a provider or the database stayed unavailable (the command is
    /// redelivered and resumes); [`SagaError::Reject`] for a malformed command.
    pub async fn provision(&self, command: &Envelope) -> Result<(), SagaError> {
        self.provision_request(command, command.decode()?).await
    }

    /// [`Saga::provision`] with the command's payload already decoded.
    ///
    /// # Errors
    /// As [`Saga::provision`].
    pub async fn provision_request(&self, command: &Envelope, request: InstanceProvision) -> Result<(), SagaError> {
        let started = Instant::now();
        let Some(mut instance) = self.store.instance(request.instance_id).await? else {
            tracing::info!(instance = %request.instance_id, "provision: the instance no longer exists");
            return Ok(());
        };
        if instance.state == InstanceState::Requested {
            match self
                .transition(
                    Some(command),
                    &instance,
                    InstanceState::Provisioning,
                    "provisioning started",
                    None,
                    started,
                )
                .await?
            {
                Some(moved) => instance = moved,
                // It moved meanwhile (another delivery of this command got there first): go on
                // from wherever it is now.
                None => match self.store.instance(request.instance_id).await? {
                    Some(current) => instance = current,
                    None => return Ok(()),
                },
            }
        }
        if instance.state != InstanceState::Provisioning {
            return Ok(());
        }
        let boot_config = self.boot_config(&instance, &request.model, &request.engine).await?;
        let mut failures = Vec::new();
        for placement in &request.placements {
            if self.is_exhausted(placement) {
                failures.push(format!("{}/{}: skipped (no capacity lately)", placement.zone, placement.instance_type));
                continue;
            }
            let Some(provider) = self.providers.get(&placement.provider).cloned() else {
                failures.push(format!(
                    "provider `{}` is not available on this orchestrator (not in QM_PROVIDERS, or not implemented yet)",
                    placement.provider
                ));
                continue;
            };
            if instance.zone_id != placement.zone_id || instance.instance_type_id != placement.instance_type_id {
                let annotation =
                    InstanceAnnotation { placement: Some(placement.clone()), ..InstanceAnnotation::default() };
                instance = self.annotate(instance.id, annotation).await?.unwrap_or(instance);
                self.log(&instance, "instance.failover", ActionStatus::Succeeded, None, serde_json::json!({ "to_zone": placement.zone, "to_instance_type": placement.instance_type, "after": failures })).await?;
            }
            let create = CreateRequest {
                instance_id: instance.id,
                zone: placement.zone.clone(),
                instance_type: placement.instance_type.clone(),
                user_data: self.user_data(boot_config.as_ref(), placement),
                tags: BTreeMap::from([("qm-organization-id".to_owned(), instance.organization_id.to_string())]),
            };
            match provider.create(&create).await {
                Ok(created) => {
                    let booting = Booting { command, placement, model: &request.model, started };
                    match self.boot(&booting, instance, &*provider, created.provider_id).await? {
                        Booted::Done => return Ok(()),
                        // It could not start for capacity: removed at the provider, next placement.
                        Booted::NoCapacity(moved, reason) => {
                            instance = *moved;
                            self.exhaust(placement);
                            failures.push(format!("{}/{}: {reason}", placement.zone, placement.instance_type));
                        }
                    }
                }
                Err(error) if error.calls_for_failover() => {
                    self.exhaust(placement);
                    failures.push(format!("{}/{}: {}", placement.zone, placement.instance_type, error.public_reason()));
                }
                Err(error) if error.is_retryable() => return Err(SagaError::Retry(error.to_string())),
                Err(error) => {
                    failures.push(format!("{}/{}: {}", placement.zone, placement.instance_type, error.public_reason()));
                    break;
                }
            }
        }
        let reason = format!("no placement could be provisioned: {}", failures.join("; "));
        self.fail(command, &instance, &reason, started).await
    }

    /// After a successful create: start, start billing, record `booting` (with the address when
    /// the provider already reports it), and return; compensate when the start fails. A start
    /// refused for capacity (Scaleway may accept a server and then have no GPU to power it on)
    /// removes what was created and answers [`Booted::NoCapacity`], so that the caller fails
    /// over to the next placement.
    async fn boot(
        &self,
        booting: &Booting<'_>,
        instance: Instance,
        provider: &dyn CloudProvider,
        provider_id: String,
    ) -> Result<Booted, SagaError> {
        let Booting { command, placement, model, started } = *booting;
        let annotation = InstanceAnnotation {
            provider_instance_id: Some(provider_id.clone()),
            progress_percent: Some(progress::CREATED),
            ..InstanceAnnotation::default()
        };
        let instance = self.annotate(instance.id, annotation).await?.unwrap_or(instance);
        let running = match provider.start(&provider_id).await {
            Ok(running) if running.status == ProviderStatus::Terminated => {
                let reason = "the provider terminated the instance while it started";
                self.compensate(command, &instance, provider, &provider_id, reason, started).await?;
                return Ok(Booted::Done);
            }
            Ok(running) => running,
            Err(error) if error.is_retryable() => return Err(SagaError::Retry(error.to_string())),
            Err(error) if error.calls_for_failover() => {
                let reason = format!("start failed: {}", error.public_reason());
                let action = ("instance.start_failed", ActionStatus::Failed);
                self.remove_created(&instance, provider, &provider_id, action, &reason).await?;
                return Ok(Booted::NoCapacity(Box::new(instance), reason));
            }
            Err(error) => {
                let reason = format!("start failed: {}", error.public_reason());
                self.compensate(command, &instance, provider, &provider_id, &reason, started).await?;
                return Ok(Booted::Done);
            }
        };
        // Billing starts once the instance runs (a server that never started bills nothing),
        // once per instance however often the saga resumes.
        self.start_billing(command, &instance, placement, model).await?;
        let progress = if running.address.is_some() { progress::ADDRESS } else { progress::STARTED };
        let step = Step {
            cause: Some(command),
            to: InstanceState::Booting,
            reason: "provider instance started",
            progress_percent: Some(progress),
            started,
            then_terminate: false,
        };
        // The address, when known, is recorded in the same transaction as `booting`.
        let address = running
            .address
            .map(|address| InstanceAnnotation { address: Some(address), ..InstanceAnnotation::default() });
        let moved = self.apply_batch(&[&instance], &step, address.as_ref()).await?;
        if moved.is_empty() {
            // Someone moved it meanwhile (a termination request): the termination path owns it now,
            // and finds the provider id recorded above.
            tracing::info!(instance = %instance.id, "instance changed state during provisioning");
        }
        Ok(Booted::Done)
    }

    /// Terminates what was created at the provider and logs it as `action` (with `reason`):
    /// `instance.start_failed` for a placement given up (the instance goes on to the next one),
    /// `instance.compensate` before failing the instance.
    async fn remove_created(
        &self,
        instance: &Instance,
        provider: &dyn CloudProvider,
        provider_id: &str,
        action: (&str, ActionStatus),
        reason: &str,
    ) -> Result<(), SagaError> {
        if let Err(error) = provider.terminate(provider_id).await {
            // Not done yet: the command comes back and the removal is tried again.
            return Err(SagaError::Retry(format!("removing {provider_id} ({}) failed: {error}", action.0)));
        }
        let metadata = serde_json::json!({ "provider_instance_id": provider_id, "zone": instance.zone, "instance_type": instance.instance_type });
        self.log(instance, action.0, action.1, Some(reason.to_owned()), metadata).await
    }

    /// Terminates what was created, then fails the instance with `reason`.
    async fn compensate(
        &self,
        command: &Envelope,
        instance: &Instance,
        provider: &dyn CloudProvider,
        provider_id: &str,
        reason: &str,
        started: Instant,
    ) -> Result<(), SagaError> {
        let action = ("instance.compensate", ActionStatus::Succeeded);
        self.remove_created(instance, provider, provider_id, action, reason).await?;
        self.fail(command, instance, reason, started).await
    }

    async fn fail(
        &self,
        command: &Envelope,
        instance: &Instance,
        reason: &str,
        started: Instant,
    ) -> Result<(), SagaError> {
        self.transition(Some(command), instance, InstanceState::ProvisioningFailed, reason, None, started).await?;
        Ok(())
    }

    /// Carries out an `instance.terminate` command: terminates at the provider by the recorded
    /// id (by the tag, from a listing, only when provisioning had not recorded one yet) and
    /// confirms `terminated` only once the provider has. With the instance's provider not
    /// enabled here, nothing can confirm it: the instance stays `terminating` with the reason,
    /// the refusal is logged and counted (an alert), and the health sweep issues the command
    /// again after the `terminating` deadline.
    ///
    /// # Errors
    /// [`SagaError::Retry`] while the provider keeps failing.
    pub async fn terminate(&self, command: &Envelope) -> Result<(), SagaError> {
        let started = Instant::now();
        let request: InstanceTerminate = command.decode()?;
        let Some(instance) = self.store.instance(request.instance_id).await? else { return Ok(()) };
        if instance.state != InstanceState::Terminating {
            return Ok(());
        }
        let Some(provider) = self.providers.get(&instance.provider) else {
            return self.termination_blocked(&instance).await;
        };
        let provider_ids: Vec<String> = match &instance.provider_instance_id {
            Some(provider_id) => vec![provider_id.clone()],
            None => provider
                .list()
                .await
                .map_err(|error| SagaError::Retry(error.to_string()))?
                .into_iter()
                .filter(|found| found.instance_id == Some(instance.id))
                .map(|found| found.provider_id)
                .collect(),
        };
        for provider_id in &provider_ids {
            provider
                .terminate(provider_id)
                .await
                .map_err(|error| SagaError::Retry(format!("terminate {provider_id}: {error}")))?;
        }
        self.transition(
            Some(command),
            &instance,
            InstanceState::Terminated,
            "terminated at the provider",
            None,
            started,
        )
        .await?;
        Ok(())
    }

    /// The instance's provider is not enabled: it stays `terminating`, with why.
    async fn termination_blocked(&self, instance: &Instance) -> Result<(), SagaError> {
        let reason = format!(
            "cannot terminate: provider `{}` is not enabled on this orchestrator (QM_PROVIDERS); the instance may \
             still run and bill until it is enabled again",
            instance.provider
        );
        tracing::error!(instance = %instance.id, provider = %instance.provider, "{reason}");
        if let Some(counter) = &self.blocked_terminations {
            counter.inc();
        }
        let annotation = InstanceAnnotation { failure_reason: Some(reason.clone()), ..InstanceAnnotation::default() };
        self.annotate(instance.id, annotation).await?;
        let metadata = serde_json::json!({ "provider": instance.provider });
        self.log(instance, "instance.terminate_blocked", ActionStatus::Failed, Some(reason), metadata).await
    }
}
