//! One payload type per message type (DESIGN section 4, `docs/events.md`), used by every
//! producer and every consumer: a field renamed on one side is a compile error, not a silent
//! mismatch. [`Envelope::of`](crate::Envelope::of) wraps a payload; [`Envelope::decode`]
//! (crate::Envelope::decode) reads one back and refuses a message of another type, another
//! version, or another shape, which consumers dead-letter with the reason.
//!
//! Ids are UUIDs, times RFC 3339, money integer micro-units with its currency.

use chrono::{DateTime, Utc};
use qm_domain::engine::EngineSettings;
use qm_domain::{DeploymentId, InstanceId, InstanceState, Offer, OrganizationId, UserId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::MessageType;
use crate::worker::{GpuMetrics, WorkerStatus};

/// The payload (`data`) of one message type.
pub trait Payload: Serialize + DeserializeOwned + utoipa::ToSchema {
    const TYPE: MessageType;
    /// The version of this payload's schema; a consumer refuses any other.
    const VERSION: u32 = 1;
}

macro_rules! payload {
    ($payload:ty, $kind:ident) => {
        impl Payload for $payload {
            const TYPE: MessageType = MessageType::$kind;
        }
    };
}

/// Provision one instance (api, `POST /deployments`: one per instance).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceProvision {
    pub instance_id: InstanceId,
    /// The deployment that asked for it (none for instances a test or an operator created).
    #[serde(default)]
    pub deployment_id: Option<DeploymentId>,
    pub model: String,
    /// The offers to try, in order: the first is where the instance was recorded; the
    /// orchestrator fails over down the list.
    pub placements: Vec<Offer>,
    /// A pool replica: the arguments its engine starts with (none when left out).
    #[serde(default, skip_serializing_if = "EngineSettings::is_default")]
    pub engine: EngineSettings,
}
payload!(InstanceProvision, InstanceProvision);

/// Terminate one instance (api, `DELETE /instances/{id}`; orchestrator, failed starts and stuck
/// terminations).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceTerminate {
    pub instance_id: InstanceId,
    pub reason: String,
    /// The user who asked, or none when Quartermaster itself decided.
    #[serde(default)]
    pub requested_by: Option<UserId>,
}
payload!(InstanceTerminate, InstanceTerminate);

/// Sync the catalog from the providers (api, `POST /catalog/sync`; `org_id` is null).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CatalogSync {
    /// One provider, or every enabled one when none.
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub requested_by: Option<UserId>,
}
payload!(CatalogSync, CatalogSync);

/// Reconcile the fleet with the providers (api, `POST /fleet/reconcile`; `org_id` is null).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetReconcile {
    /// One provider, or every enabled one when none.
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub requested_by: Option<UserId>,
}
payload!(FleetReconcile, FleetReconcile);

/// Scale a pool (reserved for pools; this version's orchestrator dead-letters it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolScale {
    pub pool_id: uuid::Uuid,
    /// The number of instances the pool should have.
    pub desired: u32,
}
payload!(PoolScale, PoolScale);

/// An instance moved (api: creation and termination requests; orchestrator: every other move).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceStateChanged {
    pub instance_id: InstanceId,
    #[serde(default)]
    pub deployment_id: Option<DeploymentId>,
    pub provider: String,
    pub zone: String,
    pub instance_type: String,
    /// None for the first state.
    pub from: Option<InstanceState>,
    pub to: InstanceState,
    #[serde(default)]
    pub reason: Option<String>,
    pub progress_percent: i32,
}
payload!(InstanceStateChanged, InstanceStateChanged);

/// The provider created the instance: billing starts (orchestrator, once per instance).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceBillingStarted {
    pub instance_id: InstanceId,
    pub provider: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    pub model: String,
    /// The provider's currency and hourly price.
    pub currency: String,
    pub hourly_price_micros: i64,
    /// The reporting currency and the price converted at that moment.
    pub reporting_currency: String,
    pub reporting_hourly_price_micros: i64,
    pub started_at: DateTime<Utc>,
}
payload!(InstanceBillingStarted, InstanceBillingStarted);

/// Billing stops: the instance reached `terminated` or `provisioning_failed` after it started
/// (orchestrator or api, once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceBillingStopped {
    pub instance_id: InstanceId,
    pub stopped_at: DateTime<Utc>,
}
payload!(InstanceBillingStopped, InstanceBillingStopped);

/// An agent registered (api, `POST /internal/worker/register`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerRegistered {
    pub instance_id: InstanceId,
    pub agent_version: String,
    pub engine_url: String,
    pub model: String,
    /// How many GPUs the agent found.
    pub gpus: u32,
}
payload!(WorkerRegistered, WorkerRegistered);

/// An agent reported (api, `POST /internal/worker/heartbeat`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerHeartbeat {
    pub instance_id: InstanceId,
    pub status: WorkerStatus,
    pub queue_depth: u32,
    pub in_flight: u32,
    /// 0 to 1, when the engine reports it.
    #[serde(default)]
    pub kv_cache_usage: Option<f64>,
    /// Empty without NVML.
    #[serde(default)]
    pub gpus: Vec<GpuMetrics>,
}
payload!(WorkerHeartbeat, WorkerHeartbeat);

/// Tokens served (api, from heartbeats carrying token deltas; later the router, per API key).
/// The envelope's `occurred_at` is when they were reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageTokens {
    #[serde(default)]
    pub instance_id: Option<InstanceId>,
    /// None from heartbeats.
    #[serde(default)]
    pub api_key_id: Option<uuid::Uuid>,
    pub model: String,
    /// At most [`MAX_TOKENS_PER_REPORT`](crate::MAX_TOKENS_PER_REPORT) of each kind.
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub instance_type: Option<String>,
}
payload!(UsageTokens, UsageTokens);

/// An organization's spend crossed a budget threshold (finops, once per month and threshold).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetThresholdCrossed {
    pub organization_id: OrganizationId,
    /// `YYYY-MM`.
    pub period: String,
    pub threshold_percent: u32,
    pub amount_micros: i64,
    pub spend_micros: i64,
    /// The reporting currency.
    pub currency: String,
}
payload!(BudgetThresholdCrossed, BudgetThresholdCrossed);

/// A pool's controller changed its size (orchestrator), with the signals that decided it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolScaled {
    pub pool_id: uuid::Uuid,
    pub model: String,
    pub from: u32,
    pub to: u32,
    /// `load`, `panic: …`, `ttft: …`, `kv cache: …`, `gpu utilisation: …`, `idle`, `request for
    /// an empty pool`, `bounds`.
    pub reason: String,
    /// Requests in flight and queued over the ready replicas, averaged over the stable and the
    /// panic window.
    pub stable_load: f64,
    pub panic_load: f64,
    pub ready: u32,
    /// The routers' p90 time to first token, in seconds, when there was recent traffic.
    #[serde(default)]
    pub ttft_p90_s: Option<f64>,
    /// The ready replicas' mean KV-cache use and GPU utilisation, 0 to 1, when reported.
    #[serde(default)]
    pub kv_cache: Option<f64>,
    #[serde(default)]
    pub gpu_utilization: Option<f64>,
}
payload!(PoolScaled, PoolScaled);

/// Why a message could not be read as the payload asked for.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("a `{found}` message is not a `{expected}`")]
    WrongType { expected: &'static str, found: String },
    #[error("`{message_type}` version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { message_type: String, found: u32, supported: u32 },
    #[error("malformed `{message_type}`: {reason}")]
    Malformed { message_type: String, reason: String },
}

pub(crate) fn decode<P: Payload>(envelope: &crate::Envelope) -> Result<P, DecodeError> {
    if envelope.message_type != P::TYPE.as_str() {
        return Err(DecodeError::WrongType { expected: P::TYPE.as_str(), found: envelope.message_type.clone() });
    }
    if envelope.version != P::VERSION {
        return Err(DecodeError::UnsupportedVersion {
            message_type: envelope.message_type.clone(),
            found: envelope.version,
            supported: P::VERSION,
        });
    }
    P::deserialize(&envelope.data).map_err(|error| DecodeError::Malformed {
        message_type: envelope.message_type.clone(),
        reason: error.to_string(),
    })
}

pub(crate) fn encode<P: Payload>(payload: &P) -> serde_json::Value {
    // A payload is plain fields: serializing it cannot fail.
    serde_json::to_value(payload).unwrap_or_default()
}
