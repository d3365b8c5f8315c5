//! The worker protocol's requests and responses (DESIGN section 6), shared by the api that
//! parses them strictly and the agent that sends them, so that the two cannot drift apart.

use qm_domain::{InstanceId, InstanceState};
use serde::{Deserialize, Serialize};

/// The most GPUs one registration or heartbeat may list.
pub const MAX_GPUS: usize = 16;

/// `POST /internal/worker/register`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub instance_id: InstanceId,
    /// The one-time token the orchestrator gave the instance.
    #[schema(max_length = 100)]
    pub bootstrap_token: String,
    #[schema(min_length = 1, max_length = 200, pattern = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")]
    pub model: String,
    /// Where the inference engine listens, e.g. `http://10.0.0.7:8000`. Only its port is used
    /// to reach it: the host is the address the provider reports for the instance.
    #[schema(
        max_length = 500,
        pattern = r"^https?://((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}|[A-Za-z]([A-Za-z0-9.-]{0,250}[A-Za-z])?)(:[1-9][0-9]{0,3})?(/[!-~]{0,200})?$"
    )]
    pub engine_url: String,
    /// Printable ASCII without spaces.
    #[schema(pattern = "^[!-~]{1,100}$")]
    pub agent_version: String,
    #[serde(default)]
    #[schema(max_items = 16)]
    pub gpus: Vec<GpuInfo>,
}

/// A GPU as registration lists it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuInfo {
    pub index: u32,
    /// Without control characters.
    #[schema(max_length = 100, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub name: String,
    pub memory_total_mb: u64,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RegisterResponse {
    /// Send as `Authorization: Bearer <token>` on heartbeats.
    pub worker_token: String,
    pub heartbeat_interval_seconds: u64,
}

/// What the agent says about its engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Starting,
    Ready,
    NotReady,
    Draining,
}

/// `POST /internal/worker/heartbeat`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub instance_id: InstanceId,
    pub status: WorkerStatus,
    pub queue_depth: u32,
    pub in_flight: u32,
    /// The share of the engine's KV cache in use, 0 to 1, when the engine reports it.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub kv_cache_usage: Option<f64>,
    /// Present when NVML found GPUs.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub gpus: Vec<GpuMetrics>,
    /// Tokens the engine served since the last acknowledged heartbeat.
    #[serde(default)]
    pub usage: Option<TokenUsage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenUsage {
    #[schema(maximum = 1_000_000_000)]
    pub prompt_tokens: u64,
    #[schema(maximum = 1_000_000_000)]
    pub completion_tokens: u64,
}

/// One GPU's metrics (NVML).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuMetrics {
    pub index: u32,
    pub utilization_percent: f64,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    /// The instance's state after this heartbeat (`draining` tells the agent to drain).
    pub instance_state: InstanceState,
    pub heartbeat_interval_seconds: u64,
}
