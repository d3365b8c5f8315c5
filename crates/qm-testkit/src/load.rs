//! A closed-loop load generator for the benches: `clients` loops each sending a request, waiting
//! for the whole answer, pausing, and sending the next, measured after a warm-up. Reports
//! percentiles and throughput.

use std::time::{Duration, Instant};

use serde_json::json;

/// What was measured of one load.
pub struct Measurement {
    pub name: String,
    /// Sorted.
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
    pub errors: usize,
}

impl Measurement {
    /// # Panics
    /// When nothing succeeded.
    pub fn percentile(&self, fraction: f64) -> Duration {
        assert!(!self.latencies.is_empty(), "{}: no request succeeded ({} errors)", self.name, self.errors);
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let index = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies[index]
    }

    pub fn throughput(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let count = self.latencies.len() as f64;
        count / self.elapsed.as_secs_f64()
    }

    /// Prints one line and returns the figures as JSON.
    pub fn report(&self) -> serde_json::Value {
        let ms = |duration: Duration| (duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        println!(
            "{:<40} p50 {:>8.3} ms  p95 {:>8.3} ms  p99 {:>8.3} ms  {:>8.0} req/s  ({} requests, {} errors)",
            self.name,
            ms(self.percentile(0.50)),
            ms(self.percentile(0.95)),
            ms(self.percentile(0.99)),
            self.throughput(),
            self.latencies.len(),
            self.errors
        );
        json!({
            "name": self.name, "requests": self.latencies.len(), "errors": self.errors,
            "p50_ms": ms(self.percentile(0.50)), "p95_ms": ms(self.percentile(0.95)), "p99_ms": ms(self.percentile(0.99)),
            "requests_per_second": self.throughput().round(),
        })
    }
}

/// How a load is shaped: concurrent clients, the pause between one client's requests, the
/// warm-up and how long it is measured after it.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub clients: usize,
    pub pause: Duration,
    pub warm_up: Duration,
    pub measure: Duration,
}

/// One request, sent over and over.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub bearer: Option<String>,
    /// `None`: a GET; else a POST of this JSON, shared by every client.
    pub body: Option<std::sync::Arc<Vec<u8>>>,
}

impl Target {
    pub fn get(url: impl Into<String>, bearer: Option<String>) -> Self {
        Self { url: url.into(), bearer, body: None }
    }

    pub fn post(url: impl Into<String>, bearer: Option<String>, body: &serde_json::Value) -> Self {
        Self { url: url.into(), bearer, body: Some(std::sync::Arc::new(body.to_string().into_bytes())) }
    }
}

/// Runs `shape` against `target` with `client`.
///
/// # Panics
/// When a client task panics.
pub async fn load(name: &str, client: &reqwest::Client, target: &Target, shape: Shape) -> Measurement {
    let started = Instant::now();
    let tasks: Vec<_> = (0..shape.clients)
        .map(|_| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let warm_until = started + shape.warm_up;
                let stop_at = warm_until + shape.measure;
                loop {
                    let sent = Instant::now();
                    if sent >= stop_at {
                        break;
                    }
                    let mut request = match &target.body {
                        None => client.get(&target.url),
                        Some(body) => client
                            .post(&target.url)
                            .header("content-type", "application/json")
                            .body(body.as_ref().clone()),
                    };
                    if let Some(token) = &target.bearer {
                        request = request.bearer_auth(token);
                    }
                    let ok = match request.send().await {
                        Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if sent >= warm_until {
                        if ok {
                            latencies.push(sent.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    if !shape.pause.is_zero() {
                        tokio::time::sleep(shape.pause).await;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut some, failed) = task.await.unwrap_or_default();
        latencies.append(&mut some);
        errors += failed;
    }
    latencies.sort_unstable();
    Measurement { name: name.to_owned(), latencies, elapsed: shape.measure, errors }
}

/// Runs `shape` against each of `targets` in turns: `rounds` rounds, each giving every target
/// a slice of `shape.warm_up / rounds` warm-up and `shape.measure / rounds` measured, so that a
/// machine whose speed drifts during the run (a shared virtual machine) weighs on every target
/// alike and ratios between them hold. Returns one measurement per target, in order.
///
/// # Panics
/// When a client task panics, or `rounds` is 0.
pub async fn load_in_turns(
    client: &reqwest::Client,
    targets: &[(&str, Target)],
    shape: Shape,
    rounds: u32,
) -> Vec<Measurement> {
    assert!(rounds > 0, "at least one round");
    let slice = Shape { warm_up: shape.warm_up / rounds, measure: shape.measure / rounds, ..shape };
    let mut measurements: Vec<Measurement> = targets
        .iter()
        .map(|(name, _)| Measurement {
            name: (*name).to_owned(),
            latencies: Vec::new(),
            elapsed: Duration::ZERO,
            errors: 0,
        })
        .collect();
    for _ in 0..rounds {
        for ((name, target), total) in targets.iter().zip(&mut measurements) {
            let mut one = load(name, client, target, slice).await;
            total.latencies.append(&mut one.latencies);
            total.elapsed += one.elapsed;
            total.errors += one.errors;
        }
    }
    for measurement in &mut measurements {
        measurement.latencies.sort_unstable();
    }
    measurements
}

/// Writes a bench's results to `$CARGO_TARGET_DIR/bench/<name>.json` (`target/` without it).
///
/// # Panics
/// When the file cannot be written.
pub fn save(name: &str, report: &serde_json::Value) {
    let directory =
        std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("bench");
    let written = std::fs::create_dir_all(&directory).and_then(|()| {
        std::fs::write(directory.join(format!("{name}.json")), serde_json::to_string_pretty(report).unwrap_or_default())
    });
    if let Err(error) = written {
        panic!("cannot write the {name} bench's results in {}: {error}", directory.display());
    }
}
