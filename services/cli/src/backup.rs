//! `qm backup` and `qm restore` (docs/backups.md): the database named by `QM_DATABASE_URL`, to
//! and from a directory holding the dump and a manifest.
//!
//! - PostgreSQL: `pg_dump` in its custom format (a consistent snapshot while the services run),
//!   restored with `pg_restore` in one transaction.
//! - SQLite: an online copy (`VACUUM INTO`), restored by copying the file into place.
//!
//! The manifest (`manifest.json`) names the engine, the file, its size and SHA-256, the schema
//! version (the last migration applied) and when it was taken. A restore checks the checksum, the
//! engine and that this build knows the schema, and refuses a target that already holds a
//! Quartermaster schema unless forced. The connection reaches `pg_dump` and `pg_restore` through
//! libpq's environment (`PGHOST`, `PGPASSWORD`, …), never on a command line others can read.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use qm_config::Environment;
use qm_store::backup::{self, Engine};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Deserialize, Serialize)]
pub struct Manifest {
    /// Of this manifest.
    pub format: u32,
    pub engine: Engine,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub schema_version: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub qm_version: String,
}

fn database_url() -> anyhow::Result<String> {
    let url = Environment::process().secret("QM_DATABASE_URL")?.ok_or_else(|| {
        anyhow::anyhow!("QM_DATABASE_URL is not set: set it to postgres://USER@HOST:5432/DATABASE or sqlite://PATH")
    })?;
    Ok(url.expose().to_owned())
}

fn sha256(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0_u8; 1 << 16];
    let mut bytes = 0_u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
        hasher.update(&buffer[..read]);
    }
    Ok((format!("{:x}", hasher.finalize()), bytes))
}

/// libpq's environment for the connection `url` names (host, port, user, password, database,
/// `sslmode`), so that no secret is on a command line.
pub fn pg_environment(url: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let parsed = url::Url::parse(url).context("QM_DATABASE_URL is not a URL")?;
    let decode = |text: &str| {
        url::form_urlencoded::parse(format!("x={text}").as_bytes())
            .map(|(_, value)| value.into_owned())
            .next()
            .unwrap_or_default()
    };
    let mut environment = vec![("PGDATABASE", decode(parsed.path().trim_start_matches('/')))];
    if let Some(host) = parsed.host_str() {
        environment.push(("PGHOST", host.trim_start_matches('[').trim_end_matches(']').to_owned()));
    }
    if let Some(port) = parsed.port() {
        environment.push(("PGPORT", port.to_string()));
    }
    if !parsed.username().is_empty() {
        environment.push(("PGUSER", decode(parsed.username())));
    }
    if let Some(password) = parsed.password() {
        environment.push(("PGPASSWORD", decode(password)));
    }
    for (name, value) in parsed.query_pairs() {
        if name == "sslmode" {
            environment.push(("PGSSLMODE", value.into_owned()));
        }
    }
    Ok(environment)
}

/// Runs a PostgreSQL client tool on the database `url` names (through libpq's environment).
async fn pg_tool(tool: &str, url: &str, arguments: &[&str]) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(tool)
        .args(arguments)
        .envs(pg_environment(url)?)
        .output()
        .await
        .map_err(|error| anyhow::anyhow!("cannot run {tool} ({error}): install PostgreSQL's client tools"))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        bail!("{tool} failed: {}", said.lines().find(|line| !line.trim().is_empty()).unwrap_or("no message"));
    }
    Ok(())
}

/// # Errors
/// When the database cannot be read, the directory written, or `pg_dump` fails.
pub async fn backup(to: &Path) -> anyhow::Result<()> {
    let url = database_url()?;
    let engine = backup::engine(&url)?;
    let schema_version = backup::schema_version(&url).await?.ok_or_else(|| {
        anyhow::anyhow!("{} holds no Quartermaster schema: nothing to back up", qm_store::redact(&url))
    })?;
    if to.exists() && std::fs::read_dir(to)?.next().is_some() {
        bail!("{} is not empty: back up into a new directory", to.display());
    }
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let file = match engine {
        Engine::Postgres => "qm.dump",
        Engine::Sqlite => "qm.db",
    };
    let path = to.join(file);
    let text = path.to_str().ok_or_else(|| anyhow::anyhow!("the backup path is not UTF-8"))?;
    match engine {
        Engine::Postgres => {
            pg_tool("pg_dump", &url, &["--format=custom", "--no-owner", "--no-privileges", "--file", text]).await?;
        }
        Engine::Sqlite => backup::sqlite_copy(&url, &path).await?,
    }
    let (sha256, bytes) = sha256(&path)?;
    let manifest = Manifest {
        format: 1,
        engine,
        file: file.to_owned(),
        bytes,
        sha256,
        schema_version,
        created_at: chrono::Utc::now(),
        qm_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    std::fs::write(to.join(MANIFEST), serde_json::to_string_pretty(&manifest)?)?;
    println!(
        "backed up {} (schema {schema_version}) to {}: {file}, {bytes} bytes, sha256 {}",
        qm_store::redact(&url),
        to.display(),
        manifest.sha256
    );
    Ok(())
}

/// # Errors
/// When the backup is damaged or of another engine or a newer schema, the target holds a
/// schema and `force` is not set, or `pg_restore` fails.
pub async fn restore(from: &Path, force: bool) -> anyhow::Result<()> {
    let url = database_url()?;
    let engine = backup::engine(&url)?;
    let manifest: Manifest = serde_json::from_str(
        &std::fs::read_to_string(from.join(MANIFEST))
            .with_context(|| format!("no {MANIFEST} in {}", from.display()))?,
    )
    .context("the manifest is not one `qm backup` wrote")?;
    if manifest.file.contains('/') || manifest.file.starts_with('.') {
        bail!("the manifest names a file outside its directory: {}", manifest.file);
    }
    let path = from.join(&manifest.file);
    let (sha256, bytes) = sha256(&path)?;
    if (sha256.as_str(), bytes) != (manifest.sha256.as_str(), manifest.bytes) {
        bail!("{} does not match its manifest (sha256 or size): the backup is damaged", path.display());
    }
    if manifest.engine != engine {
        bail!("the backup is of {:?}, QM_DATABASE_URL names {:?}", manifest.engine, engine);
    }
    let known = backup::latest_schema_version(engine);
    if manifest.schema_version > known {
        bail!(
            "the backup's schema ({}) is newer than this qm knows ({known}): restore with a newer qm",
            manifest.schema_version
        );
    }
    if let Some(version) = backup::schema_version(&url).await?
        && !force
    {
        bail!(
            "{} already holds a Quartermaster schema (version {version}): restore into an empty database, or pass --force to replace it",
            qm_store::redact(&url)
        );
    }
    let text = path.to_str().ok_or_else(|| anyhow::anyhow!("the backup path is not UTF-8"))?;
    match engine {
        Engine::Postgres => {
            // pg_restore insists on a database argument: its name alone (the rest, password
            // included, goes through the environment).
            let name = pg_environment(&url)?.into_iter().find(|(key, _)| *key == "PGDATABASE").map(|(_, value)| value);
            let dbname = format!("--dbname={}", name.unwrap_or_default());
            let mut arguments =
                vec!["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", &dbname];
            if force {
                arguments.extend(["--clean", "--if-exists"]);
            }
            arguments.push(text);
            pg_tool("pg_restore", &url, &arguments).await?;
        }
        Engine::Sqlite => {
            let target = backup::sqlite_path(&url)?;
            let directory = target.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
            std::fs::create_dir_all(&directory)?;
            let partial = directory.join(format!(".qm-restore-{}", std::process::id()));
            std::fs::copy(&path, &partial)?;
            // Journals of a replaced database would be replayed over the restored file.
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
            }
            std::fs::rename(&partial, &target)?;
        }
    }
    println!(
        "restored {} (schema {}, taken {}) into {}; start the services: they migrate it to this release, and reconciliation adopts or reaps provider instances",
        from.display(),
        manifest.schema_version,
        manifest.created_at.to_rfc3339(),
        qm_store::redact(&url)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_connection_goes_through_the_environment_decoded() {
        let environment =
            super::pg_environment("postgres://qm:p%40ss@db.internal:6432/qm_prod?sslmode=require").expect("parsed");
        let expected = [
            ("PGDATABASE", "qm_prod"),
            ("PGHOST", "db.internal"),
            ("PGPORT", "6432"),
            ("PGUSER", "qm"),
            ("PGPASSWORD", "p@ss"),
            ("PGSSLMODE", "require"),
        ];
        assert_eq!(environment, expected.map(|(name, value)| (name, value.to_owned())));
    }
}
