//! The `local` provider runs the provider conformance suite with real `qm-worker-agent`
//! processes (this package's binary), and keeps its state across provider instances (a
//! restarted orchestrator).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use qm_providers::CloudProvider;
use qm_providers::conformance::TestProvider;
use qm_providers::local::LocalProvider;

struct Local {
    provider: Arc<LocalProvider>,
    directory: std::path::PathBuf,
}

#[async_trait]
impl TestProvider for Local {
    fn provider(&self) -> Arc<dyn CloudProvider> {
        self.provider.clone()
    }

    fn placement(&self) -> (String, String) {
        ("local-1".into(), "local.cpu".into())
    }

    async fn cleanup(&self) {
        let left = self.provider.list().await.unwrap();
        for instance in &left {
            self.provider.terminate(&instance.provider_id).await.unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.directory);
        assert!(left.is_empty(), "every case terminates what it created: {left:?}");
    }
}

async fn fixture() -> Local {
    let directory = std::env::temp_dir().join(format!("qm-local-test-{}", uuid::Uuid::new_v4().simple()));
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_qm-worker-agent"));
    Local { provider: Arc::new(LocalProvider::new(&directory, Some(binary))), directory }
}

qm_providers::provider_conformance_suite!(fixture);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_provider_on_the_same_state_finds_and_terminates_the_processes() {
    let fixture = fixture().await;
    let request = qm_providers::CreateRequest {
        instance_id: qm_domain::InstanceId::new(),
        zone: "local-1".into(),
        instance_type: "local.cpu".into(),
        user_data: String::new(),
        tags: Default::default(),
    };
    let created = fixture.provider.create(&request).await.unwrap();
    let started = fixture.provider.start(&created.provider_id).await.unwrap();
    assert_eq!(started.status, qm_providers::ProviderStatus::Running);
    // "Restart the orchestrator": a fresh provider over the same state directory.
    let restarted =
        LocalProvider::new(&fixture.directory, Some(std::path::PathBuf::from(env!("CARGO_BIN_EXE_qm-worker-agent"))));
    let listed = restarted.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance_id, Some(request.instance_id));
    assert_eq!(listed[0].status, qm_providers::ProviderStatus::Running);
    restarted.terminate(&created.provider_id).await.unwrap();
    assert!(restarted.list().await.unwrap().is_empty());
    fixture.cleanup().await;
}
