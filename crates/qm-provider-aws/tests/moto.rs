//! The `aws` provider against moto's EC2 server (a real, independent implementation of the EC2
//! API): the provider conformance suite, tags and user data as EC2 records them, exactly one
//! instance when a `RunInstances` answer is lost and the create is retried, capacity and
//! throttling errors (injected by the fault proxy, which moto cannot produce) classified, and
//! GPU offers with prices.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use qm_provider_aws::{AwsProvider, AwsSettings};
use qm_providers::conformance::TestProvider;
use qm_providers::{CloudProvider, CreateRequest, ErrorKind};
use qm_testkit::fault_proxy::FaultProxy;
use qm_testkit::moto::Moto;

/// The provider on `endpoint` (moto, or the fault proxy in front of it).
pub async fn provider(endpoint: &str) -> AwsProvider {
    let credentials =
        aws_sdk_ec2::config::Credentials::new("AKIDMOTOTEST", "moto-secret-never-logged", None, None, "test");
    let config = AwsProvider::loader()
        .endpoint_url(endpoint)
        .region(aws_sdk_ec2::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .load()
        .await;
    let probe = aws_sdk_ec2::Client::new(&config);
    let images = probe.describe_images().send().await.unwrap();
    let image_id = images.images().first().and_then(|image| image.image_id()).unwrap().to_owned();
    AwsProvider::new(&config, AwsSettings { image_id, subnet_id: None, installation: "conformance".into() })
}

struct Fixture {
    _moto: Moto,
    provider: Arc<AwsProvider>,
}

#[async_trait]
impl TestProvider for Fixture {
    fn provider(&self) -> Arc<dyn CloudProvider> {
        self.provider.clone()
    }

    fn placement(&self) -> (String, String) {
        ("us-east-1a".into(), "g5.xlarge".into())
    }

    async fn cleanup(&self) {}
}

async fn fixture() -> Fixture {
    let moto = Moto::start().await;
    let provider = Arc::new(provider(moto.url()).await);
    Fixture { _moto: moto, provider }
}

qm_providers::provider_conformance_suite!(fixture);

fn request(zone: &str) -> CreateRequest {
    CreateRequest {
        instance_id: qm_domain::InstanceId::new(),
        zone: zone.into(),
        instance_type: "g5.xlarge".into(),
        user_data: "QM_API_URL=http://api\nQM_INSTANCE_ID=x\n".into(),
        tags: [("qm-organization-id".to_owned(), "org-1".to_owned())].into(),
    }
}

#[tokio::test]
async fn an_instance_carries_its_tags_type_zone_and_user_data() {
    let moto = Moto::start().await;
    let provider = provider(moto.url()).await;
    let request = request("us-east-1b");
    let created = provider.create(&request).await.unwrap();
    let described = provider.client().describe_instances().instance_ids(&created.provider_id).send().await.unwrap();
    let instance = &described.reservations()[0].instances()[0];
    assert_eq!(instance.instance_type().map(|kind| kind.as_str()), Some("g5.xlarge"));
    assert_eq!(instance.placement().and_then(|placement| placement.availability_zone()), Some("us-east-1b"));
    let tag = |key: &str| {
        instance.tags().iter().find(|tag| tag.key() == Some(key)).and_then(|tag| tag.value()).map(str::to_owned)
    };
    let id = request.instance_id.to_string();
    assert_eq!(tag("qm:managed").as_deref(), Some("true"));
    assert_eq!(tag("qm:instance-id"), Some(id.clone()));
    assert_eq!(tag("qm-instance-id"), Some(id.clone()));
    assert_eq!(tag("qm:org").as_deref(), Some("org-1"));
    assert_eq!(tag("Name"), Some(format!("qm-{id}")));
    let attribute = provider
        .client()
        .describe_instance_attribute()
        .instance_id(&created.provider_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = attribute.user_data().and_then(|value| value.value()).unwrap();
    assert_eq!(encoded, "UU1fQVBJX1VSTD1odHRwOi8vYXBpClFNX0lOU1RBTkNFX0lEPXgK");
    provider.terminate(&created.provider_id).await.unwrap();
}

#[tokio::test]
async fn a_retried_create_after_a_lost_answer_yields_exactly_one_instance() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let provider = provider(&proxy.url()).await;
    let request = request("us-east-1a");
    proxy.lose_next_run_answer();
    let lost = provider.create(&request).await.unwrap_err();
    assert!(lost.is_retryable(), "{lost}");
    let created = provider.create(&request).await.unwrap();
    let mine: Vec<_> = provider
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|instance| instance.instance_id == Some(request.instance_id))
        .collect();
    assert_eq!(mine.len(), 1, "one instance: {mine:?}");
    assert_eq!(mine[0].provider_id, created.provider_id);
    assert_eq!(proxy.actions().iter().filter(|action| *action == "RunInstances").count(), 1, "found, not run again");
}

#[tokio::test]
async fn capacity_and_throttling_errors_are_classified() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let provider = provider(&proxy.url()).await;
    proxy.no_capacity_in("us-east-1a");
    let failure = provider.create(&request("us-east-1a")).await.unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Capacity, "{failure}");
    assert!(failure.calls_for_failover());
    proxy.throttle_next(1);
    let failure = provider.list().await.unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Throttled, "{failure}");
    assert!(!failure.to_string().contains("moto-secret-never-logged"));
}

#[tokio::test]
async fn offers_name_gpu_models_counts_and_memory() {
    let moto = Moto::start().await;
    let provider = provider(moto.url()).await;
    let offers = provider.offers().await.unwrap();
    let g5 = offers.iter().find(|offer| offer.instance_type == "g5.xlarge" && offer.zone == "us-east-1a").unwrap();
    // EC2 reports the A10G's memory as 22,888 MiB (sold as "24 GB"): 22 GiB.
    assert_eq!((g5.gpu_model.as_deref(), g5.gpu_count, g5.gpu_memory_gb), (Some("A10G"), 1, 22));
    assert_eq!((g5.hourly_price_micros, g5.currency.as_str(), g5.region.as_str()), (1_006_000, "USD", "us-east-1"));
    assert!(offers.iter().any(|offer| offer.gpu_model.as_deref() == Some("L4")), "g6 types too");
}
