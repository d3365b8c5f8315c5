//! The event bus: durable, at-least-once delivery of [`Envelope`]s between services.
//!
//! One trait, [`EventBus`], three backends chosen by URL through [`connect`]:
//! `memory://` (in-process, the `qm dev` default), `nats://…` (JetStream) and `redis://…`
//! (Streams with consumer groups). Every backend gives the same guarantees, proven by the
//! [`conformance`] suite that each one runs:
//!
//! - a message published on a channel reaches every consumer group subscribed to it, and within
//!   one group exactly one member at a time;
//! - a delivery not acknowledged within the group's visibility timeout is delivered again;
//! - a message that fails `max_deliveries` times is moved to the group's dead-letter queue and
//!   stops blocking the rest;
//! - a group that restarts resumes after its last acknowledged message.
//!
//! A URL may carry `?prefix=NAME` to put every stream, subject and key under a namespace; tests
//! use it to stay out of each other's way.
//!
//! Layout:
//! - [`subscription`]: options, the [`Subscription`] wrapper and [`Delivery`].
//! - [`memory`], [`nats`], [`redis_streams`]: the backends.
//! - [`naming`]: stream, subject and key names.
//! - [`conformance`]: the suite every backend runs.

#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod memory;
pub mod naming;
pub mod nats;
pub mod redis_streams;
pub mod subscription;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qm_events::Envelope;
use serde::{Deserialize, Serialize};

pub use naming::Naming;
pub use subscription::{Delivery, Subscription, SubscriptionOptions};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid bus URL: {0}")]
    InvalidUrl(String),
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("bus protocol error: {0}")]
    Protocol(String),
}

impl BusError {
    /// Whether trying again later may succeed (the bus is down or slow), as opposed to a
    /// configuration or programming error that will fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Unavailable(_) | BusError::Protocol(_))
    }
}

/// A message that was given up on, with why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub group: String,
    pub reason: String,
    pub deliveries: u32,
    pub dead_at: DateTime<Utc>,
    /// The message as it was received: an envelope's JSON, or whatever undecodable text arrived.
    pub payload: String,
}

impl DeadLetter {
    /// The envelope, when the payload was one.
    pub fn envelope(&self) -> Option<Envelope> {
        Envelope::from_json(self.payload.as_bytes()).ok()
    }
}

/// A durable publish/subscribe bus.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// `memory`, `nats` or `redis`.
    fn kind(&self) -> &'static str;

    /// Publishes on the envelope's channel (commands or events, from its type). Returns once the
    /// bus has stored the message durably.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the bus cannot be reached; the caller (the outbox relay)
    /// keeps the message and tries again.
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError>;

    /// Joins (creating if needed) a durable consumer group. A new group starts at the oldest
    /// retained message, so a consumer that starts after a producer misses nothing.
    ///
    /// # Errors
    /// [`BusError::InvalidSubscription`] for a bad group name; [`BusError::Unavailable`].
    async fn subscribe(&self, options: SubscriptionOptions) -> Result<Subscription, BusError>;

    /// Up to `limit` dead letters of a group, oldest first.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the bus cannot be reached.
    async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError>;

    /// Checks that the bus answers, for readiness probes.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when it does not.
    async fn ping(&self) -> Result<(), BusError>;
}

/// Connects to the bus named by `url` (`memory://`, `nats://host:port`, `redis://host:port/db`),
/// with an optional `?prefix=NAME` namespace.
///
/// The network backends connect lazily and reconnect on their own: a bus that is down at
/// start-up delays delivery but does not stop the service (the outbox holds the messages).
///
/// # Errors
/// [`BusError::InvalidUrl`] for an unknown scheme or a malformed URL.
pub async fn connect(url: &str) -> Result<Arc<dyn EventBus>, BusError> {
    let parsed = url::Url::parse(url).map_err(|error| BusError::InvalidUrl(format!("{}: {error}", redact(url))))?;
    let naming = Naming::from_url(&parsed)?;
    match parsed.scheme() {
        "memory" => Ok(Arc::new(memory::MemoryBus::new())),
        "nats" | "tls" => Ok(Arc::new(nats::NatsBus::connect(&parsed, naming).await?)),
        "redis" | "rediss" => Ok(Arc::new(redis_streams::RedisBus::connect(&parsed, naming)?)),
        other => {
            Err(BusError::InvalidUrl(format!("unknown scheme `{other}` (expected memory://, nats:// or redis://)")))
        }
    }
}

pub use qm_config::redact_url as redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact("redis://user:secret@127.0.0.1:6379/0"), "redis://user:***@127.0.0.1:6379/0");
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[tokio::test]
    async fn an_unknown_scheme_is_refused_with_the_expected_ones_named() {
        let error = connect("kafka://localhost:9092").await.err().expect("refused");
        assert!(error.to_string().contains("memory://, nats:// or redis://"), "{error}");
    }
}
