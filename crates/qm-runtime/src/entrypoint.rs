//! The `main` of every production binary: configuration from the environment, telemetry, the
//! store and the bus, the service, and a clean exit on SIGTERM or Ctrl-C.
//!
//! Start-up failures print one line naming what is wrong (`qm-api: QM_DATABASE_URL is not set:
//! …`) and exit with status 1, without a backtrace; a clean stop exits 0.

use std::future::Future;
use std::process::ExitCode;

use qm_config::{Environment, Settings};

use crate::Shutdown;
use crate::service::{Dependencies, Service};

/// Runs the service `build` makes until a signal arrives.
pub fn run<Build, Built>(binary: &'static str, build: Build) -> ExitCode
where
    Build: FnOnce(Dependencies, Shutdown) -> Built,
    Built: Future<Output = anyhow::Result<Service>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{binary}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(binary, build)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{binary}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve<Build, Built>(binary: &'static str, build: Build) -> anyhow::Result<()>
where
    Build: FnOnce(Dependencies, Shutdown) -> Built,
    Built: Future<Output = anyhow::Result<Service>>,
{
    let settings = Settings::from_env(&Environment::process())?;
    let _telemetry = qm_telemetry::init(binary)?;
    let dependencies = connect(settings).await?;
    let shutdown = Shutdown::new();
    let service = build(dependencies, shutdown.clone()).await?;
    tracing::info!(service = service.name(), address = %service.address(), "listening");
    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        signal_shutdown.trigger();
    });
    service.run_until_stopped(shutdown).await?;
    Ok(())
}

/// Opens the store (applying migrations) and the bus named by the settings.
///
/// # Errors
/// The store or bus error; messages name the server, never credentials.
pub async fn connect(settings: Settings) -> anyhow::Result<Dependencies> {
    let options = qm_store::StoreOptions { max_connections: settings.database_max_connections };
    let store = qm_store::connect_with(settings.database_url.expose(), &options).await?;
    let bus = qm_bus::connect(settings.bus_url.expose()).await?;
    Ok(Dependencies { settings, store, bus })
}
