//! PostgreSQL: the production store. Claims use `FOR UPDATE SKIP LOCKED` so that several
//! replicas share outbox work without taking the same rows.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Pool, Postgres};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PostgresStore {
    pool: Pool<Postgres>,
    outbox_committed: std::sync::Arc<tokio::sync::Notify>,
}

impl PostgresStore {
    /// Connects with at most `max_connections` and applies pending migrations (under
    /// PostgreSQL's migration lock, so replicas starting together apply each migration once).
    ///
    /// # Errors
    /// [`StoreError::InvalidUrl`](crate::StoreError::InvalidUrl),
    /// [`StoreError::Unavailable`](crate::StoreError::Unavailable) naming the server (never the
    /// password), [`StoreError::Migration`](crate::StoreError::Migration).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, crate::StoreError> {
        let options: PgConnectOptions =
            url.parse().map_err(|error: sqlx::Error| crate::StoreError::InvalidUrl(error.to_string()))?;
        let target =
            format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or("postgres"));
        // One plan per statement (decision 122): on analyzed tables PostgreSQL kept planning
        // the instance list anew on every execution (its generic plan's estimate is higher),
        // which cost a one-row page a third of its throughput. Our statements are key and
        // index lookups whose best plan does not depend on the values bound.
        // No ping before each checkout: it doubled the round trips of every one-query request.
        // A connection the server dropped (a restart) fails its next query once, with
        // `Unavailable`, and leaves the pool (decision 69).
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .test_before_acquire(false)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(
                options.application_name("quartermaster").options([("plan_cache_mode", "force_generic_plan")]),
            )
            .await
            .map_err(|error| {
                crate::StoreError::Unavailable(format!("cannot connect to PostgreSQL at {target}: {error}"))
            })?;
        sqlx::migrate!("../../migrations/postgres")
            .run(&pool)
            .await
            .map_err(|error| crate::StoreError::Migration(error.to_string()))?;
        Ok(Self { pool, outbox_committed: std::sync::Arc::default() })
    }

    /// The pool, for the tests and benchmarks that set up data in bulk.
    pub fn pool(&self) -> &Pool<Postgres> {
        &self.pool
    }

    fn reader(&self) -> &Pool<Postgres> {
        &self.pool
    }

    fn writer(&self) -> &Pool<Postgres> {
        &self.pool
    }

    fn outbox_notify(&self) -> &std::sync::Arc<tokio::sync::Notify> {
        &self.outbox_committed
    }
}

mod implementation {
    use super::PostgresStore;

    crate::sql::impl_sql_store!(
        store: PostgresStore,
        tx: PostgresTx,
        db: sqlx::Postgres,
        backend: Backend::Postgres,
        skip_locked: " FOR UPDATE SKIP LOCKED"
    );
    crate::access::impl_access_sql!(store: PostgresStore, tx: PostgresTx, db: sqlx::Postgres);
    crate::catalog::impl_catalog_sql!(store: PostgresStore, tx: PostgresTx, db: sqlx::Postgres);
    crate::fleet::impl_fleet_sql!(store: PostgresStore, tx: PostgresTx, db: sqlx::Postgres);
    crate::workers::impl_workers_sql!(store: PostgresStore, tx: PostgresTx, db: sqlx::Postgres);
    crate::pools::impl_pools_sql!(store: PostgresStore, tx: PostgresTx, db: sqlx::Postgres);
    crate::finops::impl_finops_sql!(store: PostgresStore, tx: PostgresTx, db: sqlx::Postgres, least: "LEAST", greatest: "GREATEST");
}
