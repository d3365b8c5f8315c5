//! What the orchestrator's tests share: a world (a fresh SQLite store with an organization) in
//! which instances are requested the way the API records them, fast retry timings, and state
//! histories.

#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use qm_domain::{InstanceId, InstanceState, OrganizationId};
use qm_events::Envelope;
use qm_events::payloads::{InstanceProvision, InstanceTerminate};
use qm_orchestrator::saga::Retry;
use qm_runtime::backoff::Backoff;
use qm_store::{InstanceAnnotation, NewInstance, NewOrganization, Offer, Store, Transition};

/// An organization `slug` with one `requested` instance at `placement` in `store`, and the
/// provision command the api would publish for it (for tests that run the orchestrator binary).
pub async fn requested_in(store: &dyn Store, slug: &str, placement: &Offer) -> (InstanceId, Envelope) {
    let organization = OrganizationId::new();
    let id = InstanceId::new();
    let mut tx = store.begin().await.unwrap();
    tx.insert_organization(&NewOrganization { id: organization, name: slug.into(), slug: slug.into() }).await.unwrap();
    let instance = NewInstance {
        id,
        organization_id: organization,
        deployment_id: None,
        placement: placement.clone(),
        model: "m".into(),
        revision: None,
    };
    tx.insert_instance(&instance).await.unwrap();
    tx.commit().await.unwrap();
    let payload = InstanceProvision {
        instance_id: id,
        deployment_id: None,
        model: "m".into(),
        placements: vec![placement.clone()],
        engine: qm_domain::engine::EngineSettings::default(),
    };
    (id, Envelope::of(&payload, "test", Some(organization)))
}

pub struct World {
    /// The offer at a zone, for the provider under test.
    pub offer: fn(&str) -> Offer,
    pub store: Arc<dyn Store>,
    pub organization: OrganizationId,
    pub directory: std::path::PathBuf,
}

impl World {
    pub async fn new(offer: fn(&str) -> Offer) -> Self {
        let directory = std::env::temp_dir().join(format!("qm-orchestrator-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&directory).unwrap();
        let store = qm_store::connect(&format!("sqlite://{}", directory.join("qm.db").display())).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let organization = OrganizationId::new();
        tx.insert_organization(&NewOrganization { id: organization, name: "Test".into(), slug: "test".into() })
            .await
            .unwrap();
        tx.commit().await.unwrap();
        Self { offer, store, organization, directory }
    }

    /// An instance in `requested` and its provision command, as the API writes them.
    pub async fn requested(&self, zones: &[&str]) -> (InstanceId, Envelope) {
        let placements: Vec<Offer> = zones.iter().map(|zone| (self.offer)(zone)).collect();
        let id = InstanceId::new();
        let mut tx = self.store.begin().await.unwrap();
        let instance = NewInstance {
            id,
            organization_id: self.organization,
            deployment_id: None,
            placement: placements[0].clone(),
            model: "m".into(),
            revision: None,
        };
        tx.insert_instance(&instance).await.unwrap();
        tx.commit().await.unwrap();
        let payload = InstanceProvision {
            instance_id: id,
            deployment_id: None,
            model: "m".into(),
            placements,
            engine: Default::default(),
        };
        (id, Envelope::of(&payload, "test", Some(self.organization)))
    }

    pub async fn state(&self, id: InstanceId) -> qm_store::Instance {
        self.store.instance(id).await.unwrap().unwrap()
    }

    pub async fn request_termination(&self, id: InstanceId) -> Envelope {
        let instance = self.state(id).await;
        let mut tx = self.store.begin().await.unwrap();
        let transition = Transition {
            instance: id,
            from: instance.state,
            to: InstanceState::Terminating,
            reason: None,
            progress_percent: None,
        };
        tx.transition_instance(&transition).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        let payload = InstanceTerminate { instance_id: id, reason: "requested by the test".into(), requested_by: None };
        Envelope::of(&payload, "test", Some(self.organization))
    }

    pub async fn move_to(&self, id: InstanceId, from: InstanceState, to: InstanceState) {
        let mut tx = self.store.begin().await.unwrap();
        let transition = Transition { instance: id, from, to, reason: None, progress_percent: None };
        tx.transition_instance(&transition).await.unwrap().unwrap();
        tx.commit().await.unwrap();
    }

    /// Points the instance's address at `address` (where a test's stand-in agent listens).
    pub async fn place_at(&self, id: InstanceId, address: std::net::SocketAddr) {
        let mut tx = self.store.begin().await.unwrap();
        let annotation = InstanceAnnotation { address: Some(address.to_string()), ..InstanceAnnotation::default() };
        tx.annotate_instance(id, &annotation).await.unwrap().unwrap();
        tx.commit().await.unwrap();
    }

    pub fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

pub fn fast() -> Retry {
    Retry { attempts: 4, backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(20)) }
}
