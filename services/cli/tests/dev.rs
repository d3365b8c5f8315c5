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
    let login: serde_json::Value = client
        .post(format!("{api}/auth/login"))
        .json(&serde_json::json!({ "login": "admin", "password": "dev-test-password" }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["token"].as_str().expect("token");
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
    let (dev, urls, _) = Dev::start_with(&data_dir, &[], &[("QM_ADMIN_PASSWORD", "dev-test-password")]);
    let client = http();
    let api = &urls["api"];
    let login: serde_json::Value = client
        .post(format!("{api}/auth/login"))
        .json(&serde_json::json!({ "login": "admin", "password": "dev-test-password" }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["token"].as_str().expect("token").to_owned();
    let get = |path: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let response = client.get(path).bearer_auth(token).send().await.expect("get");
            response.json::<serde_json::Value>().await.expect("json")
        }
    };
    let accepted: serde_json::Value = client
        .post(format!("{api}/deployments"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "model": "m", "count": 2, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" }))
        .send()
        .await
        .expect("deploy")
        .json()
        .await
        .expect("json");
    let ids: Vec<String> = accepted["instance_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let detail = get(format!("{api}/instances/{id}")).await;
            if detail["state"] == "ready" {
                assert_eq!(detail["progress_percent"], 100);
                let states: Vec<_> = detail["history"]
                    .as_array()
                    .expect("history")
                    .iter()
                    .map(|change| change["to_state"].clone())
                    .collect();
                assert_eq!(states, ["requested", "provisioning", "booting", "ready"]);
                assert!(detail["provider_instance_id"].is_string() && detail["address"].is_string());
                break;
            }
            assert!(Instant::now() < deadline, "not ready within 30 s: {detail}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let terminating =
        client.delete(format!("{api}/instances/{}", ids[0])).bearer_auth(&token).send().await.expect("delete");
    assert_eq!(terminating.status(), 202);
    loop {
        let detail = get(format!("{api}/instances/{}", ids[0])).await;
        if detail["state"] == "terminated" {
            break;
        }
        assert!(Instant::now() < deadline, "not terminated in time: {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = get(format!("{api}/action_logs/search?instance_id={}", ids[0])).await;
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
