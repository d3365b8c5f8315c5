//! `qm dev`: the whole control plane in one process, on embedded defaults (DESIGN section 1).
//!
//! SQLite in `<data-dir>/qm.db`, the in-process bus, the `local` and `sim` providers. The admin
//! password comes from `QM_ADMIN_PASSWORD` (or `_FILE`); without either, one is generated on the
//! first start, written to `<data-dir>/admin-password` (mode 0600) and printed once. Each service
//! listens on its own port, as in production, so URLs do not change between the two.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use qm_config::{Environment, Secret, Settings};
use qm_runtime::Shutdown;
use qm_runtime::service::Service;

const ADMIN_PASSWORD_FILE: &str = "admin-password";
/// Bound on how long stopping may take before the process exits anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(8);

/// # Errors
/// A configuration, store or bind error; start-up stops at the first.
pub async fn run(data_dir: &Path, without: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let environment = Environment::process();
    let mut settings = Settings::embedded(&environment, data_dir)?;
    let _telemetry = qm_telemetry::init("qm-dev")?;
    let dependencies = qm_runtime::entrypoint::connect(settings.clone()).await?;

    if settings.admin_password.is_none() {
        settings.admin_password = Some(admin_password(data_dir, &*dependencies.store).await?);
    }
    let dependencies = qm_runtime::service::Dependencies { settings: settings.clone(), ..dependencies };
    if let Some(report) = qm_api::seeds::apply_if_empty(&*dependencies.store).await? {
        println!(
            "Loaded the catalog seed: {} providers, {} zones, {} instance types.",
            report.providers, report.zones, report.instance_types
        );
    }

    let shutdown = Shutdown::new();
    let wanted = |name: &str| !without.iter().any(|left_out| left_out == name);
    let api = qm_api::build(dependencies.clone(), settings.api_addr, shutdown.clone()).await?;
    // Agents of local and sim instances register with the api where it actually listens.
    let mut dependencies = dependencies;
    if dependencies.settings.api_url.is_none() {
        dependencies.settings.api_url = Some(format!("http://{}", api.address()));
    }
    let mut services: Vec<Service> = vec![api];
    if wanted(qm_orchestrator::NAME) {
        services
            .push(qm_orchestrator::build(dependencies.clone(), settings.orchestrator_addr, shutdown.clone()).await?);
    }
    if wanted(qm_finops::NAME) {
        services.push(qm_finops::build(dependencies.clone(), settings.finops_addr, shutdown.clone()).await?);
    }
    if wanted(qm_router::NAME) {
        services.push(qm_router::build(dependencies.clone(), settings.router_addr, shutdown.clone()).await?);
    }

    println!("Quartermaster dev is running (data in {})", data_dir.display());
    for service in &services {
        println!("  {:<13} http://{}", service.name(), service.address());
    }
    println!("  database      {}", qm_store::redact(settings.database_url.expose()));
    println!("  bus           {}", settings.bus_url.expose().split('?').next().unwrap_or_default());
    println!("Stop with Ctrl-C.");

    let running =
        futures::future::join_all(services.into_iter().map(|service| service.run_until_stopped(shutdown.clone())));
    tokio::pin!(running);
    tokio::select! {
        results = &mut running => {
            for result in results {
                result?;
            }
            return Ok(());
        }
        () = qm_runtime::shutdown::signal() => shutdown.trigger(),
    }
    match tokio::time::timeout(STOP_TIMEOUT, running).await {
        Ok(results) => {
            for result in results {
                result?;
            }
        }
        Err(_) => tracing::warn!("services did not stop within {STOP_TIMEOUT:?}; exiting anyway"),
    }
    println!("Quartermaster dev stopped.");
    Ok(())
}

/// The admin password for a first start without `QM_ADMIN_PASSWORD`: the one saved by an
/// earlier start if any, else a new one, saved and printed once.
async fn admin_password(data_dir: &Path, store: &dyn qm_store::Store) -> anyhow::Result<Secret> {
    let path = data_dir.join(ADMIN_PASSWORD_FILE);
    if let Ok(saved) = std::fs::read_to_string(&path) {
        return Ok(Secret::new(saved.trim_end()));
    }
    let password = qm_api::password::generate();
    if store.user_by_login(qm_api::bootstrap::ADMIN_USERNAME).await?.is_none() {
        write_private(&path, &password).with_context(|| format!("cannot write {}", path.display()))?;
        println!("Generated the admin password (user `admin`), saved to {}:", path.display());
        println!("  {password}");
    }
    Ok(Secret::new(password))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{contents}")
}
