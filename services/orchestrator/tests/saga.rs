//! The provisioning saga and termination on the `sim` cloud, against a real SQLite store: the
//! happy path, failover on capacity, no duplicate after a create that timed out, compensation,
//! termination that has to retry, and the whole path through the bus.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use qm_domain::{InstanceId, InstanceState};
use qm_events::{Envelope, MessageType};
use qm_orchestrator::saga::Saga;
use qm_providers::CloudProvider;
use qm_providers::sim::{Faults, SimCloud, SimConfig};
use qm_store::{Offer, Transition};
use serde_json::json;

mod common;
use common::{World, fast};

fn offer(zone: &str) -> Offer {
    // Catalog ids do not matter to the provider; stable ones per zone keep failover checks simple.
    let zone_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, zone.as_bytes());
    Offer {
        provider: "sim".into(),
        region: "sim-eu".into(),
        zone_id: zone_id.into(),
        zone: zone.into(),
        instance_type_id: uuid::Uuid::nil().into(),
        instance_type: "sim.l4".into(),
        gpu_model: Some("L4".into()),
        gpu_count: 1,
        gpu_memory_gb: 24,
        hourly_price_micros: 700_000,
        currency: "EUR".into(),
    }
}

fn providers(cloud: &Arc<SimCloud>) -> BTreeMap<String, Arc<dyn CloudProvider>> {
    BTreeMap::from([("sim".to_owned(), cloud.clone() as Arc<dyn CloudProvider>)])
}

fn saga(world: &World, cloud: &Arc<SimCloud>) -> Saga {
    Saga::new(world.store.clone(), providers(cloud), fast())
}

fn history(instance_history: &[qm_store::StateChange]) -> Vec<InstanceState> {
    instance_history.iter().map(|change| change.to_state).collect()
}

#[tokio::test]
async fn a_provisioned_instance_boots_with_its_history_logs_and_events() {
    let world = World::new(offer).await;
    // Running (with its address) as soon as it is started.
    let cloud = Arc::new(SimCloud::new(SimConfig { boot_delay: Duration::ZERO, ..SimConfig::default() }));
    let saga = saga(&world, &cloud);
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    saga.provision(&command).await.unwrap();
    let instance = world.state(id).await;
    assert_eq!(instance.state, InstanceState::Booting);
    assert_eq!(instance.progress_percent, 60);
    assert!(instance.provider_instance_id.is_some() && instance.address.is_some());
    let changes = world.store.instance_history(id).await.unwrap();
    assert_eq!(history(&changes), [InstanceState::Requested, InstanceState::Provisioning, InstanceState::Booting]);
    let logs = world.store.action_logs(Some(world.organization), 50).await.unwrap();
    let types: Vec<_> = logs.iter().map(|entry| entry.action_type.as_str()).collect();
    assert!(types.contains(&"instance.provisioning") && types.contains(&"instance.booting"), "{types:?}");
    assert!(logs.iter().all(|entry| entry.component == "orchestrator" && entry.duration_ms.is_some()));
    assert!(
        logs.iter().all(|entry| qm_domain::actions::action_type(&entry.action_type).is_some()),
        "catalogued: {types:?}"
    );
    let events = world.store.feed(0, None, Some(world.organization), 100).await.unwrap();
    let caused: Vec<_> =
        events.iter().filter(|entry| entry.envelope.causation_id == Some(command.id.as_uuid())).collect();
    let kinds: Vec<_> = caused.iter().map(|entry| entry.envelope.message_type.as_str()).collect();
    assert_eq!(
        kinds,
        ["instance.state_changed", "instance.billing_started", "instance.state_changed"],
        "one event per transition and billing from the create, caused by the command"
    );
    let billing = &caused[1].envelope.data;
    assert_eq!((billing["hourly_price_micros"].as_i64(), billing["zone"].as_str()), (Some(700_000), Some("sim-eu-1")));
    // Delivered again (a redelivery after a crash): nothing changes, nothing is created twice.
    saga.provision(&command).await.unwrap();
    assert_eq!(cloud.stats().created, 1);
    world.cleanup();
}

#[tokio::test]
async fn a_capacity_error_in_zone_1_lands_the_instance_in_zone_2() {
    let world = World::new(offer).await;
    let config = SimConfig { zone_capacity: BTreeMap::from([("sim-eu-1".to_owned(), 0)]), ..SimConfig::default() };
    let cloud = Arc::new(SimCloud::new(config));
    let saga = saga(&world, &cloud);
    let (id, command) = world.requested(&["sim-eu-1", "sim-eu-2"]).await;
    saga.provision(&command).await.unwrap();
    let instance = world.state(id).await;
    assert_eq!(instance.state, InstanceState::Booting);
    assert_eq!(instance.zone, "sim-eu-2");
    let logs = world.store.action_logs(Some(world.organization), 50).await.unwrap();
    let failover = logs.iter().find(|entry| entry.action_type == "instance.failover").expect("failover logged");
    assert!(failover.metadata.to_string().contains("no capacity"), "{}", failover.metadata);
    // The exhausted offer is remembered: the next instance goes straight to zone 2.
    let (second, command) = world.requested(&["sim-eu-1", "sim-eu-2"]).await;
    saga.provision(&command).await.unwrap();
    assert_eq!(world.state(second).await.zone, "sim-eu-2");
    world.cleanup();
}

#[tokio::test]
async fn no_capacity_anywhere_fails_with_the_reasons() {
    let world = World::new(offer).await;
    let capacity = BTreeMap::from([("sim-eu-1".to_owned(), 0), ("sim-eu-2".to_owned(), 0)]);
    let cloud = Arc::new(SimCloud::new(SimConfig { zone_capacity: capacity, ..SimConfig::default() }));
    let saga = saga(&world, &cloud);
    let (id, command) = world.requested(&["sim-eu-1", "sim-eu-2"]).await;
    saga.provision(&command).await.unwrap();
    let instance = world.state(id).await;
    assert_eq!(instance.state, InstanceState::ProvisioningFailed);
    let reason = instance.failure_reason.unwrap();
    assert!(reason.contains("sim-eu-1") && reason.contains("sim-eu-2"), "{reason}");
    let logs = world.store.action_logs(Some(world.organization), 50).await.unwrap();
    let failed = logs.iter().find(|entry| entry.action_type == "instance.provisioning_failed").unwrap();
    assert_eq!(failed.status, qm_store::ActionStatus::Failed);
    assert!(failed.error.as_deref().is_some_and(|error| error.contains("no placement")));
    world.cleanup();
}

#[tokio::test]
async fn a_create_that_timed_out_after_succeeding_is_not_duplicated() {
    let world = World::new(offer).await;
    let faults = Faults { create_times_out: 1.0, ..Faults::default() };
    let cloud = Arc::new(SimCloud::new(SimConfig { faults, ..SimConfig::default() }));
    let saga = saga(&world, &cloud);
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    saga.provision(&command).await.unwrap();
    assert_eq!(world.state(id).await.state, InstanceState::Booting);
    assert_eq!(cloud.stats().created, 1, "the retry found the instance the timed-out create made");
    world.cleanup();
}

#[tokio::test]
async fn provisioning_does_not_wait_for_the_boot_and_the_sweep_records_the_address() {
    let world = World::new(offer).await;
    let boot_delay = Duration::from_millis(400);
    let cloud = Arc::new(SimCloud::new(SimConfig { boot_delay, ..SimConfig::default() }));
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    let started = std::time::Instant::now();
    saga(&world, &cloud).provision(&command).await.unwrap();
    assert!(started.elapsed() < boot_delay, "the command is released before the instance boots");
    let instance = world.state(id).await;
    assert_eq!(instance.state, InstanceState::Booting);
    assert_eq!((instance.address.as_deref(), instance.progress_percent), (None, 40), "started, no address yet");

    let health = health(&world, saga(&world, &cloud), Duration::from_secs(60), Duration::from_secs(60));
    health.sweep().await.unwrap();
    assert_eq!(world.state(id).await.address, None, "still booting at the provider");
    tokio::time::sleep(boot_delay).await;
    health.sweep().await.unwrap();
    let instance = world.state(id).await;
    assert!(instance.address.is_some_and(|address| address.starts_with("10.")), "recorded from the listing");
    assert_eq!(instance.state, InstanceState::Booting, "ready comes from the agent, not the address");
    world.cleanup();
}

#[tokio::test]
async fn termination_goes_by_the_recorded_id_without_listing_the_provider() {
    let world = World::new(offer).await;
    let cloud = Arc::new(SimCloud::new(SimConfig::default()));
    let saga = saga(&world, &cloud);
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    saga.provision(&command).await.unwrap();
    let terminate = world.request_termination(id).await;
    let calls = cloud.stats().calls;
    saga.terminate(&terminate).await.unwrap();
    assert_eq!(cloud.stats().calls - calls, 1, "one terminate call, no listing");
    assert_eq!(world.state(id).await.state, InstanceState::Terminated);
    world.cleanup();
}

#[tokio::test]
async fn an_instance_whose_provider_is_not_enabled_stays_terminating_with_the_reason() {
    let world = World::new(offer).await;
    let cloud = Arc::new(SimCloud::new(SimConfig::default()));
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    saga(&world, &cloud).provision(&command).await.unwrap();
    let terminate = world.request_termination(id).await;
    // The orchestrator restarted without `sim` in QM_PROVIDERS.
    let registry = prometheus::Registry::new();
    let without = Saga::new(world.store.clone(), BTreeMap::new(), fast()).with_metrics(&registry);
    without.terminate(&terminate).await.unwrap();
    let instance = world.state(id).await;
    assert_eq!(instance.state, InstanceState::Terminating, "never terminated without the provider confirming");
    assert!(instance.failure_reason.unwrap().contains("not enabled"));
    assert_eq!(cloud.stats().live, 1, "it still runs (and bills) at the provider");
    let metrics = qm_telemetry::metrics::render(&registry);
    assert!(metrics.contains("qm_orchestrator_terminations_blocked_total 1"), "{metrics}");
    let logs = world.store.action_logs(Some(world.organization), 50).await.unwrap();
    assert!(logs.iter().any(|entry| entry.action_type == "instance.terminate_blocked"));
    // Enabled again, the command issued again by the health sweep terminates it.
    saga(&world, &cloud).terminate(&terminate).await.unwrap();
    assert_eq!(world.state(id).await.state, InstanceState::Terminated);
    assert_eq!(cloud.stats().live, 0);
    world.cleanup();
}

#[tokio::test]
async fn termination_retries_the_provider_and_confirms() {
    let world = World::new(offer).await;
    let faults = Faults { terminate_failures: 2, ..Faults::default() };
    let cloud = Arc::new(SimCloud::new(SimConfig { faults, ..SimConfig::default() }));
    let saga = saga(&world, &cloud);
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    saga.provision(&command).await.unwrap();
    assert_eq!(cloud.stats().live, 1);
    let terminate = world.request_termination(id).await;
    saga.terminate(&terminate).await.unwrap();
    assert_eq!(world.state(id).await.state, InstanceState::Terminated);
    assert_eq!(cloud.stats().live, 0);
    // Terminating an instance that never reached the provider just confirms it.
    let (never, _) = world.requested(&["sim-eu-1"]).await;
    let terminate = world.request_termination(never).await;
    saga.terminate(&terminate).await.unwrap();
    assert_eq!(world.state(never).await.state, InstanceState::Terminated);
    world.cleanup();
}

#[tokio::test]
async fn a_provider_that_keeps_failing_opens_its_circuit_and_instances_wait() {
    let world = World::new(offer).await;
    let faults = Faults { create_fails: 1.0, ..Faults::default() };
    let cloud = Arc::new(SimCloud::new(SimConfig { faults, ..SimConfig::default() }));
    let registry = prometheus::Registry::new();
    let saga = saga(&world, &cloud).with_metrics(&registry);
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    // Each provision is one call (retried inside): the threshold's worth of failed calls opens it.
    for _ in 0..qm_orchestrator::resilient::BREAKER_THRESHOLD {
        let outcome = saga.provision(&command).await;
        assert!(matches!(outcome, Err(qm_orchestrator::saga::SagaError::Retry(_))), "the command is retried later");
    }
    let calls = cloud.stats().calls;
    let outcome = saga.provision(&command).await;
    match outcome {
        Err(qm_orchestrator::saga::SagaError::Retry(reason)) => assert!(reason.contains("circuit open"), "{reason}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    assert_eq!(cloud.stats().calls, calls, "an open circuit spares the provider");
    assert_eq!(world.state(id).await.state, InstanceState::Provisioning, "an outage does not fail instances");
    // Exported for the ProviderCircuitOpen alert.
    saga.export_circuits();
    let exported = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(exported.contains(r#"qm_provider_circuit_open{provider="sim"} 1"#), "{exported}");
    world.cleanup();
}

#[tokio::test]
async fn a_provider_that_is_not_enabled_fails_the_instance_with_that_reason() {
    let world = World::new(offer).await;
    let saga = Saga::new(world.store.clone(), BTreeMap::new(), fast());
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    saga.provision(&command).await.unwrap();
    let instance = world.state(id).await;
    assert_eq!(instance.state, InstanceState::ProvisioningFailed);
    assert!(instance.failure_reason.unwrap().contains("not available on this orchestrator"));
    world.cleanup();
}

type Running = tokio::task::JoinHandle<std::io::Result<()>>;

/// The orchestrator service over `world`'s store and an in-memory bus, running.
async fn serve(
    world: &World,
    providers: BTreeMap<String, Arc<dyn CloudProvider>>,
) -> (Arc<dyn qm_bus::EventBus>, qm_runtime::Shutdown, Running) {
    let bus = qm_bus::connect("memory://").await.unwrap();
    let settings = qm_config::Settings::from_env(&qm_config::Environment::from_pairs([
        ("QM_DATABASE_URL", "sqlite://unused"),
        ("QM_BUS_URL", "memory://"),
    ]))
    .unwrap();
    let dependencies = qm_runtime::service::Dependencies { settings, store: world.store.clone(), bus: bus.clone() };
    let shutdown = qm_runtime::Shutdown::new();
    let service = qm_orchestrator::build_with(
        dependencies,
        "127.0.0.1:0".parse().unwrap(),
        shutdown.clone(),
        providers,
        fast(),
        qm_orchestrator::health::Deadlines::default(),
    )
    .await
    .unwrap();
    let running = tokio::spawn(service.run_until_stopped(shutdown.clone()));
    (bus, shutdown, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_on_the_bus_are_carried_out_by_the_service() {
    let world = World::new(offer).await;
    let cloud = Arc::new(SimCloud::new(SimConfig { boot_delay: Duration::from_millis(20), ..SimConfig::default() }));
    let (bus, shutdown, running) = serve(&world, providers(&cloud)).await;

    let (id, command) = world.requested(&["sim-eu-1"]).await;
    bus.publish(&command).await.unwrap();
    let unknown = Envelope::new(MessageType::PoolScale, "test", None, json!({}));
    bus.publish(&unknown).await.unwrap();
    // A newer version of a known command, and a command of the right type but another shape.
    let (_, mut newer) = world.requested(&["sim-eu-1"]).await;
    newer.version = 2;
    bus.publish(&newer).await.unwrap();
    let misshapen = Envelope::new(MessageType::InstanceProvision, "test", None, json!({ "instance": "x" }));
    bus.publish(&misshapen).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while world.state(id).await.state != InstanceState::Booting {
        assert!(tokio::time::Instant::now() < deadline, "not booting in time: {:?}", world.state(id).await.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let terminate = world.request_termination(id).await;
    bus.publish(&terminate).await.unwrap();
    while world.state(id).await.state != InstanceState::Terminated {
        assert!(tokio::time::Instant::now() < deadline, "not terminated in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cloud.stats().live, 0);
    // A command this version cannot carry out is dead-lettered, not dropped.
    let mut dead = Vec::new();
    while dead.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "not dead-lettered in time: {dead:?}");
        dead = bus.dead_letters(qm_orchestrator::commands::GROUP, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reasons: Vec<&str> = dead.iter().map(|letter| letter.reason.as_str()).collect();
    assert!(reasons.iter().any(|reason| reason.contains("version 2 is not supported")), "{reasons:?}");
    assert!(reasons.iter().any(|reason| reason.contains("malformed `instance.provision`")), "{reasons:?}");
    assert!(reasons.iter().any(|reason| reason.contains("does not carry out `pool.scale`")), "{reasons:?}");
    shutdown.trigger();
    running.await.unwrap().unwrap();
    world.cleanup();
}

fn health(world: &World, saga: Saga, startup: Duration, heartbeat: Duration) -> qm_orchestrator::health::Health {
    let deadlines = qm_orchestrator::health::Deadlines {
        startup,
        heartbeat,
        probe_after: Duration::from_millis(10),
        probe_timeout: Duration::from_millis(300),
        sweep_every: Duration::from_millis(50),
        ..Default::default()
    };
    qm_orchestrator::health::Health::new(world.store.clone(), Arc::new(saga), deadlines)
}

#[tokio::test]
async fn an_instance_booting_past_its_deadline_fails_and_is_terminated() {
    let world = World::new(offer).await;
    let cloud = Arc::new(SimCloud::new(SimConfig::default()));
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    saga(&world, &cloud).provision(&command).await.unwrap();
    assert_eq!(world.state(id).await.state, InstanceState::Booting, "no agent ever registers: no api url");
    let health = health(&world, saga(&world, &cloud), Duration::from_millis(10), Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(health.sweep().await.unwrap(), 1);
    let instance = world.state(id).await;
    assert_eq!(instance.state, InstanceState::Terminating);
    let changes = world.store.instance_history(id).await.unwrap();
    assert_eq!(
        &history(&changes)[2..],
        [InstanceState::Booting, InstanceState::StartupFailed, InstanceState::Terminating]
    );
    // The sweep wrote the terminate command; carried out, it releases the provider instance.
    let outbox = world.store.feed(0, None, None, 100).await.unwrap();
    let terminate = outbox.iter().find(|entry| entry.envelope.message_type == "instance.terminate").expect("command");
    saga(&world, &cloud).terminate(&terminate.envelope).await.unwrap();
    assert_eq!(world.state(id).await.state, InstanceState::Terminated);
    assert_eq!(cloud.stats().live, 0);
    assert_eq!(health.sweep().await.unwrap(), 0, "nothing left to do");
    world.cleanup();
}

#[tokio::test]
async fn a_ready_instance_whose_agent_falls_silent_becomes_unhealthy() {
    let world = World::new(offer).await;
    let cloud = Arc::new(SimCloud::new(SimConfig::default()));
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    saga(&world, &cloud).provision(&command).await.unwrap();
    world.move_to(id, InstanceState::Booting, InstanceState::Ready).await;
    let health = health(&world, saga(&world, &cloud), Duration::from_secs(600), Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(health.sweep().await.unwrap(), 1);
    let instance = world.state(id).await;
    assert_eq!(instance.state, InstanceState::Unhealthy);
    let logs = world.store.action_logs(Some(world.organization), 50).await.unwrap();
    let entry = logs.iter().find(|entry| entry.action_type == "instance.unhealthy").unwrap();
    assert!(entry.metadata["reason"].as_str().unwrap().contains("no heartbeat"));
    world.cleanup();
}

/// A stand-in agent whose `/readyz` answers the status code `status` holds.
async fn stand_in_agent(status: Arc<std::sync::atomic::AtomicU16>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let readyz = move || {
        let code = status.load(std::sync::atomic::Ordering::Relaxed);
        async move { axum::http::StatusCode::from_u16(code).unwrap() }
    };
    let app = axum::Router::new().route("/readyz", axum::routing::get(readyz));
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

#[tokio::test]
async fn probes_make_a_booting_instance_ready_and_keep_a_silent_one_ready_while_readyz_answers() {
    let world = World::new(offer).await;
    let cloud = Arc::new(SimCloud::new(SimConfig::default()));
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    saga(&world, &cloud).provision(&command).await.unwrap();
    let status = Arc::new(std::sync::atomic::AtomicU16::new(503));
    world.place_at(id, stand_in_agent(status.clone()).await).await;
    let health = health(&world, saga(&world, &cloud), Duration::from_secs(600), Duration::from_millis(10));
    tokio::time::sleep(Duration::from_millis(20)).await;

    assert_eq!(health.sweep().await.unwrap(), 0, "/readyz answers 503: still booting");
    assert_eq!(world.state(id).await.state, InstanceState::Booting);
    status.store(200, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(health.sweep().await.unwrap(), 1);
    let instance = world.state(id).await;
    assert_eq!((instance.state, instance.progress_percent), (InstanceState::Ready, 100));

    // No agent ever heartbeats here, but /readyz answers: it stays ready.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(health.sweep().await.unwrap(), 0);
    assert_eq!(world.state(id).await.state, InstanceState::Ready);
    status.store(503, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(health.sweep().await.unwrap(), 1);
    assert_eq!(world.state(id).await.state, InstanceState::Unhealthy);
    let logs = world.store.action_logs(Some(world.organization), 50).await.unwrap();
    let entry = logs.iter().find(|entry| entry.action_type == "instance.unhealthy").unwrap();
    assert!(entry.metadata["reason"].as_str().unwrap().contains("/readyz answered 503"), "{entry:?}");
    world.cleanup();
}

#[tokio::test]
async fn instances_stuck_provisioning_fail_and_stuck_terminations_are_issued_again_once() {
    let world = World::new(offer).await;
    let cloud = Arc::new(SimCloud::new(SimConfig::default()));
    let (provisioning, _) = world.requested(&["sim-eu-1"]).await;
    world.move_to(provisioning, InstanceState::Requested, InstanceState::Provisioning).await;
    let (terminating, command) = world.requested(&["sim-eu-1"]).await;
    saga(&world, &cloud).provision(&command).await.unwrap();
    world.request_termination(terminating).await;
    let deadlines = qm_orchestrator::health::Deadlines {
        provisioning: Duration::from_secs(1),
        terminating: Duration::from_secs(1),
        ..Default::default()
    };
    let health = qm_orchestrator::health::Health::new(world.store.clone(), Arc::new(saga(&world, &cloud)), deadlines);
    assert_eq!(health.sweep().await.unwrap(), 0, "nothing is past its deadline yet");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(health.sweep().await.unwrap(), 2);
    let failed = world.state(provisioning).await;
    assert_eq!(failed.state, InstanceState::ProvisioningFailed);
    assert!(failed.failure_reason.unwrap().contains("still provisioning"));
    assert_eq!(health.sweep().await.unwrap(), 0, "a stuck termination is issued again once per deadline");

    let outbox = world.store.feed(0, None, None, 100).await.unwrap();
    let terminate = outbox
        .iter()
        .filter(|entry| entry.envelope.message_type == "instance.terminate")
        .find(|entry| entry.envelope.data["instance_id"] == json!(terminating))
        .expect("the command issued again");
    saga(&world, &cloud).terminate(&terminate.envelope).await.unwrap();
    assert_eq!(world.state(terminating).await.state, InstanceState::Terminated);
    assert_eq!(cloud.stats().live, 0);
    let logs = world.store.action_logs(Some(world.organization), 50).await.unwrap();
    assert!(logs.iter().any(|entry| entry.action_type == "instance.terminate_retried"));
    world.cleanup();
}

#[tokio::test]
async fn reconciliation_marks_vanished_instances_and_terminates_orphans() {
    let world = World::new(offer).await;
    let cloud = Arc::new(SimCloud::new(SimConfig::default()));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, command) = world.requested(&["sim-eu-1"]).await;
        saga(&world, &cloud).provision(&command).await.unwrap();
        ids.push(id);
    }
    // Drift: one instance deleted in the provider's console; one tagged instance the database
    // never heard of; one the database believes terminated but the provider still runs.
    let vanished = world.state(ids[0]).await.provider_instance_id.unwrap();
    assert!(cloud.vanish(&vanished));
    cloud.plant(InstanceId::new(), "sim-eu-1", "sim.l4");
    let mut tx = world.store.begin().await.unwrap();
    let finished = Transition {
        instance: ids[1],
        from: InstanceState::Booting,
        to: InstanceState::Terminated,
        reason: None,
        progress_percent: None,
    };
    tx.transition_instance(&finished).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert_eq!(cloud.stats().live, 3);

    let registry = prometheus::Registry::new();
    let reconciler = qm_orchestrator::reconcile::Reconciler {
        store: world.store.clone(),
        saga: Arc::new(saga(&world, &cloud).with_metrics(&registry)),
        every: Duration::from_secs(60),
    };
    let report = reconciler.reconcile(None).await.unwrap();
    assert_eq!((report.gone, report.orphans), (1, 2), "{report:?}");
    // The repairs are counted for the LeakedInstancesReaped alert; the circuit is closed.
    reconciler.saga.export_circuits();
    let exported = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(exported.contains(r#"qm_reconcile_repairs_total{kind="orphan",provider="sim"} 2"#), "{exported}");
    assert!(exported.contains(r#"qm_reconcile_repairs_total{kind="gone",provider="sim"} 1"#), "{exported}");
    assert!(exported.contains(r#"qm_provider_circuit_open{provider="sim"} 0"#), "{exported}");
    let gone = world.state(ids[0]).await;
    assert_eq!(gone.state, InstanceState::Terminated);
    assert!(gone.deleted_by_provider);
    assert_eq!(world.state(ids[2]).await.state, InstanceState::Booting, "the healthy one is untouched");
    assert_eq!(cloud.stats().live, 1, "only the recorded, running instance is left");
    let logs = world.store.action_logs(None, 100).await.unwrap();
    assert_eq!(logs.iter().filter(|entry| entry.action_type == "fleet.orphan_terminated").count(), 2);
    let again = reconciler.reconcile(Some("sim")).await.unwrap();
    assert_eq!((again.gone, again.orphans), (0, 0), "a second pass finds nothing");
    world.cleanup();
}

type Hook = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

/// The `sim` cloud whose first listing runs `during` after the provider has answered and before
/// the answer reaches the reconciler (what happens in the middle of a pass), and whose offers
/// take `offers_delay` (a slow catalog), counting the offer calls that finished.
struct MidPass {
    cloud: Arc<SimCloud>,
    during: std::sync::Mutex<Option<Hook>>,
    offers_delay: Duration,
    offers_done: std::sync::atomic::AtomicUsize,
}

impl MidPass {
    fn new(cloud: &Arc<SimCloud>, during: Option<Hook>, offers_delay: Duration) -> Self {
        Self {
            cloud: cloud.clone(),
            during: std::sync::Mutex::new(during),
            offers_delay,
            offers_done: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl CloudProvider for MidPass {
    fn name(&self) -> &str {
        self.cloud.name()
    }
    async fn create(
        &self,
        request: &qm_providers::CreateRequest,
    ) -> Result<qm_providers::ProviderInstance, qm_providers::ProviderError> {
        self.cloud.create(request).await
    }
    async fn start(&self, id: &str) -> Result<qm_providers::ProviderInstance, qm_providers::ProviderError> {
        self.cloud.start(id).await
    }
    async fn describe(&self, id: &str) -> Result<qm_providers::ProviderInstance, qm_providers::ProviderError> {
        self.cloud.describe(id).await
    }
    async fn list(&self) -> Result<Vec<qm_providers::ProviderInstance>, qm_providers::ProviderError> {
        let listed = self.cloud.list().await;
        let during = self.during.lock().unwrap().take();
        if let Some(during) = during {
            during().await;
        }
        listed
    }
    async fn terminate(&self, id: &str) -> Result<(), qm_providers::ProviderError> {
        self.cloud.terminate(id).await
    }
    async fn offers(&self) -> Result<Vec<qm_providers::ProviderOffer>, qm_providers::ProviderError> {
        tokio::time::sleep(self.offers_delay).await;
        let offers = self.cloud.offers().await;
        self.offers_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        offers
    }
}

/// One tenant floods `catalog.sync` against a provider whose catalog takes 5 s; another
/// tenant's provisioning and termination go through while that sync is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_catalog_syncs_does_not_hold_up_another_tenants_instances() {
    let world = World::new(offer).await;
    let cloud = Arc::new(SimCloud::new(SimConfig { boot_delay: Duration::ZERO, ..SimConfig::default() }));
    let slow = Arc::new(MidPass::new(&cloud, None, Duration::from_secs(5)));
    let (bus, shutdown, running) =
        serve(&world, BTreeMap::from([("sim".to_owned(), slow.clone() as Arc<dyn CloudProvider>)])).await;

    let flooding = qm_domain::OrganizationId::new();
    for _ in 0..100 {
        let sync = qm_events::payloads::CatalogSync { provider: None, requested_by: None };
        bus.publish(&Envelope::of(&sync, "test", Some(flooding))).await.unwrap();
    }
    let (id, command) = world.requested(&["sim-eu-1"]).await;
    bus.publish(&command).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while world.state(id).await.state != InstanceState::Booting {
        assert!(tokio::time::Instant::now() < deadline, "never provisioned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let terminate = world.request_termination(id).await;
    bus.publish(&terminate).await.unwrap();
    while world.state(id).await.state != InstanceState::Terminated {
        assert!(tokio::time::Instant::now() < deadline, "never terminated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        slow.offers_done.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "provisioned and terminated while the first catalog sync was still running"
    );
    shutdown.trigger();
    running.await.unwrap().unwrap();
    world.cleanup();
}

#[tokio::test]
async fn instances_created_during_a_reconciliation_pass_are_not_marked_gone() {
    let world = Arc::new(World::new(offer).await);
    let cloud = Arc::new(SimCloud::new(SimConfig::default()));
    let (before, command) = world.requested(&["sim-eu-1"]).await;
    saga(&world, &cloud).provision(&command).await.unwrap();
    let created = Arc::new(std::sync::Mutex::new(Vec::new()));
    let during: Hook = Box::new({
        let (world, cloud, created) = (world.clone(), cloud.clone(), created.clone());
        move || {
            Box::pin(async move {
                for _ in 0..3 {
                    let (id, command) = world.requested(&["sim-eu-1"]).await;
                    saga(&world, &cloud).provision(&command).await.unwrap();
                    created.lock().unwrap().push(id);
                }
            })
        }
    });
    let mid_pass = Arc::new(MidPass::new(&cloud, Some(during), Duration::ZERO));
    let providers = BTreeMap::from([("sim".to_owned(), mid_pass as Arc<dyn CloudProvider>)]);
    let reconciler = qm_orchestrator::reconcile::Reconciler {
        store: world.store.clone(),
        saga: Arc::new(Saga::new(world.store.clone(), providers, fast())),
        every: Duration::from_secs(60),
    };
    let report = reconciler.reconcile(None).await.unwrap();
    assert_eq!((report.gone, report.orphans, report.failures), (0, 0, 0), "{report:?}");
    let created = created.lock().unwrap().clone();
    assert_eq!(created.len(), 3);
    for id in created.into_iter().chain([before]) {
        let instance = world.state(id).await;
        assert_eq!(instance.state, InstanceState::Booting, "{id} untouched");
        assert!(!instance.deleted_by_provider);
    }
    assert_eq!(cloud.stats().live, 4);
    world.cleanup();
}

/// A provider whose every call is refused.
struct Refusing;

#[async_trait::async_trait]
impl CloudProvider for Refusing {
    fn name(&self) -> &str {
        "broken"
    }
    async fn create(
        &self,
        _: &qm_providers::CreateRequest,
    ) -> Result<qm_providers::ProviderInstance, qm_providers::ProviderError> {
        Err(Self::refused())
    }
    async fn start(&self, _: &str) -> Result<qm_providers::ProviderInstance, qm_providers::ProviderError> {
        Err(Self::refused())
    }
    async fn describe(&self, _: &str) -> Result<qm_providers::ProviderInstance, qm_providers::ProviderError> {
        Err(Self::refused())
    }
    async fn list(&self) -> Result<Vec<qm_providers::ProviderInstance>, qm_providers::ProviderError> {
        Err(Self::refused())
    }
    async fn terminate(&self, _: &str) -> Result<(), qm_providers::ProviderError> {
        Err(Self::refused())
    }
    async fn offers(&self) -> Result<Vec<qm_providers::ProviderOffer>, qm_providers::ProviderError> {
        Err(Self::refused())
    }
}

impl Refusing {
    fn refused() -> qm_providers::ProviderError {
        qm_providers::ProviderError::new("broken", qm_providers::ErrorKind::Auth, "credentials revoked")
    }
}

#[tokio::test]
async fn a_pass_survives_a_failing_provider_and_terminates_stopped_instances() {
    let world = World::new(offer).await;
    let cloud = Arc::new(SimCloud::new(SimConfig { boot_delay: Duration::ZERO, ..SimConfig::default() }));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (id, command) = world.requested(&["sim-eu-1"]).await;
        saga(&world, &cloud).provision(&command).await.unwrap();
        world.move_to(id, InstanceState::Booting, InstanceState::Ready).await;
        ids.push(id);
    }
    // One vanished, one stopped (its machine died with a killed `qm dev`).
    assert!(cloud.vanish(&world.state(ids[0]).await.provider_instance_id.unwrap()));
    assert!(cloud.stop(&world.state(ids[1]).await.provider_instance_id.unwrap()));
    let providers = BTreeMap::from([
        ("broken".to_owned(), Arc::new(Refusing) as Arc<dyn CloudProvider>),
        ("sim".to_owned(), cloud.clone() as Arc<dyn CloudProvider>),
    ]);
    let saga = Arc::new(Saga::new(world.store.clone(), providers, fast()));
    let reconciler = qm_orchestrator::reconcile::Reconciler {
        store: world.store.clone(),
        saga: saga.clone(),
        every: Duration::from_secs(60),
    };
    let report = reconciler.reconcile(None).await.unwrap();
    assert_eq!((report.failures, report.gone, report.stopped), (1, 1, 1), "{report:?}");
    assert_eq!(world.state(ids[0]).await.state, InstanceState::Terminated);
    let stopped = world.state(ids[1]).await;
    assert_eq!(stopped.state, InstanceState::Terminating, "no longer reported as running");
    let outbox = world.store.feed(0, None, None, 500).await.unwrap();
    let terminate = outbox
        .iter()
        .filter(|entry| entry.envelope.message_type == "instance.terminate")
        .find(|entry| entry.envelope.data["instance_id"] == json!(ids[1]))
        .expect("its termination is commanded");
    saga.terminate(&terminate.envelope).await.unwrap();
    assert_eq!(world.state(ids[1]).await.state, InstanceState::Terminated);
    let outbox = world.store.feed(0, None, None, 500).await.unwrap();
    let billing_stopped = outbox.iter().any(|entry| {
        entry.envelope.message_type == "instance.billing_stopped" && entry.envelope.data["instance_id"] == json!(ids[1])
    });
    assert!(billing_stopped, "billing stops");
    assert_eq!(cloud.stats().live, 0);
    world.cleanup();
}

/// 1,000 instances through provisioning and termination on a cloud injecting 5% of every fault,
/// with a fifth of the provisioning runs "crashing" (dropped at an arbitrary point and run again,
/// as a redelivered command is): no leaked provider instance, no duplicate, every instance ends
/// booted or failed with a logged reason, and every one is terminated at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_instances_under_injected_faults_leak_nothing_and_duplicate_nothing() {
    use futures::StreamExt as _;
    const COUNT: usize = 1_000;
    let world = World::new(offer).await;
    let config = SimConfig {
        boot_delay: Duration::from_millis(5),
        faults: Faults::all(0.05),
        seed: 2026,
        ..SimConfig::default()
    };
    let cloud = Arc::new(SimCloud::new(config));
    let saga = Arc::new(saga(&world, &cloud));
    let mut commands = Vec::new();
    for _ in 0..COUNT {
        commands.push(world.requested(&["sim-eu-1", "sim-eu-2"]).await);
    }
    let run = |index: usize, command: Envelope| {
        let saga = saga.clone();
        async move {
            if index.is_multiple_of(5) {
                // A crash mid-saga: the future is dropped wherever it was.
                let _ = tokio::time::timeout(Duration::from_millis((index % 7) as u64), saga.provision(&command)).await;
            }
            // Redelivery until the command is carried out.
            for _ in 0..20 {
                if saga.provision(&command).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("command never completed");
        }
    };
    futures::stream::iter(commands.iter().enumerate().map(|(index, (_, command))| run(index, command.clone())))
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;

    let mut booted = 0;
    for (id, _) in &commands {
        let instance = world.state(*id).await;
        match instance.state {
            InstanceState::Booting => booted += 1,
            InstanceState::ProvisioningFailed => {
                assert!(instance.failure_reason.as_deref().is_some_and(|reason| !reason.is_empty()));
                let logs = world
                    .store
                    .search_action_logs(&qm_store::ActionLogQuery {
                        instance: Some(*id),
                        limit: 50,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(
                    logs.iter()
                        .any(|entry| entry.action_type == "instance.provisioning_failed" && entry.error.is_some()),
                    "failure explained"
                );
            }
            other => panic!("instance {id} ended in {other}"),
        }
    }
    assert!(booted > COUNT * 8 / 10, "most instances booted: {booted}");
    assert_eq!(cloud.most_creates_per_instance(), 1, "no instance was created twice");

    // Terminate everything still up, through the same redelivery loop.
    for (id, _) in &commands {
        if world.state(*id).await.state != InstanceState::Booting {
            continue;
        }
        let terminate = world.request_termination(*id).await;
        let mut done = false;
        for _ in 0..20 {
            if saga.terminate(&terminate).await.is_ok() {
                done = true;
                break;
            }
        }
        assert!(done, "termination of {id} never completed");
        assert_eq!(world.state(*id).await.state, InstanceState::Terminated);
    }
    // Whatever a fault left behind (a vanished-then-compensated race, a crash between create and
    // record) is found by reconciliation.
    let reconciler = qm_orchestrator::reconcile::Reconciler {
        store: world.store.clone(),
        saga: saga.clone(),
        every: Duration::from_secs(60),
    };
    reconciler.reconcile(None).await.unwrap();
    assert_eq!(cloud.stats().live, 0, "no provider instance leaked");
    world.cleanup();
}

#[tokio::test]
async fn catalog_sync_writes_the_offers_and_a_second_sync_changes_nothing() {
    let world = World::new(offer).await;
    let mut offers = qm_providers::sim::default_offers();
    let cloud = Arc::new(SimCloud::new(SimConfig { offers: offers.clone(), ..SimConfig::default() }));
    let sync = qm_orchestrator::catalog::CatalogSync { store: world.store.clone(), providers: providers(&cloud) };
    let report = sync.sync(None).await.unwrap();
    assert_eq!((report.regions, report.zones, report.instance_types, report.deactivated), (2, 3, 3, 0));
    let types = world.store.instance_types(Some("sim")).await.unwrap();
    assert_eq!(types.len(), 3);
    let h100 = types.iter().find(|instance_type| instance_type.code == "sim.h100").unwrap();
    assert_eq!((h100.vcpus, h100.memory_gb, h100.hourly_price_micros), (24, 240, 2_500_000));
    let zones: Vec<_> =
        world.store.instance_type_zones(h100.id).await.unwrap().into_iter().map(|zone| zone.code).collect();
    assert_eq!(zones, ["sim-eu-1", "sim-us-1"]);
    let offers_before = world.store.offers().await.unwrap();
    sync.sync(Some("sim")).await.unwrap();
    assert_eq!(world.store.offers().await.unwrap(), offers_before, "idempotent");
    assert_eq!(world.store.instance_types(Some("sim")).await.unwrap().len(), 3, "no duplicates");

    // The provider changes a price and stops offering a type.
    offers.retain(|offer| offer.instance_type != "sim.cpu");
    for offer in &mut offers {
        if offer.instance_type == "sim.l4" {
            offer.hourly_price_micros = 650_000;
        }
    }
    let changed = Arc::new(SimCloud::new(SimConfig { offers, ..SimConfig::default() }));
    let sync = qm_orchestrator::catalog::CatalogSync { store: world.store.clone(), providers: providers(&changed) };
    let report = sync.sync(None).await.unwrap();
    assert_eq!(report.deactivated, 1);
    let types = world.store.instance_types(Some("sim")).await.unwrap();
    let cpu = types.iter().find(|instance_type| instance_type.code == "sim.cpu").unwrap();
    assert!(!cpu.active, "kept, deactivated");
    assert_eq!(types.iter().find(|instance_type| instance_type.code == "sim.l4").unwrap().hourly_price_micros, 650_000);
    world.cleanup();
}
