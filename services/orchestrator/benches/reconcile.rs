//! `make bench`: reconciliation of 10,000 recorded instances on PostgreSQL against a `sim`
//! listing with 1% drift (100 instances gone at the provider, 100 orphans), timed including the
//! database reads, against a baseline measured in the same run: the same pass with no drift
//! (the reads and comparisons alone). Target: under 1 s. Results also go to
//! `$CARGO_TARGET_DIR/bench/reconcile.json`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_domain::{InstanceId, InstanceState, OrganizationId};
use qm_orchestrator::reconcile::Reconciler;
use qm_orchestrator::saga::{Retry, Saga};
use qm_providers::CloudProvider;
use qm_providers::sim::{SimCloud, SimConfig};
use qm_store::testing::TestDatabase;
use qm_store::{NewInstance, NewOrganization, Transition};
use serde_json::json;

const INSTANCES: usize = 10_000;
const DRIFT: usize = INSTANCES / 100;
const TARGET: Duration = Duration::from_secs(1);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let database = TestDatabase::create().await;
    let store = qm_store::connect(database.url()).await.unwrap();
    let organization = OrganizationId::new();
    let offer = qm_store::testing::offer("sim", "sim-eu-1", "sim.l4");
    let cloud = Arc::new(SimCloud::new(SimConfig::default()));
    let mut tx = store.begin().await.unwrap();
    tx.insert_organization(&NewOrganization { id: organization, name: "Bench".into(), slug: "bench".into() })
        .await
        .unwrap();
    for _ in 0..INSTANCES {
        let id = InstanceId::new();
        let instance = NewInstance {
            id,
            organization_id: organization,
            deployment_id: None,
            placement: offer.clone(),
            model: "m".into(),
            revision: None,
        };
        tx.insert_instance(&instance).await.unwrap();
        for (from, to) in [
            (InstanceState::Requested, InstanceState::Provisioning),
            (InstanceState::Provisioning, InstanceState::Booting),
        ] {
            let transition = Transition { instance: id, from, to, reason: None, progress_percent: None };
            tx.transition_instance(&transition).await.unwrap();
        }
        cloud.plant(id, "sim-eu-1", "sim.l4");
    }
    tx.commit().await.unwrap();

    let providers: BTreeMap<String, Arc<dyn CloudProvider>> =
        BTreeMap::from([("sim".to_owned(), cloud.clone() as Arc<dyn CloudProvider>)]);
    let saga = Arc::new(Saga::new(store.clone(), providers.clone(), Retry::default()));
    let reconciler = Reconciler { store: store.clone(), saga, every: Duration::from_secs(60) };

    println!("Reconciliation benchmark: {INSTANCES} recorded instances on PostgreSQL, sim listing");
    let started = Instant::now();
    let clean = reconciler.reconcile(None).await.unwrap();
    let baseline = started.elapsed();
    assert_eq!((clean.gone, clean.orphans), (0, 0));
    println!(
        "baseline (no drift)          {:>8.1} ms  ({} listed, {} checked)",
        ms(baseline),
        clean.listed,
        clean.checked
    );

    // 1% drift: instances deleted at the provider, and as many orphans.
    let listed = cloud.list().await.unwrap();
    for found in listed.iter().take(DRIFT) {
        cloud.vanish(&found.provider_id);
    }
    for _ in 0..DRIFT {
        cloud.plant(InstanceId::new(), "sim-eu-1", "sim.l4");
    }
    let started = Instant::now();
    let report = reconciler.reconcile(None).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!((report.gone, report.orphans), (DRIFT, DRIFT), "{report:?}");
    let verdict = if elapsed < TARGET { "met" } else { "MISSED" };
    println!(
        "1% drift (100 gone, 100 orphans) {:>6.1} ms  ({} listed, {} checked)",
        ms(elapsed),
        report.listed,
        report.checked
    );
    println!("ratio to baseline: x{:.2}", elapsed.as_secs_f64() / baseline.as_secs_f64());
    println!("target < {} ms: {verdict}", TARGET.as_millis());

    let directory =
        std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("bench");
    std::fs::create_dir_all(&directory).unwrap();
    let report = json!({
        "instances": INSTANCES, "drift": DRIFT, "baseline_ms": ms(baseline), "drift_ms": ms(elapsed),
        "ratio_to_baseline": elapsed.as_secs_f64() / baseline.as_secs_f64(), "target_ms": TARGET.as_millis(), "target": verdict,
    });
    std::fs::write(directory.join("reconcile.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
    drop(reconciler);
    database.drop_database().await;
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}
