//! Runs a [`Handler`] for every message of a consumer group, effectively once.
//!
//! For each delivery: begin a transaction, record `(group, envelope id)` as processed (a
//! duplicate delivery finds it recorded and is acknowledged without running the handler), run
//! the handler's writes in the same transaction, commit, then acknowledge. A crash anywhere
//! before the commit leaves nothing behind and the message is redelivered; a crash between commit
//! and acknowledgement redelivers a message that is then recognised as done.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prometheus::{IntCounterVec, Registry};
use qm_bus::{Delivery, EventBus, SubscriptionOptions};
use qm_events::Envelope;
use qm_store::{Store, StoreTx};

use crate::Shutdown;
use crate::backoff::Backoff;

/// Why a handler did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May pass later (a dependency is down): the message is redelivered with backoff, and
    /// dead-lettered when it runs out of deliveries.
    #[error("{0}")]
    Retry(String),
    /// Can never pass (malformed payload, unknown reference): dead-lettered at once.
    #[error("{0}")]
    Reject(String),
}

impl From<qm_store::StoreError> for HandlerError {
    fn from(error: qm_store::StoreError) -> Self {
        if error.is_retryable() {
            HandlerError::Retry(error.to_string())
        } else {
            HandlerError::Reject(error.to_string())
        }
    }
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies the message's effects inside `tx`; the caller commits.
    async fn handle(&self, envelope: &Envelope, tx: &mut dyn StoreTx) -> Result<(), HandlerError>;
}

/// What became of one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Handled,
    Duplicate,
    Retrying,
    DeadLettered,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Duplicate => "duplicate",
            Outcome::Retrying => "retrying",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

pub struct Consumer {
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    options: SubscriptionOptions,
    handler: Arc<dyn Handler>,
    messages: IntCounterVec,
    backoff: Backoff,
}

impl Consumer {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn EventBus>,
        options: SubscriptionOptions,
        handler: Arc<dyn Handler>,
        registry: &Registry,
    ) -> Self {
        let messages = qm_telemetry::metrics::counter_vec(
            registry,
            "qm_bus_messages_total",
            "Bus messages handled by this service, by consumer group, type and outcome",
            &["group", "type", "outcome"],
        );
        Self {
            store,
            bus,
            options,
            handler,
            messages,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
        }
    }

    /// Consumes until `shutdown`; reconnects with backoff while the bus is down.
    pub async fn run(self, shutdown: Shutdown) {
        let mut failures = 0;
        while !shutdown.is_triggered() {
            let mut subscription = match self.bus.subscribe(self.options.clone()).await {
                Ok(subscription) => subscription,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(group = %self.options.group, %error, "cannot subscribe; retrying");
                    tokio::select! {
                        () = shutdown.wait() => return,
                        () = tokio::time::sleep(self.backoff.delay(failures)) => continue,
                    }
                }
            };
            loop {
                let delivery = tokio::select! {
                    () = shutdown.wait() => return,
                    delivery = subscription.next() => delivery,
                };
                match delivery {
                    Ok(delivery) => {
                        failures = 0;
                        self.process(delivery).await;
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(group = %self.options.group, %error, "bus receive failed; resubscribing");
                        tokio::time::sleep(self.backoff.delay(failures)).await;
                        break;
                    }
                }
            }
        }
    }

    /// Handles one delivery and settles it.
    pub async fn process(&self, delivery: Delivery) -> Outcome {
        let message_type = delivery.envelope.message_type.clone();
        let outcome = match self.apply(&delivery.envelope).await {
            Ok(true) => settle(delivery.ack().await, Outcome::Handled),
            Ok(false) => settle(delivery.ack().await, Outcome::Duplicate),
            Err(HandlerError::Retry(reason)) => {
                let delay = self.backoff.delay(delivery.deliveries);
                match delivery.retry(delay, &reason).await {
                    Ok(qm_bus::subscription::RetryOutcome::Retrying) => Outcome::Retrying,
                    Ok(qm_bus::subscription::RetryOutcome::DeadLettered) => Outcome::DeadLettered,
                    Err(_) => Outcome::Retrying,
                }
            }
            Err(HandlerError::Reject(reason)) => settle(delivery.dead_letter(&reason).await, Outcome::DeadLettered),
        };
        self.messages.with_label_values(&[self.options.group.as_str(), message_type.as_str(), outcome.label()]).inc();
        outcome
    }

    /// Returns `Ok(false)` for a message this group already handled.
    async fn apply(&self, envelope: &Envelope) -> Result<bool, HandlerError> {
        let span = tracing::info_span!(
            "handle_message",
            group = %self.options.group,
            message_type = %envelope.message_type,
            event_id = %envelope.id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty
        );
        qm_telemetry::traceparent::continue_from(&span, envelope.traceparent.as_deref());
        tracing::Instrument::instrument(
            async {
                let mut tx = self.store.begin().await?;
                if !tx.mark_processed(&self.options.group, envelope.id).await? {
                    return Ok(false);
                }
                self.handler.handle(envelope, &mut *tx).await?;
                tx.commit().await?;
                tracing::debug!("message handled");
                Ok(true)
            },
            span,
        )
        .await
    }
}

/// An acknowledgement that fails leaves the message to be redelivered, which the processed
/// record turns into a duplicate: the work itself is done either way.
fn settle(result: Result<(), qm_bus::BusError>, outcome: Outcome) -> Outcome {
    if let Err(error) = result {
        tracing::warn!(%error, "could not settle a delivery; it will be redelivered and recognised");
    }
    outcome
}
