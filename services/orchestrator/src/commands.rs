//! The orchestrator's consumer of `qm.cmd.*`: members of the `orchestrator` group each pull one
//! command at a time and run it through the [`Saga`]. A command is acknowledged once carried out;
//! one that must wait (a provider or the database is down) comes back after a backoff and resumes
//! from the state it finds; a command this version cannot carry out is dead-lettered with the
//! reason, never silently dropped.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use qm_bus::{EventBus, SubscriptionOptions};
use qm_events::{Channel, MessageType};
use qm_runtime::Shutdown;
use qm_runtime::backoff::Backoff;

use crate::saga::{Saga, SagaError};

pub const GROUP: &str = "orchestrator";

pub struct Commands {
    pub bus: Arc<dyn EventBus>,
    pub saga: Arc<Saga>,
    pub reconciler: Arc<crate::reconcile::Reconciler>,
    pub catalog: Arc<crate::catalog::CatalogSync>,
    pub handled: IntCounterVec,
    /// How long a command may be in hand before another member gets it again: long enough for
    /// a provider to boot an instance (`QM_COMMAND_VISIBILITY_TIMEOUT_SECONDS`, default 15 min).
    pub visibility_timeout: Duration,
}

impl Commands {
    /// One member of the group; run several for parallelism.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut failures = 0;
        let options = SubscriptionOptions::new(Channel::Commands, GROUP).visibility_timeout(self.visibility_timeout);
        let mut subscription = loop {
            match self.bus.subscribe(options.clone()).await {
                Ok(subscription) => break subscription,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, "orchestrator: cannot subscribe to commands; retrying");
                    tokio::select! {
                        () = shutdown.wait() => return,
                        () = tokio::time::sleep(backoff.delay(failures)) => {}
                    }
                }
            }
        };
        loop {
            let delivery = tokio::select! {
                () = shutdown.wait() => return,
                delivery = subscription.next() => delivery,
            };
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, "orchestrator: cannot receive commands; retrying");
                    tokio::time::sleep(backoff.delay(failures)).await;
                    continue;
                }
            };
            failures = 0;
            let kind = delivery.envelope.known_type();
            let result = match kind {
                Some(MessageType::InstanceProvision) => self.saga.provision(&delivery.envelope).await,
                Some(MessageType::InstanceTerminate) => self.saga.terminate(&delivery.envelope).await,
                Some(MessageType::CatalogSync) => {
                    let provider = delivery.envelope.data["provider"].as_str().map(str::to_owned);
                    self.catalog.sync(provider.as_deref()).await.map(|report| {
                        tracing::info!(?report, "catalog synced on request");
                    })
                }
                Some(MessageType::FleetReconcile) => {
                    let provider = delivery.envelope.data["provider"].as_str().map(str::to_owned);
                    self.reconciler.reconcile(provider.as_deref()).await.map(|report| {
                        tracing::info!(?report, "reconciliation on request");
                    })
                }
                _ => Err(SagaError::Reject(format!(
                    "this orchestrator version does not carry out `{}` commands",
                    delivery.envelope.message_type
                ))),
            };
            let type_label = delivery.envelope.message_type.clone();
            let settled = match result {
                Ok(()) => {
                    self.handled.with_label_values(&[type_label.as_str(), "done"]).inc();
                    delivery.ack().await.map(|_| ())
                }
                Err(SagaError::Retry(reason)) => {
                    self.handled.with_label_values(&[type_label.as_str(), "retry"]).inc();
                    tracing::warn!(%reason, command = %type_label, "command will be retried");
                    let attempt = delivery.deliveries;
                    delivery.retry(backoff.delay(attempt), &reason).await.map(|_| ())
                }
                Err(SagaError::Reject(reason)) => {
                    self.handled.with_label_values(&[type_label.as_str(), "dead_lettered"]).inc();
                    tracing::error!(%reason, command = %type_label, "command dead-lettered");
                    delivery.dead_letter(&reason).await
                }
            };
            if let Err(error) = settled {
                tracing::warn!(%error, "orchestrator: cannot settle a command; it will be redelivered");
            }
        }
    }
}
