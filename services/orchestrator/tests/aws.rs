//! The orchestrator driving the `aws` provider against moto, with the fault proxy in front for
//! what moto cannot produce: provisioning through termination (instances in moto with the right
//! type, zone and tags; `terminated` there), `InsufficientInstanceCapacity` in one zone failing
//! over to the next, throttling retried, a lost `RunInstances` answer leaving one instance, an
//! instance created directly in moto under `qm:managed=true` and this installation terminated as
//! an orphan, one terminated directly in moto becoming `terminated` with `deleted_by_provider`,
//! two installations on one moto never touching each other's instances, IMDSv2 required, and
//! catalog sync of the GPU types.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification};
use qm_domain::{InstanceId, InstanceState};
use qm_orchestrator::saga::Saga;
use qm_provider_aws::{AwsProvider, AwsSettings};
use qm_providers::CloudProvider;
use qm_store::Offer;
use qm_testkit::fault_proxy::FaultProxy;
use qm_testkit::moto::Moto;

mod common;
use common::{World, fast};

fn offer(zone: &str) -> Offer {
    Offer {
        provider: "aws".into(),
        region: "us-east-1".into(),
        zone_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, zone.as_bytes()).into(),
        zone: zone.into(),
        instance_type_id: uuid::Uuid::nil().into(),
        instance_type: "g6.xlarge".into(),
        gpu_model: Some("L4".into()),
        gpu_count: 1,
        gpu_memory_gb: 24,
        hourly_price_micros: 804_800,
        currency: "USD".into(),
    }
}

const INSTALLATION: &str = "staging";

struct Cloud {
    _moto: Moto,
    proxy: FaultProxy,
    config: aws_config::SdkConfig,
    image_id: String,
    provider: Arc<AwsProvider>,
}

impl Cloud {
    async fn start() -> Self {
        let moto = Moto::start().await;
        let proxy = FaultProxy::start(moto.url()).await;
        let credentials = aws_sdk_ec2::config::Credentials::new("AKIDMOTOTEST", "moto-secret", None, None, "test");
        let config = AwsProvider::loader()
            .endpoint_url(proxy.url())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .load()
            .await;
        let images = aws_sdk_ec2::Client::new(&config).describe_images().send().await.unwrap();
        let image_id = images.images()[0].image_id().unwrap().to_owned();
        let settings = AwsSettings { image_id: image_id.clone(), subnet_id: None, installation: INSTALLATION.into() };
        let provider = Arc::new(AwsProvider::new(&config, settings));
        Self { _moto: moto, proxy, config, image_id, provider }
    }

    /// Another installation's provider on the same moto.
    fn installation(&self, installation: &str) -> Arc<AwsProvider> {
        let settings =
            AwsSettings { image_id: self.image_id.clone(), subnet_id: None, installation: installation.into() };
        Arc::new(AwsProvider::new(&self.config, settings))
    }

    fn providers(&self) -> BTreeMap<String, Arc<dyn CloudProvider>> {
        providers_of(&self.provider)
    }

    fn saga(&self, world: &World) -> Saga {
        saga_of(world, &self.provider)
    }

    async fn state_in_moto(&self, provider_id: &str) -> InstanceStateName {
        let described = self.provider.client().describe_instances().instance_ids(provider_id).send().await.unwrap();
        described.reservations()[0].instances()[0].state().unwrap().name().unwrap().clone()
    }
}

fn providers_of(provider: &Arc<AwsProvider>) -> BTreeMap<String, Arc<dyn CloudProvider>> {
    BTreeMap::from([("aws".to_owned(), provider.clone() as Arc<dyn CloudProvider>)])
}

fn saga_of(world: &World, provider: &Arc<AwsProvider>) -> Saga {
    Saga::new(world.store.clone(), providers_of(provider), fast()).with_api_url(Some("http://127.0.0.1:9".into()))
}

#[tokio::test]
async fn an_instance_runs_in_moto_with_its_tags_and_is_terminated_there() {
    let world = World::new(offer).await;
    let cloud = Cloud::start().await;
    let (id, command) = world.requested(&["us-east-1a"]).await;
    cloud.saga(&world).provision(&command).await.unwrap();
    let instance = world.state(id).await;
    assert_eq!(instance.state, InstanceState::Booting, "no agent boots inside moto: it waits at booting");
    let provider_id = instance.provider_instance_id.clone().unwrap();
    let described = cloud.provider.client().describe_instances().instance_ids(&provider_id).send().await.unwrap();
    let ec2 = &described.reservations()[0].instances()[0];
    assert_eq!(ec2.instance_type(), Some(&InstanceType::G6Xlarge));
    assert_eq!(ec2.placement().unwrap().availability_zone(), Some("us-east-1a"));
    let tags: BTreeMap<_, _> = ec2.tags().iter().map(|tag| (tag.key().unwrap(), tag.value().unwrap())).collect();
    assert_eq!(tags.get("qm:managed"), Some(&"true"));
    assert_eq!(tags.get("qm:instance-id"), Some(&id.to_string().as_str()));
    assert_eq!(tags.get("qm:org"), Some(&world.organization.to_string().as_str()));
    assert_eq!(tags.get("qm:installation"), Some(&INSTALLATION));
    let metadata = ec2.metadata_options().unwrap();
    assert_eq!(metadata.http_tokens(), Some(&aws_sdk_ec2::types::HttpTokensState::Required), "IMDSv2 only");

    let terminate = world.request_termination(id).await;
    cloud.saga(&world).terminate(&terminate).await.unwrap();
    assert_eq!(world.state(id).await.state, InstanceState::Terminated);
    assert!(matches!(
        cloud.state_in_moto(&provider_id).await,
        InstanceStateName::Terminated | InstanceStateName::ShuttingDown
    ));
    world.cleanup();
}

#[tokio::test]
async fn insufficient_capacity_fails_over_throttling_is_retried_and_a_lost_answer_makes_one_instance() {
    let world = World::new(offer).await;
    let cloud = Cloud::start().await;
    cloud.proxy.no_capacity_in("us-east-1a");
    cloud.proxy.throttle_next(2);
    cloud.proxy.lose_next_run_answer();
    let (id, command) = world.requested(&["us-east-1a", "us-east-1b"]).await;
    let saga = cloud.saga(&world);
    // The lost answer is a transient failure: the command is retried (redelivered) and resumes.
    let mut outcome = saga.provision(&command).await;
    for _ in 0..3 {
        if outcome.is_ok() {
            break;
        }
        outcome = saga.provision(&command).await;
    }
    outcome.unwrap();
    let instance = world.state(id).await;
    assert_eq!((instance.state, instance.zone.as_str()), (InstanceState::Booting, "us-east-1b"));
    let mine: Vec<_> =
        cloud.provider.list().await.unwrap().into_iter().filter(|listed| listed.instance_id == Some(id)).collect();
    assert_eq!(mine.len(), 1, "exactly one instance in moto: {mine:?}");
    assert_eq!(mine[0].provider_id, instance.provider_instance_id.unwrap());
    let logs = world.store.action_logs(Some(world.organization), 50).await.unwrap();
    let failover = logs.iter().find(|entry| entry.action_type == "instance.failover").unwrap();
    // Tenants read the classified reason; the provider's own text stays in the server's logs.
    let after = failover.metadata["after"].to_string();
    assert!(after.contains("aws: no capacity for this instance type in this zone"), "{failover:?}");
    assert!(!after.contains("InsufficientInstanceCapacity"), "{failover:?}");
    world.cleanup();
}

#[tokio::test]
async fn reconciliation_terminates_an_orphan_made_in_moto_and_notices_an_instance_terminated_there() {
    let world = World::new(offer).await;
    let cloud = Cloud::start().await;
    let (id, command) = world.requested(&["us-east-1a"]).await;
    let saga = Arc::new(cloud.saga(&world));
    saga.provision(&command).await.unwrap();
    let provider_id = world.state(id).await.provider_instance_id.unwrap();
    let client = cloud.provider.client();
    client.terminate_instances().instance_ids(&provider_id).send().await.unwrap();
    let images = client.describe_images().send().await.unwrap();
    let stranger = InstanceId::new().to_string();
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key("qm:managed").value("true").build())
        .tags(Tag::builder().key("qm:installation").value(INSTALLATION).build())
        .tags(Tag::builder().key("qm-instance-id").value(&stranger).build())
        .build();
    let orphan = client
        .run_instances()
        .image_id(images.images()[0].image_id().unwrap())
        .instance_type(InstanceType::G5Xlarge)
        .min_count(1)
        .max_count(1)
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    let orphan_id = orphan.instances()[0].instance_id().unwrap().to_owned();

    let reconciler =
        qm_orchestrator::reconcile::Reconciler { store: world.store.clone(), saga, every: Duration::from_secs(60) };
    let report = reconciler.reconcile(None).await.unwrap();
    assert_eq!((report.gone, report.orphans), (1, 1), "{report:?}");
    let instance = world.state(id).await;
    assert_eq!((instance.state, instance.deleted_by_provider), (InstanceState::Terminated, true));
    assert!(matches!(
        cloud.state_in_moto(&orphan_id).await,
        InstanceStateName::Terminated | InstanceStateName::ShuttingDown
    ));
    world.cleanup();
}

#[tokio::test]
async fn catalog_sync_lists_the_gpu_types_with_their_gpus_and_prices() {
    let world = World::new(offer).await;
    let cloud = Cloud::start().await;
    let sync = qm_orchestrator::catalog::CatalogSync { store: world.store.clone(), providers: cloud.providers() };
    sync.sync(Some("aws")).await.unwrap();
    let types = world.store.instance_types(Some("aws")).await.unwrap();
    let g6 = types.iter().find(|kind| kind.code == "g6.xlarge").unwrap();
    assert_eq!((g6.gpu_model.as_deref(), g6.gpu_count), (Some("L4"), 1));
    assert_eq!((g6.hourly_price_micros, g6.currency.as_str()), (804_800, "USD"));
    assert!(types.iter().all(|kind| kind.gpu_count > 0), "GPU types only");
    let zones = world.store.instance_type_zones(g6.id).await.unwrap();
    assert!(zones.iter().any(|zone| zone.code == "us-east-1a"), "{zones:?}");
    world.cleanup();
}

#[tokio::test]
async fn two_installations_on_one_moto_never_touch_each_others_instances() {
    let staging = World::new(offer).await;
    let production = World::new(offer).await;
    let cloud = Cloud::start().await;
    let prod = cloud.installation("prod");
    let (staging_id, command) = staging.requested(&["us-east-1a"]).await;
    cloud.saga(&staging).provision(&command).await.unwrap();
    let (prod_id, command) = production.requested(&["us-east-1a"]).await;
    saga_of(&production, &prod).provision(&command).await.unwrap();
    let prod_provider_id = production.state(prod_id).await.provider_instance_id.unwrap();

    // Each lists only its own; each reconciliation finds nothing gone and no orphan.
    let listed = cloud.provider.list().await.unwrap();
    assert_eq!(listed.iter().map(|found| found.instance_id).collect::<Vec<_>>(), [Some(staging_id)]);
    for (world, provider) in [(&staging, &cloud.provider), (&production, &prod)] {
        let reconciler = qm_orchestrator::reconcile::Reconciler {
            store: world.store.clone(),
            saga: Arc::new(saga_of(world, provider)),
            every: Duration::from_secs(60),
        };
        let report = reconciler.reconcile(None).await.unwrap();
        assert_eq!((report.gone, report.orphans, report.failures), (0, 0, 0), "{report:?}");
    }
    // Staging's instance ends; production's is still running, and still production's.
    let terminate = staging.request_termination(staging_id).await;
    cloud.saga(&staging).terminate(&terminate).await.unwrap();
    assert_eq!(cloud.state_in_moto(&prod_provider_id).await, InstanceStateName::Running);
    assert_eq!(production.state(prod_id).await.state, InstanceState::Booting);
    staging.cleanup();
    production.cleanup();
}
