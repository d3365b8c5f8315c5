//! SQLite: the embedded default. One file in the data directory, WAL journal, foreign keys on.
//!
//! SQLite allows one writer at a time, so writes go through a pool of one connection (they
//! queue instead of failing with `SQLITE_BUSY`) while reads use a pool of their own.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

const READERS: u32 = 4;
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct SqliteStore {
    reader: Pool<Sqlite>,
    writer: Pool<Sqlite>,
    outbox_committed: std::sync::Arc<tokio::sync::Notify>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError::InvalidUrl`](crate::StoreError::InvalidUrl) for a malformed URL,
    /// [`StoreError::Unavailable`](crate::StoreError::Unavailable) when the file cannot be opened,
    /// [`StoreError::Migration`](crate::StoreError::Migration).
    pub async fn connect(url: &str) -> Result<Self, crate::StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|error| crate::StoreError::InvalidUrl(error.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|error| crate::StoreError::Unavailable(format!("cannot open {url}: {error}")))?;
        sqlx::migrate!("../../migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|error| crate::StoreError::Migration(error.to_string()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.read_only(true))
            .await
            .map_err(|error| crate::StoreError::Unavailable(format!("cannot open {url}: {error}")))?;
        Ok(Self { reader, writer, outbox_committed: std::sync::Arc::default() })
    }

    fn reader(&self) -> &Pool<Sqlite> {
        &self.reader
    }

    fn writer(&self) -> &Pool<Sqlite> {
        &self.writer
    }

    fn outbox_notify(&self) -> &std::sync::Arc<tokio::sync::Notify> {
        &self.outbox_committed
    }
}

mod implementation {
    use super::SqliteStore;

    crate::sql::impl_sql_store!(
        store: SqliteStore,
        tx: SqliteTx,
        db: sqlx::Sqlite,
        backend: Backend::Sqlite,
        skip_locked: ""
    );
    crate::access::impl_access_sql!(store: SqliteStore, tx: SqliteTx, db: sqlx::Sqlite);
    crate::catalog::impl_catalog_sql!(store: SqliteStore, tx: SqliteTx, db: sqlx::Sqlite);
    crate::fleet::impl_fleet_sql!(store: SqliteStore, tx: SqliteTx, db: sqlx::Sqlite);
    crate::workers::impl_workers_sql!(store: SqliteStore, tx: SqliteTx, db: sqlx::Sqlite);
    crate::pools::impl_pools_sql!(store: SqliteStore, tx: SqliteTx, db: sqlx::Sqlite);
    crate::finops::impl_finops_sql!(store: SqliteStore, tx: SqliteTx, db: sqlx::Sqlite, least: "MIN", greatest: "MAX");
}
