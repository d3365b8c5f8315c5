//! Backups that restore (docs/backups.md), as an operator runs them with the real `qm` binary.
//!
//! PostgreSQL drill: the control plane (api, finops, an orchestrator) deploys three `sim`
//! instances, bills them, holds a budget and an API key; `qm backup` dumps it while it runs; the
//! database is destroyed; `qm restore` fills an empty one (and refuses a second time, the target
//! no longer empty); the services start on it: every instance, billing start, budget and key is
//! back, and a reconciliation pass leaves the provider with exactly its instances, none
//! duplicated. SQLite: `qm backup` of a running `qm dev`, restored into a new file.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_orchestrator::health::Deadlines;
use qm_providers::CloudProvider;
use qm_providers::sim::{SimCloud, SimConfig};
use qm_store::testing::TestDatabase;
use serde_json::{Value, json};
use support::control_plane::ControlPlane;

const PASSWORD: &str = "backup-drill-password";

fn qm(args: &[&str], database_url: &str) -> (i32, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_qm")).args(args).env("QM_DATABASE_URL", database_url).output().expect("qm");
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), said)
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn login(base: &str) -> Self {
        let http = support::http();
        let token = qm_testkit::login(&http, base, "admin", PASSWORD).await;
        Self { http, base: base.to_owned(), token }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap_or(Value::Null)
    }

    /// What must survive: each instance's id, state and billing start; the budget; the keys.
    async fn state(&self, budget: &str) -> Value {
        let instances = self.call(reqwest::Method::GET, "/instances?limit=100", None).await;
        let mut kept = Vec::new();
        for instance in instances["items"].as_array().expect("items") {
            let id = instance["id"].as_str().expect("id");
            let detail = self.call(reqwest::Method::GET, &format!("/instances/{id}"), None).await;
            kept.push(json!({ "id": id, "state": detail["state"], "billing_started_at": detail["billing_started_at"],
                "provider_instance_id": detail["provider_instance_id"] }));
        }
        let budget = self.call(reqwest::Method::GET, budget, None).await;
        let keys = self.call(reqwest::Method::GET, "/api_keys", None).await;
        let keys: Vec<&Value> = keys["items"].as_array().expect("keys").iter().map(|key| &key["id"]).collect();
        json!({ "instances": kept, "budget": [budget["amount_micros"], budget["hard_cap"]], "keys": keys })
    }
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(60), "{what} within 60 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backup_restores_into_an_empty_database_and_the_fleet_is_adopted_without_duplicates() {
    let cloud = Arc::new(SimCloud::new(SimConfig { boot_delay: Duration::from_millis(200), ..SimConfig::default() }));
    let providers = BTreeMap::from([("sim".to_owned(), cloud.clone() as Arc<dyn CloudProvider>)]);
    let plane = ControlPlane::start(PASSWORD, providers.clone(), 1, Deadlines::default()).await;
    let client = Client::login(&plane.api).await;
    let me = client.call(reqwest::Method::GET, "/auth/me", None).await;
    let budget = format!("/finops/budgets/{}", me["organization_id"].as_str().expect("organization"));
    client
        .call(reqwest::Method::PUT, &budget, Some(json!({ "amount_micros": 5_000_000_000_i64, "hard_cap": true })))
        .await;
    client.call(reqwest::Method::POST, "/api_keys", Some(json!({ "name": "drill" }))).await;
    let deployment =
        json!({ "model": "m", "count": 3, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
    client.call(reqwest::Method::POST, "/deployments", Some(deployment)).await;
    until("3 ready and billing", async || {
        let state = client.state(&budget).await;
        state["instances"].as_array().is_some_and(|instances| {
            instances.len() == 3
                && instances
                    .iter()
                    .all(|instance| instance["state"] == "ready" && !instance["billing_started_at"].is_null())
        })
    })
    .await;
    let before = client.state(&budget).await;

    // Backed up while the services run; the database destroyed.
    let directory = std::env::temp_dir().join(format!("qm-backup-{}", uuid::Uuid::new_v4().simple()));
    let (code, said) = qm(&["backup", "--to", directory.to_str().expect("path")], plane.database_url());
    assert_eq!(code, 0, "{said}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(directory.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(
        (manifest["engine"].as_str(), manifest["file"].as_str()),
        (Some("postgres"), Some("qm.dump")),
        "{manifest}"
    );
    assert!(manifest["schema_version"].as_i64() >= Some(11), "{manifest}");
    let (code, said) = qm(&["backup", "--to", directory.to_str().expect("path")], plane.database_url());
    assert_eq!(code, 1, "a second backup into the same directory is refused: {said}");
    plane.stop().await;

    // Restored into an empty database; a second restore is refused (it is no longer empty).
    let restored = TestDatabase::create().await;
    let from = directory.to_str().expect("path");
    let (code, said) = qm(&["restore", "--from", from], restored.url());
    assert_eq!(code, 0, "{said}");
    let (code, said) = qm(&["restore", "--from", from], restored.url());
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("already holds a Quartermaster schema"), "{said}");
    // A damaged dump is refused before anything is touched.
    let damaged = std::env::temp_dir().join(format!("qm-backup-damaged-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&damaged).expect("directory");
    std::fs::copy(directory.join("manifest.json"), damaged.join("manifest.json")).expect("copy");
    let mut dump = std::fs::read(directory.join("qm.dump")).expect("dump");
    let middle = dump.len() / 2;
    dump[middle] ^= 0xFF;
    std::fs::write(damaged.join("qm.dump"), dump).expect("write");
    let (code, said) = qm(&["restore", "--from", damaged.to_str().expect("path"), "--force"], restored.url());
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("damaged"), "{said}");

    // The services on the restored database: everything is back; reconciliation adopts.
    let plane = ControlPlane::start_on(restored, PASSWORD, providers, 1, Deadlines::default()).await;
    let client = Client::login(&plane.api).await;
    assert_eq!(client.state(&budget).await, before, "the restored state is the backed-up state");
    client.call(reqwest::Method::POST, "/fleet/reconcile", Some(json!({}))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cloud.most_creates_per_instance(), 1, "no provider instance was created twice");
    assert_eq!(cloud.stats().live, 3, "the provider runs exactly the restored instances");
    assert_eq!(client.state(&budget).await["instances"], before["instances"], "adopted, not reaped");
    plane.stop().await;
    std::fs::remove_dir_all(&directory).expect("clean up");
    std::fs::remove_dir_all(&damaged).expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_backup_of_a_running_qm_dev_restores_into_a_new_file() {
    let data_dir = support::temporary_data_dir();
    let (dev, urls, _) = support::Dev::start_with(&data_dir, &[], &[("QM_ADMIN_PASSWORD", PASSWORD)]);
    let client = Client::login(&urls["api"]).await;
    let deployment =
        json!({ "model": "m", "count": 2, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
    client.call(reqwest::Method::POST, "/deployments", Some(deployment)).await;
    let source = format!("sqlite://{}", data_dir.join("qm.db").display());
    let directory = data_dir.join("backup");
    let (code, said) = qm(&["backup", "--to", directory.to_str().expect("path")], &source);
    assert_eq!(code, 0, "{said}");
    let target = format!("sqlite://{}", data_dir.join("restored").join("qm.db").display());
    let (code, said) = qm(&["restore", "--from", directory.to_str().expect("path")], &target);
    assert_eq!(code, 0, "{said}");
    let store = qm_store::connect(&target).await.expect("open the restored file");
    let filter = qm_store::InstanceFilter { limit: 100, ..qm_store::InstanceFilter::default() };
    let instances = store.instances(&filter).await.expect("read");
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
