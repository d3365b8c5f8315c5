//! The orchestrator driving the `scaleway` provider against the Instance API fake: provisioning
//! through termination, `out_of_stock` in one zone failing over to the next (at create, and at
//! poweron with nothing left behind), 429s retried with backoff, reconciliation of a server
//! deleted behind our back (and its leftover volume) and of an orphan, two installations on one
//! fake never touching each other's servers or volumes, and catalog sync of the GPU types with
//! their prices.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use qm_config::Secret;
use qm_domain::{InstanceId, InstanceState};
use qm_orchestrator::saga::Saga;
use qm_providers::CloudProvider;
use qm_providers::scaleway::{ScalewayConfig, ScalewayProvider};
use qm_store::Offer;
use qm_testkit::scaleway::FakeScaleway;

mod common;
use common::{World, fast};

const SECRET: &str = "scw-orchestrator-secret";
const PROJECT: &str = "11111111-2222-3333-4444-555555555555";

fn offer(zone: &str) -> Offer {
    Offer {
        provider: "scaleway".into(),
        region: qm_providers::scaleway::region_of(zone),
        zone_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, zone.as_bytes()).into(),
        zone: zone.into(),
        instance_type_id: uuid::Uuid::nil().into(),
        instance_type: "L4-1-24G".into(),
        gpu_model: Some("L4".into()),
        gpu_count: 1,
        gpu_memory_gb: 24,
        hourly_price_micros: 750_000,
        currency: "EUR".into(),
    }
}

fn providers(fake: &FakeScaleway) -> BTreeMap<String, Arc<dyn CloudProvider>> {
    installation_providers(fake, "staging")
}

fn installation_providers(fake: &FakeScaleway, installation: &str) -> BTreeMap<String, Arc<dyn CloudProvider>> {
    let config = ScalewayConfig {
        api_url: fake.url(),
        secret_key: Secret::new(SECRET),
        project_id: PROJECT.into(),
        zones: vec!["fr-par-1".into(), "fr-par-2".into()],
        image: "ubuntu_jammy_gpu_os_12".into(),
        installation: installation.into(),
    };
    BTreeMap::from([("scaleway".to_owned(), Arc::new(ScalewayProvider::new(config)) as Arc<dyn CloudProvider>)])
}

fn saga(world: &World, fake: &FakeScaleway) -> Saga {
    installation_saga(world, fake, "staging")
}

fn installation_saga(world: &World, fake: &FakeScaleway, installation: &str) -> Saga {
    Saga::new(world.store.clone(), installation_providers(fake, installation), fast())
        .with_api_url(Some("http://127.0.0.1:9".into()))
}

#[tokio::test]
async fn an_instance_is_provisioned_with_user_data_and_terminated() {
    let world = World::new(offer).await;
    let fake = FakeScaleway::start(SECRET).await;
    let (id, command) = world.requested(&["fr-par-1"]).await;
    saga(&world, &fake).provision(&command).await.unwrap();
    let instance = world.state(id).await;
    assert_eq!(instance.state, InstanceState::Booting, "no agent can boot in the fake: it stops at booting");
    assert!(instance.address.as_deref().is_some_and(|address| address.starts_with("51.15.")));
    let server_id = instance.provider_instance_id.clone().unwrap();
    let (zone, server) = server_id.split_once('/').unwrap();
    let user_data = fake.user_data(zone, server).unwrap();
    let config =
        qm_providers::agent::BootConfig::parse(&user_data).expect("a #cloud-config with the agent's configuration");
    // As the server received it, cloud-init accepts it.
    if let Err(said) = qm_testkit::cloud_init::validate(&user_data) {
        panic!("{said}\n{user_data}");
    }
    assert!(config.instance_id == id.to_string() && config.bootstrap_token.starts_with("qmb_"), "{user_data}");

    let terminate = world.request_termination(id).await;
    saga(&world, &fake).terminate(&terminate).await.unwrap();
    assert_eq!(world.state(id).await.state, InstanceState::Terminated);
    assert!(fake.servers().is_empty(), "terminated at the provider");
    assert!(fake.volumes().is_empty(), "with its root volume");
    world.cleanup();
}

#[tokio::test]
async fn out_of_stock_in_one_zone_fails_over_to_the_next() {
    let world = World::new(offer).await;
    let fake = FakeScaleway::start(SECRET).await;
    fake.out_of_stock("fr-par-1", "L4-1-24G");
    let (id, command) = world.requested(&["fr-par-1", "fr-par-2"]).await;
    saga(&world, &fake).provision(&command).await.unwrap();
    let instance = world.state(id).await;
    assert_eq!((instance.state, instance.zone.as_str()), (InstanceState::Booting, "fr-par-2"));
    let logs = world.store.action_logs(Some(world.organization), 50).await.unwrap();
    let failover = logs.iter().find(|entry| entry.action_type == "instance.failover").unwrap();
    let after = failover.metadata["after"].to_string();
    assert!(after.contains("scaleway: no capacity for this instance type in this zone"), "{failover:?}");
    assert!(!after.contains("out_of_stock"), "the provider's own text stays in the logs: {failover:?}");
    world.cleanup();
}

#[tokio::test]
async fn a_poweron_out_of_stock_fails_over_and_leaves_nothing_behind() {
    use qm_testkit::scaleway::StartFailure;
    for how in [StartFailure::Refused, StartFailure::FallsBack] {
        let world = World::new(offer).await;
        let fake = FakeScaleway::start(SECRET).await;
        fake.fail_starts("fr-par-1", "L4-1-24G", how);
        let (id, command) = world.requested(&["fr-par-1", "fr-par-2"]).await;
        saga(&world, &fake).provision(&command).await.unwrap();
        let instance = world.state(id).await;
        assert_eq!((instance.state, instance.zone.as_str()), (InstanceState::Booting, "fr-par-2"), "{how:?}");
        assert!(instance.provider_instance_id.as_deref().is_some_and(|id| id.starts_with("fr-par-2/")));
        let zones = |items: Vec<serde_json::Value>| -> Vec<String> {
            items.iter().map(|item| item["zone"].as_str().unwrap_or_default().to_owned()).collect()
        };
        assert_eq!(zones(fake.servers()), ["fr-par-2"], "{how:?}: no server left in zone 1");
        assert_eq!(zones(fake.volumes()), ["fr-par-2"], "{how:?}: no volume left in zone 1");
        let logs = world.store.action_logs(Some(world.organization), 50).await.unwrap();
        let failed = logs.iter().find(|entry| entry.action_type == "instance.start_failed").unwrap();
        assert_eq!(failed.metadata["zone"], "fr-par-1");
        world.cleanup();
    }
}

#[tokio::test]
async fn two_installations_on_one_fake_never_touch_each_others_servers_or_volumes() {
    let staging = World::new(offer).await;
    let production = World::new(offer).await;
    let fake = FakeScaleway::start(SECRET).await;
    fake.detach_after(Duration::ZERO);
    let (staging_id, command) = staging.requested(&["fr-par-1"]).await;
    saga(&staging, &fake).provision(&command).await.unwrap();
    let (prod_id, command) = production.requested(&["fr-par-1"]).await;
    installation_saga(&production, &fake, "prod").provision(&command).await.unwrap();
    let prod_server = production.state(prod_id).await.provider_instance_id.unwrap();
    let staging_server = staging.state(staging_id).await.provider_instance_id.unwrap();
    // Production's server vanishes behind its back: its volume is a leftover, production's only.
    let (zone, server) = prod_server.split_once('/').unwrap();
    fake.remove(zone, server);
    let reconcile = |world: &World, installation: &str| {
        let reconciler = qm_orchestrator::reconcile::Reconciler {
            store: world.store.clone(),
            saga: Arc::new(installation_saga(world, &fake, installation)),
            every: Duration::from_secs(60),
        };
        async move { reconciler.reconcile(None).await.unwrap() }
    };
    let report = reconcile(&staging, "staging").await;
    assert_eq!((report.gone, report.orphans, report.leftovers, report.failures), (0, 0, 0, 0), "{report:?}");
    assert_eq!(fake.volumes().len(), 2, "staging left production's detached volume alone");
    let report = reconcile(&production, "prod").await;
    assert_eq!((report.gone, report.orphans, report.leftovers), (1, 0, 1), "{report:?}");
    assert_eq!(staging.state(staging_id).await.state, InstanceState::Booting);
    let servers: Vec<String> = fake
        .servers()
        .iter()
        .map(|server| format!("{}/{}", server["zone"].as_str().unwrap(), server["id"].as_str().unwrap()))
        .collect();
    assert_eq!(servers, [staging_server], "staging's server untouched");
    assert_eq!(fake.volumes().len(), 1, "staging's volume untouched");
    staging.cleanup();
    production.cleanup();
}

#[tokio::test]
async fn rate_limited_calls_are_retried_with_backoff() {
    let world = World::new(offer).await;
    let fake = FakeScaleway::start(SECRET).await;
    let (id, command) = world.requested(&["fr-par-1"]).await;
    fake.throttle_next(2);
    saga(&world, &fake).provision(&command).await.unwrap();
    assert_eq!(world.state(id).await.state, InstanceState::Booting);
    assert_eq!(fake.servers().len(), 1, "one server however often the calls were retried");
    world.cleanup();
}

#[tokio::test]
async fn reconciliation_sees_a_deleted_server_and_terminates_an_orphan() {
    let world = World::new(offer).await;
    let fake = FakeScaleway::start(SECRET).await;
    let (id, command) = world.requested(&["fr-par-1"]).await;
    let saga = Arc::new(saga(&world, &fake));
    saga.provision(&command).await.unwrap();
    let provider_id = world.state(id).await.provider_instance_id.unwrap();
    let (zone, server) = provider_id.split_once('/').unwrap();
    fake.remove(zone, server);
    let stranger = InstanceId::new();
    fake.plant(
        "fr-par-2",
        &format!("qm-{stranger}"),
        "L4-1-24G",
        PROJECT,
        &[format!("qm-instance-id={stranger}"), "qm-managed=true".into(), "qm-installation=staging".into()],
    );
    let reconciler =
        qm_orchestrator::reconcile::Reconciler { store: world.store.clone(), saga, every: Duration::from_secs(60) };
    let report = reconciler.reconcile(None).await.unwrap();
    // The deleted server's root volume is still detaching in the background: not yet a leftover.
    assert_eq!((report.gone, report.orphans, report.leftovers), (1, 1, 0), "{report:?}");
    let instance = world.state(id).await;
    assert_eq!((instance.state, instance.deleted_by_provider), (InstanceState::Terminated, true));
    assert!(fake.servers().is_empty(), "the orphan was terminated");
    // Once detached it stays behind, billing: the next pass removes it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let report = reconciler.reconcile(None).await.unwrap();
    assert_eq!((report.gone, report.orphans, report.leftovers), (0, 0, 1), "{report:?}");
    assert!(fake.volumes().is_empty());
    let logs = world.store.action_logs(None, 50).await.unwrap();
    assert!(logs.iter().any(|entry| entry.action_type == "fleet.leftover_removed"));
    world.cleanup();
}

#[tokio::test]
async fn catalog_sync_records_the_gpu_types_with_their_prices() {
    let world = World::new(offer).await;
    let fake = FakeScaleway::start(SECRET).await;
    let sync = qm_orchestrator::catalog::CatalogSync { store: world.store.clone(), providers: providers(&fake) };
    sync.sync(Some("scaleway")).await.unwrap();
    let types = world.store.instance_types(Some("scaleway")).await.unwrap();
    let price = |code: &str| {
        types.iter().find(|kind| kind.code == code).map(|kind| (kind.hourly_price_micros, kind.currency.clone()))
    };
    assert_eq!(price("L4-1-24G"), Some((750_000, "EUR".to_owned())));
    assert_eq!(price("H100-1-80G"), Some((2_730_000, "EUR".to_owned())));
    assert_eq!(price("DEV1-S"), None, "CPU types are not GPU offers");
    let h100 = types.iter().find(|kind| kind.code == "H100-1-80G").unwrap();
    assert_eq!((h100.gpu_model.as_deref(), h100.gpu_count, h100.gpu_memory_gb), (Some("H100"), 1, 80));
    let zones = world.store.instance_type_zones(h100.id).await.unwrap();
    assert_eq!(zones.iter().map(|zone| zone.code.as_str()).collect::<Vec<_>>(), ["fr-par-2"]);
    world.cleanup();
}
