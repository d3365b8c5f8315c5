//! The real `qm-worker-agent` binary with its built-in mock engine, against a real api: it
//! registers with its bootstrap token, its heartbeats take the instance to `ready`; after
//! `kill -9` the silence is detected and the instance leaves `ready`; on SIGTERM it drains,
//! reports `draining` and exits cleanly.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_config::{Environment, Settings};
use qm_domain::{InstanceId, InstanceState, OrganizationId};
use qm_runtime::Shutdown;
use qm_store::{NewInstance, NewOrganization, Store, Transition};

struct World {
    store: Arc<dyn Store>,
    api_url: String,
    shutdown: Shutdown,
    directory: std::path::PathBuf,
}

async fn world() -> World {
    let directory = std::env::temp_dir().join(format!("qm-agent-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    let url = format!("sqlite://{}", directory.join("qm.db").display());
    let settings = Settings::from_env(&Environment::from_pairs([
        ("QM_DATABASE_URL", url.as_str()),
        ("QM_BUS_URL", "memory://"),
        ("QM_ADMIN_PASSWORD", "agent-test-password"),
    ]))
    .unwrap();
    let dependencies = qm_runtime::entrypoint::connect(settings).await.unwrap();
    let store = dependencies.store.clone();
    let shutdown = Shutdown::new();
    let service = qm_api::build(dependencies, "127.0.0.1:0".parse().unwrap(), shutdown.clone()).await.unwrap();
    let api_url = format!("http://{}", service.address());
    tokio::spawn(service.run_until_stopped(shutdown.clone()));
    World { store, api_url, shutdown, directory }
}

/// A booting instance with a bootstrap token, as the orchestrator leaves it.
async fn booting(world: &World) -> (InstanceId, String) {
    let organization = OrganizationId::new();
    let id = InstanceId::new();
    let placement = qm_store::testing::offer("local", "local-1", "local.cpu");
    let token = qm_runtime::tokens::generate("qmb_");
    let mut tx = world.store.begin().await.unwrap();
    let slug = format!("o{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    tx.insert_organization(&NewOrganization { id: organization, name: "Agents".into(), slug }).await.unwrap();
    tx.insert_instance(&NewInstance {
        id,
        organization_id: organization,
        deployment_id: None,
        placement,
        model: "m".into(),
        revision: None,
    })
    .await
    .unwrap();
    for (from, to) in
        [(InstanceState::Requested, InstanceState::Provisioning), (InstanceState::Provisioning, InstanceState::Booting)]
    {
        tx.transition_instance(&Transition { instance: id, from, to, reason: None, progress_percent: Some(60) })
            .await
            .unwrap();
    }
    tx.issue_bootstrap_token(id, &qm_runtime::tokens::hash(&token), qm_store::now() + chrono::Duration::hours(1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (id, token)
}

fn agent(world: &World, id: InstanceId, token: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_qm-worker-agent"))
        .env("QM_WORKER_AGENT_ADDR", "127.0.0.1:0")
        .env("QM_ENGINE", "mock")
        .env("QM_MOCK_ENGINE_ADDR", "127.0.0.1:0")
        .env("QM_API_URL", &world.api_url)
        .env("QM_INSTANCE_ID", id.to_string())
        .env("QM_BOOTSTRAP_TOKEN", token)
        .env("QM_MODEL", "m")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_for(world: &World, id: InstanceId, state: InstanceState) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let instance = world.store.instance(id).await.unwrap().unwrap();
        if instance.state == state {
            return;
        }
        assert!(Instant::now() < deadline, "instance still {} instead of {state}", instance.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_registers_heartbeats_ready_and_its_death_is_detected() {
    let world = world().await;
    let (id, token) = booting(&world).await;
    let mut process = agent(&world, id, &token);
    wait_for(&world, id, InstanceState::Ready).await;
    let worker = world.store.worker(id).await.unwrap().unwrap();
    assert!(worker.engine_url.as_deref().is_some_and(|url| url.starts_with("http://127.0.0.1:")), "{worker:?}");
    assert_eq!(worker.status.as_deref(), Some("ready"));
    assert_eq!(world.store.instance(id).await.unwrap().unwrap().progress_percent, 100);

    // kill -9: no more heartbeats; the health sweep notices and the instance leaves `ready`.
    process.kill().unwrap();
    process.wait().unwrap();
    let saga = Arc::new(qm_orchestrator::saga::Saga::new(world.store.clone(), BTreeMap::new(), Default::default()));
    let deadlines = qm_orchestrator::health::Deadlines {
        startup: Duration::from_secs(600),
        heartbeat: Duration::from_secs(2),
        sweep_every: Duration::from_millis(100),
        ..Default::default()
    };
    let health = qm_orchestrator::health::Health::new(world.store.clone(), saga, deadlines);
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.store.instance(id).await.unwrap().unwrap().state == InstanceState::Ready {
        assert!(Instant::now() < deadline, "a dead agent was not noticed");
        health.sweep().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(world.store.instance(id).await.unwrap().unwrap().state, InstanceState::Unhealthy);
    world.shutdown.trigger();
    let _ = std::fs::remove_dir_all(&world.directory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly_and_a_reused_token_is_refused() {
    let world = world().await;
    let (id, token) = booting(&world).await;
    let mut process = agent(&world, id, &token);
    wait_for(&world, id, InstanceState::Ready).await;
    let sent = Command::new("kill").args(["-TERM", &process.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = process.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    // A second agent with the same (spent) bootstrap token is refused and exits its protocol.
    let mut second = agent(&world, id, &token);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refusals = world
        .store
        .search_action_logs(&qm_store::ActionLogQuery {
            instance: Some(id),
            action_type: Some("worker.register".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        refusals.iter().any(|entry| entry.status == qm_store::ActionStatus::Failed),
        "the reuse was refused and logged"
    );
    second.kill().unwrap();
    second.wait().unwrap();
    world.shutdown.trigger();
    let _ = std::fs::remove_dir_all(&world.directory);
}

/// Ports free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The pids of `qm-worker-agent` processes whose environment holds `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.to_string_lossy().ends_with("qm-worker-agent"))
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|byte| *byte == 0).any(|entry| entry == marker.as_bytes()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervised_engine_that_dies_is_restarted_and_readiness_follows_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (agent_port, engine_port, inner_port) = (free_port(), free_port(), free_port());
    let binary = env!("CARGO_BIN_EXE_qm-worker-agent");
    // The engine: another agent's built-in mock engine, run as a plain command.
    let marker = format!("QM_TEST_ENGINE_{}", uuid::Uuid::new_v4().simple());
    let engine_command = format!(
        "exec env -u QM_ENGINE_COMMAND -u QM_ENGINE_URL {marker}=1 QM_ENGINE=mock QM_MOCK_ENGINE_ADDR=127.0.0.1:{engine_port} QM_WORKER_AGENT_ADDR=127.0.0.1:{inner_port} RUST_LOG=off {binary}"
    );
    let mut agent = Command::new(binary)
        .env("QM_WORKER_AGENT_ADDR", format!("127.0.0.1:{agent_port}"))
        .env("QM_ENGINE_URL", format!("http://127.0.0.1:{engine_port}"))
        .env("QM_ENGINE_COMMAND", &engine_command)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = || async move {
        reqwest::get(format!("http://127.0.0.1:{agent_port}/readyz"))
            .await
            .is_ok_and(|response| response.status().is_success())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready().await {
        assert!(Instant::now() < deadline, "the agent never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let engines = pids_with(&format!("{marker}=1"));
    assert_eq!(engines.len(), 1, "{engines:?}");
    Command::new("kill").args(["-KILL", &engines[0].to_string()]).status().unwrap();
    // Down: not ready; then restarted by the supervisor: ready again, with a new process.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_down = false;
    loop {
        let now_ready = ready().await;
        saw_down |= !now_ready;
        let restarted = pids_with(&format!("{marker}=1")).iter().any(|pid| *pid != engines[0]);
        if saw_down && now_ready && restarted {
            break;
        }
        assert!(Instant::now() < deadline, "the engine was not restarted (down seen: {saw_down})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
    for pid in pids_with(&format!("{marker}=1")) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}
