//! The orchestrator's consumer of `qm.cmd.*`: members of the `orchestrator` group pull commands
//! and hand each to its own task, so that a slow or flooded kind never holds up another tenant's
//! provisioning or termination. At most [`IN_FLIGHT`] commands are in hand per replica, and at
//! most [`PER_PROVIDER`] provisions per provider. `catalog.sync` and `fleet.reconcile` are
//! coalesced: one run at a time per kind and scope, and a request that a run started after it
//! has covered is acknowledged without another run. A command is acknowledged once carried out;
//! one that must wait (a provider or the database is down) comes back after a backoff and resumes
//! from the state it finds; a command this version cannot carry out is dead-lettered with the
//! reason, never silently dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use qm_bus::Delivery;
use tokio::sync::Semaphore;

use prometheus::IntCounterVec;
use qm_bus::{EventBus, SubscriptionOptions};
use qm_events::payloads::{CatalogSync, FleetReconcile, InstanceProvision};
use qm_events::{Channel, Envelope, MessageType};
use qm_runtime::Shutdown;
use qm_runtime::backoff::Backoff;

use crate::saga::{Saga, SagaError};

pub const GROUP: &str = "orchestrator";
/// Commands one replica works on at once.
pub const IN_FLIGHT: usize = 256;
/// Provisions of one provider one replica works on at once (provider rate limits, not the
/// orchestrator, then set the pace).
pub const PER_PROVIDER: usize = 32;

/// One run at a time per key; a request is covered by any run that started after it was made.
#[derive(Default)]
pub struct Coalescer {
    runs: Mutex<HashMap<String, Arc<Lane>>>,
}

#[derive(Default)]
struct Lane {
    running: tokio::sync::Mutex<()>,
    /// When the last successful run started.
    covered_until: Mutex<Option<DateTime<Utc>>>,
}

impl Lane {
    fn covers(&self, requested_at: DateTime<Utc>) -> bool {
        self.covered_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at >= requested_at)
    }
}

/// Whether a coalesced request ran or was covered by another run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coalesced {
    Ran,
    Covered,
}

impl Coalescer {
    /// Runs `work` for a request made at `requested_at`, unless a run that started after it
    /// has already succeeded (or does while this one waits its turn).
    ///
    /// # Errors
    /// `work`'s.
    pub async fn run<F, Fut>(&self, key: &str, requested_at: DateTime<Utc>, work: F) -> Result<Coalesced, SagaError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), SagaError>>,
    {
        let lane = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .clone();
        if lane.covers(requested_at) {
            return Ok(Coalesced::Covered);
        }
        let _turn = lane.running.lock().await;
        if lane.covers(requested_at) {
            return Ok(Coalesced::Covered);
        }
        let started = Utc::now();
        work().await?;
        *lane.covered_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(started);
        Ok(Coalesced::Ran)
    }
}

pub struct Commands {
    pub bus: Arc<dyn EventBus>,
    pub saga: Arc<Saga>,
    pub reconciler: Arc<crate::reconcile::Reconciler>,
    pub catalog: Arc<crate::catalog::CatalogSync>,
    pub handled: IntCounterVec,
    /// How long a command may be in hand before another member gets it again: long enough for
    /// a provider to boot an instance (`QM_COMMAND_VISIBILITY_TIMEOUT_SECONDS`, default 15 min).
    pub visibility_timeout: Duration,
    pub coalescer: Coalescer,
    pub in_flight: Arc<Semaphore>,
    pub per_provider: Mutex<HashMap<String, Arc<Semaphore>>>,
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
            // Wait for room before pulling more: the bus keeps what this replica cannot take.
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else { return };
            let commands = self.clone();
            tokio::spawn(async move {
                commands.handle(delivery).await;
                drop(permit);
            });
        }
    }

    fn provider_slots(&self, provider: &str) -> Arc<Semaphore> {
        self.per_provider
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(provider.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(PER_PROVIDER)))
            .clone()
    }

    /// Runs a coalesced command (`kind` for `scope`, every provider when `None`).
    async fn coalesced<F, Fut>(
        &self,
        kind: &str,
        scope: Option<String>,
        requested_at: DateTime<Utc>,
        work: F,
    ) -> Result<(), SagaError>
    where
        F: FnOnce(Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<(), SagaError>>,
    {
        let key = format!("{kind}:{}", scope.as_deref().unwrap_or("*"));
        let outcome = self.coalescer.run(&key, requested_at, || work(scope)).await?;
        tracing::debug!(?outcome, kind, "coalesced command");
        Ok(())
    }

    /// Carries out one command. Every payload is decoded before any work: another version or
    /// shape is rejected (dead-lettered) with the reason.
    async fn dispatch(&self, envelope: &Envelope) -> Result<(), SagaError> {
        let requested_at = envelope.occurred_at;
        match envelope.known_type() {
            Some(MessageType::InstanceProvision) => {
                let request: InstanceProvision = envelope.decode()?;
                let provider = request.placements.first().map(|offer| offer.provider.clone()).unwrap_or_default();
                let slots = self.provider_slots(&provider);
                let _slot = slots.acquire().await;
                self.saga.provision_request(envelope, request).await
            }
            Some(MessageType::InstanceTerminate) => self.saga.terminate(envelope).await,
            Some(MessageType::CatalogSync) => {
                let command: CatalogSync = envelope.decode()?;
                self.coalesced("catalog.sync", command.provider, requested_at, |scope| async move {
                    let report = self.catalog.sync(scope.as_deref()).await?;
                    tracing::info!(?report, "catalog synced on request");
                    Ok(())
                })
                .await
            }
            Some(MessageType::FleetReconcile) => {
                let command: FleetReconcile = envelope.decode()?;
                self.coalesced("fleet.reconcile", command.provider, requested_at, |scope| async move {
                    let report = self.reconciler.reconcile(scope.as_deref()).await?;
                    tracing::info!(?report, "reconciliation on request");
                    Ok(())
                })
                .await
            }
            _ => Err(SagaError::Reject(format!(
                "this orchestrator version does not carry out `{}` commands",
                envelope.message_type
            ))),
        }
    }

    /// Carries out one command and settles it.
    /// One command, in a `handle_message` span that continues the trace of the request that
    /// sent it (so the saga's provider calls and events belong to that trace).
    async fn handle(&self, delivery: Delivery) {
        let span = tracing::info_span!(
            "handle_message",
            group = "orchestrator.commands",
            message_type = %delivery.envelope.message_type,
            event_id = %delivery.envelope.id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty
        );
        qm_telemetry::traceparent::continue_from(&span, delivery.envelope.traceparent.as_deref());
        tracing::Instrument::instrument(self.settle(delivery), span).await;
    }

    async fn settle(&self, delivery: Delivery) {
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let result = self.dispatch(&delivery.envelope).await;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_requests_made_together_costs_at_most_two_runs() {
        let coalescer = Arc::new(Coalescer::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let requested_at = Utc::now();
        let flood = (0..50).map(|_| {
            let (coalescer, runs) = (coalescer.clone(), runs.clone());
            tokio::spawn(async move {
                coalescer
                    .run("catalog.sync:*", requested_at, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(())
                    })
                    .await
            })
        });
        let outcomes: Vec<_> = futures::future::join_all(flood).await.into_iter().map(|joined| joined.ok()).collect();
        assert!(outcomes.iter().all(|outcome| matches!(outcome, Some(Ok(_)))));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "every request was made before the first run started");
        // A request made after that run started needs a run of its own; another key too.
        let later = Utc::now();
        let ran = coalescer.run("catalog.sync:*", later, || async { Ok(()) }).await;
        assert!(matches!(ran, Ok(Coalesced::Ran)));
        let covered = coalescer.run("catalog.sync:*", requested_at, || async { Ok(()) }).await;
        assert!(matches!(covered, Ok(Coalesced::Covered)));
    }

    #[tokio::test]
    async fn a_failed_run_covers_nothing() {
        let coalescer = Coalescer::default();
        let requested_at = Utc::now();
        let failed = coalescer.run("k", requested_at, || async { Err(SagaError::Retry("down".into())) }).await;
        assert!(failed.is_err());
        let ran = coalescer.run("k", requested_at, || async { Ok(()) }).await;
        assert!(matches!(ran, Ok(Coalesced::Ran)));
    }
}
