//! Deadlines on the lifecycle, swept periodically: an instance `booting` for longer than the
//! startup deadline is `startup_failed` and then terminated; a `ready` instance whose agent has
//! not heartbeaten for the heartbeat timeout is `unhealthy` (a later ready heartbeat brings it
//! back). Every move is a conditional update, so replicas sweeping at once cannot both apply it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_domain::InstanceState;
use qm_runtime::Shutdown;
use qm_store::Store;

use crate::saga::{Saga, SagaError, Step};

#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// From `booting` to `ready`.
    pub startup: Duration,
    /// Silence after which a `ready` instance is `unhealthy`.
    pub heartbeat: Duration,
    pub sweep_every: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            startup: Duration::from_secs(10 * 60),
            heartbeat: Duration::from_secs(30),
            sweep_every: Duration::from_secs(5),
        }
    }
}

/// At most this many instances are moved per kind and sweep.
const BATCH: u32 = 200;

pub struct Health {
    pub store: Arc<dyn Store>,
    pub saga: Arc<Saga>,
    pub deadlines: Deadlines,
}

fn before(duration: Duration) -> chrono::DateTime<chrono::Utc> {
    let now = qm_store::now();
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|duration| now.checked_sub_signed(duration))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

impl Health {
    /// One sweep; returns how many instances it moved.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn sweep(&self) -> Result<usize, SagaError> {
        let started = Instant::now();
        let mut moved = 0;
        let startup = format!("not ready within {} s of booting", self.deadlines.startup.as_secs());
        for instance in
            self.store.instances_in_state_since(InstanceState::Booting, before(self.deadlines.startup), BATCH).await?
        {
            let step = Step {
                cause: None,
                to: InstanceState::StartupFailed,
                reason: &startup,
                progress_percent: None,
                started,
                then_terminate: false,
            };
            if let Some(failed) = self.saga.apply(&instance, &step).await? {
                moved += 1;
                self.terminate(&failed, &startup, started).await?;
            }
        }
        // Failed starts left behind by a crash between the two steps above.
        for instance in
            self.store.instances_in_state_since(InstanceState::StartupFailed, qm_store::now(), BATCH).await?
        {
            moved += usize::from(self.terminate(&instance, &startup, started).await?);
        }
        let silent = format!("no heartbeat for {} s", self.deadlines.heartbeat.as_secs());
        for instance in self.store.silent_ready_instances(before(self.deadlines.heartbeat), BATCH).await? {
            let step = Step {
                cause: None,
                to: InstanceState::Unhealthy,
                reason: &silent,
                progress_percent: None,
                started,
                then_terminate: false,
            };
            moved += usize::from(self.saga.apply(&instance, &step).await?.is_some());
        }
        Ok(moved)
    }

    async fn terminate(
        &self,
        instance: &qm_store::Instance,
        reason: &str,
        started: Instant,
    ) -> Result<bool, SagaError> {
        let step = Step {
            cause: None,
            to: InstanceState::Terminating,
            reason,
            progress_percent: None,
            started,
            then_terminate: true,
        };
        Ok(self.saga.apply(instance, &step).await?.is_some())
    }

    /// Sweeps every `sweep_every` while this replica holds the `orchestrator.health` lease.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let holder = uuid::Uuid::new_v4().to_string();
        while !shutdown.is_triggered() {
            let leased = self.store.acquire_lease("orchestrator.health", &holder, self.deadlines.sweep_every * 3).await;
            let outcome = match leased {
                Ok(true) => self.sweep().await,
                Ok(false) => Ok(0),
                Err(error) => Err(error.into()),
            };
            match outcome {
                Ok(0) => {}
                Ok(moved) => tracing::info!(moved, "health sweep moved instances past their deadlines"),
                Err(error) => tracing::warn!(%error, "health sweep failed; trying again next time"),
            }
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(self.deadlines.sweep_every) => {}
            }
        }
    }
}
