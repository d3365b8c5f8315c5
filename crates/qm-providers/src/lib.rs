//! Clouds: one [`CloudProvider`] trait (DESIGN sections 3 and 5) that every provider implements
//! and one [`conformance`] suite that every provider runs.
//!
//! Layout:
//! - this file: the trait, what it creates and lists, and classified [`ProviderError`]s.
//! - [`local`]: real `qm-worker-agent` processes on this machine (the embedded default).
//! - [`sim`]: an in-memory cloud with boot delays, per-zone capacity, rate limits and injected
//!   faults, deterministic under a seed, for scale and chaos tests.
//! - [`scaleway`]: Scaleway's Instance API v1 over HTTP (`aws` is the `qm-provider-aws` crate,
//!   which keeps the EC2 SDK's compile cost in one place).
//! - [`agent`]: the user data handed to instances, and the simulated agent of `sim` instances.
//! - [`conformance`]: the promises every provider keeps.
//!
//! Every instance Quartermaster creates carries the tag [`INSTANCE_TAG`] = its instance id, and
//! creation is idempotent on it: asking twice (say, after a timeout whose request had in fact
//! succeeded) yields the one instance, never two.

pub mod agent;
#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod local;
pub mod scaleway;
pub mod sim;
pub mod sim_remote;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qm_domain::InstanceId;
use serde::{Deserialize, Serialize};

/// The tag (or label) that marks an instance as Quartermaster's, valued with its instance id.
pub const INSTANCE_TAG: &str = "qm-instance-id";

/// The name a provider gives its instance, as `qm-<instance id>` (Scaleway looks it up by name).
pub fn instance_name(id: InstanceId) -> String {
    format!("qm-{id}")
}

/// What to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    pub instance_id: InstanceId,
    pub zone: String,
    pub instance_type: String,
    /// Boot script or cloud-init handed to the instance (carries the bootstrap token).
    pub user_data: String,
    /// Extra tags; [`INSTANCE_TAG`] is always added.
    pub tags: BTreeMap<String, String>,
}

/// Where an instance is in the provider's own lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderStatus {
    /// Created, not running yet (or starting).
    Pending,
    Running,
    Stopping,
    Stopped,
    Terminated,
}

/// An instance as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInstance {
    /// The provider's id (`i-0abc…`, a Scaleway UUID, a local process id).
    pub provider_id: String,
    /// From [`INSTANCE_TAG`]; `None` for an instance that is not Quartermaster's.
    pub instance_id: Option<InstanceId>,
    pub zone: String,
    pub instance_type: String,
    pub status: ProviderStatus,
    /// Where the agent can be reached, once known.
    pub address: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// An instance type a provider offers in a zone, with its list price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderOffer {
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    pub gpu_model: Option<String>,
    pub gpu_count: i32,
    pub gpu_memory_gb: i32,
    pub vcpus: i32,
    pub memory_gb: i32,
    pub hourly_price_micros: i64,
    pub currency: String,
    /// Whether the provider reports capacity for it now.
    pub available: bool,
}

/// How a provider call failed, which decides what the caller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// No capacity for this type in this zone: fail over to the next placement.
    Capacity,
    /// An account limit: fail over too.
    Quota,
    /// Rate limited: retry with backoff.
    Throttled,
    /// 5xx, timeouts, connection resets: retry with backoff.
    Transient,
    /// Bad or missing credentials: fail fast.
    Auth,
    /// A request the provider refuses (unknown zone or type, bad parameter): fail fast.
    Invalid,
    /// The instance does not exist (or no longer does).
    NotFound,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{provider}: {kind:?}: {message}")]
pub struct ProviderError {
    pub provider: String,
    pub kind: ErrorKind,
    pub message: String,
}

impl ProviderError {
    pub fn new(provider: &str, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { provider: provider.to_owned(), kind, message: message.into() }
    }

    /// Worth retrying the same call later.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::Transient)
    }

    /// Worth trying another zone, type or provider.
    pub fn calls_for_failover(&self) -> bool {
        matches!(self.kind, ErrorKind::Capacity | ErrorKind::Quota)
    }

    /// What tenants are told (instance failure reasons, action logs): the provider and the
    /// classified kind, never the provider's own text, which can carry account ids, request
    /// ids, resource names or endpoints. Logs the raw error for operators.
    pub fn public_reason(&self) -> String {
        tracing::warn!(provider = %self.provider, kind = ?self.kind, message = %self.message, "provider error");
        let kind = match self.kind {
            ErrorKind::Capacity => "no capacity for this instance type in this zone",
            ErrorKind::Quota => "an account quota at the provider is exhausted",
            ErrorKind::Throttled => "the provider is rate limiting requests",
            ErrorKind::Transient => "the provider failed temporarily",
            ErrorKind::Auth => "the provider refused Quartermaster's credentials",
            ErrorKind::Invalid => "the provider refused the request as invalid",
            ErrorKind::NotFound => "the provider does not know the instance",
        };
        format!("{}: {kind}", self.provider)
    }
}

/// One cloud.
#[async_trait]
pub trait CloudProvider: Send + Sync + 'static {
    /// `local`, `sim`, `aws` or `scaleway`.
    fn name(&self) -> &str;

    /// Whether calls are refused now by a circuit breaker in front of the provider (the
    /// orchestrator's wrapper has one; a provider alone has none).
    fn circuit_open(&self) -> bool {
        false
    }

    /// Creates the instance, or returns the one already created for `request.instance_id`.
    async fn create(&self, request: &CreateRequest) -> Result<ProviderInstance, ProviderError>;

    /// Starts a created instance (a no-op where creation starts it).
    async fn start(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError>;

    /// # Errors
    /// [`ErrorKind::NotFound`] once the instance is gone.
    async fn describe(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError>;

    /// Every instance carrying [`INSTANCE_TAG`], terminated ones excluded.
    async fn list(&self) -> Result<Vec<ProviderInstance>, ProviderError>;

    /// Terminates the instance; one already gone is a success.
    async fn terminate(&self, provider_id: &str) -> Result<(), ProviderError>;

    /// What can be launched where, at what price.
    async fn offers(&self) -> Result<Vec<ProviderOffer>, ProviderError>;

    /// Resources that outlived their instance and still bill (Scaleway's detached root
    /// volumes); none for providers whose instances take everything with them.
    async fn leftovers(&self) -> Result<Vec<Leftover>, ProviderError> {
        Ok(Vec::new())
    }

    /// Deletes a leftover; one already gone is a success.
    async fn remove_leftover(&self, leftover: &Leftover) -> Result<(), ProviderError> {
        let _ = leftover;
        Ok(())
    }
}

/// A resource left behind by an instance, such as a detached volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// The provider's id for it (for Scaleway, `<zone>/<volume id>`).
    pub id: String,
    /// What it is, for logs: `volume`.
    pub kind: &'static str,
    /// The instance it belonged to, from its name or tags.
    pub instance_id: Option<InstanceId>,
}
