//! Engine supervision: with `QM_ENGINE_COMMAND`, the agent runs the engine itself (e.g.
//! `vllm serve …`) and restarts it with exponential backoff when it exits; while it is down the
//! engine's `/health` fails, so the agent reports `not_ready` and its `/readyz` answers 503.

use std::time::Duration;

use qm_runtime::Shutdown;
use qm_runtime::backoff::Backoff;

/// A run shorter than this counts as a crash for the backoff; a longer one resets it.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Runs `command` (through `sh -c`) until `shutdown`, restarting it whenever it exits.
pub async fn supervise(command: String, shutdown: Shutdown) {
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let mut failures = 0;
    while !shutdown.is_triggered() {
        let started = tokio::time::Instant::now();
        let child = tokio::process::Command::new("sh").arg("-c").arg(&command).kill_on_drop(true).spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(%error, "cannot start the engine");
                failures += 1;
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(backoff.delay(failures)) => continue,
                }
            }
        };
        tracing::info!(pid = ?child.id(), "engine started");
        let status = tokio::select! {
            () = shutdown.wait() => {
                let _ = child.kill().await;
                return;
            }
            status = child.wait() => status,
        };
        failures = if started.elapsed() >= STABLE_AFTER { 1 } else { failures + 1 };
        let delay = backoff.delay(failures);
        tracing::warn!(?status, ?delay, "engine exited; restarting");
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
