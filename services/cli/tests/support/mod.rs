//! What the tests of `qm dev` share: the real binary started on free ports, and a client
//! logged in to it.

#![allow(dead_code)]

pub mod control_plane;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
pub struct Dev {
    pub child: Child,
    pub output: mpsc::Receiver<String>,
}

/// A test that fails before terminating `qm dev` must not leave it running.
impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Dev {
    /// Starts `qm dev` on free ports and waits for it to print where each service listens.
    pub fn start(data_dir: &Path) -> (Self, HashMap<String, String>, Vec<String>) {
        Self::start_with(data_dir, &[], &[])
    }

    pub fn start_with(
        data_dir: &Path,
        arguments: &[&str],
        variables: &[(&str, &str)],
    ) -> (Self, HashMap<String, String>, Vec<String>) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_qm"));
        command.args(["dev", "--data-dir"]).arg(data_dir).args(arguments).stdout(Stdio::piped()).stderr(Stdio::piped());
        for variable in ["QM_API_ADDR", "QM_ORCHESTRATOR_ADDR", "QM_FINOPS_ADDR", "QM_ROUTER_ADDR"] {
            command.env(variable, "127.0.0.1:0");
        }
        for variable in ["QM_ADMIN_PASSWORD", "QM_ADMIN_PASSWORD_FILE", "QM_DATABASE_URL", "QM_BUS_URL"] {
            command.env_remove(variable);
        }
        command.envs(variables.iter().copied());
        let mut child = command.spawn().expect("start qm dev");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (sender, output) = mpsc::channel();
        let logs = sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        // Logs go to stdout; stderr has what escapes them (panics), marked.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if logs.send(format!("[log] {line}")).is_err() {
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
    pub fn terminate(self, patience: Duration) -> std::process::ExitStatus {
        self.terminate_with_output(patience).0
    }

    /// [`Dev::terminate`], with every line printed (stdout and logs) since start-up.
    pub fn terminate_with_output(mut self, patience: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(200));
                let lines = self.output.try_iter().collect();
                return (status, lines);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("qm dev did not stop within {patience:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
}

/// The process id of a `local` instance's agent, from the provider's record in `data_dir`.
pub fn local_pid(data_dir: &Path, instance_id: &str) -> u64 {
    let file = data_dir.join("local").join(format!("local-{}.json", instance_id.replace('-', "")));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).expect("state file")).expect("json");
    record["pid"].as_u64().expect("pid")
}

pub fn temporary_data_dir() -> PathBuf {
    std::env::temp_dir().join(format!("qm-dev-test-{}", uuid::Uuid::new_v4().simple()))
}
/// A client logged in to a running `qm dev`.
pub struct Session {
    pub client: reqwest::Client,
    pub api: String,
    pub token: String,
}

impl Session {
    /// Starts `qm dev` on `data_dir` and logs in as the admin.
    pub async fn start(data_dir: &Path) -> (Dev, Self) {
        let (dev, urls, _) = Dev::start_with(data_dir, &[], &[("QM_ADMIN_PASSWORD", "dev-test-password")]);
        (dev, Self::login(&urls["api"], "dev-test-password").await)
    }

    /// `qm dev` whose mock engines take 20 ms a token (so that a stream lasts while its worker
    /// drains or its pool shrinks), logged in; with the router's URL.
    pub async fn start_serving(data_dir: &Path) -> (Dev, Self, String) {
        let variables = [("QM_ADMIN_PASSWORD", "dev-test-password"), ("QM_MOCK_DECODE_MS_PER_TOKEN", "20")];
        let (dev, urls, _) = Dev::start_with(data_dir, &[], &variables);
        (dev, Self::login(&urls["api"], "dev-test-password").await, urls["router"].clone())
    }

    pub async fn login(api: &str, password: &str) -> Self {
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

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        self.exchange(method, path, body).await.1
    }

    /// The status and body of a request.
    pub async fn exchange(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.api)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        (response.status().as_u16(), response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Polls `path` until `ready` accepts the answer.
    pub async fn until(
        &self,
        path: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
        patience: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + patience;
        loop {
            let answer = self.send(reqwest::Method::GET, path, None).await;
            if ready(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "{path} not as expected within {patience:?}: {answer}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deploys `count` instances at `provider`/`zone`/`instance_type`; returns their ids.
    pub async fn deploy(&self, placement: [&str; 3], count: u32) -> Vec<String> {
        let [provider, zone, instance_type] = placement;
        let deployment = serde_json::json!({ "model": "m", "count": count, "provider": provider, "zone": zone, "instance_type": instance_type });
        let accepted = self.send(reqwest::Method::POST, "/deployments", Some(deployment)).await;
        accepted["instance_ids"].as_array().expect("ids").iter().map(|id| id.as_str().expect("id").to_owned()).collect()
    }

    pub async fn state_within(&self, id: &str, wanted: impl Fn(&str) -> bool, patience: Duration) -> serde_json::Value {
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

/// The `qm_` metric names in `text` (histograms by their base name).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("qm_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|character| character.is_ascii_alphanumeric() || *character == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.insert(name.trim_end_matches("_bucket").to_owned());
    }
    names
}

/// The metrics a Grafana dashboard queries; it must have panels.
pub fn dashboard_metrics(path: &Path) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(path).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|panels| !panels.is_empty()), "{}", path.display());
    metric_names(&text)
}
