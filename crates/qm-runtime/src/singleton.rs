//! A job that one replica runs at a time (reconciliation, budget checks): under a lease in the
//! store that its holder renews every [`Lease::renew`], whatever the job's own period, and
//! keeps renewing while the job runs. A replica that dies (`kill -9`) stops renewing, so a
//! survivor takes the job over within [`Lease::ttl`] plus one renewal (25 s with the
//! defaults), even for a job that runs once an hour; and a pass longer than the lease does not
//! let a second replica start the same job beside it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qm_store::Store;
use tokio::time::Instant;

use crate::shutdown::Shutdown;

/// How long a lease lasts without renewal, and how often its holder renews it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ttl: Duration,
    pub renew: Duration,
}

impl Default for Lease {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(20), renew: Duration::from_secs(5) }
    }
}

/// A named job, its period and its lease.
pub struct Singleton {
    store: Arc<dyn Store>,
    name: &'static str,
    holder: String,
    lease: Lease,
}

impl Singleton {
    pub fn new(store: Arc<dyn Store>, name: &'static str, lease: Lease) -> Self {
        Self { store, name, holder: uuid::Uuid::new_v4().to_string(), lease }
    }

    /// Whether this replica holds the lease now (taking or renewing it).
    async fn hold(&self) -> bool {
        match self.store.acquire_lease(self.name, &self.holder, self.lease.ttl).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, lease = self.name, "cannot take or renew the lease");
                false
            }
        }
    }

    /// Runs `job` every `period` (the first time `first_after` after start) while this
    /// replica holds the lease, until `shutdown`. A job whose lease is lost while it runs is
    /// dropped (its transaction, if any, rolls back).
    pub async fn run<F, Fut>(self, period: Duration, first_after: Duration, shutdown: Shutdown, mut job: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut due = Instant::now() + first_after;
        while !shutdown.is_triggered() {
            let held = self.hold().await;
            if held && Instant::now() >= due {
                let run = job();
                tokio::pin!(run);
                loop {
                    tokio::select! {
                        () = &mut run => break,
                        () = shutdown.wait() => return,
                        () = tokio::time::sleep(self.lease.renew) => {
                            if !self.hold().await {
                                tracing::warn!(lease = self.name, "lost the lease during the job; stopping it");
                                break;
                            }
                        }
                    }
                }
                due = Instant::now() + period;
                continue;
            }
            // The holder wakes for its renewal or its next run; the others try every renewal.
            let pause = if held {
                self.lease.renew.min(due.saturating_duration_since(Instant::now())).max(Duration::from_millis(10))
            } else {
                self.lease.renew
            };
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}
