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

pub mod backoff;
pub mod breaker;
pub mod consumer;
pub mod entrypoint;
pub mod http;
pub mod probes;
pub mod relay;
pub mod service;
pub mod shutdown;
pub mod tokens;

pub use shutdown::Shutdown;
