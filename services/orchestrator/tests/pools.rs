//! The pool controller, tick by tick, on a real SQLite store and the `sim` cloud (the replicas'
//! readiness is moved by hand: no agent runs here; `services/cli/tests/pools.rs` runs the whole
//! thing with real agents). A rolling update adds one replica of the new revision before it
//! drains one of the old, and never leaves fewer than `desired` ready; a hard-capped budget stops
//! growth and says so in the pool's status.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{World, fast};
use qm_domain::engine::EngineSettings;
use qm_domain::scaling::ScalingPolicy;
use qm_domain::{Currency, DeploymentId, ExchangeRates, InstanceState};
use qm_orchestrator::pools::PoolController;
use qm_orchestrator::saga::Saga;
use qm_providers::CloudProvider;
use qm_providers::sim::{SimCloud, SimConfig};
use qm_store::{Instance, NewPool, Offer, PoolChange};
use serde_json::json;

fn offer(zone: &str) -> Offer {
    qm_store::testing::offer("sim", zone, "sim.l4")
}

async fn controller(world: &World) -> PoolController {
    let cloud = Arc::new(SimCloud::new(SimConfig::default()));
    let providers = BTreeMap::from([("sim".to_owned(), cloud as Arc<dyn CloudProvider>)]);
    let saga = Arc::new(Saga::new(world.store.clone(), providers, fast()));
    let rates = ExchangeRates::parse(Currency::parse("EUR").unwrap(), ExchangeRates::DEFAULT).unwrap();
    PoolController::new(world.store.clone(), saga).with_budget_caps(rates)
}

async fn pool(world: &World, desired: i32) -> DeploymentId {
    let id = DeploymentId::new();
    let deployment = qm_store::Deployment {
        id,
        organization_id: world.organization,
        created_by: None,
        model: "m".into(),
        count: desired,
        request: json!({}),
        placements: vec![offer("sim-eu-1")],
        created_at: qm_store::now(),
    };
    let policy = ScalingPolicy { drain_deadline_s: 60, ..ScalingPolicy::default() };
    let new = NewPool {
        deployment,
        name: "p".into(),
        min_replicas: desired,
        max_replicas: desired,
        desired,
        policy,
        engine: EngineSettings::default(),
    };
    let mut tx = world.store.begin().await.unwrap();
    tx.insert_pool(&new).await.unwrap();
    tx.commit().await.unwrap();
    id
}

async fn replicas(world: &World, id: DeploymentId) -> Vec<Instance> {
    let recent = qm_store::now() - chrono::Duration::hours(1);
    world.store.deployment_instances(id, recent, 100).await.unwrap()
}

fn count(replicas: &[Instance], state: InstanceState, revision: i32) -> usize {
    replicas.iter().filter(|instance| instance.state == state && instance.revision == Some(revision)).count()
}

/// Brings every `requested` replica to `ready`, as the saga and a registering agent would.
async fn boot_all(world: &World, id: DeploymentId) {
    use InstanceState::{Booting, Provisioning, Ready, Requested};
    for instance in replicas(world, id).await {
        if instance.state == Requested {
            for (from, to) in [(Requested, Provisioning), (Provisioning, Booting), (Booting, Ready)] {
                world.move_to(instance.id, from, to).await;
            }
        }
    }
}

#[tokio::test]
async fn a_rolling_update_surges_one_and_drains_one_for_each_new_ready() {
    let world = World::new(offer).await;
    let controller = controller(&world).await;
    let id = pool(&world, 3).await;
    controller.tick().await.unwrap();
    assert_eq!(count(&replicas(&world, id).await, InstanceState::Requested, 1), 3);
    boot_all(&world, id).await;

    let engine = EngineSettings { args: vec!["--max-model-len".into(), "8192".into()] };
    let policy = world.store.pool(id).await.unwrap().unwrap().policy;
    let change = PoolChange {
        min_replicas: 3,
        max_replicas: 3,
        policy: &policy,
        model: "m",
        engine: &engine,
        placements: None,
        new_revision: true,
    };
    let mut tx = world.store.begin().await.unwrap();
    assert!(tx.update_pool(id, &change).await.unwrap());
    tx.commit().await.unwrap();

    for step in 1..=3 {
        // One new replica: none of the old drains before it is ready.
        controller.tick().await.unwrap();
        controller.tick().await.unwrap();
        let now = replicas(&world, id).await;
        assert_eq!(count(&now, InstanceState::Requested, 2), 1, "step {step}: one surge replica");
        assert_eq!(count(&now, InstanceState::Ready, 1), 4 - step, "step {step}: the old still serve");
        let status = world.store.pool(id).await.unwrap().unwrap().status;
        assert_eq!((status["revision"].as_i64(), status["outdated"].as_u64()), (Some(2), Some(4 - step as u64)));
        assert!(status["conditions"].to_string().contains("rolling update to revision 2"), "{status}");
        // Ready: one old drains (and, with no worker reporting, is terminated next tick).
        boot_all(&world, id).await;
        controller.tick().await.unwrap();
        let now = replicas(&world, id).await;
        assert_eq!(count(&now, InstanceState::Draining, 1), 1, "step {step}");
        let ready = count(&now, InstanceState::Ready, 1) + count(&now, InstanceState::Ready, 2);
        assert_eq!(ready, 3, "step {step}: never fewer than desired ready");
        controller.tick().await.unwrap();
    }
    let now = replicas(&world, id).await;
    assert_eq!(count(&now, InstanceState::Ready, 2), 3);
    assert!(
        now.iter()
            .filter(|instance| instance.revision == Some(1))
            .all(|instance| instance.state.is_terminal() || instance.state == InstanceState::Terminating)
    );
    let status = world.store.pool(id).await.unwrap().unwrap().status;
    assert_eq!(status["outdated"], 0, "{status}");
    world.cleanup();
}

#[tokio::test]
async fn a_hard_capped_budget_stops_growth_and_says_why() {
    let world = World::new(offer).await;
    let controller = controller(&world).await;
    let mut tx = world.store.begin().await.unwrap();
    tx.put_budget(world.organization, 1_000_000, &[], true).await.unwrap();
    tx.commit().await.unwrap();
    let id = pool(&world, 2).await;
    controller.tick().await.unwrap();
    assert!(replicas(&world, id).await.is_empty(), "0.70 EUR/h each would pass 1 EUR in the month");
    let status = world.store.pool(id).await.unwrap().unwrap().status;
    assert!(status["conditions"].to_string().contains("budget_capped"), "{status}");
    assert!(status["conditions"].to_string().contains("hard-capped"), "{status}");

    let mut tx = world.store.begin().await.unwrap();
    tx.put_budget(world.organization, 100_000_000_000, &[], true).await.unwrap();
    tx.commit().await.unwrap();
    controller.tick().await.unwrap();
    assert_eq!(count(&replicas(&world, id).await, InstanceState::Requested, 1), 2);
    let status = world.store.pool(id).await.unwrap().unwrap().status;
    assert!(!status["conditions"].to_string().contains("budget_capped"), "{status}");
    world.cleanup();
}
