use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qm_config::Environment;
use qm_providers::agent::{AgentInfo, BootConfig};
use qm_runtime::Shutdown;
use qm_worker_agent::engine::EngineStatus;
use qm_worker_agent::mock_engine::MockEngine;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("qm-worker-agent: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("qm-worker-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The boot configuration: the file `QM_AGENT_CONFIG` names (by default
/// [`BootConfig::PATH`] when it exists), else `QM_API_URL`, `QM_INSTANCE_ID` and
/// `QM_BOOTSTRAP_TOKEN` (or `_FILE`) from the environment; `None` when neither is there.
fn boot_config(environment: &Environment) -> anyhow::Result<Option<BootConfig>> {
    let path = environment.get("QM_AGENT_CONFIG").map(std::path::PathBuf::from).or_else(|| {
        let default = std::path::Path::new(BootConfig::PATH);
        default.exists().then(|| default.to_owned())
    });
    if let Some(path) = path {
        let text = std::fs::read_to_string(&path)
            .map_err(|error| anyhow::anyhow!("cannot read the agent configuration {}: {error}", path.display()))?;
        return Ok(Some(BootConfig::from_json(&text).map_err(anyhow::Error::msg)?));
    }
    let token = environment.secret("QM_BOOTSTRAP_TOKEN")?;
    Ok(match (environment.get("QM_API_URL"), environment.get("QM_INSTANCE_ID"), token) {
        (Some(api_url), Some(instance_id), Some(token)) => Some(BootConfig {
            api_url,
            instance_id,
            bootstrap_token: token.expose().to_owned(),
            model: environment.get("QM_MODEL").unwrap_or_else(|| "mock-model".into()),
            engine_args: Vec::new(),
        }),
        _ => None,
    })
}

/// The mock engine's latency model from `QM_MOCK_PREFILL_US_PER_TOKEN`,
/// `QM_MOCK_DECODE_MS_PER_TOKEN`, `QM_MOCK_CONCURRENCY_SLOWDOWN`, `QM_MOCK_COLD_START_MS` and
/// `QM_MOCK_CACHE_BLOCKS` (all instant by default).
fn mock_latency(environment: &Environment) -> anyhow::Result<qm_worker_agent::mock_engine::Latency> {
    let number = |name: &str| -> anyhow::Result<Option<f64>> {
        environment
            .get(name)
            .map(|text| {
                text.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|value| value.is_finite() && *value >= 0.0 && *value <= 1e7)
                    .ok_or_else(|| anyhow::anyhow!("{name} must be a number from 0 to 10000000, got `{text}`"))
            })
            .transpose()
    };
    let mut latency = qm_worker_agent::mock_engine::Latency::default();
    if let Some(micros) = number("QM_MOCK_PREFILL_US_PER_TOKEN")? {
        latency.prefill_per_token = Duration::from_secs_f64(micros / 1e6);
    }
    if let Some(millis) = number("QM_MOCK_DECODE_MS_PER_TOKEN")? {
        latency.decode_per_token = Duration::from_secs_f64(millis / 1e3);
    }
    if let Some(slowdown) = number("QM_MOCK_CONCURRENCY_SLOWDOWN")? {
        latency.concurrency_slowdown = slowdown;
    }
    if let Some(millis) = number("QM_MOCK_COLD_START_MS")? {
        latency.cold_start = Duration::from_secs_f64(millis / 1e3);
    }
    if let Some(blocks) = number("QM_MOCK_CACHE_BLOCKS")? {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let blocks = blocks as usize;
        latency.cache_blocks = blocks;
    }
    Ok(latency)
}

/// How long a stopping agent waits for in-flight requests before it exits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

async fn run() -> anyhow::Result<()> {
    let environment = Environment::process();
    let address = environment.socket_addr("QM_WORKER_AGENT_ADDR", qm_config::defaults::WORKER_AGENT_ADDR)?;
    let _telemetry = qm_telemetry::init("qm-worker-agent")?;
    // The boot configuration: the JSON file cloud-init (or the local provider) wrote, else the
    // operator's environment. Nothing else of the user data is read.
    let boot = boot_config(&environment)?;
    let model = boot
        .as_ref()
        .map(|config| config.model.clone())
        .or_else(|| environment.get("QM_MODEL"))
        .unwrap_or_else(|| "mock-model".into());
    let shutdown = Shutdown::new();

    // The engine: the built-in mock (`QM_ENGINE=mock`) or an OpenAI-compatible server by URL.
    let engine_url = match environment.get("QM_ENGINE").as_deref() {
        Some("mock") => {
            let engine_address = environment.socket_addr("QM_MOCK_ENGINE_ADDR", "127.0.0.1:8000")?;
            let listener = tokio::net::TcpListener::bind(engine_address).await?;
            let bound = listener.local_addr()?;
            let engine = MockEngine::with_latency(&model, mock_latency(&environment)?);
            let stopping = shutdown.clone();
            tokio::spawn(async move {
                let serving =
                    axum::serve(listener, engine.router()).with_graceful_shutdown(async move { stopping.wait().await });
                if let Err(error) = serving.await {
                    tracing::error!(%error, "mock engine stopped");
                }
            });
            tracing::info!(address = %bound, "mock engine listening");
            format!("http://{bound}")
        }
        Some(other) => anyhow::bail!("QM_ENGINE must be `mock` (or unset, with QM_ENGINE_URL): got `{other}`"),
        None => {
            environment.get("QM_ENGINE_URL").ok_or_else(|| anyhow::anyhow!("set QM_ENGINE_URL, or QM_ENGINE=mock"))?
        }
    };
    // With QM_ENGINE_COMMAND the agent runs the engine itself and restarts it when it exits.
    if let Some(command) = environment.get("QM_ENGINE_COMMAND") {
        tokio::spawn(qm_worker_agent::supervisor::supervise(command, shutdown.clone()));
    }

    let service = qm_worker_agent::build(address, Some(&engine_url)).await?;
    tracing::info!(address = %service.address(), engine = %engine_url, "listening");

    // The worker protocol, when the instance was given its boot configuration.
    let gpus = Arc::new(qm_worker_agent::gpu::Gpus::detect());
    let status = Arc::new(EngineStatus::new(&engine_url, gpus.clone()));
    let gone = Arc::new(AtomicBool::new(false));
    if boot.is_none() {
        tracing::warn!(
            "no boot configuration (QM_AGENT_CONFIG, or QM_API_URL, QM_INSTANCE_ID and QM_BOOTSTRAP_TOKEN): not registering with Quartermaster"
        );
    }
    // Set once the protocol has sent its last heartbeat, which reads the engine's token
    // counters: the engine stops only after it.
    let (protocol_ended, mut protocol_end) = tokio::sync::watch::channel(boot.is_none());
    if let Some(config) = boot {
        let info = AgentInfo {
            engine_url: engine_url.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            gpus: gpus.inventory(),
        };
        let speaking = qm_providers::agent::speak(config, info, status.clone(), gone.clone());
        tokio::spawn(async move {
            speaking.await;
            let _ = protocol_ended.send(true);
        });
    }

    let trigger = shutdown.clone();
    let draining = status.draining.clone();
    let drain_status = status.clone();
    let stop_protocol = gone.clone();
    let mut protocol_stopped = protocol_end.clone();
    tokio::spawn(async move {
        qm_runtime::shutdown::signal().await;
        // Drain: report `draining`, let in-flight requests finish (bounded), then stop.
        draining.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            use qm_providers::agent::StatusSource as _;
            if drain_status.status().await.in_flight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop_protocol.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(3), protocol_stopped.wait_for(|ended| *ended)).await;
        trigger.trigger();
    });
    service.run_until_stopped(shutdown).await?;
    gone.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), protocol_end.wait_for(|ended| *ended)).await;
    Ok(())
}
