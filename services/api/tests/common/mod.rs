//! The API under test: the real service on a free port, on SQLite or on a fresh PostgreSQL
//! database, with the in-process bus, the catalog seed applied, and the bootstrap admin.
//!
//! Every call checks the two rules that hold for every response: no 5xx, and every 4xx is
//! problem+json with a `detail`.

#![allow(dead_code, clippy::unwrap_used)]

pub mod schema;

use std::sync::Arc;

use qm_bus::EventBus;
use qm_config::{Environment, Settings};
use qm_runtime::Shutdown;
use qm_runtime::service::Dependencies;
use qm_store::Store;
use qm_store::testing::TestDatabase;
use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn EventBus>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
    database: Option<TestDatabase>,
    directory: Option<std::path::PathBuf>,
}

pub struct Response {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.body);
        self.body
    }
}

impl Api {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, variables: &[(&str, &str)]) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Tracing as in production, so that trace context flows into the commands.
        static TELEMETRY: std::sync::OnceLock<Option<qm_telemetry::TelemetryGuard>> = std::sync::OnceLock::new();
        TELEMETRY.get_or_init(|| qm_telemetry::init("api-test").ok());
        let (database, directory, url) = match backend {
            Backend::Sqlite => {
                let directory = std::env::temp_dir().join(format!("qm-api-test-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&directory).unwrap();
                let url = format!("sqlite://{}", directory.join("qm.db").display());
                (None, Some(directory), url)
            }
            Backend::Postgres => {
                let database = TestDatabase::create().await;
                let url = database.url().to_owned();
                (Some(database), None, url)
            }
        };
        let mut pairs = vec![
            ("QM_DATABASE_URL", url.as_str()),
            ("QM_BUS_URL", "memory://"),
            ("QM_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("QM_ENV", "test"),
        ];
        pairs.extend_from_slice(variables);
        let settings = Settings::from_env(&Environment::from_pairs(pairs)).unwrap();
        let dependencies: Dependencies = qm_runtime::entrypoint::connect(settings).await.unwrap();
        qm_api::seeds::apply(&*dependencies.store, &qm_api::seeds::parse(qm_api::seeds::CATALOG).unwrap())
            .await
            .unwrap();
        let shutdown = Shutdown::new();
        let address = "127.0.0.1:0".parse().unwrap();
        let service = qm_api::build(dependencies.clone(), address, shutdown.clone()).await.unwrap();
        let base = format!("http://{}", service.address());
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                service.run_until_stopped(shutdown).await.unwrap();
            }
        });
        Self {
            base,
            client: reqwest::Client::new(),
            store: dependencies.store,
            bus: dependencies.bus,
            shutdown,
            task,
            database,
            directory,
        }
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.task.await;
        if let Some(database) = &self.database {
            database.drop_database().await;
        }
        if let Some(directory) = &self.directory {
            let _ = std::fs::remove_dir_all(directory);
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with an optional bearer token and JSON body, and checks the universal
    /// rules on the answer.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Response {
        let bytes = body.map(|body| serde_json::to_vec(&body).unwrap());
        self.raw(method, path, token, bytes.as_deref().map(|bytes| ("application/json", bytes))).await
    }

    pub async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Option<(&str, &[u8])>) -> Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method.clone(), self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes.to_vec());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        assert!(status < 500, "{method} {path} answered {status}: {text}");
        let body: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if status >= 400 {
            let content_type = headers.get("content-type").and_then(|value| value.to_str().ok()).unwrap_or_default();
            assert_eq!(content_type, "application/problem+json", "{method} {path} {status}: {body}");
            assert_eq!(body["status"], json!(status), "{body}");
            assert!(body["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "{body}");
            assert!(body["type"].is_string() && body["title"].is_string(), "{body}");
        }
        Response { status, headers, body }
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.call("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.call("POST", path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Response {
        self.call("PUT", path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.call("DELETE", path, Some(token), None).await
    }

    pub async fn login(&self, login: &str, password: &str) -> String {
        let body = self.call("POST", "/auth/login", None, Some(json!({ "login": login, "password": password }))).await;
        body.expect(200)["token"].as_str().unwrap().to_owned()
    }

    pub async fn admin(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// A new organization with an admin, returned with that admin's token.
    pub async fn organization(&self, platform_admin: &str, slug: &str) -> (String, String) {
        let organization =
            self.post("/organizations", platform_admin, json!({ "name": slug, "slug": slug })).await.expect(201);
        let id = organization["id"].as_str().unwrap().to_owned();
        let username = format!("{slug}-admin");
        self.user(platform_admin, Some(&id), &username, "admin").await;
        (id, self.login(&username, "password-of-a-user").await)
    }

    /// Creates a user (password `password-of-a-user`) and returns its id.
    pub async fn user(&self, token: &str, organization: Option<&str>, username: &str, role: &str) -> String {
        let mut body = json!({
            "username": username, "email": format!("{username}@example.com"), "password": "password-of-a-user", "role": role,
        });
        if let Some(organization) = organization {
            body["organization_id"] = json!(organization);
        }
        self.post("/users", token, body).await.expect(201)["id"].as_str().unwrap().to_owned()
    }

    /// A user of the caller's organization with `role`, logged in.
    pub async fn member(&self, admin: &str, username: &str, role: &str) -> String {
        self.user(admin, None, username, role).await;
        self.login(username, "password-of-a-user").await
    }

    /// Moves an instance to `booting` as the orchestrator would and issues its bootstrap token,
    /// valid for `expires_in`; returns the token.
    pub async fn booting(&self, id: &str, expires_in: chrono::Duration) -> String {
        use qm_domain::{InstanceId, InstanceState};
        let id: InstanceId = id.parse().unwrap();
        let mut tx = self.store.begin().await.unwrap();
        for (from, to) in [
            (InstanceState::Requested, InstanceState::Provisioning),
            (InstanceState::Provisioning, InstanceState::Booting),
        ] {
            let transition = qm_store::Transition { instance: id, from, to, reason: None, progress_percent: Some(60) };
            tx.transition_instance(&transition).await.unwrap().unwrap();
        }
        let token = format!("qmb_{}", uuid::Uuid::new_v4().simple());
        tx.issue_bootstrap_token(id, &qm_api::auth::token_hash(&token), qm_store::now() + expires_in).await.unwrap();
        tx.commit().await.unwrap();
        token
    }

    /// Deploys `count` instances of a model on the sim provider and returns their ids.
    pub async fn deploy(&self, token: &str, count: u32) -> Vec<String> {
        let request = json!({ "model": "test-model", "count": count, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
        let accepted = self.post("/deployments", token, request).await.expect(202);
        accepted["instance_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect()
    }
}

/// Runs `scenario` against a fresh API, then stops it and drops its database even when the
/// scenario fails.
pub async fn run<F, Fut>(backend: Backend, variables: &[(&str, &str)], scenario: F)
where
    F: FnOnce(Arc<Api>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt as _;
    let api = Arc::new(Api::start_with(backend, variables).await);
    let outcome = std::panic::AssertUnwindSafe(scenario(api.clone())).catch_unwind().await;
    if let Ok(api) = Arc::try_unwrap(api) {
        api.stop().await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Declares each scenario as one test per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    $crate::common::run($crate::common::Backend::Sqlite, &[], super::$scenario).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    $crate::common::run($crate::common::Backend::Postgres, &[], super::$scenario).await;
                }
            )*
        }
    };
}
