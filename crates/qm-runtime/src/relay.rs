//! The outbox relay: publishes messages that were committed with their state change, in commit
//! order, and marks them published.
//!
//! A message is marked only after the bus has stored it, so a crash or a bus outage delays it
//! but never loses it; a crash between publish and mark publishes it again, which the bus
//! (NATS `Nats-Msg-Id`) and the consumers (deduplication by envelope id) absorb. Several relays
//! may run: claims are leased rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL), and every service
//! that writes to the outbox runs one, so its messages do not wait for another service.
//!
//! The relay wakes when a transaction of its process that enqueued a message commits
//! ([`Store::outbox_committed`]), and otherwise polls (for messages of other processes whose
//! relay is down).

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, Registry};
use qm_bus::EventBus;
use qm_store::{Store, StoreError};
use tokio::sync::Notify;

use crate::Shutdown;
use crate::backoff::Backoff;

const BATCH: u32 = 100;
const LEASE: Duration = Duration::from_secs(30);
const IDLE_POLL: Duration = Duration::from_millis(500);
const RETENTION: Duration = Duration::from_secs(24 * 3600);
const PURGE_EVERY: Duration = Duration::from_secs(600);
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct RelayMetrics {
    published: IntCounter,
    failures: IntCounter,
    backlog: IntGauge,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bus: {0}")]
    Bus(#[from] qm_bus::BusError),
}

#[derive(Clone)]
pub struct Relay {
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    wake: Arc<Notify>,
    metrics: RelayMetrics,
}

impl Relay {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn EventBus>, registry: &Registry) -> Self {
        let published = qm_telemetry::metrics::counter_vec(
            registry,
            "qm_outbox_published_total",
            "Outbox messages published to the bus",
            &[],
        );
        let failures = qm_telemetry::metrics::counter_vec(
            registry,
            "qm_outbox_publish_failures_total",
            "Failed attempts to publish an outbox message",
            &[],
        );
        let metrics = RelayMetrics {
            published: published.with_label_values::<&str>(&[]),
            failures: failures.with_label_values::<&str>(&[]),
            backlog: qm_telemetry::metrics::gauge(
                registry,
                "qm_outbox_backlog",
                "Outbox messages waiting to be published",
            ),
        };
        let wake = store.outbox_committed();
        Self { store, bus, wake, metrics }
    }

    /// One pass: claims a batch and publishes it in order, stopping at the first failure (the
    /// rest of the batch is released, so order is kept). Returns how many were published.
    ///
    /// # Errors
    /// The store or bus error that stopped the pass.
    pub async fn publish_pending(&self) -> Result<usize, RelayError> {
        let batch = self.store.claim_outbox(BATCH, LEASE).await?;
        let mut published = Vec::with_capacity(batch.len());
        let mut failure = None;
        for message in &batch {
            if failure.is_some() {
                self.store.release_outbox(message.id, "an earlier message failed to publish").await?;
                continue;
            }
            match self.bus.publish(&message.envelope).await {
                Ok(()) => published.push(message.id),
                Err(error) => {
                    self.metrics.failures.inc();
                    tracing::warn!(event_id = %message.id, attempts = message.attempts, %error, "outbox publish failed");
                    self.store.release_outbox(message.id, &error.to_string()).await?;
                    failure = Some(error);
                }
            }
        }
        self.store.mark_outbox_published(&published).await?;
        self.metrics.published.inc_by(published.len() as u64);
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(published.len()),
        }
    }

    /// Publishes until `shutdown`, backing off while the bus or the store is down.
    pub async fn run(self, shutdown: Shutdown) {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut failures = 0;
        let mut last_purge = tokio::time::Instant::now();
        let mut last_backlog = tokio::time::Instant::now() - BACKLOG_EVERY;
        while !shutdown.is_triggered() {
            let wait = match self.publish_pending().await {
                Ok(count) if count == BATCH as usize => {
                    failures = 0;
                    Duration::ZERO
                }
                Ok(_) => {
                    failures = 0;
                    IDLE_POLL
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "outbox relay pass failed; retrying");
                    backoff.delay(failures)
                }
            };
            if last_backlog.elapsed() >= BACKLOG_EVERY {
                last_backlog = tokio::time::Instant::now();
                if let Ok(backlog) = self.store.outbox_backlog().await {
                    self.metrics.backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
                }
            }
            if last_purge.elapsed() >= PURGE_EVERY {
                last_purge = tokio::time::Instant::now();
                match self.store.purge_published_outbox(RETENTION).await {
                    Ok(purged) if purged > 0 => tracing::info!(purged, "purged published outbox messages"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "outbox purge failed"),
                }
            }
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.wait() => {}
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        // Last pass so that what was committed just before shutdown is not left for the next start.
        if let Err(error) = self.publish_pending().await {
            tracing::info!(%error, "final outbox pass did not finish; the next start publishes the rest");
        }
    }
}
