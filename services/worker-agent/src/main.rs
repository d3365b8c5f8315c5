use std::process::ExitCode;

use qm_config::Environment;
use qm_runtime::Shutdown;

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

async fn run() -> anyhow::Result<()> {
    let environment = Environment::process();
    let address = environment.socket_addr("QM_WORKER_AGENT_ADDR", qm_config::defaults::WORKER_AGENT_ADDR)?;
    let _telemetry = qm_telemetry::init("qm-worker-agent")?;
    let service = qm_worker_agent::build(address, environment.get("QM_ENGINE_URL").as_deref()).await?;
    tracing::info!(address = %service.address(), "listening");
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        qm_runtime::shutdown::signal().await;
        trigger.trigger();
    });
    service.run_until_stopped(shutdown).await?;
    Ok(())
}
