//! The `orchestrator` service. Provisions, health-checks, terminates and reconciles instances across providers. This foundation serves its probes and metrics on `QM_ORCHESTRATOR_ADDR` (default 8001); command handling lands with the orchestrator issue, and until then it does not consume `qm.cmd.*`, so commands wait on the bus instead of being lost.

use std::net::SocketAddr;

use qm_runtime::Shutdown;
use qm_runtime::service::{Dependencies, Service};

pub const NAME: &str = "orchestrator";

/// Builds the service on `address` (port 0 picks a free one).
///
/// # Errors
/// When the address cannot be bound.
pub async fn build(dependencies: Dependencies, address: SocketAddr, _shutdown: Shutdown) -> anyhow::Result<Service> {
    let (service, _registry) = Service::with_probes(NAME, &dependencies, address).await?;
    Ok(service)
}
