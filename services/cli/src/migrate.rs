//! `qm migrate`: opening the store applies pending migrations; this does only that.

use qm_config::Environment;

/// # Errors
/// When `QM_DATABASE_URL` is unset or the database cannot be reached or migrated.
pub async fn run() -> anyhow::Result<()> {
    let environment = Environment::process();
    let url = environment.secret("QM_DATABASE_URL")?.ok_or_else(|| {
        anyhow::anyhow!("QM_DATABASE_URL is not set: set it to postgres://USER@HOST:5432/DATABASE or sqlite://PATH")
    })?;
    qm_store::connect(url.expose()).await?;
    println!("migrations applied to {}", qm_store::redact(url.expose()));
    Ok(())
}
