//! What the router benches share: peer processes (vllm-router, smg), qm-router on a temporary
//! store with one key, and readiness.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qm_config::{Environment, Settings};
use qm_domain::{ApiKeyId, InstanceId, OrganizationId, Role, UserId};
use qm_runtime::Shutdown;
use qm_testkit::load::Target;

/// The engine key qm-router sends its workers here.
pub const ENGINE_KEY: &str = "bench-engine-key-0123456789";

/// A process killed when the bench ends.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn python_tool(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin").join(name);
    assert!(path.exists(), "{} is missing: run `make bench-tools` (PyPI vllm-router, smg)", path.display());
    path
}

/// vllm-router on `port` in front of `workers` (base URLs) with `policy`.
pub fn vllm_router(workers: &[String], port: u16, policy: &str) -> Peer {
    python_router("vllm-router", &["--log-level", "error"], workers, port, policy)
}

/// smg on `port` in front of `workers` with `policy`.
pub fn smg(workers: &[String], port: u16, policy: &str) -> Peer {
    python_router("smg", &["launch"], workers, port, policy)
}

/// A Rust router from PyPI (`tool`, its `leading` arguments) with the options both share.
fn python_router(tool: &str, leading: &[&str], workers: &[String], port: u16, policy: &str) -> Peer {
    let child = Command::new(python_tool(tool))
        .args(leading)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--policy", policy])
        // Each peer its own metrics port (they all default to 29000).
        .args(["--prometheus-port", &free_port().to_string()])
        .arg("--worker-urls")
        .args(workers)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Peer(child)
}

/// Waits until `target` answers 200 (a proxy finished starting and found its upstream).
pub async fn ready(client: &reqwest::Client, name: &str, target: &Target) {
    let body = target.body.as_ref().map(|body| body.as_ref().clone()).unwrap_or_default();
    for _ in 0..300 {
        let mut request = client.post(&target.url).header("content-type", "application/json").body(body.clone());
        if let Some(token) = &target.bearer {
            request = request.bearer_auth(token);
        }
        if request.send().await.is_ok_and(|response| response.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never answered 200");
}

/// qm-router on a temporary SQLite store with one organization, a key with (generous) limits, and
/// `workers` (base URLs) serving model `m`; returns its URL and the key.
pub async fn qm_router(directory: &Path, workers: &[String], shutdown: &Shutdown) -> (String, String) {
    let limits = qm_store::KeyLimits {
        models: Some(vec!["m".into()]),
        requests_per_minute: Some(1_000_000_000),
        tokens_per_minute: Some(1_000_000_000),
    };
    let replicas = Replicas { count: 1, limits, redis: None, variables: Vec::new() };
    let (mut urls, key) = qm_routers(directory, workers, shutdown, &replicas).await;
    (urls.remove(0), key)
}

/// How many router replicas [`qm_routers`] starts, the key's limits, and where they share them.
pub struct Replicas {
    pub count: usize,
    pub limits: qm_store::KeyLimits,
    pub redis: Option<String>,
    /// More of the router's settings (`QM_ROUTER_…`).
    pub variables: Vec<(&'static str, String)>,
}

/// `replicas.count` qm-router replicas on one temporary SQLite store (each its own connection
/// pool, as separate processes would have) with one key; their URLs and the key.
pub async fn qm_routers(
    directory: &Path,
    workers: &[String],
    shutdown: &Shutdown,
    replicas: &Replicas,
) -> (Vec<String>, String) {
    std::fs::create_dir_all(directory).unwrap();
    let database = format!("sqlite://{}", directory.join("qm.db").display());
    let mut pairs = vec![
        ("QM_DATABASE_URL", database.clone()),
        ("QM_BUS_URL", "memory://".to_owned()),
        ("QM_ENGINE_API_KEY", ENGINE_KEY.to_owned()),
        ("RUST_LOG", "off".to_owned()),
    ];
    if let Some(redis) = &replicas.redis {
        pairs.push(("QM_ROUTER_LIMITS_URL", redis.clone()));
    }
    pairs.extend(replicas.variables.iter().cloned());
    let settings = Settings::from_env(&Environment::from_pairs(pairs.clone())).unwrap();
    let dependencies = qm_runtime::entrypoint::connect(settings).await.unwrap();
    let organization = OrganizationId::new();
    let secret = qm_runtime::tokens::generate("qm_");
    let mut tx = dependencies.store.begin().await.unwrap();
    let new_organization = qm_store::NewOrganization { id: organization, name: "Bench".into(), slug: "bench".into() };
    tx.insert_organization(&new_organization).await.unwrap();
    // A key works while its creator exists.
    let user = qm_store::NewUser {
        id: UserId::new(),
        organization_id: organization,
        username: "bench".into(),
        email: "bench@bench.invalid".into(),
        first_name: "Bench".into(),
        last_name: "Bench".into(),
        role: Role::Operator,
        password_hash: "unused".into(),
        is_platform_admin: false,
    };
    tx.insert_user(&user).await.unwrap();
    let key = qm_store::NewApiKey {
        id: ApiKeyId::new(),
        organization_id: organization,
        created_by: Some(user.id),
        name: "bench".into(),
        role: Role::Operator,
        prefix: secret.chars().take(8).collect(),
        key_hash: qm_runtime::tokens::hash(&secret),
        expires_at: None,
        limits: replicas.limits.clone(),
    };
    tx.insert_api_key(&key).await.unwrap();
    tx.commit().await.unwrap();
    let fleet =
        workers.iter().map(|base| (InstanceId::new(), organization, "m".to_owned(), base.clone())).collect::<Vec<_>>();
    let mut urls = Vec::new();
    for replica in 0..replicas.count {
        let dependencies = if replica == 0 {
            dependencies.clone()
        } else {
            let settings = Settings::from_env(&Environment::from_pairs(pairs.clone())).unwrap();
            qm_runtime::entrypoint::connect(settings).await.unwrap()
        };
        let fixed = qm_router::fleet::Fleet::fixed(fleet.clone());
        let address = "127.0.0.1:0".parse().unwrap();
        let service = qm_router::build_with(dependencies, address, shutdown.clone(), Some(fixed)).await.unwrap();
        urls.push(format!("http://{}", service.address()));
        let stopping = shutdown.clone();
        tokio::spawn(async move { service.run_until_stopped(stopping).await.unwrap() });
    }
    (urls, secret)
}

/// A chat completion `body` posted to `url` with `key` (none when empty).
pub fn chat_target(url: &str, key: &str, body: &serde_json::Value) -> Target {
    Target::post(url, (!key.is_empty()).then(|| key.to_owned()), body)
}
