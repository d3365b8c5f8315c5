//! The `orchestrator` service (probes and metrics on `QM_ORCHESTRATOR_ADDR`, default 8001):
//! consumes `instance.provision` and `instance.terminate` and carries them out on the enabled
//! providers.
//!
//! Layout:
//! - [`saga`]: provisioning (with failover and compensation) and termination.
//! - [`resilient`]: retries and a circuit breaker around every provider call.
//! - [`catalog`]: providers' offers written into the catalog (`catalog.sync`).
//! - [`commands`]: the consumer group that feeds the saga.
//! - [`health`]: startup and heartbeat deadlines, swept periodically.
//! - [`pools`]: the pool controller: pools kept at size, healed, autoscaled and drained.
//! - [`reconcile`]: drift between the database and the providers, repaired periodically and on
//!   `fleet.reconcile`.
//!
//! Every service that writes to the outbox runs a relay; this one too, so its events and
//! commands reach the bus while the api is down.
//!
//! `pool.scale` commands are dead-lettered (pools are sized through `PATCH /pools/{id}` and their
//! policy) rather than dropped.

pub mod catalog;
pub mod commands;
pub mod health;
pub mod pools;
pub mod probe;
pub mod reconcile;
pub mod resilient;
pub mod saga;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use qm_providers::CloudProvider;
use qm_runtime::Shutdown;
use qm_runtime::service::{Dependencies, Service};

pub const NAME: &str = "orchestrator";
/// Members of the consumer group per replica.
pub const MEMBERS: usize = 4;
/// How often each replica reconciles on its own.
pub const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The providers this orchestrator drives: those of `QM_PROVIDERS`. `local_state_dir` is where
/// the `local` provider keeps track of its processes; `aws` and `scaleway` read their
/// credentials and settings from `environment`, `sim` its shared cloud's URL (`QM_SIM_URL`).
///
/// # Errors
/// A listed provider whose credentials or settings are missing, named.
pub async fn providers(
    enabled: &[String],
    local_state_dir: &std::path::Path,
    environment: &qm_config::Environment,
) -> anyhow::Result<BTreeMap<String, Arc<dyn CloudProvider>>> {
    let mut providers: BTreeMap<String, Arc<dyn CloudProvider>> = BTreeMap::new();
    for name in enabled {
        let provider: Arc<dyn CloudProvider> = match name.as_str() {
            // A cloud of its own, or (`QM_SIM_URL`) one shared with the other replicas.
            qm_providers::sim::NAME => match environment.get("QM_SIM_URL").filter(|url| !url.trim().is_empty()) {
                Some(url) => Arc::new(qm_providers::sim_remote::RemoteSim::new(&url).map_err(anyhow::Error::new)?),
                None => Arc::new(qm_providers::sim::SimCloud::new(qm_providers::sim::SimConfig::default())),
            },
            qm_providers::local::NAME => Arc::new(qm_providers::local::LocalProvider::new(local_state_dir, None)),
            qm_providers::scaleway::NAME => {
                let config = qm_providers::scaleway::ScalewayConfig::from_environment(environment)
                    .map_err(anyhow::Error::msg)?;
                Arc::new(qm_providers::scaleway::ScalewayProvider::new(config))
            }
            qm_provider_aws::NAME => {
                let settings =
                    qm_provider_aws::AwsSettings::from_environment(environment).map_err(anyhow::Error::msg)?;
                Arc::new(qm_provider_aws::AwsProvider::from_environment(settings).await.map_err(anyhow::Error::msg)?)
            }
            other => anyhow::bail!("unknown provider `{other}` in QM_PROVIDERS"),
        };
        providers.insert(name.clone(), provider);
    }
    Ok(providers)
}

/// Builds the service on `address` (port 0 picks a free one) with `providers`.
///
/// # Errors
/// When the address cannot be bound.
pub async fn build_with(
    dependencies: Dependencies,
    address: SocketAddr,
    shutdown: Shutdown,
    providers: BTreeMap<String, Arc<dyn CloudProvider>>,
    retry: saga::Retry,
    deadlines: health::Deadlines,
) -> anyhow::Result<Service> {
    let (mut service, registry) = Service::with_probes(NAME, &dependencies, address).await?;
    let handled = qm_telemetry::metrics::counter_vec(
        &registry,
        "qm_orchestrator_commands_total",
        "Commands carried out, by type and outcome",
        &["type", "outcome"],
    );
    let boot_plan = qm_providers::agent::BootPlan::from_settings(
        &dependencies.settings.boot,
        dependencies.settings.api_url.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let saga = Arc::new(
        saga::Saga::new(dependencies.store.clone(), providers, retry)
            .with_api_url(dependencies.settings.api_url.clone())
            .with_boot_plan(boot_plan)
            .with_exchange_rates(dependencies.settings.exchange_rates.clone())
            .with_metrics(&registry),
    );
    let health =
        Arc::new(health::Health::new(dependencies.store.clone(), saga.clone(), deadlines).with_metrics(&registry));
    service = service.with_task(health.run(shutdown.clone()));
    let pools = Arc::new(
        pools::PoolController::new(dependencies.store.clone(), saga.clone())
            .with_budget_caps(dependencies.settings.exchange_rates.clone()),
    );
    service = service.with_task(pools.run(shutdown.clone()));
    let reconciler = Arc::new(reconcile::Reconciler {
        store: dependencies.store.clone(),
        saga: saga.clone(),
        every: RECONCILE_EVERY,
    });
    service = service.with_task(reconciler.clone().run(shutdown.clone()));
    let catalog =
        Arc::new(catalog::CatalogSync { store: dependencies.store.clone(), providers: saga.providers().clone() });
    let visibility_timeout = dependencies.settings.command_visibility_timeout;
    let commands = Arc::new(commands::Commands {
        bus: dependencies.bus.clone(),
        saga,
        reconciler,
        catalog,
        handled,
        visibility_timeout,
        coalescer: commands::Coalescer::default(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(commands::IN_FLIGHT)),
        per_provider: std::sync::Mutex::default(),
    });
    for _ in 0..MEMBERS {
        service = service.with_task(commands.clone().run(shutdown.clone()));
    }
    Ok(service.with_relay(&dependencies, &registry, shutdown))
}

/// Builds the service on `address` with the providers of `QM_PROVIDERS`.
///
/// # Errors
/// When the address cannot be bound.
pub async fn build(dependencies: Dependencies, address: SocketAddr, shutdown: Shutdown) -> anyhow::Result<Service> {
    let settings = &dependencies.settings;
    let providers =
        providers(&settings.providers, &settings.local_state_dir, &qm_config::Environment::process()).await?;
    build_with(dependencies, address, shutdown, providers, saga::Retry::default(), health::Deadlines::default()).await
}
