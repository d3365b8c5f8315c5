//! 1,000 replicas across 50 pools on the `sim` cloud, with faults: the api and two orchestrators
//! (PostgreSQL + NATS, as production runs them), simulated agents registering and heartbeating
//! over HTTP. 5 % of creates fail and 5 % time out after succeeding (a duplicate would show
//! here), every terminate fails once, and once the pools are full 5 % of their replicas vanish at
//! the provider. Every pool must come back to its size, with no provider instance duplicated,
//! none left behind by a replica that was replaced, and, once the pools are deleted, none at all.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_domain::{DeploymentId, InstanceId, InstanceState};
use qm_orchestrator::health::Deadlines;
use qm_providers::CloudProvider;
use qm_providers::sim::{Faults, SimCloud, SimConfig};
use serde_json::json;
use support::control_plane::ControlPlane;

const POOLS: usize = 50;
const REPLICAS: usize = 20;
const PATIENCE: Duration = Duration::from_secs(300);

/// Each pool's ready replicas (from the store, as the controller sees them).
async fn ready_by_pool(plane: &ControlPlane, pools: &[DeploymentId]) -> HashMap<DeploymentId, Vec<InstanceId>> {
    let recent = qm_store::now() - chrono::Duration::hours(1);
    let mut ready = HashMap::new();
    for pool in pools {
        let replicas = plane.store.deployment_instances(*pool, recent, 500).await.expect("replicas");
        let ids = replicas.iter().filter(|instance| instance.state == InstanceState::Ready).map(|instance| instance.id);
        ready.insert(*pool, ids.collect());
    }
    ready
}

/// Waits until every pool has exactly `size` ready replicas and nothing else unfinished.
async fn converged(plane: &ControlPlane, pools: &[DeploymentId], size: usize, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let recent = qm_store::now() - chrono::Duration::hours(1);
        let mut short = Vec::new();
        for pool in pools {
            let replicas = plane.store.deployment_instances(*pool, recent, 500).await.expect("replicas");
            let ready = replicas.iter().filter(|instance| instance.state == InstanceState::Ready).count();
            let unfinished = replicas.iter().filter(|instance| !instance.state.is_terminal()).count();
            if ready != size || unfinished != size {
                let mut states: BTreeMap<&str, usize> = BTreeMap::new();
                for instance in replicas.iter().filter(|instance| !instance.state.is_terminal()) {
                    *states.entry(instance.state.as_str()).or_default() += 1;
                }
                short.push(format!("{pool}: {ready} ready of {unfinished} unfinished {states:?}"));
            }
        }
        if short.is_empty() {
            return started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "{what}: not converged after {PATIENCE:?}: {short:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The cloud's live instances, by the Quartermaster instance they were created for.
async fn live_at_provider(cloud: &SimCloud) -> HashSet<InstanceId> {
    let listed = cloud.list().await.expect("list");
    listed
        .iter()
        .filter(|instance| instance.status != qm_providers::ProviderStatus::Terminated)
        .filter_map(|instance| instance.instance_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_replicas_in_fifty_pools_converge_through_faults_without_leaks_or_duplicates() {
    let faults = Faults { create_fails: 0.05, create_times_out: 0.05, vanishes: 0.0, terminate_failures: 1 };
    let cloud =
        Arc::new(SimCloud::new(SimConfig { boot_delay: Duration::from_millis(200), faults, ..SimConfig::default() }));
    let providers = BTreeMap::from([("sim".to_owned(), cloud.clone() as Arc<dyn CloudProvider>)]);
    // Silence is noticed after 12 s (agents heartbeat every 5 s), swept every second; a
    // termination whose commands all failed (the breaker opens when every first terminate
    // fails) is issued again after 20 s rather than 15 min.
    let deadlines = Deadlines {
        heartbeat: Duration::from_secs(12),
        terminating: Duration::from_secs(20),
        probe_timeout: Duration::from_millis(500),
        sweep_every: Duration::from_secs(1),
        ..Deadlines::default()
    };
    let password = "fleet-admin-password";
    let plane = ControlPlane::start(password, providers, 2, deadlines).await;
    let client = support::http();
    let token = qm_testkit::login(&client, &plane.api, "admin", password).await;

    let mut pools = Vec::new();
    for index in 0..POOLS {
        let body = json!({ "name": format!("fleet-{index}"), "model": format!("model-{index}"), "provider": "sim",
            "zone": "sim-eu-1", "instance_type": "sim.l4", "min_replicas": REPLICAS, "max_replicas": REPLICAS,
            "policy": { "unhealthy_grace_s": 1, "drain_deadline_s": 5 } });
        let response =
            client.post(format!("{}/pools", plane.api)).bearer_auth(&token).json(&body).send().await.expect("post");
        assert_eq!(response.status(), 201);
        let pool: serde_json::Value = response.json().await.expect("pool");
        pools.push(pool["id"].as_str().expect("id").parse::<DeploymentId>().expect("pool id"));
    }
    let filled = converged(&plane, &pools, REPLICAS, "filling").await;

    // 5 % of the replicas vanish at the provider: each is noticed, terminated and replaced.
    let ready = ready_by_pool(&plane, &pools).await;
    let all: Vec<InstanceId> = ready.values().flatten().copied().collect();
    let victims: Vec<InstanceId> = all.iter().step_by(20).copied().collect();
    assert_eq!(victims.len(), POOLS * REPLICAS / 20);
    for victim in &victims {
        let instance = plane.store.instance(*victim).await.expect("read").expect("instance");
        assert!(cloud.vanish(instance.provider_instance_id.as_deref().expect("provider id")));
    }
    let since = Instant::now();
    loop {
        let finished = plane.store.instances_by_ids(&victims).await.expect("read");
        let left: Vec<_> = finished.iter().filter(|instance| instance.state != InstanceState::Terminated).collect();
        if left.is_empty() {
            break;
        }
        let states: Vec<_> = left.iter().map(|instance| instance.state).collect();
        assert!(since.elapsed() < PATIENCE, "vanished replicas not terminated: {states:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    converged(&plane, &pools, REPLICAS, "healing").await;
    let healed = since.elapsed();

    // No duplicate, no leak: the provider runs exactly the ready replicas.
    assert_eq!(cloud.most_creates_per_instance(), 1, "a create that timed out was repeated");
    let ready: HashSet<InstanceId> = ready_by_pool(&plane, &pools).await.into_values().flatten().collect();
    assert_eq!(ready.len(), POOLS * REPLICAS);
    let live = live_at_provider(&cloud).await;
    assert_eq!(live, ready, "the provider runs exactly the ready replicas");

    // Deleted, the pools leave nothing running.
    for pool in &pools {
        let response =
            client.delete(format!("{}/pools/{pool}", plane.api)).bearer_auth(&token).send().await.expect("delete");
        assert_eq!(response.status(), 202);
    }
    let emptied = converged(&plane, &pools, 0, "deleting").await;
    let started = Instant::now();
    while !live_at_provider(&cloud).await.is_empty() {
        assert!(started.elapsed() < PATIENCE, "instances left at the provider after the pools were deleted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stats = cloud.stats();
    eprintln!(
        "{} replicas in {POOLS} pools: filled in {filled:?}, {} vanished replaced in {healed:?}, emptied in {emptied:?}; \
         {} provider instances created, {} calls",
        POOLS * REPLICAS,
        victims.len(),
        stats.created,
        stats.calls
    );
    plane.stop().await;
}
