//! Runs the store conformance suite against SQLite (a temporary file per test) and PostgreSQL
//! (a uniquely named database per test, dropped afterwards). PostgreSQL must be running
//! (`QM_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`); a missing
//! server fails the suite, it is never skipped.

use std::sync::Arc;

use async_trait::async_trait;
use qm_store::Store;
use qm_store::conformance::TestStore;

mod sqlite {
    use super::*;
    use std::path::PathBuf;

    struct SqliteFixture {
        store: Arc<dyn Store>,
        path: PathBuf,
    }

    #[async_trait]
    impl TestStore for SqliteFixture {
        fn store(&self) -> Arc<dyn Store> {
            self.store.clone()
        }

        async fn cleanup(&self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
            }
        }
    }

    async fn fixture() -> SqliteFixture {
        let path = std::env::temp_dir().join(format!("qm-store-test-{}.db", uuid::Uuid::new_v4().simple()));
        let url = format!("sqlite://{}", path.display());
        let store = qm_store::connect(&url).await.expect("open sqlite");
        SqliteFixture { store, path }
    }

    qm_store::store_conformance_suite!(fixture);
}

mod postgres {
    use super::*;
    use qm_store::testing::TestDatabase;

    struct PostgresFixture {
        store: Arc<dyn Store>,
        database: TestDatabase,
    }

    #[async_trait]
    impl TestStore for PostgresFixture {
        fn store(&self) -> Arc<dyn Store> {
            self.store.clone()
        }

        async fn cleanup(&self) {
            self.database.drop_database().await;
        }
    }

    async fn fixture() -> PostgresFixture {
        let database = TestDatabase::create().await;
        let store = qm_store::connect(database.url()).await.expect("connect to the test database");
        PostgresFixture { store, database }
    }

    qm_store::store_conformance_suite!(fixture);

    /// Every statement keeps one plan (decision 122): on analyzed tables PostgreSQL otherwise
    /// re-planned the instance list on every execution.
    #[tokio::test]
    async fn connections_keep_one_plan_per_statement() {
        let database = TestDatabase::create().await;
        let store = qm_store::postgres::PostgresStore::connect(database.url(), 2).await.expect("connect");
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(store.pool()).await.expect("show");
        assert_eq!(mode, "force_generic_plan");
        store.pool().close().await;
        database.drop_database().await;
    }
}
