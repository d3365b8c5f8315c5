//! The control plane in this process as production runs it: the api, finops and orchestrators on
//! a PostgreSQL database (a fresh one, or one given) and NATS streams under a unique prefix, over
//! the providers a test gives (one cloud behind every orchestrator, as one provider account
//! would be).

use std::collections::BTreeMap;
use std::sync::Arc;

use qm_config::{Environment, Settings};
use qm_orchestrator::health::Deadlines;
use qm_providers::CloudProvider;
use qm_runtime::Shutdown;
use qm_store::testing::TestDatabase;

pub struct ControlPlane {
    /// The api's base URL.
    pub api: String,
    pub store: Arc<dyn qm_store::Store>,
    pub bus: Arc<dyn qm_bus::EventBus>,
    shutdown: Shutdown,
    running: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    database: TestDatabase,
    bus_url: String,
    prefix: String,
}

impl ControlPlane {
    /// Starts the api (with the catalog seeded), finops and `orchestrators` orchestrators on a
    /// fresh database; the admin's password is `password`.
    pub async fn start(
        password: &str,
        providers: BTreeMap<String, Arc<dyn CloudProvider>>,
        orchestrators: usize,
        deadlines: Deadlines,
    ) -> Self {
        Self::start_on(TestDatabase::create().await, password, providers, orchestrators, deadlines).await
    }

    /// [`ControlPlane::start`] on `database` (migrated first if it needs to be).
    pub async fn start_on(
        database: TestDatabase,
        password: &str,
        providers: BTreeMap<String, Arc<dyn CloudProvider>>,
        orchestrators: usize,
        deadlines: Deadlines,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let prefix = format!("cp{}", uuid::Uuid::new_v4().simple());
        let nats = std::env::var("QM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let bus_url = format!("{nats}?prefix={prefix}");
        let names: Vec<&str> = providers.keys().map(String::as_str).collect();
        let enabled = names.join(",");
        let pairs = [
            ("QM_DATABASE_URL", database.url()),
            ("QM_BUS_URL", bus_url.as_str()),
            ("QM_ADMIN_PASSWORD", password),
            ("QM_ENV", "test"),
            ("QM_PROVIDERS", enabled.as_str()),
        ];
        let settings = Settings::from_env(&Environment::from_pairs(pairs)).expect("settings");
        let dependencies = qm_runtime::entrypoint::connect(settings).await.expect("connect");
        let store = dependencies.store.clone();
        let catalog = qm_api::seeds::parse(qm_api::seeds::CATALOG).expect("catalog");
        qm_api::seeds::apply(&*store, &catalog).await.expect("seed");
        let shutdown = Shutdown::new();
        let api = qm_api::build(dependencies.clone(), "127.0.0.1:0".parse().expect("address"), shutdown.clone())
            .await
            .expect("api");
        let base = format!("http://{}", api.address());
        let mut dependencies = dependencies;
        dependencies.settings.api_url = Some(base.clone());
        let finops = qm_finops::build(dependencies.clone(), "127.0.0.1:0".parse().expect("address"), shutdown.clone())
            .await
            .expect("finops");
        let mut services = vec![api, finops];
        for _ in 0..orchestrators {
            let orchestrator = qm_orchestrator::build_with(
                dependencies.clone(),
                "127.0.0.1:0".parse().expect("address"),
                shutdown.clone(),
                providers.clone(),
                qm_orchestrator::saga::Retry::default(),
                deadlines,
            )
            .await
            .expect("orchestrator");
            services.push(orchestrator);
        }
        let running =
            services.into_iter().map(|service| tokio::spawn(service.run_until_stopped(shutdown.clone()))).collect();
        Self { api: base, store, bus: dependencies.bus.clone(), shutdown, running, database, bus_url, prefix }
    }

    pub fn database_url(&self) -> &str {
        self.database.url()
    }

    /// Stops every service, then removes the database and the streams.
    pub async fn stop(self) {
        self.shutdown.trigger();
        for task in self.running {
            let _ = task.await;
        }
        let naming = qm_bus::Naming::new(Some(&self.prefix)).expect("prefix");
        let nats_url = url::Url::parse(&self.bus_url).expect("url");
        qm_bus::nats::NatsBus::connect(&nats_url, naming).await.expect("nats").delete_streams().await.expect("streams");
        self.database.drop_database().await;
    }
}
