//! What `qm backup` and `qm restore` ask of the database itself: which engine a URL names, the
//! schema version a database is at (the last migration applied; none for an empty database),
//! the version this build migrates to, and SQLite's online copy (`VACUUM INTO`, consistent
//! while the services write). PostgreSQL is dumped and restored by `pg_dump` / `pg_restore`.

use std::path::Path;
use std::str::FromStr as _;

use sqlx::Connection as _;

use crate::StoreError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    Sqlite,
}

/// The engine `url` names.
///
/// # Errors
/// [`StoreError::InvalidUrl`] for any other scheme.
pub fn engine(url: &str) -> Result<Engine, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Engine::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(Engine::Sqlite)
    } else {
        Err(StoreError::InvalidUrl("expected postgres://… or sqlite://…".into()))
    }
}

/// The last migration this build applies to `engine`.
pub fn latest_schema_version(engine: Engine) -> i64 {
    let migrator = match engine {
        Engine::Postgres => sqlx::migrate!("../../migrations/postgres"),
        Engine::Sqlite => sqlx::migrate!("../../migrations/sqlite"),
    };
    migrator.iter().map(|migration| migration.version).max().unwrap_or(0)
}

fn unavailable(url: &str, error: &sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("cannot open {}: {error}", crate::redact(url)))
}

/// The last migration applied to the database at `url`; `None` when it holds no Quartermaster
/// schema (an empty database, or a SQLite file that does not exist yet).
///
/// # Errors
/// When the database cannot be reached or read.
pub async fn schema_version(url: &str) -> Result<Option<i64>, StoreError> {
    const TABLE: &str = "_sqlx_migrations";
    match engine(url)? {
        Engine::Postgres => {
            let mut connection = sqlx::PgConnection::connect(url).await.map_err(|error| unavailable(url, &error))?;
            let exists: bool =
                sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(TABLE).fetch_one(&mut connection).await?;
            if !exists {
                return Ok(None);
            }
            Ok(sqlx::query_scalar(&format!("SELECT MAX(version) FROM {TABLE} WHERE success"))
                .fetch_one(&mut connection)
                .await?)
        }
        Engine::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map_err(|error| StoreError::InvalidUrl(error.to_string()))?
                .read_only(true);
            if !Path::new(options.get_filename()).exists() {
                return Ok(None);
            }
            let mut connection =
                sqlx::SqliteConnection::connect_with(&options).await.map_err(|error| unavailable(url, &error))?;
            let exists: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1")
                    .bind(TABLE)
                    .fetch_one(&mut connection)
                    .await?;
            if exists == 0 {
                return Ok(None);
            }
            Ok(sqlx::query_scalar(&format!("SELECT MAX(version) FROM {TABLE} WHERE success"))
                .fetch_one(&mut connection)
                .await?)
        }
    }
}

/// The file a `sqlite://` URL names.
///
/// # Errors
/// [`StoreError::InvalidUrl`] for a malformed URL.
pub fn sqlite_path(url: &str) -> Result<std::path::PathBuf, StoreError> {
    let options =
        sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(|error| StoreError::InvalidUrl(error.to_string()))?;
    Ok(options.get_filename().to_owned())
}

/// Writes a consistent copy of the SQLite database at `url` to `to` (which must not exist),
/// while other connections keep writing.
///
/// # Errors
/// When the database cannot be opened or the copy written.
pub async fn sqlite_copy(url: &str, to: &Path) -> Result<(), StoreError> {
    let options =
        sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(|error| StoreError::InvalidUrl(error.to_string()))?;
    let mut connection =
        sqlx::SqliteConnection::connect_with(&options).await.map_err(|error| unavailable(url, &error))?;
    let target = to.to_str().ok_or_else(|| StoreError::InvalidUrl("the backup path is not UTF-8".into()))?;
    sqlx::query("VACUUM INTO $1").bind(target).execute(&mut connection).await?;
    Ok(())
}
