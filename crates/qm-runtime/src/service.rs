//! A running service: its bound HTTP server, its router and its background tasks, stopped
//! together by one [`Shutdown`] within a bounded time.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use prometheus::Registry;
use tokio::task::JoinSet;

use crate::Shutdown;
use crate::http::Server;

/// How long background tasks get to finish after shutdown starts.
pub const TASK_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What every control-plane service is built from (with the `backends` feature).
#[cfg(feature = "backends")]
#[derive(Clone)]
pub struct Dependencies {
    pub settings: qm_config::Settings,
    pub store: std::sync::Arc<dyn qm_store::Store>,
    pub bus: std::sync::Arc<dyn qm_bus::EventBus>,
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct Service {
    name: &'static str,
    server: Server,
    router: Router,
    tasks: Vec<Task>,
}

impl Service {
    /// Binds `address` (port 0 picks a free port) and wraps `router` in the standard layers.
    ///
    /// # Errors
    /// The bind error, with the address.
    pub async fn bind(
        name: &'static str,
        address: SocketAddr,
        router: Router,
        registry: &Registry,
    ) -> Result<Self, std::io::Error> {
        Self::bind_with(name, address, router, registry, crate::http::Limits::STANDARD).await
    }

    /// [`Service::bind`] with the standard layers' `limits`.
    ///
    /// # Errors
    /// The bind error, with the address.
    pub async fn bind_with(
        name: &'static str,
        address: SocketAddr,
        router: Router,
        registry: &Registry,
        limits: crate::http::Limits,
    ) -> Result<Self, std::io::Error> {
        let server = Server::bind(address).await.map_err(|error| {
            std::io::Error::new(error.kind(), format!("{name} cannot listen on {address}: {error}"))
        })?;
        Ok(Self { name, server, router: crate::http::with_layers(router, registry, limits), tasks: Vec::new() })
    }

    /// Adds a background task; it must return soon after the shutdown it was given fires.
    pub fn with_task(mut self, task: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        self.tasks.push(Box::pin(task));
        self
    }

    #[cfg(feature = "backends")]
    /// Adds the outbox relay: every service that writes to the outbox runs one, so its commands
    /// and events reach the bus while the other services are down.
    pub fn with_relay(self, dependencies: &Dependencies, registry: &Registry, shutdown: Shutdown) -> Self {
        let relay = crate::relay::Relay::new(dependencies.store.clone(), dependencies.bus.clone(), registry);
        self.with_task(relay.run(shutdown))
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn address(&self) -> SocketAddr {
        self.server.address()
    }

    /// Serves and runs the tasks until `shutdown` fires, then waits for them (bounded).
    ///
    /// # Errors
    /// An IO error from the listener.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> std::io::Result<()> {
        let mut tasks = JoinSet::new();
        for task in self.tasks {
            tasks.spawn(task);
        }
        let served = self.server.serve(self.router, shutdown).await;
        let drained = tokio::time::timeout(TASK_DRAIN_TIMEOUT, async {
            while let Some(result) = tasks.join_next().await {
                if let Err(error) = result {
                    tracing::error!(service = self.name, %error, "background task failed");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(service = self.name, "background tasks did not stop in time; abandoning them");
        }
        tracing::info!(service = self.name, "stopped");
        served
    }
}

#[cfg(feature = "backends")]
impl Service {
    /// A service that serves only its probes and metrics, ready when the store and the bus
    /// answer: the shape of every service before its own routes and consumers are added.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn with_probes(
        name: &'static str,
        dependencies: &Dependencies,
        address: SocketAddr,
    ) -> Result<(Self, Registry), std::io::Error> {
        let registry = qm_telemetry::metrics::registry(name);
        Self::with_routes(name, dependencies, address, Router::new(), registry).await
    }

    /// Like [`Service::with_probes`], serving `routes` beside the probes; `registry` is the one
    /// the routes' own metrics were registered in.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn with_routes(
        name: &'static str,
        dependencies: &Dependencies,
        address: SocketAddr,
        routes: Router,
        registry: Registry,
    ) -> Result<(Self, Registry), std::io::Error> {
        Self::with_routes_limited(name, dependencies, address, routes, registry, crate::http::Limits::STANDARD).await
    }

    /// [`Service::with_routes`] with the standard layers' `limits`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn with_routes_limited(
        name: &'static str,
        dependencies: &Dependencies,
        address: SocketAddr,
        routes: Router,
        registry: Registry,
        limits: crate::http::Limits,
    ) -> Result<(Self, Registry), std::io::Error> {
        let router = crate::probes::router(
            registry.clone(),
            vec![
                std::sync::Arc::new(crate::probes::StoreReady(dependencies.store.clone())),
                std::sync::Arc::new(crate::probes::BusReady(dependencies.bus.clone())),
            ],
            dependencies.settings.metrics_token.as_ref().map(|token| token.expose()),
        );
        let service = Self::bind_with(name, address, routes.merge(router), &registry, limits).await?;
        Ok((service, registry))
    }
}
