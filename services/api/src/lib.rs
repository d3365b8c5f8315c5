//! The `api` service (default port 8003): the REST API and its OpenAPI document, the live event
//! stream, the outbox relay, and the bootstrap of the platform admin.
//!
//! Layout:
//! - [`problem`]: problem+json errors and the extractors that produce them.
//! - [`auth`]: tokens, the caller ([`auth::Principal`]), client addresses, the login limiter.
//! - [`routes`]: one module per resource; [`openapi`] assembles them into the router and the
//!   document.
//! - [`feed`]: follows the outbox for the `/events` stream.
//! - [`seeds`]: the catalog seed, loaded by `qm dev` and `qm seed`.
//! - [`bootstrap`], [`password`]: the first admin; argon2id.

pub mod auth;
pub mod bootstrap;
pub mod console;
pub mod feed;
pub mod limits;
pub mod openapi;
pub mod password;
pub mod problem;
pub mod routes;
pub mod seeds;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use qm_runtime::Shutdown;
use qm_runtime::service::{Dependencies, Service};

pub const NAME: &str = "api";

/// Login limits: failures allowed in [`LOGIN_WINDOW`] per client address and per account.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const LOGIN_FAILURES_PER_CLIENT: usize = 20;
pub const LOGIN_FAILURES_PER_ACCOUNT: usize = 5;

/// Failed worker registrations allowed in [`LOGIN_WINDOW`] per client address and per instance.
pub const REGISTRATION_FAILURES_PER_CLIENT: usize = 20;
pub const REGISTRATION_FAILURES_PER_INSTANCE: usize = 5;
/// Heartbeats per worker: a burst of 10, then one a second (agents are asked for one every 5 s).
pub const HEARTBEATS_PER_SECOND: f64 = 1.0;
pub const HEARTBEAT_BURST: u32 = 10;
/// `catalog.sync` and `fleet.reconcile` requests per organization: a burst of 3, then one a minute.
pub const FLEET_COMMANDS_PER_SECOND: f64 = 1.0 / 60.0;
pub const FLEET_COMMAND_BURST: u32 = 3;
/// Open `/events` streams per principal (a session or an API key) and per replica.
pub const STREAMS_PER_PRINCIPAL: usize = 8;
pub const STREAMS_PER_REPLICA: usize = 2_000;

/// What every handler shares. axum clones the state for each request and again for each
/// extractor that takes it: behind one `Arc`, that is one atomic increment rather than a copy
/// of the settings (a dozen allocations per clone, 4 % of the CPU of a one-row list).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub dependencies: Dependencies,
    pub login_limiter: auth::LoginLimiter,
    pub registration_limiter: auth::LoginLimiter,
    pub heartbeats: limits::KeyedBucket,
    pub fleet_commands: limits::KeyedBucket,
    pub streams: Arc<limits::ConcurrencyCap>,
    /// Deployments of one organization decide against its budget one at a time.
    pub organization_locks: limits::KeyedLocks,
    pub credentials: auth::CredentialCache,
    pub feed: feed::FeedHandle,
    /// `QM_AGENT_BINARY`, served at `/downloads/qm-worker-agent`.
    pub agent_download: Option<Arc<routes::downloads::AgentDownload>>,
}

/// Bootstraps the admin if needed, then builds the API on `address` with the outbox relay and
/// the event feed running beside it.
///
/// # Errors
/// When no admin exists and no password was configured, when the store fails, or when the
/// address cannot be bound.
pub async fn build(dependencies: Dependencies, address: SocketAddr, shutdown: Shutdown) -> anyhow::Result<Service> {
    bootstrap::ensure_admin(&*dependencies.store, dependencies.settings.admin_password.as_ref()).await?;
    let registry = qm_telemetry::metrics::registry(NAME);
    let (feed, follower) = feed::start(dependencies.store.clone(), shutdown.clone()).await?;
    let state = AppState(Arc::new(Shared {
        dependencies: dependencies.clone(),
        login_limiter: auth::LoginLimiter::new(LOGIN_WINDOW, LOGIN_FAILURES_PER_CLIENT, LOGIN_FAILURES_PER_ACCOUNT),
        registration_limiter: auth::LoginLimiter::new(
            LOGIN_WINDOW,
            REGISTRATION_FAILURES_PER_CLIENT,
            REGISTRATION_FAILURES_PER_INSTANCE,
        ),
        heartbeats: limits::KeyedBucket::new(HEARTBEATS_PER_SECOND, HEARTBEAT_BURST),
        fleet_commands: limits::KeyedBucket::new(FLEET_COMMANDS_PER_SECOND, FLEET_COMMAND_BURST),
        streams: limits::ConcurrencyCap::new(STREAMS_PER_PRINCIPAL, STREAMS_PER_REPLICA),
        organization_locks: limits::KeyedLocks::default(),
        credentials: auth::CredentialCache::default(),
        feed,
        agent_download: match &dependencies.settings.boot.agent_binary {
            Some(path) => Some(routes::downloads::AgentDownload::load(path)?),
            None => None,
        },
    }));
    let routes = openapi::router(state);
    let (service, registry) = Service::with_routes(NAME, &dependencies, address, routes, registry).await?;
    Ok(service.with_relay(&dependencies, &registry, shutdown.clone()).with_task(follower.run(shutdown)))
}
