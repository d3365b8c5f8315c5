//! The `scaleway` provider against the Instance API fake (`qm_testkit::scaleway`): the provider
//! conformance suite, pagination across pages and zones, user data and tags as sent, flexible
//! IPs released with their server, and a wrong token classified as an auth error.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use qm_config::Secret;
use qm_providers::conformance::TestProvider;
use qm_providers::scaleway::{ScalewayConfig, ScalewayProvider};
use qm_providers::{CloudProvider, CreateRequest, ErrorKind};
use qm_testkit::scaleway::FakeScaleway;

const SECRET: &str = "scw-test-secret-0b1d";

fn config(fake: &FakeScaleway, secret: &str) -> ScalewayConfig {
    ScalewayConfig {
        api_url: fake.url(),
        secret_key: Secret::new(secret),
        project_id: "11111111-2222-3333-4444-555555555555".into(),
        zones: vec!["fr-par-1".into(), "fr-par-2".into()],
        image: "ubuntu_jammy_gpu_os_12".into(),
    }
}

struct Fixture {
    fake: FakeScaleway,
    provider: Arc<ScalewayProvider>,
}

#[async_trait]
impl TestProvider for Fixture {
    fn provider(&self) -> Arc<dyn CloudProvider> {
        self.provider.clone()
    }

    fn placement(&self) -> (String, String) {
        ("fr-par-1".into(), "L4-1-24G".into())
    }

    async fn cleanup(&self) {}
}

async fn fixture() -> Fixture {
    let fake = FakeScaleway::start(SECRET).await;
    let provider = Arc::new(ScalewayProvider::new(config(&fake, SECRET)));
    Fixture { fake, provider }
}

qm_providers::provider_conformance_suite!(fixture);

fn tags_for(id: qm_domain::InstanceId) -> Vec<String> {
    vec![format!("qm-instance-id={id}"), "qm-managed=true".into()]
}

#[tokio::test]
async fn listing_pages_through_every_zone_by_the_managed_tag() {
    let Fixture { fake, provider } = fixture().await;
    for index in 0..130 {
        fake.plant("fr-par-1", &format!("qm-{index}"), "L4-1-24G", &tags_for(qm_domain::InstanceId::new()));
    }
    for index in 0..5 {
        fake.plant("fr-par-2", &format!("qm-b{index}"), "H100-1-80G", &tags_for(qm_domain::InstanceId::new()));
    }
    fake.plant("fr-par-1", "someone-else", "L4-1-24G", &["web".to_owned()]);
    let listed = provider.list().await.unwrap();
    assert_eq!(listed.len(), 135, "every page of every zone, and only Quartermaster's servers");
    assert!(listed.iter().all(|instance| instance.instance_id.is_some()));
    let pages: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|request| request.path == "/instance/v1/zones/fr-par-1/servers" && request.method == "GET")
        .map(|request| request.query)
        .collect();
    assert!(pages.iter().any(|query| query.contains("page=2")), "{pages:?}");
    assert!(
        pages.iter().all(|query| query.contains("tags=qm-managed%3Dtrue") || query.contains("tags=qm-managed=true"))
    );
}

#[tokio::test]
async fn a_server_carries_its_tags_user_data_and_a_dynamic_ip_and_its_flexible_ips_go_with_it() {
    let Fixture { fake, provider } = fixture().await;
    let id = qm_domain::InstanceId::new();
    let request = CreateRequest {
        instance_id: id,
        zone: "fr-par-2".into(),
        instance_type: "H100-1-80G".into(),
        user_data: "QM_API_URL=http://api\nQM_INSTANCE_ID=x\n".into(),
        tags: [("qm-organization-id".to_owned(), "org-1".to_owned())].into(),
    };
    let created = provider.create(&request).await.unwrap();
    let (zone, server_id) = created.provider_id.split_once('/').unwrap();
    assert_eq!(zone, "fr-par-2");
    assert_eq!(fake.user_data(zone, server_id).as_deref(), Some(request.user_data.as_str()));
    let server = fake.servers().into_iter().find(|server| server["id"] == server_id).unwrap();
    assert_eq!(server["name"], format!("qm-{id}"));
    assert_eq!(server["dynamic_ip_required"], true);
    let tags: Vec<_> = server["tags"].as_array().unwrap().iter().map(|tag| tag.as_str().unwrap().to_owned()).collect();
    assert!(tags.contains(&format!("qm-instance-id={id}")) && tags.contains(&"qm-managed=true".to_owned()), "{tags:?}");
    assert!(tags.contains(&"qm-organization-id=org-1".to_owned()));

    // A flexible IP tagged for the instance (say, attached by an operator) is released with it.
    let client = reqwest::Client::new();
    let ip: serde_json::Value = client
        .post(format!("{}/instance/v1/zones/fr-par-2/ips", fake.url()))
        .header("X-Auth-Token", SECRET)
        .json(&serde_json::json!({ "project": "p", "type": "routed_ipv4", "tags": [format!("qm-instance-id={id}")] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ip["ip"]["id"].is_string());
    let volumes = fake.volumes();
    assert_eq!(volumes.len(), 1, "a Block Storage root volume");
    assert_eq!(volumes[0]["name"], format!("qm-{id}"));
    provider.terminate(&created.provider_id).await.unwrap();
    assert!(fake.servers().is_empty());
    assert!(fake.volumes().is_empty(), "the detached root volume was deleted: it would bill");
    let deleted = fake
        .requests()
        .into_iter()
        .filter(|request| request.method == "DELETE" && request.path.contains("/ips/"))
        .count();
    assert_eq!(deleted, 1, "the flexible IP was released");
}

#[tokio::test]
async fn a_wrong_token_is_an_auth_error_and_never_echoed() {
    let fake = FakeScaleway::start(SECRET).await;
    let provider = ScalewayProvider::new(config(&fake, "not-the-secret"));
    let failure = provider.list().await.unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Auth, "{failure}");
    assert!(!failure.to_string().contains("not-the-secret"));
}
