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

    /// The JSON PostgreSQL keeps for each instance (`instances.json`, decision 123) is what
    /// serde writes of it, for text of every kind and fractions of every length.
    #[tokio::test]
    async fn the_stored_instance_json_is_what_serde_writes() {
        let database = TestDatabase::create().await;
        let store = qm_store::postgres::PostgresStore::connect(database.url(), 2).await.expect("connect");
        let texts = [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "control \u{1} \u{8} \u{c} \n \r \t \u{1f} \u{7f}",
            "ünïcødé 🚀 \u{2028}",
        ];
        for text in texts {
            for optional in [true, false] {
                for nanos in [0, 1_000, 1_000_000, 120_000_000, 123_456_000, 999_999_000] {
                    for number in [-42, 7, 1 << 40] {
                        let instance = qm_store::testing::instance(text, optional, nanos, number);
                        let stored: String = sqlx::query_scalar(
                            "SELECT qm_instance_json($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                             $17, $18, $19, $20, $21, $22)",
                        )
                        .bind(instance.id.as_uuid())
                        .bind(instance.organization_id.as_uuid())
                        .bind(instance.deployment_id.map(|id| id.as_uuid()))
                        .bind(&instance.provider)
                        .bind(instance.zone_id.as_uuid())
                        .bind(&instance.zone)
                        .bind(instance.instance_type_id.as_uuid())
                        .bind(&instance.instance_type)
                        .bind(&instance.model)
                        .bind(instance.state.as_str())
                        .bind(instance.state_changed_at)
                        .bind(instance.progress_percent)
                        .bind(&instance.provider_instance_id)
                        .bind(&instance.address)
                        .bind(instance.hourly_price_micros)
                        .bind(&instance.currency)
                        .bind(&instance.failure_reason)
                        .bind(instance.deleted_by_provider)
                        .bind(instance.archived)
                        .bind(instance.revision)
                        .bind(instance.created_at)
                        .bind(instance.updated_at)
                        .fetch_one(store.pool())
                        .await
                        .expect("qm_instance_json");
                        assert_eq!(stored, serde_json::to_string(&instance).expect("serialize"));
                    }
                }
            }
        }
        store.pool().close().await;
        database.drop_database().await;
    }
}
