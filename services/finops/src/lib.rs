//! The `finops` service. Turns lifecycle and usage events into costs, forecasts and budgets. This foundation serves its probes and metrics on `QM_FINOPS_ADDR` (default 8002); event handling lands with the FinOps issue.

use std::net::SocketAddr;

use qm_runtime::Shutdown;
use qm_runtime::service::{Dependencies, Service};

pub const NAME: &str = "finops";

/// Builds the service on `address` (port 0 picks a free one).
///
/// # Errors
/// When the address cannot be bound.
pub async fn build(dependencies: Dependencies, address: SocketAddr, _shutdown: Shutdown) -> anyhow::Result<Service> {
    let (service, _registry) = Service::with_probes(NAME, &dependencies, address).await?;
    Ok(service)
}
