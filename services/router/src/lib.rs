//! The `router` service: the OpenAI-compatible data plane in front of ready workers
//! (`docs/router.md`). It authenticates Quartermaster API keys, discovers the workers of each
//! organization from the control plane, balances requests over them with prefix affinity and
//! the power of two choices, retries what failed before its first byte on another worker behind
//! per-worker breakers, relays streams event by event, and records the tokens of every answer as
//! `usage.tokens` per API key.

pub mod budgets;
pub mod fleet;
pub mod keys;
pub mod limits;
pub mod openai;
pub mod pools;
pub mod proxy;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGaugeVec, Registry};
use qm_runtime::Shutdown;
use qm_runtime::service::{Dependencies, Service};

pub const NAME: &str = "router";

/// The router's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// `qm_router_requests_total{model, code}`.
    pub requests: IntCounterVec,
    /// `qm_router_rejections_total{reason}`: requests answered with an error by the router.
    pub rejections: IntCounterVec,
    /// `qm_router_retries_total`: requests sent to another worker after a failure.
    pub retries: IntCounter,
    /// `qm_router_time_to_first_token_seconds`: until the first event of a stream, or the whole
    /// answer otherwise.
    pub time_to_first_token: Histogram,
    /// `qm_router_request_duration_seconds`: until the answer is done.
    pub duration: Histogram,
    /// `qm_router_inter_token_seconds`: between two events of a stream.
    pub inter_token: Histogram,
    /// `qm_router_in_flight{instance}`: requests in flight per worker.
    pub in_flight: IntGaugeVec,
    /// `qm_router_breaker_open{instance}`: 1 while a worker's breaker is open.
    pub breaker_open: IntGaugeVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Self {
        let buckets = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
        let histogram = |name: &str, help: &str| {
            qm_telemetry::metrics::histogram_vec(registry, name, help, &[], buckets.clone())
                .with_label_values::<&str>(&[])
        };
        Self {
            requests: qm_telemetry::metrics::counter_vec(
                registry,
                "qm_router_requests_total",
                "Requests answered, by model and status code",
                &["model", "code"],
            ),
            rejections: qm_telemetry::metrics::counter_vec(
                registry,
                "qm_router_rejections_total",
                "Requests the router answered with an error, by reason",
                &["reason"],
            ),
            retries: qm_telemetry::metrics::counter_vec(
                registry,
                "qm_router_retries_total",
                "Requests sent to another worker after one failed before its first byte",
                &[],
            )
            .with_label_values::<&str>(&[]),
            time_to_first_token: histogram(
                "qm_router_time_to_first_token_seconds",
                "Time to the first event of a stream, or to the whole answer",
            ),
            duration: histogram("qm_router_request_duration_seconds", "Time until the answer is done"),
            inter_token: qm_telemetry::metrics::histogram_vec(
                registry,
                "qm_router_inter_token_seconds",
                "Time between two events of a stream",
                &[],
                vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            )
            .with_label_values::<&str>(&[]),
            in_flight: qm_telemetry::metrics::gauge_vec(
                registry,
                "qm_router_in_flight",
                "Requests in flight per worker",
                &["instance"],
            ),
            breaker_open: qm_telemetry::metrics::gauge_vec(
                registry,
                "qm_router_breaker_open",
                "1 while a worker's circuit breaker is open",
                &["instance"],
            ),
        }
    }

    /// Sets the per-worker gauges from `fleet` every second until shutdown.
    async fn watch(self, fleet: Arc<fleet::Fleet>, shutdown: Shutdown) {
        loop {
            let workers = fleet.snapshot();
            self.in_flight.reset();
            self.breaker_open.reset();
            for worker in workers.iter() {
                let instance = worker.instance_id.to_string();
                self.in_flight.with_label_values(&[instance.as_str()]).set(i64::from(worker.in_flight()));
                self.breaker_open.with_label_values(&[instance.as_str()]).set(i64::from(worker.breaker_open()));
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Builds the service on `address` (port 0 picks a free one).
///
/// # Errors
/// When the address cannot be bound.
pub async fn build(dependencies: Dependencies, address: SocketAddr, shutdown: Shutdown) -> anyhow::Result<Service> {
    build_with(dependencies, address, shutdown, None).await
}

/// [`build`], routing to `fixed` workers instead of discovering them (benches against a static
/// upstream).
///
/// # Errors
/// As [`build`].
pub async fn build_with(
    dependencies: Dependencies,
    address: SocketAddr,
    shutdown: Shutdown,
    fixed: Option<fleet::Fleet>,
) -> anyhow::Result<Service> {
    let registry = qm_telemetry::metrics::registry(NAME);
    let discover = fixed.is_none();
    let fleet = Arc::new(fixed.unwrap_or_default());
    let (usage, writer) = usage::UsageSink::new(dependencies.store.clone(), shutdown.clone());
    let limiter = match &dependencies.settings.router_limits_url {
        Some(url) => limits::Limiter::redis(url.expose())?,
        None => limits::Limiter::local(),
    };
    let metrics = Metrics::new(&registry);
    let pools = Arc::new(pools::PoolActivity::new(dependencies.store.clone()));
    let state = Arc::new(proxy::RouterState {
        store: dependencies.store.clone(),
        keys: keys::KeyCache::default(),
        limiter: Arc::new(limiter),
        budgets: budgets::BudgetGate::new(dependencies.settings.reporting_currency.as_str()),
        fleet: fleet.clone(),
        client: proxy::RouterState::client(),
        usage,
        metrics: metrics.clone(),
        engine_key: dependencies.settings.boot.engine_api_key.clone(),
        pools: pools.clone(),
        first_byte_timeout: dependencies.settings.router_first_byte_timeout,
        stream_idle_timeout: dependencies.settings.router_stream_idle_timeout,
    });
    let routes = proxy::routes(state);
    // Bodies, and time per phase (connect, first byte, between events), are bounded by the
    // proxy itself, in OpenAI's error shape: a stream or a long generation may run for minutes.
    let limits = qm_runtime::http::Limits::OWN;
    let (service, registry) =
        Service::with_routes_limited(NAME, &dependencies, address, routes, registry, limits).await?;
    let service = if discover {
        service.with_task(fleet.clone().run(dependencies.store.clone(), shutdown.clone()))
    } else {
        service
    };
    let service =
        service.with_task(metrics.watch(fleet.clone(), shutdown.clone())).with_task(pools.run(fleet, shutdown.clone()));
    Ok(service.with_task(writer).with_relay(&dependencies, &registry, shutdown))
}
