//! Replicas that fail over: two processes each of the api, orchestrator, finops and router (the
//! production binaries) on one PostgreSQL database and NATS streams, over one `sim` cloud
//! shared through HTTP (`QM_SIM_URL`, as one provider account is shared) whose simulated agents
//! reach the api through a TCP balancer. 200 deployments go in; after the first 100 one replica
//! of each service is killed with SIGKILL; the other 100 follow, then every instance is
//! terminated. Every accepted deployment's instance becomes ready and then terminated (no lost
//! command), the cloud created exactly one instance for each and runs none at the end (no
//! duplicate, no leak), each instance was billed from one start to one stop, the singleton jobs'
//! leases are held again (by the survivors) within 30 s, a catalog sync asked for afterwards
//! is carried out, and the surviving router still answers.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use qm_providers::sim::{Faults, SimCloud, SimConfig};
use qm_store::testing::TestDatabase;
use serde_json::{Value, json};

const PASSWORD: &str = "replicas-admin-password";
const DEPLOYMENTS: usize = 200;
const LEASES: [&str; 4] = ["orchestrator.health", "orchestrator.reconcile", "orchestrator.pools", "finops.budgets"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

/// A production binary built beside `qm` (`cargo build --bins`, which `make test` does).
fn binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_qm")).with_file_name(name);
    assert!(path.exists(), "{} is missing: build the service binaries (`cargo build --bins`)", path.display());
    path
}

struct Replica {
    name: String,
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Replica {
    fn start(binary_name: &str, index: usize, port: u16, environment: &[(&str, String)], logs: &Path) -> Self {
        let variable = match binary_name {
            "qm-api" => "QM_API_ADDR",
            "qm-orchestrator" => "QM_ORCHESTRATOR_ADDR",
            "qm-finops" => "QM_FINOPS_ADDR",
            _ => "QM_ROUTER_ADDR",
        };
        let name = format!("{binary_name}-{index}");
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary(binary_name))
            .envs(environment.iter().map(|(key, value)| (*key, value.as_str())))
            .env(variable, format!("127.0.0.1:{port}"))
            .env("QM_LOG_FORMAT", "json")
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start a replica");
        Self { name, port, child, log }
    }

    async fn ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}): {}", self.name, tail(&self.log));
            }
            let answer = client.get(format!("http://127.0.0.1:{}/readyz", self.port)).send().await;
            if answer.is_ok_and(|answer| answer.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "{} not ready within 60 s: {}", self.name, tail(&self.log));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no shutdown, no lease released, nothing flushed.
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A TCP balancer: each connection goes to the first backend (from a rotating start) that
/// accepts it, so a dead replica is skipped, as a load balancer's health check would.
async fn balancer(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut turn = 0_usize;
        while let Ok((mut inbound, _)) = listener.accept().await {
            turn += 1;
            let order: Vec<SocketAddr> =
                (0..backends.len()).map(|offset| backends[(turn + offset) % backends.len()]).collect();
            tokio::spawn(async move {
                for backend in order {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    address
}

/// Every instance of the organization, by state.
async fn states(client: &reqwest::Client, api: &str, token: &str) -> Vec<(String, String)> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{api}/instances?limit=500");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = client.get(url).bearer_auth(token).send().await.expect("list").json().await.expect("json");
        for instance in page["items"].as_array().expect("items") {
            all.push((
                instance["id"].as_str().expect("id").to_owned(),
                instance["state"].as_str().expect("state").to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

async fn until_all(client: &reqwest::Client, api: &str, token: &str, state: &str, count: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let listed = states(client, api, token).await;
        let there = listed.iter().filter(|(_, current)| current == state).count();
        if listed.len() == count && there == count {
            return;
        }
        let mut tally = std::collections::BTreeMap::new();
        for (_, current) in &listed {
            *tally.entry(current.clone()).or_insert(0) += 1;
        }
        assert!(Instant::now() < deadline, "{what}: {there} of {count} {state} after 180 s: {tally:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn deploy(client: &reqwest::Client, api: &str, token: &str, count: usize) -> Vec<String> {
    let body =
        json!({ "model": "replicated", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.cpu" });
    let answers = futures::stream::iter(0..count)
        .map(|_| {
            let request = client.post(format!("{api}/deployments")).bearer_auth(token).json(&body);
            async move {
                let answer = request.send().await.expect("deploy");
                assert_eq!(answer.status(), 202, "a deployment was refused");
                let accepted: Value = answer.json().await.expect("json");
                accepted["instance_ids"][0].as_str().expect("instance").to_owned()
            }
        })
        .buffer_unordered(8);
    answers.collect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_each_service_survive_a_kill_9_of_one_without_losing_or_duplicating_anything() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let database = TestDatabase::create().await;
    let logs = support::temporary_data_dir();
    std::fs::create_dir_all(&logs).expect("logs directory");
    let prefix = format!("rp{}", uuid::Uuid::new_v4().simple());
    let nats = std::env::var("QM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let bus_url = format!("{nats}?prefix={prefix}");

    // The schema and the catalog, as the migration job and `qm seed` would.
    let store = qm_store::connect(database.url()).await.expect("store");
    let catalog = qm_api::seeds::parse(qm_api::seeds::CATALOG).expect("catalog");
    qm_api::seeds::apply(&*store, &catalog).await.expect("seed");

    // One cloud for every orchestrator; 3 % of creates answer with a timeout after succeeding.
    let faults = Faults { create_times_out: 0.03, ..Faults::default() };
    let cloud =
        Arc::new(SimCloud::new(SimConfig { boot_delay: Duration::from_millis(200), faults, ..SimConfig::default() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sim_url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(qm_providers::sim_remote::serve(cloud.clone(), listener));

    let api_ports = [free_port(), free_port()];
    let balanced = balancer(api_ports.iter().map(|port| SocketAddr::from(([127, 0, 0, 1], *port))).collect()).await;
    let api = format!("http://{balanced}");
    let environment = [
        ("QM_DATABASE_URL", database.url().to_owned()),
        ("QM_BUS_URL", bus_url.clone()),
        ("QM_ADMIN_PASSWORD", PASSWORD.to_owned()),
        ("QM_ENV", "test".to_owned()),
        ("QM_PROVIDERS", "sim".to_owned()),
        ("QM_SIM_URL", sim_url),
        ("QM_API_URL", api.clone()),
        // A command held by the killed orchestrator goes to the survivor after this (a sim saga
        // takes well under a second; production keeps 15 minutes, above its longest saga).
        ("QM_COMMAND_VISIBILITY_TIMEOUT_SECONDS", "30".to_owned()),
    ];
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(20)).pool_max_idle_per_host(0).build().expect("client");
    let mut replicas: Vec<Replica> = Vec::new();
    // One after the other: the first bootstraps the admin.
    for (index, port) in api_ports.iter().enumerate() {
        let mut replica = Replica::start("qm-api", index, *port, &environment, &logs);
        replica.ready(&client).await;
        replicas.push(replica);
    }
    for binary_name in ["qm-orchestrator", "qm-finops", "qm-router"] {
        for index in 0..2 {
            let mut replica = Replica::start(binary_name, index, free_port(), &environment, &logs);
            replica.ready(&client).await;
            replicas.push(replica);
        }
    }
    let token = qm_testkit::login(&client, &api, "admin", PASSWORD).await;

    // Half the deployments, then one replica of each service killed, then the other half.
    let mut ids = deploy(&client, &api, &token, DEPLOYMENTS / 2).await;
    let killed_at = Instant::now();
    for replica in replicas.iter_mut().filter(|replica| replica.name.ends_with("-0")) {
        replica.kill();
    }
    ids.extend(deploy(&client, &api, &token, DEPLOYMENTS / 2).await);
    until_all(&client, &api, &token, "ready", DEPLOYMENTS, "deployed").await;

    // The singleton jobs' leases are held again, by the survivors, within 30 s of the kill: at
    // 30 s a lease the dead replicas held has expired (the longest lives 20 s without renewal,
    // and the last renewal came before the kill), so a probe that cannot take a lease finds it
    // renewed since, by a survivor.
    tokio::time::sleep((killed_at + Duration::from_secs(30)).saturating_duration_since(Instant::now())).await;
    for lease in LEASES {
        let free = store.acquire_lease(lease, "replicas-test-probe", Duration::from_millis(1)).await.expect("lease");
        assert!(!free, "the {lease} lease was not held 30 s after the kill");
    }
    // A catalog sync asked for now is carried out by the surviving orchestrator.
    let answer = client.post(format!("{api}/catalog/sync")).bearer_auth(&token).send().await.expect("sync");
    assert_eq!(answer.status(), 202);
    // (Platform-wide, the sync's log entry belongs to no organization: read from the store.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let synced =
        qm_store::ActionLogQuery { action_type: Some("catalog.synced".into()), limit: 5, ..Default::default() };
    while store.search_action_logs(&synced).await.expect("action logs").is_empty() {
        assert!(Instant::now() < deadline, "the catalog sync was not carried out");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every instance terminated; the cloud created one instance for each and runs none.
    let terminations = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let request = client.delete(format!("{api}/instances/{id}")).bearer_auth(&token);
            async move {
                let answer = request.send().await.expect("terminate");
                assert!(answer.status().is_success(), "a termination was refused: {}", answer.status());
            }
        })
        .buffer_unordered(8);
    terminations.collect::<Vec<()>>().await;
    until_all(&client, &api, &token, "terminated", DEPLOYMENTS, "terminated").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cloud.stats().live > 0 {
        assert!(Instant::now() < deadline, "{} instances left running at the provider", cloud.stats().live);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cloud.most_creates_per_instance(), 1, "an instance was created twice at the provider");
    assert_eq!(cloud.stats().created, DEPLOYMENTS as u64, "one provider instance per deployment");

    // Each billed once: one start, one stop after it (finops records the stop from the
    // orchestrator's event, so it may come a moment after `terminated`).
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let detail: Value = client
                .get(format!("{api}/instances/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            let started = detail["billing_started_at"].as_str().unwrap_or_else(|| panic!("never billed: {detail}"));
            if let Some(stopped) = detail["billing_stopped_at"].as_str() {
                assert!(started <= stopped, "billed backwards: {detail}");
                break;
            }
            assert!(Instant::now() < deadline, "still billing 30 s after termination: {detail}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The surviving router answers.
    let router = replicas.iter().find(|replica| replica.name == "qm-router-1").expect("router");
    let answer = client.get(format!("http://127.0.0.1:{}/readyz", router.port)).send().await.expect("router");
    assert!(answer.status().is_success());

    drop(replicas);
    let naming = qm_bus::Naming::new(Some(&prefix)).expect("prefix");
    let nats_url = url::Url::parse(&bus_url).expect("url");
    qm_bus::nats::NatsBus::connect(&nats_url, naming).await.expect("nats").delete_streams().await.expect("streams");
    database.drop_database().await;
    std::fs::remove_dir_all(&logs).expect("clean up");
}
