//! What every Quartermaster service runs on: shutdown, the HTTP server with its probes and
//! metrics, the outbox relay and the idempotent bus consumer.
//!
//! Layout:
//! - [`shutdown`]: one signal fanned out to every task.
//! - [`http`]: serving a router on a bound listener with timeouts, body limits, request metrics
//!   and graceful shutdown.
//! - [`probes`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`relay`]: publishes the outbox to the bus.
//! - [`consumer`]: runs a handler for each bus message exactly once in effect.
//! - [`backoff`]: exponential backoff with jitter.
//! - [`service`]: a service's server and background tasks, stopped together.
//! - [`entrypoint`]: the `main` of every production binary.
//! - [`singleton`]: a job one replica runs at a time, under a lease renewed every few seconds.
//!
//! The parts that need the store and the bus (the relay, the consumer, the entrypoint, service
//! [`Dependencies`](service::Dependencies) and their readiness checks) are behind the `backends`
//! feature: the control-plane services enable it; the worker agent, which talks to the api over
//! HTTP only, does not, and links neither.

pub mod backoff;
pub mod breaker;
#[cfg(feature = "backends")]
pub mod consumer;
#[cfg(feature = "backends")]
pub mod entrypoint;
pub mod http;
pub mod probes;
#[cfg(feature = "backends")]
pub mod relay;
pub mod service;
pub mod shutdown;
#[cfg(feature = "backends")]
pub mod singleton;
pub mod tokens;

pub use shutdown::Shutdown;
