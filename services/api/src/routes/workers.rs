//! The worker protocol (DESIGN section 6): an agent registers with its instance's one-time
//! bootstrap token and receives a worker token (`qmw_…`, stored hashed) with which it heartbeats
//! and may rotate it; operators revoke it. A ready heartbeat moves a booting instance to `ready`
//! (progress 100), a not-ready one moves a ready instance to `unhealthy`, and back.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use qm_domain::{InstanceId, InstanceState, Role};
use qm_events::{Envelope, MessageType};
use qm_store::{
    ActionStatus, Heartbeat, Instance, InstanceAnnotation, NewActionLog, RecordedTransition, Registration, StoreTx,
    Worker, record_transition,
};
use serde::{Deserialize, Serialize};

use super::Audit;
use crate::AppState;
use crate::auth::{ClientAddress, Principal, generate_token, presented_token, token_hash};
use crate::problem::{ApiResult, Json, Path, Problem};

pub const WORKER_TOKEN_PREFIX: &str = "qmw_";
/// How often agents are asked to heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a rotated-out token keeps working, so that an agent never races its own rotation.
pub const ROTATION_GRACE: Duration = Duration::from_secs(5 * 60);
/// Progress once the agent has registered (DESIGN section 5).
pub const REGISTERED_PROGRESS: i32 = 80;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub instance_id: InstanceId,
    /// The one-time token the orchestrator gave the instance.
    pub bootstrap_token: String,
    pub model: String,
    /// Where the inference engine listens, e.g. `http://10.0.0.7:8000`.
    pub engine_url: String,
    pub agent_version: String,
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub memory_total_mb: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegisterResponse {
    /// Send as `Authorization: Bearer <token>` on heartbeats.
    pub worker_token: String,
    pub heartbeat_interval_seconds: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Starting,
    Ready,
    NotReady,
    Draining,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub instance_id: InstanceId,
    pub status: WorkerStatus,
    pub queue_depth: u32,
    pub in_flight: u32,
    /// Present when NVML found GPUs.
    #[serde(default)]
    pub gpus: Vec<GpuMetrics>,
    /// Tokens the engine served since the last acknowledged heartbeat.
    #[serde(default)]
    pub usage: Option<TokenUsage>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuMetrics {
    pub index: u32,
    pub utilization_percent: f64,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    /// The instance's state after this heartbeat (`draining` tells the agent to drain).
    pub instance_state: InstanceState,
    pub heartbeat_interval_seconds: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RotatedToken {
    pub worker_token: String,
    /// Until when the previous token keeps working.
    pub previous_valid_until: chrono::DateTime<chrono::Utc>,
}

fn entry(
    instance: &Instance,
    action_type: &str,
    status: ActionStatus,
    error: Option<&str>,
    metadata: serde_json::Value,
) -> NewActionLog {
    let mut entry = NewActionLog::new(crate::NAME, action_type, status);
    entry.organization_id = Some(instance.organization_id);
    entry.instance_id = Some(instance.id);
    entry.error = error.map(str::to_owned);
    entry.metadata = if metadata.is_null() { serde_json::json!({}) } else { metadata };
    entry
}

/// Moves the instance as its worker reports (if it is still where it was), with history, log
/// and event.
async fn transition(
    tx: &mut dyn StoreTx,
    instance: &Instance,
    to: InstanceState,
    reason: &str,
    progress_percent: Option<i32>,
) -> ApiResult<Option<Instance>> {
    let change = RecordedTransition {
        to,
        reason,
        progress_percent,
        component: crate::NAME,
        cause: None,
        traceparent: qm_telemetry::traceparent::current(),
        duration: None,
    };
    Ok(record_transition(tx, instance, &change).await?.map(|(moved, _)| moved))
}

/// Register an agent with its instance's one-time bootstrap token.
#[utoipa::path(post, path = "/internal/worker/register", tag = "workers", request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse),
              (status = 401, description = "Wrong, reused or revoked bootstrap token", body = Problem)),
    security(()))]
pub async fn register(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    Json(request): Json<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    let refused = || Problem::unauthorized("the bootstrap token is wrong, already used or revoked");
    let store = &state.dependencies.store;
    let Some(instance) = store.instance(request.instance_id).await? else { return Err(refused()) };
    let worker_token = generate_token(WORKER_TOKEN_PREFIX);
    let registration = Registration {
        token_hash: token_hash(&worker_token),
        agent_version: request.agent_version.chars().take(100).collect(),
        engine_url: request.engine_url.chars().take(500).collect(),
        model: request.model.chars().take(200).collect(),
        gpus: serde_json::to_value(&request.gpus).unwrap_or_default(),
    };
    let mut tx = store.begin().await?;
    if !tx.register_worker(instance.id, &token_hash(&request.bootstrap_token), &registration).await? {
        let metadata = serde_json::json!({ "client_address": client.to_string() });
        let error = "wrong, reused or revoked bootstrap token";
        tx.insert_action_log(&entry(&instance, "worker.register", ActionStatus::Failed, Some(error), metadata)).await?;
        tx.commit().await?;
        tracing::warn!(instance = %instance.id, %client, "worker registration refused");
        return Err(refused());
    }
    if matches!(instance.state, InstanceState::Booting) {
        let annotation =
            InstanceAnnotation { progress_percent: Some(REGISTERED_PROGRESS), ..InstanceAnnotation::default() };
        tx.annotate_instance(instance.id, &annotation).await?;
    }
    let metadata = serde_json::json!({ "agent_version": registration.agent_version, "engine_url": registration.engine_url, "model": registration.model, "gpus": request.gpus.len() });
    tx.insert_action_log(&entry(&instance, "worker.register", ActionStatus::Succeeded, None, metadata.clone())).await?;
    let mut data = metadata;
    data["instance_id"] = serde_json::json!(instance.id);
    tx.enqueue(&Envelope::new(MessageType::WorkerRegistered, crate::NAME, Some(instance.organization_id), data))
        .await?;
    tx.commit().await?;
    Ok(Json(RegisterResponse { worker_token, heartbeat_interval_seconds: HEARTBEAT_INTERVAL.as_secs() }))
}

/// The worker behind a request's `qmw_` token.
async fn authenticated_worker(state: &AppState, headers: &HeaderMap) -> ApiResult<qm_store::Worker> {
    let token = presented_token(headers)
        .filter(|token| token.starts_with(WORKER_TOKEN_PREFIX))
        .ok_or_else(|| Problem::unauthorized("send the worker token as `Authorization: Bearer qmw_…`"))?;
    state
        .dependencies
        .store
        .worker_by_token(&token_hash(&token), qm_store::now())
        .await?
        .ok_or_else(|| Problem::unauthorized("the worker token is unknown, expired or revoked"))
}

/// Report the agent's status and metrics.
#[utoipa::path(post, path = "/internal/worker/heartbeat", tag = "workers", request_body = HeartbeatRequest,
    responses((status = 200, body = HeartbeatResponse),
              (status = 403, description = "The token belongs to another instance", body = Problem)),
    security(("bearer" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let worker = authenticated_worker(&state, &headers).await?;
    let store = &state.dependencies.store;
    let Some(instance) = store.instance(worker.instance_id).await? else {
        return Err(Problem::unauthorized("the worker's instance no longer exists"));
    };
    if worker.instance_id != request.instance_id {
        let mut tx = store.begin().await?;
        let metadata = serde_json::json!({ "claimed_instance_id": request.instance_id });
        let error = "heartbeat for another instance's id";
        tx.insert_action_log(&entry(
            &instance,
            "worker.heartbeat_refused",
            ActionStatus::Failed,
            Some(error),
            metadata,
        ))
        .await?;
        tx.commit().await?;
        return Err(Problem::forbidden("this worker token belongs to another instance"));
    }
    let heartbeat = Heartbeat {
        status: serde_json::to_value(request.status)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default(),
        queue_depth: i32::try_from(request.queue_depth).unwrap_or(i32::MAX),
        in_flight: i32::try_from(request.in_flight).unwrap_or(i32::MAX),
        gpu_metrics: serde_json::to_value(&request.gpus).unwrap_or_default(),
    };
    let mut tx = store.begin().await?;
    tx.record_heartbeat(instance.id, &heartbeat).await?;
    let moved = match (instance.state, request.status) {
        (InstanceState::Booting, WorkerStatus::Ready) => {
            transition(&mut *tx, &instance, InstanceState::Ready, "worker reported ready", Some(100)).await?
        }
        (InstanceState::Ready, WorkerStatus::NotReady) => {
            transition(&mut *tx, &instance, InstanceState::Unhealthy, "worker reported not ready", None).await?
        }
        (InstanceState::Unhealthy, WorkerStatus::Ready) => {
            transition(&mut *tx, &instance, InstanceState::Ready, "worker reported ready again", None).await?
        }
        _ => None,
    };
    let data = serde_json::json!({
        "instance_id": instance.id, "status": heartbeat.status, "queue_depth": request.queue_depth,
        "in_flight": request.in_flight, "gpus": request.gpus,
    });
    tx.enqueue(&Envelope::new(MessageType::WorkerHeartbeat, crate::NAME, Some(instance.organization_id), data)).await?;
    if let Some(usage) = request.usage.filter(|usage| usage.prompt_tokens + usage.completion_tokens > 0) {
        let data = serde_json::json!({
            "instance_id": instance.id, "api_key_id": null, "model": instance.model,
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "provider": instance.provider, "region": null, "zone": instance.zone, "instance_type": instance.instance_type,
        });
        tx.enqueue(&Envelope::new(MessageType::UsageTokens, crate::NAME, Some(instance.organization_id), data)).await?;
    }
    tx.commit().await?;
    let instance_state = moved.map_or(instance.state, |moved| moved.state);
    Ok(Json(HeartbeatResponse { instance_state, heartbeat_interval_seconds: HEARTBEAT_INTERVAL.as_secs() }))
}

/// Replace the worker token; the old one keeps working for a grace period.
#[utoipa::path(post, path = "/internal/worker/rotate", tag = "workers",
    responses((status = 200, body = RotatedToken)), security(("bearer" = [])))]
pub async fn rotate(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<RotatedToken>> {
    let worker = authenticated_worker(&state, &headers).await?;
    let store = &state.dependencies.store;
    let instance =
        store.instance(worker.instance_id).await?.ok_or_else(|| Problem::unauthorized("no such instance"))?;
    let worker_token = generate_token(WORKER_TOKEN_PREFIX);
    let previous_valid_until = qm_store::now() + chrono::Duration::from_std(ROTATION_GRACE).unwrap_or_default();
    let mut tx = store.begin().await?;
    if !tx.rotate_worker_token(worker.instance_id, &token_hash(&worker_token), previous_valid_until).await? {
        return Err(Problem::unauthorized("the worker token was revoked"));
    }
    tx.insert_action_log(&entry(
        &instance,
        "worker.token_rotated",
        ActionStatus::Succeeded,
        None,
        serde_json::Value::Null,
    ))
    .await?;
    tx.commit().await?;
    Ok(Json(RotatedToken { worker_token, previous_valid_until }))
}

/// Revoke the instance's worker tokens (operators): its agent is refused from now on.
/// The instance's worker agent: what it registered with (engine URL, model, GPUs) and its last
/// heartbeat. Tokens are never shown.
#[utoipa::path(get, path = "/instances/{id}/worker", tag = "workers", params(("id" = InstanceId, Path)),
    responses((status = 200, body = Worker)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<InstanceId>,
) -> ApiResult<Json<Worker>> {
    let store = &state.dependencies.store;
    let visible = store.instance(id).await?.is_some_and(|instance| principal.sees(instance.organization_id));
    let worker = if visible { store.worker(id).await? } else { None };
    Ok(Json(worker.ok_or_else(|| Problem::not_found("worker"))?))
}

#[utoipa::path(post, path = "/instances/{id}/worker/revoke", tag = "workers", params(("id" = InstanceId, Path)),
    responses((status = 204, description = "Revoked")))]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<InstanceId>,
) -> ApiResult<StatusCode> {
    let audit = Audit::start("worker.revoke");
    principal.require(Role::Operator)?;
    let store = &state.dependencies.store;
    let instance = store.instance(id).await?.filter(|instance| principal.sees(instance.organization_id));
    let instance = instance.ok_or_else(|| Problem::not_found("instance"))?;
    let mut tx = store.begin().await?;
    if !tx.revoke_worker(instance.id).await? {
        return Err(Problem::not_found("worker"));
    }
    audit.record(&mut *tx, &principal, Some(instance.id), serde_json::Value::Null).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
