//! `make bench`: the control plane's pipeline on PostgreSQL + NATS, api and two orchestrators
//! in one process over the `sim` cloud (200 ms boots, simulated agents registering over HTTP).
//!
//! 1. Command latency: 100 deployments of one instance, one at a time, from sending
//!    `POST /deployments` to the orchestrator's `requested → provisioning` (it has picked the
//!    command up). Baseline in the same run: one message published on the same NATS server and
//!    received by a consumer group (the bus alone). Target: p50 under 20 ms.
//! 2. Provisioning throughput: 1,000 instances (ten deployments of 100 at once) until every one
//!    is `ready`. Target: within 20 s.
//! 3. The same 1,000 through `qm dev` (the release binary as a user runs it: SQLite, the
//!    in-process bus, one orchestrator), watched over HTTP. Target: within 30 s.
//!
//! Results also go to `$CARGO_TARGET_DIR/bench/pipeline.json`.

#![allow(clippy::unwrap_used)]

/// `qm dev` started as its tests start it.
#[path = "../tests/support/mod.rs"]
mod support;

/// The allocator of the production binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_domain::{InstanceId, InstanceState};
use qm_events::{Channel, Envelope, MessageType};
use qm_orchestrator::health::Deadlines;
use qm_providers::CloudProvider;
use qm_providers::sim::{SimCloud, SimConfig};
use serde_json::json;

const LATENCY_SAMPLES: usize = 100;
const FLEET: usize = 1_000;
const PER_DEPLOYMENT: usize = 100;
const ORCHESTRATORS: usize = 2;
const TARGET_COMMAND_P50: Duration = Duration::from_millis(20);
const TARGET_FLEET_READY: Duration = Duration::from_secs(20);
const TARGET_DEV_FLEET_READY: Duration = Duration::from_secs(30);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// Publish → delivery of one message at a time on `bus`, through its own consumer group.
async fn bus_round_trips(bus: &Arc<dyn qm_bus::EventBus>) -> Vec<Duration> {
    let options = qm_bus::SubscriptionOptions::new(Channel::Events, "bench-baseline");
    let mut subscription = bus.subscribe(options).await.unwrap();
    let mut samples = Vec::new();
    for sequence in 0..LATENCY_SAMPLES {
        let envelope = Envelope::new(MessageType::WorkerHeartbeat, "bench", None, json!({ "sequence": sequence }));
        let sent = Instant::now();
        bus.publish(&envelope).await.unwrap();
        loop {
            let delivery = subscription.next().await.unwrap();
            let mine = delivery.envelope.id == envelope.id;
            delivery.ack().await.unwrap();
            if mine {
                break;
            }
        }
        samples.push(sent.elapsed());
    }
    samples.sort_unstable();
    samples
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn deploy(&self, count: usize) -> Vec<InstanceId> {
        let body = json!({ "model": "bench-model", "count": count, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
        let response = self
            .client
            .post(format!("{}/deployments", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        let accepted: serde_json::Value = response.json().await.unwrap();
        accepted["instance_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().parse().unwrap()).collect()
    }
}

async fn run() {
    let password = "bench-admin-password";
    // One cloud behind both orchestrators, as one provider account would be.
    let cloud = Arc::new(SimCloud::new(SimConfig { boot_delay: Duration::from_millis(200), ..SimConfig::default() }));
    let providers = BTreeMap::from([("sim".to_owned(), cloud as Arc<dyn CloudProvider>)]);
    let plane =
        support::control_plane::ControlPlane::start(password, providers, ORCHESTRATORS, Deadlines::default()).await;
    let (base, store) = (plane.api.clone(), plane.store.clone());
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let token = qm_testkit::login(&client, &base, "admin", password).await;
    let api = Api { client, base, token };

    println!("Pipeline benchmark: PostgreSQL + NATS, api and {ORCHESTRATORS} orchestrators, sim cloud (200 ms boots)");
    let baseline = bus_round_trips(&plane.bus).await;

    // Command latency, one deployment at a time.
    let mut latencies = Vec::new();
    for _ in 0..LATENCY_SAMPLES {
        let sent = chrono::Utc::now();
        let id = api.deploy(1).await[0];
        let deadline = Instant::now() + Duration::from_secs(10);
        let picked_up = loop {
            let history = store.instance_history(id).await.unwrap();
            if let Some(change) = history.iter().find(|change| change.to_state == InstanceState::Provisioning) {
                break change.occurred_at;
            }
            assert!(Instant::now() < deadline, "command for {id} not picked up");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        latencies.push((picked_up - sent).to_std().unwrap_or_default());
    }
    latencies.sort_unstable();
    let (p50, p95) = (percentile(&latencies, 0.5), percentile(&latencies, 0.95));
    let (base50, base95) = (percentile(&baseline, 0.5), percentile(&baseline, 0.95));
    println!("baseline NATS publish → delivery   p50 {:>7.2} ms  p95 {:>7.2} ms", ms(base50), ms(base95));
    println!("POST /deployments → saga pickup   p50 {:>7.2} ms  p95 {:>7.2} ms", ms(p50), ms(p95));
    let latency_ratio = p50.as_secs_f64() / base50.as_secs_f64();
    let latency_verdict = if p50 < TARGET_COMMAND_P50 { "met" } else { "MISSED" };
    println!(
        "ratio to baseline: p50 x{latency_ratio:.2}; target p50 < {} ms: {latency_verdict}",
        TARGET_COMMAND_P50.as_millis()
    );

    // Throughput: the whole fleet at once.
    let fleet = provision_fleet(&api, |fleet| {
        let store = store.clone();
        async move { ready_count(&*store, &fleet).await }
    })
    .await;
    let fleet_report = fleet.report("PostgreSQL + NATS, two orchestrators", TARGET_FLEET_READY);

    // The same through `qm dev`.
    let data_dir = support::temporary_data_dir();
    let (dev, urls, _) = support::Dev::start_with(&data_dir, &[], &[("QM_ADMIN_PASSWORD", password)]);
    let dev_api = Api {
        token: qm_testkit::login(&api.client, &urls["api"], "admin", password).await,
        client: api.client.clone(),
        base: urls["api"].clone(),
    };
    let dev_fleet = provision_fleet(&dev_api, |fleet| ready_over_http(&dev_api, fleet)).await;
    let dev_report = dev_fleet.report("qm dev (SQLite, in-process bus)", TARGET_DEV_FLEET_READY);
    assert!(dev.terminate(Duration::from_secs(30)).success());
    std::fs::remove_dir_all(&data_dir).unwrap();

    let directory =
        std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("bench");
    std::fs::create_dir_all(&directory).unwrap();
    let report = json!({
        "orchestrators": ORCHESTRATORS,
        "command_latency": {
            "samples": LATENCY_SAMPLES, "p50_ms": ms(p50), "p95_ms": ms(p95),
            "baseline_bus_p50_ms": ms(base50), "baseline_bus_p95_ms": ms(base95),
            "p50_ratio_to_baseline": (latency_ratio * 100.0).round() / 100.0,
            "target_p50_ms": TARGET_COMMAND_P50.as_millis(), "target": latency_verdict,
        },
        "fleet": fleet_report,
        "fleet_qm_dev": dev_report,
    });
    std::fs::write(directory.join("pipeline.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();

    plane.stop().await;
}

/// Provisioning a whole fleet at once.
struct Fleet {
    accepted: usize,
    accepted_in: Duration,
    ready: usize,
    all_ready_in: Duration,
}

impl Fleet {
    fn report(&self, setup: &str, target: Duration) -> serde_json::Value {
        let verdict = if self.ready >= self.accepted && self.all_ready_in < target { "met" } else { "MISSED" };
        println!(
            "{setup}: {} instances accepted in {:.2} s; {} ready after {:.2} s; target all ready within {} s: {verdict}",
            self.accepted,
            self.accepted_in.as_secs_f64(),
            self.ready,
            self.all_ready_in.as_secs_f64(),
            target.as_secs()
        );
        json!({
            "setup": setup, "instances": self.accepted, "ready": self.ready,
            "accepted_s": (self.accepted_in.as_secs_f64() * 100.0).round() / 100.0,
            "all_ready_s": (self.all_ready_in.as_secs_f64() * 100.0).round() / 100.0,
            "target_s": target.as_secs(), "target": verdict,
        })
    }
}

/// Deploys [`FLEET`] instances ([`PER_DEPLOYMENT`] per deployment, all at once) and polls
/// `ready_count` until every one is ready, or two minutes have passed.
async fn provision_fleet<F, Ready>(api: &Api, ready_count: F) -> Fleet
where
    F: Fn(Vec<InstanceId>) -> Ready,
    Ready: std::future::Future<Output = usize>,
{
    let started = Instant::now();
    let deployments = (0..FLEET / PER_DEPLOYMENT).map(|_| api.deploy(PER_DEPLOYMENT));
    let fleet: Vec<InstanceId> = futures::future::join_all(deployments).await.into_iter().flatten().collect();
    let accepted = fleet.len();
    let accepted_in = started.elapsed();
    let deadline = started + Duration::from_secs(120);
    let mut ready = 0;
    while ready < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = ready_count(fleet.clone()).await;
    }
    Fleet { accepted, accepted_in, ready, all_ready_in: started.elapsed() }
}

/// How many of `fleet` `GET /instances?state=ready` lists, page by page.
async fn ready_over_http(api: &Api, fleet: Vec<InstanceId>) -> usize {
    let fleet: std::collections::HashSet<String> = fleet.iter().map(ToString::to_string).collect();
    let mut ready = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/instances?state=ready&limit=500", api.base);
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: serde_json::Value =
            api.client.get(url).bearer_auth(&api.token).send().await.unwrap().json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        ready += items.iter().filter(|item| fleet.contains(item["id"].as_str().unwrap())).count();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ready,
        }
    }
}

/// How many of `fleet` are `ready`.
async fn ready_count(store: &dyn qm_store::Store, fleet: &[InstanceId]) -> usize {
    let instances = store.instances_by_ids(fleet).await.unwrap();
    instances.iter().filter(|instance| instance.state == InstanceState::Ready).count()
}
