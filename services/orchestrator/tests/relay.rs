//! The orchestrator publishes its own outbox: with the api not running at all, the orchestrator
//! and finops started as separate binaries on PostgreSQL + NATS still carry a provision command
//! through to a billing interval in finops (the orchestrator's `instance.billing_started`
//! reaches finops through the orchestrator's relay).

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qm_domain::InstanceState;
use qm_store::testing::TestDatabase;

mod common;

/// Kills the binaries even when the test fails.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start(binary: &std::path::Path, database_url: &str, bus_url: &str) -> Child {
    Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("QM_DATABASE_URL", database_url)
        .env("QM_BUS_URL", bus_url)
        .env("QM_PROVIDERS", "sim")
        .env("QM_ORCHESTRATOR_ADDR", "127.0.0.1:0")
        .env("QM_FINOPS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_api_down_the_orchestrators_events_still_reach_finops() {
    let orchestrator = std::path::PathBuf::from(env!("CARGO_BIN_EXE_qm-orchestrator"));
    let finops = orchestrator.with_file_name("qm-finops");
    assert!(finops.exists(), "{} is missing: build the workspace (make test does)", finops.display());
    let database = TestDatabase::create().await;
    let prefix = format!("relay{}", uuid::Uuid::new_v4().simple());
    let nats = std::env::var("QM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let bus_url = format!("{nats}?prefix={prefix}");
    let store = qm_store::connect(database.url()).await.unwrap();
    let bus = qm_bus::connect(&bus_url).await.unwrap();

    let placement = qm_store::testing::offer("sim", "sim-eu-1", "sim.l4");
    let (id, command) = common::requested_in(&*store, "relay", &placement).await;

    let _running =
        Running(vec![start(&orchestrator, database.url(), &bus_url), start(&finops, database.url(), &bus_url)]);
    bus.publish(&command).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let interval = loop {
        if let Some(interval) = store.cost_interval(id).await.unwrap() {
            break interval;
        }
        assert!(
            Instant::now() < deadline,
            "finops never heard of the instance (state {:?}, outbox backlog {})",
            store.instance(id).await.unwrap().map(|instance| instance.state),
            store.outbox_backlog().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(interval.instance_id, id);
    assert_eq!(store.instance(id).await.unwrap().unwrap().state, InstanceState::Booting);

    drop(_running);
    let naming = qm_bus::Naming::new(Some(&prefix)).unwrap();
    let nats_url = url::Url::parse(&bus_url).unwrap();
    qm_bus::nats::NatsBus::connect(&nats_url, naming).await.unwrap().delete_streams().await.unwrap();
    database.drop_database().await;
}
