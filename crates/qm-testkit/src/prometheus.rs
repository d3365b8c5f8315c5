//! A real Prometheus (Debian package `prometheus`, installed by `make services`) scraping
//! services every second, so that tests evaluate dashboard and alert queries as Grafana would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Prometheus {
    child: Child,
    directory: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    client: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Every `expr` of a Grafana dashboard's panels.
///
/// # Panics
/// When the file is not a dashboard with panels.
pub fn dashboard_queries(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    assert!(!panels.is_empty(), "{} has no panels", path.display());
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect()
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every second and
    /// waits until it has scraped each of them once.
    ///
    /// # Panics
    /// When `prometheus` is not installed or does not start (the tests must not pass without it).
    pub async fn start(targets: &[&str]) -> Self {
        let directory = std::env::temp_dir().join(format!("qm-prometheus-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&directory).unwrap_or_else(|error| panic!("{}: {error}", directory.display()));
        let listed: Vec<String> = targets.iter().map(|target| format!("'{target}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: qm\n    \
             static_configs:\n      - targets: [{}]\n",
            listed.join(", ")
        );
        let config_path = directory.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap_or_else(|error| panic!("{}: {error}", config_path.display()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .unwrap_or_else(|error| panic!("no free port: {error}"));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", directory.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("prometheus is missing ({error}): `make services` installs it (Debian package prometheus)")
            });
        let prometheus =
            Self { child, directory, url: format!("http://127.0.0.1:{port}"), client: reqwest::Client::new() };
        let started = Instant::now();
        loop {
            let ready = prometheus.client.get(format!("{}/-/ready", prometheus.url)).send().await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "prometheus did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Ready is not scraping: wait until every target has been scraped (its first scrape
        // comes up to an interval later), so that what happens next is seen.
        while prometheus.query("up == 1").await.len() < targets.len() {
            assert!(started.elapsed() < Duration::from_secs(30), "prometheus never scraped {targets:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        prometheus
    }

    /// The result vector of an instant query (empty when the query returns no series).
    ///
    /// # Panics
    /// When Prometheus refuses the query (a syntax error, an unknown function).
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.url), &[("query", expr)])
            .unwrap_or_else(|error| panic!("prometheus URL: {error}"));
        let response = self.client.get(url).send().await.unwrap_or_else(|error| panic!("prometheus: {error}"));
        let answer: Value = response.json().await.unwrap_or_else(|error| panic!("prometheus: {error}"));
        assert_eq!(answer["status"], "success", "`{expr}` refused: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `expr` returns at least one series whose value is a number (not `NaN`), for
    /// up to `patience`; the last result otherwise, for the caller's message.
    ///
    /// # Errors
    /// The query never returned data: its last result.
    pub async fn data(&self, expr: &str, patience: Duration) -> Result<Vec<Value>, Vec<Value>> {
        let started = Instant::now();
        loop {
            let result = self.query(expr).await;
            let numeric = result.iter().any(|series| {
                series["value"][1].as_str().and_then(|value| value.parse::<f64>().ok()).is_some_and(f64::is_finite)
            });
            if numeric {
                return Ok(result);
            }
            if started.elapsed() >= patience {
                return Err(result);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
