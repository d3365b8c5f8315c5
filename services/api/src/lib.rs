//! The `api` service (default port 8003): the REST API, the outbox relay, and the bootstrap of
//! the platform admin.
//!
//! Layout:
//! - [`bootstrap`]: the default organization and the `admin` user, created once.
//! - [`password`]: argon2id hashing and verification, and generated passwords.

pub mod bootstrap;
pub mod password;

use std::net::SocketAddr;

use qm_runtime::Shutdown;
use qm_runtime::relay::Relay;
use qm_runtime::service::{Dependencies, Service};

pub const NAME: &str = "api";

/// Bootstraps the admin if needed, then builds the API on `address` with the outbox relay
/// running beside it.
///
/// # Errors
/// When no admin exists and no password was configured, when the store fails, or when the
/// address cannot be bound.
pub async fn build(dependencies: Dependencies, address: SocketAddr, shutdown: Shutdown) -> anyhow::Result<Service> {
    bootstrap::ensure_admin(&*dependencies.store, dependencies.settings.admin_password.as_ref()).await?;
    let (service, registry) = Service::with_probes(NAME, &dependencies, address).await?;
    let relay = Relay::new(dependencies.store.clone(), dependencies.bus.clone(), &registry);
    Ok(service.with_task(relay.run(shutdown)))
}
