//! `kill -9` of the orchestrator in the middle of provisioning, then a restart: the command
//! comes back from NATS, the saga resumes, and the instance ends with exactly one provider
//! instance (a real `qm-worker-agent` process of the `local` provider), neither leaked nor
//! duplicated.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qm_domain::InstanceState;
use qm_providers::CloudProvider as _;
use qm_providers::local::LocalProvider;

mod common;

/// Kills whatever agent processes the test left, even when it fails.
struct KillAgents(std::path::PathBuf);

impl Drop for KillAgents {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let record: serde_json::Value = std::fs::read(entry.path())
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            if let Some(pid) = record["pid"].as_u64() {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}

struct Setup {
    directory: std::path::PathBuf,
    database_url: String,
    bus_url: String,
}

impl Setup {
    fn orchestrator(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_qm-orchestrator"))
            .env("QM_DATABASE_URL", &self.database_url)
            .env("QM_BUS_URL", &self.bus_url)
            .env("QM_PROVIDERS", "local")
            .env("QM_LOCAL_STATE_DIR", self.directory.join("local"))
            .env("QM_ORCHESTRATOR_ADDR", "127.0.0.1:0")
            .env("QM_API_URL", "http://127.0.0.1:9")
            .env("QM_COMMAND_VISIBILITY_TIMEOUT_SECONDS", "2")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn state_files(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(self.directory.join("local"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_orchestrator_resumes_without_leaking_or_duplicating() {
    let agent = std::path::Path::new(env!("CARGO_BIN_EXE_qm-orchestrator")).with_file_name("qm-worker-agent");
    assert!(agent.exists(), "{} is missing: build the workspace (make test does)", agent.display());
    let directory = std::env::temp_dir().join(format!("qm-crash-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    let prefix = format!("crash{}", uuid::Uuid::new_v4().simple());
    let nats = std::env::var("QM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let setup = Setup {
        database_url: format!("sqlite://{}", directory.join("qm.db").display()),
        bus_url: format!("{nats}?prefix={prefix}"),
        directory,
    };
    let _agents = KillAgents(setup.directory.join("local"));
    let store = qm_store::connect(&setup.database_url).await.unwrap();
    let bus = qm_bus::connect(&setup.bus_url).await.unwrap();

    let placement = qm_store::testing::offer("local", "local-1", "local.cpu");
    let (id, command) = common::requested_in(&*store, "crash", &placement).await;

    let mut first = setup.orchestrator();
    bus.publish(&command).await.unwrap();

    // Kill -9 as soon as provisioning has started (the provider instance may or may not exist yet).
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.instance(id).await.unwrap().unwrap().state == InstanceState::Requested {
        assert!(Instant::now() < deadline, "the orchestrator never started provisioning");
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // Provisioning no longer waits for the boot, so the kill may land just after the saga
    // recorded `booting`; either way the invariants below must hold.
    let state_at_kill = store.instance(id).await.unwrap().unwrap().state;
    assert!(
        matches!(state_at_kill, InstanceState::Provisioning | InstanceState::Booting),
        "killed while provisioning: {state_at_kill}"
    );
    assert!(setup.state_files().len() <= 1);

    // Restart: the unacknowledged command comes back and the saga resumes.
    let mut second = setup.orchestrator();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = store.instance(id).await.unwrap().unwrap().state;
        if state == InstanceState::Booting {
            break;
        }
        assert!(Instant::now() < deadline, "still {state} after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let local = LocalProvider::new(&setup.directory.join("local"), Some(agent));
    let instances = local.list().await.unwrap();
    assert_eq!(instances.len(), 1, "exactly one provider instance: {instances:?}");
    assert_eq!(instances[0].instance_id, Some(id));
    assert_eq!(instances[0].status, qm_providers::ProviderStatus::Running);
    assert_eq!(
        store.instance(id).await.unwrap().unwrap().provider_instance_id.as_deref(),
        Some(instances[0].provider_id.as_str())
    );

    second.kill().unwrap();
    second.wait().unwrap();
    for instance in instances {
        local.terminate(&instance.provider_id).await.unwrap();
    }
    let naming = qm_bus::Naming::new(Some(&prefix)).unwrap();
    qm_bus::nats::NatsBus::connect(&url::Url::parse(&nats).unwrap(), naming)
        .await
        .unwrap()
        .delete_streams()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&setup.directory);
}
