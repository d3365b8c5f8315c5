//! The `router` service. The OpenAI-compatible data plane in front of ready workers. This foundation serves its probes and metrics on `QM_ROUTER_ADDR` (default 8080); routing lands with the router issue.

use std::net::SocketAddr;

use qm_runtime::Shutdown;
use qm_runtime::service::{Dependencies, Service};

pub const NAME: &str = "router";

/// Builds the service on `address` (port 0 picks a free one).
///
/// # Errors
/// When the address cannot be bound.
pub async fn build(dependencies: Dependencies, address: SocketAddr, _shutdown: Shutdown) -> anyhow::Result<Service> {
    let (service, _registry) = Service::with_probes(NAME, &dependencies, address).await?;
    Ok(service)
}
