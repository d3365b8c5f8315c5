//! AWS EC2 through the official `aws-sdk-ec2` (the workspace's heaviest dependency, kept in this
//! one crate).
//!
//! - Configuration: the SDK's standard chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
//!   profiles, instance roles), `AWS_REGION`, `AWS_ENDPOINT_URL`; plus `QM_AWS_IMAGE_ID` (the
//!   AMI new instances boot, a GPU image with the agent) and optional `QM_AWS_SUBNET_ID`.
//!   The SDK's own retries are off: the orchestrator retries with backoff behind its circuit
//!   breaker, and a capacity error (which EC2 sends as a 5xx) must fail over at once.
//! - Creation is idempotent twice over: an instance tagged with the instance id is looked up
//!   first, and `RunInstances` carries `ClientToken` = the instance id, so a retried create never
//!   makes a second instance. Tags: `qm-instance-id`, `qm:instance-id`, `qm:managed=true`,
//!   `qm:installation=<QM_INSTALLATION>`, `qm:org`, `Name`. User data is the `#cloud-config`
//!   that starts the agent and the engine (base64). Instances require IMDSv2
//!   (`HttpTokens=required`, one hop), so a process on them cannot read the instance role's
//!   credentials through a plain GET.
//! - Listing pages through `DescribeInstances` filtered on `qm:managed=true` and this
//!   installation's `qm:installation`: another Quartermaster in the same account (staging beside
//!   production) is never listed, so never reconciled or terminated as an orphan.
//! - Offers: `DescribeInstanceTypeOfferings` per zone and `DescribeInstanceTypes` for GPU model,
//!   count and memory (`GpuInfo`); prices from the bundled on-demand price table (the AWS part
//!   of `seeds/catalog.json`, USD list prices), since EC2 itself has no prices.
//! - Errors mapped by code: capacity (`InsufficientInstanceCapacity`, `Unsupported`), quota
//!   (`InstanceLimitExceeded`, `VcpuLimitExceeded`), throttling (`RequestLimitExceeded`,
//!   `Throttling`), gone (`InvalidInstanceID.NotFound`/`.Malformed`), auth (`AuthFailure`,
//!   `UnauthorizedOperation`, ...), 5xx and timeouts transient, the rest invalid.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, HttpTokensState, Instance, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceStateName, InstanceType, LocationType, Placement, ResourceType, Tag, TagSpecification,
};
use qm_config::Environment;
use qm_domain::InstanceId;
use qm_providers::{
    CloudProvider, CreateRequest, ErrorKind, INSTANCE_TAG, ProviderError, ProviderInstance, ProviderOffer,
    ProviderStatus, instance_name,
};

pub const NAME: &str = "aws";
const MANAGED_TAG: &str = "qm:managed";
const ID_TAG: &str = "qm:instance-id";
const ORG_TAG: &str = "qm:org";
const INSTALLATION_TAG: &str = "qm:installation";

/// The bundled price table: the AWS types of the catalog seed, USD per hour (on-demand, Linux).
const SEED: &str = include_str!("../../../seeds/catalog.json");

#[derive(Clone, Debug)]
pub struct AwsSettings {
    pub image_id: String,
    pub subnet_id: Option<String>,
    /// `QM_INSTALLATION`: only instances carrying it are ours.
    pub installation: String,
}

impl AwsSettings {
    /// # Errors
    /// A message naming `QM_AWS_IMAGE_ID` when it is missing.
    pub fn from_environment(environment: &Environment) -> Result<Self, String> {
        let image_id = environment
            .get("QM_AWS_IMAGE_ID")
            .ok_or("the aws provider needs QM_AWS_IMAGE_ID (the AMI instances boot, with the agent installed)")?;
        let installation = qm_config::installation(environment).map_err(|error| error.to_string())?;
        Ok(Self { image_id, subnet_id: environment.get("QM_AWS_SUBNET_ID"), installation })
    }
}

pub struct AwsProvider {
    client: Client,
    region: String,
    settings: AwsSettings,
    prices: BTreeMap<String, i64>,
}

/// `(code, USD micro-units per hour)` of every AWS type in the seed.
fn bundled_prices() -> BTreeMap<String, i64> {
    let seed: serde_json::Value = serde_json::from_str(SEED).unwrap_or_default();
    let aws =
        seed["providers"].as_array().and_then(|providers| providers.iter().find(|provider| provider["name"] == NAME));
    aws.and_then(|aws| aws["instance_types"].as_array())
        .map(|types| {
            types
                .iter()
                .filter_map(|kind| {
                    let price = qm_domain::MicroUnits::parse_decimal(kind["hourly_price"].as_str()?).ok()?;
                    Some((kind["code"].as_str()?.to_owned(), price.get()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn error(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
    ProviderError::new(NAME, kind, message)
}

/// Classifies an SDK error by its EC2 code, then by how it failed.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    failure: &SdkError<E, HttpResponse>,
) -> ProviderError {
    let code = failure.code().unwrap_or_default();
    let message = failure.message().unwrap_or_default();
    let kind = match code {
        "InsufficientInstanceCapacity" | "InsufficientHostCapacity" | "Unsupported" => ErrorKind::Capacity,
        "InstanceLimitExceeded" | "VcpuLimitExceeded" | "MaxSpotInstanceCountExceeded" => ErrorKind::Quota,
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ErrorKind::Throttled,
        "InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed" => ErrorKind::NotFound,
        "AuthFailure"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "OptInRequired" => ErrorKind::Auth,
        "InternalError" | "Unavailable" | "ServiceUnavailable" => ErrorKind::Transient,
        "" => match failure {
            SdkError::ServiceError(service) if service.raw().status().as_u16() < 500 => ErrorKind::Invalid,
            _ => ErrorKind::Transient,
        },
        _ => ErrorKind::Invalid,
    };
    let detail = if code.is_empty() {
        format!("{}", aws_sdk_ec2::error::DisplayErrorContext(failure))
    } else {
        format!("{code}: {message}")
    };
    error(kind, detail)
}

fn tag<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance.tags().iter().find(|tag| tag.key() == Some(key)).and_then(Tag::value)
}

fn view(instance: &Instance) -> ProviderInstance {
    let status = match instance.state().and_then(|state| state.name()) {
        Some(InstanceStateName::Running) => ProviderStatus::Running,
        Some(InstanceStateName::Stopping | InstanceStateName::ShuttingDown) => ProviderStatus::Stopping,
        Some(InstanceStateName::Stopped) => ProviderStatus::Stopped,
        Some(InstanceStateName::Terminated) => ProviderStatus::Terminated,
        _ => ProviderStatus::Pending,
    };
    let created_at = instance
        .launch_time()
        .and_then(|time| chrono::DateTime::from_timestamp(time.secs(), 0))
        .unwrap_or_else(chrono::Utc::now);
    ProviderInstance {
        provider_id: instance.instance_id().unwrap_or_default().to_owned(),
        instance_id: tag(instance, INSTANCE_TAG)
            .or_else(|| tag(instance, ID_TAG))
            .and_then(|id| id.parse::<InstanceId>().ok()),
        zone: instance.placement().and_then(Placement::availability_zone).unwrap_or_default().to_owned(),
        instance_type: instance.instance_type().map(|kind| kind.as_str().to_owned()).unwrap_or_default(),
        status,
        address: instance.public_ip_address().or(instance.private_ip_address()).map(str::to_owned),
        created_at,
    }
}

fn filter(name: &str, values: &[&str]) -> Filter {
    let mut builder = Filter::builder().name(name);
    for value in values {
        builder = builder.values(*value);
    }
    builder.build()
}

impl AwsProvider {
    /// The SDK's standard configuration chain (credentials, `AWS_REGION`, `AWS_ENDPOINT_URL`).
    ///
    /// # Errors
    /// When the chain finds no credentials (so that start-up stops with a clear message instead
    /// of every call failing later).
    pub async fn from_environment(settings: AwsSettings) -> Result<Self, String> {
        use aws_sdk_ec2::config::ProvideCredentials as _;
        let config = Self::loader().load().await;
        let missing = "the aws provider found no credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role)";
        let provider = config.credentials_provider().ok_or(missing)?;
        provider.provide_credentials().await.map_err(|error| format!("{missing}: {error}"))?;
        Ok(Self::new(&config, settings))
    }

    /// The SDK's defaults with its retries off and a 30 s operation timeout; add to it (an
    /// endpoint, credentials) before loading.
    pub fn loader() -> aws_config::ConfigLoader {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder().operation_timeout(Duration::from_secs(30)).build(),
            )
    }

    pub fn new(config: &aws_config::SdkConfig, settings: AwsSettings) -> Self {
        let region = config.region().map_or_else(|| "us-east-1".to_owned(), ToString::to_string);
        Self { client: Client::new(config), region, settings, prices: bundled_prices() }
    }

    /// The EC2 client, for tests that look behind the provider.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Instances matching `filters`, every page, terminated ones included.
    async fn instances(&self, filters: Vec<Filter>, ids: &[&str]) -> Result<Vec<Instance>, ProviderError> {
        let mut request = self.client.describe_instances().set_filters(Some(filters));
        for id in ids {
            request = request.instance_ids(*id);
        }
        let mut pages = request.into_paginator().send();
        let mut instances = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|failure| classify(&failure))?;
            instances
                .extend(page.reservations().iter().flat_map(|reservation| reservation.instances().iter().cloned()));
        }
        Ok(instances)
    }

    fn alive(instance: &Instance) -> bool {
        !matches!(
            instance.state().and_then(|state| state.name()),
            Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
        )
    }
}

fn encode_base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let bytes = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let triple = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(char::from(ALPHABET[(triple >> (18 - 6 * index) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[async_trait]
impl CloudProvider for AwsProvider {
    fn name(&self) -> &str {
        NAME
    }

    async fn create(&self, request: &CreateRequest) -> Result<ProviderInstance, ProviderError> {
        let id = request.instance_id.to_string();
        let existing = self.instances(vec![filter(&format!("tag:{INSTANCE_TAG}"), &[&id])], &[]).await?;
        if let Some(instance) = existing.iter().find(|instance| Self::alive(instance)) {
            return Ok(view(instance));
        }
        let mut tags = vec![
            (INSTANCE_TAG.to_owned(), id.clone()),
            (ID_TAG.to_owned(), id.clone()),
            (MANAGED_TAG.to_owned(), "true".to_owned()),
            (INSTALLATION_TAG.to_owned(), self.settings.installation.clone()),
            ("Name".to_owned(), instance_name(request.instance_id)),
        ];
        for (key, value) in &request.tags {
            let key = if key == "qm-organization-id" { ORG_TAG.to_owned() } else { key.clone() };
            tags.push((key, value.clone()));
        }
        let mut specification = TagSpecification::builder().resource_type(ResourceType::Instance);
        for (key, value) in tags {
            specification = specification.tags(Tag::builder().key(key).value(value).build());
        }
        let mut run = self
            .client
            .run_instances()
            .image_id(&self.settings.image_id)
            .instance_type(InstanceType::from(request.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(&id)
            .placement(Placement::builder().availability_zone(&request.zone).build())
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_tokens(HttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .build(),
            )
            .tag_specifications(specification.build());
        if let Some(subnet) = &self.settings.subnet_id {
            run = run.subnet_id(subnet);
        }
        if !request.user_data.is_empty() {
            run = run.user_data(encode_base64(request.user_data.as_bytes()));
        }
        let output = run.send().await.map_err(|failure| classify(&failure))?;
        output
            .instances()
            .first()
            .map(view)
            .ok_or_else(|| error(ErrorKind::Transient, "RunInstances answered no instance"))
    }

    async fn start(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        // RunInstances starts the instance.
        self.describe(provider_id).await
    }

    async fn describe(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        let instances = self.instances(Vec::new(), &[provider_id]).await?;
        instances.first().map(view).ok_or_else(|| error(ErrorKind::NotFound, format!("{provider_id} not found")))
    }

    async fn list(&self) -> Result<Vec<ProviderInstance>, ProviderError> {
        let states = ["pending", "running", "stopping", "stopped"];
        let filters = vec![
            filter(&format!("tag:{MANAGED_TAG}"), &["true"]),
            filter(&format!("tag:{INSTALLATION_TAG}"), &[&self.settings.installation]),
            filter("instance-state-name", &states),
        ];
        Ok(self.instances(filters, &[]).await?.iter().map(view).collect())
    }

    async fn terminate(&self, provider_id: &str) -> Result<(), ProviderError> {
        match self.client.terminate_instances().instance_ids(provider_id).send().await {
            Ok(_) => Ok(()),
            Err(failure) => {
                let classified = classify(&failure);
                if classified.kind == ErrorKind::NotFound { Ok(()) } else { Err(classified) }
            }
        }
    }

    async fn offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        let zones = self
            .client
            .describe_availability_zones()
            .send()
            .await
            .map_err(|failure| classify(&failure))?
            .availability_zones()
            .iter()
            .filter_map(|zone| zone.zone_name().map(str::to_owned))
            .collect::<BTreeSet<_>>();
        let mut offered: Vec<(String, String)> = Vec::new();
        let mut pages = self
            .client
            .describe_instance_type_offerings()
            .location_type(LocationType::AvailabilityZone)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|failure| classify(&failure))?;
            for offering in page.instance_type_offerings() {
                if let (Some(kind), Some(zone)) = (offering.instance_type(), offering.location())
                    && self.prices.contains_key(kind.as_str())
                    && zones.contains(zone)
                {
                    offered.push((kind.as_str().to_owned(), zone.to_owned()));
                }
            }
        }
        let wanted: BTreeSet<&str> = offered.iter().map(|(kind, _)| kind.as_str()).collect();
        let mut specs = BTreeMap::new();
        let mut pages = self
            .client
            .describe_instance_types()
            .set_instance_types(Some(wanted.iter().map(|kind| InstanceType::from(*kind)).collect()))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|failure| classify(&failure))?;
            for info in page.instance_types() {
                if let Some(kind) = info.instance_type() {
                    specs.insert(kind.as_str().to_owned(), info.clone());
                }
            }
        }
        let mut offers = Vec::new();
        for (kind, zone) in offered {
            let (Some(info), Some(price)) = (specs.get(&kind), self.prices.get(&kind)) else { continue };
            let gpu = info.gpu_info().and_then(|gpus| gpus.gpus().first());
            let Some(gpu) = gpu else { continue };
            let count = gpu.count().unwrap_or(0);
            if count == 0 {
                continue;
            }
            offers.push(ProviderOffer {
                region: self.region.clone(),
                zone,
                instance_type: kind.clone(),
                gpu_model: gpu.name().map(str::to_owned),
                gpu_count: count,
                gpu_memory_gb: gpu.memory_info().and_then(|memory| memory.size_in_mib()).unwrap_or(0) / 1024,
                vcpus: info.v_cpu_info().and_then(|cpu| cpu.default_v_cpus()).unwrap_or(0),
                memory_gb: i32::try_from(
                    info.memory_info().and_then(|memory| memory.size_in_mib()).unwrap_or(0) / 1024,
                )
                .unwrap_or(i32::MAX),
                hourly_price_micros: *price,
                currency: "USD".into(),
                available: true,
            });
        }
        Ok(offers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_is_base64() {
        assert_eq!(encode_base64(b"QM_API_URL=x\n"), "UU1fQVBJX1VSTD14Cg==");
        assert_eq!(encode_base64(b"ab"), "YWI=");
        assert_eq!(encode_base64(b""), "");
    }

    #[test]
    fn the_price_table_has_the_seeded_gpu_types() {
        let prices = bundled_prices();
        assert_eq!(prices.get("g5.xlarge"), Some(&1_006_000));
        assert!(prices.len() >= 5);
    }
}
