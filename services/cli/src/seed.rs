//! `qm seed`: applies the catalog seed (the built-in `seeds/catalog.json`, or `--file`) to the
//! database named by `QM_DATABASE_URL`. Idempotent: a second run changes nothing.

use std::path::Path;

use anyhow::Context as _;
use qm_config::Environment;

/// # Errors
/// When `QM_DATABASE_URL` is unset, the file cannot be read or is not a seed, or the store fails.
pub async fn run(file: Option<&Path>) -> anyhow::Result<()> {
    let environment = Environment::process();
    let url = environment.secret("QM_DATABASE_URL")?.ok_or_else(|| {
        anyhow::anyhow!("QM_DATABASE_URL is not set: set it to postgres://USER@HOST:5432/DATABASE or sqlite://PATH")
    })?;
    let text = match file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => qm_api::seeds::CATALOG.to_owned(),
    };
    let seed = qm_api::seeds::parse(&text)?;
    let store = qm_store::connect(url.expose()).await?;
    let report = qm_api::seeds::apply(&*store, &seed).await?;
    println!(
        "catalog seed applied to {}: {} providers, {} regions, {} zones, {} instance types",
        qm_store::redact(url.expose()),
        report.providers,
        report.regions,
        report.zones,
        report.instance_types
    );
    Ok(())
}
