//! The `finops` service (issue 6): turns billing and usage events into cost intervals and token
//! usage ([`events`]), watches budgets and exposes cost gauges ([`budgets`]). The queries the api
//! serves under `/finops/…` (totals, breakdowns, series and forecasts computed from intervals)
//! are in the `qm-costs` crate, which the api and this service both use.

pub mod budgets;
pub mod events;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qm_bus::SubscriptionOptions;
use qm_events::Channel;
use qm_runtime::Shutdown;
use qm_runtime::consumer::Consumer;
use qm_runtime::service::{Dependencies, Service};

pub const NAME: &str = "finops";

/// How often budgets and gauges are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Builds the service on `address` (port 0 picks a free one).
///
/// # Errors
/// When the address cannot be bound.
pub async fn build(dependencies: Dependencies, address: SocketAddr, shutdown: Shutdown) -> anyhow::Result<Service> {
    build_with(dependencies, address, shutdown, CHECK_EVERY).await
}

/// [`build`], checking budgets every `check_every`.
///
/// # Errors
/// When the address cannot be bound.
pub async fn build_with(
    dependencies: Dependencies,
    address: SocketAddr,
    shutdown: Shutdown,
    check_every: Duration,
) -> anyhow::Result<Service> {
    let (mut service, registry) = Service::with_probes(NAME, &dependencies, address).await?;
    let options = SubscriptionOptions::new(Channel::Events, events::GROUP);
    let consumer = Consumer::new(
        dependencies.store.clone(),
        dependencies.bus.clone(),
        options,
        Arc::new(events::CostEvents),
        &registry,
    );
    service = service.with_task(consumer.run(shutdown.clone()));
    let currency = dependencies.settings.reporting_currency.to_string();
    let watcher = Arc::new(budgets::Watcher::new(dependencies.store.clone(), currency, check_every, &registry));
    service = service.with_task(watcher.run(shutdown.clone()));
    Ok(service.with_relay(&dependencies, &registry, shutdown))
}
