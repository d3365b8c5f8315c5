//! `qm dev` as a user runs it: the real binary, its probes over HTTP, SIGTERM, and a restart on
//! the same data directory.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Dev {
    child: Child,
    output: mpsc::Receiver<String>,
}

impl Dev {
    /// Starts `qm dev` on free ports and waits for it to print where each service listens.
    fn start(data_dir: &Path) -> (Self, HashMap<String, String>, Vec<String>) {
        Self::start_with(data_dir, &[], &[])
    }

    fn start_with(
        data_dir: &Path,
        arguments: &[&str],
        variables: &[(&str, &str)],
    ) -> (Self, HashMap<String, String>, Vec<String>) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_qm"));
        command.args(["dev", "--data-dir"]).arg(data_dir).args(arguments).stdout(Stdio::piped()).stderr(Stdio::null());
        for variable in ["QM_API_ADDR", "QM_ORCHESTRATOR_ADDR", "QM_FINOPS_ADDR", "QM_ROUTER_ADDR"] {
            command.env(variable, "127.0.0.1:0");
        }
        for variable in ["QM_ADMIN_PASSWORD", "QM_ADMIN_PASSWORD_FILE", "QM_DATABASE_URL", "QM_BUS_URL"] {
            command.env_remove(variable);
        }
        command.envs(variables.iter().copied());
        let mut child = command.spawn().expect("start qm dev");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, output) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let mut lines = Vec::new();
        let mut urls = HashMap::new();
        loop {
            let line = output.recv_timeout(Duration::from_secs(60)).expect("qm dev printed its addresses within 60 s");
            if let Some((name, url)) = line.trim().split_once(" http://") {
                urls.insert(name.trim().to_owned(), format!("http://{url}"));
            }
            let done = line.starts_with("Stop with Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60));
        (Self { child, output }, urls, lines)
    }

    /// SIGTERM, then the exit status within `patience`.
    fn terminate(mut self, patience: Duration) -> std::process::ExitStatus {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                while self.output.try_recv().is_ok() {}
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("qm dev did not stop within {patience:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
}

fn temporary_data_dir() -> PathBuf {
    std::env::temp_dir().join(format!("qm-dev-test-{}", uuid::Uuid::new_v4().simple()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qm_dev_serves_every_probe_stops_on_sigterm_and_keeps_its_admin() {
    let data_dir = temporary_data_dir();
    let (dev, urls, lines) = Dev::start(&data_dir);
    let client = http();

    for service in ["api", "orchestrator", "finops", "router"] {
        let base = urls.get(service).unwrap_or_else(|| panic!("{service} address printed: {lines:?}"));
        for probe in ["healthz", "readyz"] {
            let response = client.get(format!("{base}/{probe}")).send().await.expect("request");
            assert_eq!(response.status(), 200, "{service} /{probe}");
        }
        let metrics = client.get(format!("{base}/metrics")).send().await.expect("request");
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.expect("body");
        assert!(text.contains(&format!("qm_build_info{{service=\"{service}\"")), "{service}: {text}");
    }
    let generated = lines.iter().position(|line| line.starts_with("Generated the admin password")).expect("announced");
    let printed_password = lines[generated + 1].trim().to_owned();

    let status = dev.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    let saved = std::fs::read_to_string(data_dir.join("admin-password")).expect("password saved");
    assert_eq!(saved.trim(), printed_password);

    let (dev, urls, lines) = Dev::start(&data_dir);
    assert!(!lines.iter().any(|line| line.contains("Generated")), "printed once only: {lines:?}");
    let ready = client.get(format!("{}/readyz", urls["api"])).send().await.expect("request");
    assert_eq!(ready.status(), 200);
    assert!(dev.terminate(Duration::from_secs(10)).success());

    let store = qm_store::connect(&format!("sqlite://{}", data_dir.join("qm.db").display())).await.expect("store");
    let admin = store.user_by_login("admin").await.expect("read").expect("the admin survived the restart");
    assert!(qm_api::password::verify(&printed_password, &admin.password_hash), "the saved password still logs in");
    drop(store);
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// With the orchestrator left out and NATS as the bus, a deployment's provision commands wait
/// in the orchestrator's durable consumer group, survive `qm dev` stopping, and are delivered
/// to the group when a consumer starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_commands_wait_on_the_bus_while_no_orchestrator_runs() {
    let data_dir = temporary_data_dir();
    let prefix = format!("devtest{}", uuid::Uuid::new_v4().simple());
    let bus_url = format!("nats://127.0.0.1:4222?prefix={prefix}");
    let variables = [("QM_BUS_URL", bus_url.as_str()), ("QM_ADMIN_PASSWORD", "dev-test-password")];
    let (dev, urls, lines) = Dev::start_with(&data_dir, &["--without", "orchestrator"], &variables);
    assert!(!urls.contains_key("orchestrator"), "{lines:?}");
    assert!(lines.iter().any(|line| line.starts_with("Loaded the catalog seed")), "{lines:?}");
    let client = http();
    let api = &urls["api"];
    let session = Session::login(api, "dev-test-password").await;
    let token = session.token.as_str();
    let accepted = client
        .post(format!("{api}/deployments"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "model": "m", "count": 2, "provider": "local", "zone": "local-1", "instance_type": "local.cpu" }))
        .send()
        .await
        .expect("deploy");
    assert_eq!(accepted.status(), 202);
    let accepted: serde_json::Value = accepted.json().await.expect("json");
    let mut expected: Vec<String> = accepted["instance_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    // Give the relay a moment to publish, then stop: the commands must outlive the process.
    let outbox_drained = async {
        let store = qm_store::connect(&format!("sqlite://{}", data_dir.join("qm.db").display())).await.expect("store");
        for _ in 0..100 {
            if store.outbox_backlog().await.expect("backlog") == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the relay did not publish the commands");
    };
    outbox_drained.await;
    assert!(dev.terminate(Duration::from_secs(10)).success());

    let bus = qm_bus::connect(&bus_url).await.expect("bus");
    let options = qm_bus::SubscriptionOptions::new(qm_events::Channel::Commands, "orchestrator");
    let mut subscription = bus.subscribe(options).await.expect("subscribe");
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the commands waited on the bus")
            .expect("delivery");
        assert_eq!(delivery.envelope.message_type, "instance.provision");
        received.push(delivery.envelope.data["instance_id"].as_str().expect("id").to_owned());
        delivery.ack().await.expect("ack");
    }
    received.sort();
    expected.sort();
    assert_eq!(received, expected);
    drop(subscription);
    let nats_url = url::Url::parse(&bus_url).expect("url");
    let naming = qm_bus::Naming::new(Some(&prefix)).expect("naming");
    qm_bus::nats::NatsBus::connect(&nats_url, naming).await.expect("nats").delete_streams().await.expect("clean up");
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// On `qm dev`, a deployment on the `sim` provider goes the whole way: the orchestrator creates
/// and starts the instance with a bootstrap token in its user data, the simulated agent
/// registers and heartbeats `ready` over HTTP, and the instance reaches `ready` at 100%; a
/// termination releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sim_deployment_reaches_ready_through_the_worker_protocol_and_terminates() {
    let data_dir = temporary_data_dir();
    let (dev, session) = Session::start(&data_dir).await;
    let ids = session.deploy(["sim", "sim-eu-1", "sim.l4"], 2).await;
    for id in &ids {
        let detail = session.state_within(id, |state| state == "ready", Duration::from_secs(30)).await;
        assert_eq!(detail["progress_percent"], 100);
        let states: Vec<_> =
            detail["history"].as_array().expect("history").iter().map(|change| change["to_state"].clone()).collect();
        assert_eq!(states, ["requested", "provisioning", "booting", "ready"]);
        assert!(detail["provider_instance_id"].is_string() && detail["address"].is_string());
    }
    session.send(reqwest::Method::DELETE, &format!("/instances/{}", ids[0]), None).await;
    session.state_within(&ids[0], |state| state == "terminated", Duration::from_secs(30)).await;
    let logs = session.send(reqwest::Method::GET, &format!("/action_logs/search?instance_id={}", ids[0]), None).await;
    let types = logs["counts"]["by_type"].as_object().expect("counts").keys().cloned().collect::<Vec<_>>();
    for expected in [
        "instance.provisioning",
        "instance.booting",
        "worker.register",
        "instance.ready",
        "instance.terminate",
        "instance.terminated",
    ] {
        assert!(types.iter().any(|logged| logged == expected), "{expected} missing from {types:?}");
    }
    assert!(dev.terminate(Duration::from_secs(10)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// A client logged in to a running `qm dev`.
struct Session {
    client: reqwest::Client,
    api: String,
    token: String,
}

impl Session {
    /// Starts `qm dev` on `data_dir` and logs in as the admin.
    async fn start(data_dir: &Path) -> (Dev, Self) {
        let (dev, urls, _) = Dev::start_with(data_dir, &[], &[("QM_ADMIN_PASSWORD", "dev-test-password")]);
        (dev, Self::login(&urls["api"], "dev-test-password").await)
    }

    async fn login(api: &str, password: &str) -> Self {
        let client = http();
        let login: serde_json::Value = client
            .post(format!("{api}/auth/login"))
            .json(&serde_json::json!({ "login": "admin", "password": password }))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("json");
        Self { client, api: api.to_owned(), token: login["token"].as_str().expect("token").to_owned() }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let mut request = self.client.request(method, format!("{}{path}", self.api)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request").json().await.unwrap_or(serde_json::Value::Null)
    }

    /// Deploys `count` instances at `provider`/`zone`/`instance_type`; returns their ids.
    async fn deploy(&self, placement: [&str; 3], count: u32) -> Vec<String> {
        let [provider, zone, instance_type] = placement;
        let deployment = serde_json::json!({ "model": "m", "count": count, "provider": provider, "zone": zone, "instance_type": instance_type });
        let accepted = self.send(reqwest::Method::POST, "/deployments", Some(deployment)).await;
        accepted["instance_ids"].as_array().expect("ids").iter().map(|id| id.as_str().expect("id").to_owned()).collect()
    }

    async fn state_within(&self, id: &str, wanted: impl Fn(&str) -> bool, patience: Duration) -> serde_json::Value {
        let deadline = Instant::now() + patience;
        loop {
            let detail = self.send(reqwest::Method::GET, &format!("/instances/{id}"), None).await;
            if wanted(detail["state"].as_str().unwrap_or_default()) {
                return detail;
            }
            assert!(Instant::now() < deadline, "not there within {patience:?}: {detail}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn process_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// The `local` provider's record of an instance: its agent process id.
fn local_pid(data_dir: &Path, instance_id: &str) -> u64 {
    let file = data_dir.join("local").join(format!("local-{}.json", instance_id.replace('-', "")));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).expect("state file")).expect("json");
    record["pid"].as_u64().expect("pid")
}

/// On `qm dev` with the `local` provider: a deployment becomes real `qm-worker-agent` processes
/// that register and reach `ready`; `DELETE` stops the process; `kill -9` of an agent is noticed
/// and its instance leaves `ready`; a stray tagged agent is terminated by reconciliation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_instances_are_real_processes_from_ready_to_terminated() {
    let agent = Path::new(env!("CARGO_BIN_EXE_qm")).with_file_name("qm-worker-agent");
    assert!(agent.exists(), "{} is missing: build the workspace (make test does)", agent.display());
    let data_dir = temporary_data_dir();
    let (dev, session) = Session::start(&data_dir).await;
    let ids = session.deploy(["local", "local-1", "local.cpu"], 2).await;
    for id in &ids {
        let detail = session.state_within(id, |state| state == "ready", Duration::from_secs(30)).await;
        assert_eq!(detail["progress_percent"], 100);
        assert!(process_alive(local_pid(&data_dir, id)), "a running agent process");
    }

    // DELETE stops the process.
    let pid = local_pid(&data_dir, &ids[0]);
    session.send(reqwest::Method::DELETE, &format!("/instances/{}", ids[0]), None).await;
    session.state_within(&ids[0], |state| state == "terminated", Duration::from_secs(30)).await;
    assert!(!process_alive(pid), "the process is gone");

    // kill -9 of the other agent: its silence is noticed and the instance leaves `ready`.
    let pid = local_pid(&data_dir, &ids[1]);
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill").success());
    session.state_within(&ids[1], |state| state != "ready", Duration::from_secs(60)).await;

    // A stray agent under Quartermaster's tag that the database never heard of.
    let stray_binary = Some(agent.clone());
    let local = qm_providers::local::LocalProvider::new(&data_dir.join("local"), stray_binary);
    let stray = qm_providers::CreateRequest {
        instance_id: qm_domain::InstanceId::new(),
        zone: "local-1".into(),
        instance_type: "local.cpu".into(),
        user_data: String::new(),
        tags: Default::default(),
    };
    use qm_providers::CloudProvider as _;
    let created = local.create(&stray).await.expect("create");
    let started = local.start(&created.provider_id).await.expect("start");
    assert_eq!(started.status, qm_providers::ProviderStatus::Running);
    session.send(reqwest::Method::POST, "/fleet/reconcile", Some(serde_json::json!({ "provider": "local" }))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while local.list().await.expect("list").iter().any(|instance| instance.provider_id == created.provider_id) {
        assert!(Instant::now() < deadline, "the stray was not terminated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert!(dev.terminate(Duration::from_secs(15)).success());
    for instance in local.list().await.expect("list") {
        local.terminate(&instance.provider_id).await.expect("clean up");
    }
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
