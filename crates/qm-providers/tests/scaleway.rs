//! The `scaleway` provider against the Instance API fake (`qm_testkit::scaleway`): the provider
//! conformance suite, pagination across pages and zones (servers, types, Block Storage volumes),
//! only this installation's and this project's resources seen, user data and tags as sent and
//! completed by a retried create, flexible IPs released with their server, a start that fails
//! for stock (refused, or fallen back to `stopped`) classified as capacity, a route the API does
//! not have never taken for "already gone", and a wrong token classified as an auth error.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use qm_config::Secret;
use qm_providers::conformance::TestProvider;
use qm_providers::scaleway::{ScalewayConfig, ScalewayProvider};
use qm_providers::{CloudProvider, CreateRequest, ErrorKind};
use qm_testkit::scaleway::FakeScaleway;

const SECRET: &str = "scw-test-secret-0b1d";
const PROJECT: &str = "11111111-2222-3333-4444-555555555555";
const INSTALLATION: &str = "staging";

fn config(fake: &FakeScaleway, secret: &str) -> ScalewayConfig {
    ScalewayConfig {
        api_url: fake.url(),
        secret_key: Secret::new(secret),
        project_id: PROJECT.into(),
        zones: vec!["fr-par-1".into(), "fr-par-2".into()],
        image: "ubuntu_jammy_gpu_os_12".into(),
        installation: INSTALLATION.into(),
    }
}

fn request(zone: &str, instance_type: &str) -> CreateRequest {
    CreateRequest {
        instance_id: qm_domain::InstanceId::new(),
        zone: zone.into(),
        instance_type: instance_type.into(),
        user_data: "#cloud-config\n".into(),
        tags: std::collections::BTreeMap::new(),
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

fn tags_for(id: qm_domain::InstanceId, installation: &str) -> Vec<String> {
    vec![format!("qm-instance-id={id}"), "qm-managed=true".into(), format!("qm-installation={installation}")]
}

#[tokio::test]
async fn listing_pages_through_every_zone_for_this_installation_and_project_only() {
    let Fixture { fake, provider } = fixture().await;
    let new = qm_domain::InstanceId::new;
    for index in 0..130 {
        fake.plant("fr-par-1", &format!("qm-{index}"), "L4-1-24G", PROJECT, &tags_for(new(), INSTALLATION));
    }
    for index in 0..5 {
        fake.plant("fr-par-2", &format!("qm-b{index}"), "H100-1-80G", PROJECT, &tags_for(new(), INSTALLATION));
    }
    fake.plant("fr-par-1", "someone-else", "L4-1-24G", PROJECT, &["web".to_owned()]);
    fake.plant("fr-par-1", "qm-prod", "L4-1-24G", PROJECT, &tags_for(new(), "prod"));
    fake.plant(
        "fr-par-1",
        "qm-other-project",
        "L4-1-24G",
        "99999999-0000-0000-0000-000000000000",
        &tags_for(new(), INSTALLATION),
    );
    let listed = provider.list().await.unwrap();
    assert_eq!(listed.len(), 135, "every page of every zone, and only this installation's servers in its project");
    assert!(listed.iter().all(|instance| instance.instance_id.is_some()));
    let pages: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|request| request.path == "/instance/v1/zones/fr-par-1/servers" && request.method == "GET")
        .map(|request| request.query)
        .collect();
    assert!(pages.iter().any(|query| query.contains("page=2")), "{pages:?}");
    assert!(
        pages.iter().all(|query| query.contains("tags=qm-managed%3Dtrue%2Cqm-installation%3Dstaging")),
        "{pages:?}"
    );
    assert!(pages.iter().all(|query| query.contains(&format!("project={PROJECT}"))), "{pages:?}");
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
    assert!(tags.contains(&format!("qm-installation={INSTALLATION}")), "{tags:?}");
    assert!(tags.contains(&"qm-organization-id=org-1".to_owned()));

    // A flexible IP tagged for the instance (say, attached by an operator) is released with it.
    let client = reqwest::Client::new();
    let ip: serde_json::Value = client
        .post(format!("{}/instance/v1/zones/fr-par-2/ips", fake.url()))
        .header("X-Auth-Token", SECRET)
        .json(
            &serde_json::json!({ "project": PROJECT, "type": "routed_ipv4", "tags": [format!("qm-instance-id={id}")] }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ip["ip"]["id"].is_string());
    let volumes = fake.volumes();
    assert_eq!(volumes.len(), 1, "a Block Storage root volume");
    assert_eq!(volumes[0]["name"], format!("qm-{INSTALLATION}-{id}"), "the volume's name says whose it is");
    // Routed IPs: the address is the public one; the server has no private IP.
    let started = provider.start(&created.provider_id).await.unwrap();
    let server = fake.servers().into_iter().find(|server| server["id"] == server_id).unwrap();
    assert!(server["private_ip"].is_null(), "{server}");
    assert_eq!(started.address.as_deref(), server["public_ip"]["address"].as_str());
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

#[tokio::test]
async fn a_start_that_fails_for_stock_is_a_capacity_error_either_way() {
    use qm_testkit::scaleway::StartFailure;
    let Fixture { fake, provider } = fixture().await;
    fake.fail_starts("fr-par-1", "L4-1-24G", StartFailure::Refused);
    fake.fail_starts("fr-par-2", "L4-1-24G", StartFailure::FallsBack);
    for zone in ["fr-par-1", "fr-par-2"] {
        let created = provider.create(&request(zone, "L4-1-24G")).await.unwrap();
        let failure = provider.start(&created.provider_id).await.unwrap_err();
        assert_eq!(failure.kind, ErrorKind::Capacity, "{zone}: {failure}");
        // The server exists, stopped: removing it (and its volume) is the caller's to do.
        provider.terminate(&created.provider_id).await.unwrap();
    }
    assert!(fake.servers().is_empty());
    assert!(fake.volumes().is_empty(), "{:?}", fake.volumes());
}

#[tokio::test]
async fn a_create_retried_after_its_user_data_failed_completes_it() {
    let Fixture { fake, provider } = fixture().await;
    let request = request("fr-par-1", "L4-1-24G");
    fake.fail_user_data_next(1);
    let failure = provider.create(&request).await.unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Transient, "{failure}");
    let created = provider.create(&request).await.unwrap();
    let (zone, id) = created.provider_id.split_once('/').unwrap();
    assert_eq!(fake.servers().len(), 1, "one server however often the create was tried");
    assert_eq!(fake.user_data(zone, id).as_deref(), Some(request.user_data.as_str()));
}

#[tokio::test]
async fn leftover_volumes_are_paged_and_only_this_installations_in_its_project() {
    let fake = FakeScaleway::start(SECRET).await;
    fake.page_limit(2);
    fake.detach_after(std::time::Duration::ZERO);
    let ours = ScalewayProvider::new(config(&fake, SECRET));
    let theirs = ScalewayProvider::new(ScalewayConfig { installation: "prod".into(), ..config(&fake, SECRET) });
    let elsewhere = ScalewayProvider::new(ScalewayConfig {
        project_id: "99999999-0000-0000-0000-000000000000".into(),
        ..config(&fake, SECRET)
    });
    for provider in [&ours, &ours, &ours, &ours, &ours, &theirs, &elsewhere] {
        let created = provider.create(&request("fr-par-1", "L4-1-24G")).await.unwrap();
        let (zone, id) = created.provider_id.split_once('/').unwrap();
        fake.remove(zone, id);
    }
    let leftovers = ours.leftovers().await.unwrap();
    assert_eq!(leftovers.len(), 5, "{leftovers:?}");
    assert!(leftovers.iter().all(|leftover| leftover.instance_id.is_some()));
    assert_eq!(theirs.leftovers().await.unwrap().len(), 1);
    let paged = fake
        .requests()
        .into_iter()
        .filter(|request| request.path.ends_with("/volumes") && request.query.contains("page=3"))
        .count();
    assert!(paged > 0, "five volumes two a page take three pages");
    assert!(
        fake.requests()
            .iter()
            .filter(|request| request.path.ends_with("/volumes"))
            .all(|request| request.query.contains("project_id=") && request.query.contains("page_size=")),
    );
    // Types and their availability are paged too.
    let offers = ours.offers().await.unwrap();
    assert_eq!(offers.iter().filter(|offer| offer.zone == "fr-par-2").count(), 6, "{offers:?}");
}

#[tokio::test]
async fn a_route_the_api_does_not_have_is_invalid_never_already_gone() {
    let fake = FakeScaleway::start(SECRET).await;
    let wrong = ScalewayProvider::new(ScalewayConfig {
        api_url: format!("{}/wrong-prefix", fake.url()),
        ..config(&fake, SECRET)
    });
    let failure = wrong.terminate(&format!("fr-par-1/{}", uuid::Uuid::new_v4())).await.unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Invalid, "{failure}");
    // A server that is really gone is a success.
    let right = ScalewayProvider::new(config(&fake, SECRET));
    right.terminate(&format!("fr-par-1/{}", uuid::Uuid::new_v4())).await.unwrap();
}
