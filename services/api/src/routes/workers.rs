//! The worker protocol (DESIGN section 6): an agent registers with its instance's one-time
//! bootstrap token and receives a worker token (`qmw_…`, stored hashed) with which it heartbeats
//! and may rotate it; operators revoke it. A ready heartbeat moves a booting instance to `ready`
//! (progress 100), a not-ready one moves a ready instance to `unhealthy`, and back.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use qm_domain::{InstanceId, InstanceState, Role};
use qm_events::Envelope;
use qm_events::payloads::{UsageTokens, WorkerHeartbeat, WorkerRegistered};
use qm_store::{
    ActionStatus, Heartbeat, Instance, InstanceAnnotation, NewActionLog, RecordedTransition, Registration, StoreTx,
    Worker, record_transition,
};
use serde::Serialize;

use super::Audit;
use crate::AppState;
use crate::auth::{Attempt, ClientAddress, Principal, generate_token, presented_token, token_hash};
use crate::problem::{ApiResult, FieldError, Json, Path, Problem};

pub const WORKER_TOKEN_PREFIX: &str = "qmw_";
/// How often agents are asked to heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a rotated-out token keeps working, so that an agent never races its own rotation.
pub const ROTATION_GRACE: Duration = Duration::from_secs(5 * 60);
/// Progress once the agent has registered (DESIGN section 5).
pub const REGISTERED_PROGRESS: i32 = 80;
/// How long a bootstrap token may wait for its registration: provisioning (30 min at most)
/// plus booting (10 min), with margin.
pub const BOOTSTRAP_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);
/// The most GPUs one registration or heartbeat may list.
pub use qm_events::worker::MAX_GPUS;
pub use qm_events::worker::{
    GpuInfo, GpuMetrics, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse, TokenUsage,
    WorkerStatus,
};

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
    let refused = || Problem::unauthorized("the bootstrap token is wrong, already used, expired or revoked");
    let registration_fields = validate_registration(&request)?;
    // Failed registrations are limited per client address and per instance; the attempt is
    // reserved before the token is checked.
    let reservation = state
        .registration_limiter
        .reserve(&Attempt::new(client, &request.instance_id.to_string()))
        .map_err(|seconds| {
            Problem::too_many_requests(format!("too many failed registrations; try again in {seconds} s"), seconds)
        })?;
    let store = &state.dependencies.store;
    let Some(instance) = store.instance(request.instance_id).await? else { return Err(refused()) };
    let worker_token = generate_token(WORKER_TOKEN_PREFIX);
    let (engine_port, model) = registration_fields;
    let registration = Registration {
        token_hash: token_hash(&worker_token),
        agent_version: request.agent_version.clone(),
        engine_url: request.engine_url.clone(),
        engine_port,
        model,
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
    state.registration_limiter.succeeded(reservation);
    if matches!(instance.state, InstanceState::Booting) {
        let annotation =
            InstanceAnnotation { progress_percent: Some(REGISTERED_PROGRESS), ..InstanceAnnotation::default() };
        tx.annotate_instance(instance.id, &annotation).await?;
    }
    let registered = WorkerRegistered {
        instance_id: instance.id,
        agent_version: registration.agent_version.clone(),
        engine_url: registration.engine_url.clone(),
        model: registration.model.clone(),
        gpus: u32::try_from(request.gpus.len()).unwrap_or(u32::MAX),
    };
    let metadata = serde_json::json!({ "agent_version": registered.agent_version, "engine_url": registered.engine_url, "model": registered.model, "gpus": registered.gpus });
    tx.insert_action_log(&entry(&instance, "worker.register", ActionStatus::Succeeded, None, metadata)).await?;
    tx.enqueue(&Envelope::of(&registered, crate::NAME, Some(instance.organization_id))).await?;
    tx.commit().await?;
    Ok(Json(RegisterResponse { worker_token, heartbeat_interval_seconds: HEARTBEAT_INTERVAL.as_secs() }))
}

/// What a registration carries, checked: the engine's port (from `engine_url`) and the model.
fn validate_registration(request: &RegisterRequest) -> Result<(u16, String), Problem> {
    let mut errors = Vec::new();
    let mut field = |name: &str, message: String| errors.push(FieldError { field: name.into(), message });
    if request.bootstrap_token.chars().count() > 100 {
        field("bootstrap_token", "must be at most 100 characters".into());
    }
    let model = qm_domain::ModelId::parse(&request.model);
    if let Err(error) = &model {
        field("model", error.to_string());
    }
    let printable = |text: &str| text.chars().all(|character| character.is_ascii_graphic());
    if request.agent_version.is_empty() || request.agent_version.len() > 100 || !printable(&request.agent_version) {
        field("agent_version", "must be 1 to 100 printable ASCII characters".into());
    }
    let port = url::Url::parse(&request.engine_url)
        .ok()
        .filter(|url| {
            matches!(url.scheme(), "http" | "https")
                && request.engine_url.len() <= 500
                && printable(&request.engine_url)
        })
        .and_then(|url| url.port_or_known_default());
    if port.is_none() {
        field("engine_url", "must be an http(s) URL of at most 500 characters".into());
    }
    if request.gpus.len() > MAX_GPUS {
        field("gpus", format!("at most {MAX_GPUS} GPUs"));
    }
    if request.gpus.iter().any(|gpu| gpu.name.chars().count() > 100 || gpu.name.chars().any(char::is_control)) {
        field("gpus", "a GPU name is at most 100 characters without control characters".into());
    }
    match (port, model) {
        (Some(port), Ok(model)) if errors.is_empty() => Ok((port, model.as_str().to_owned())),
        _ => Err(Problem::invalid_fields(errors)),
    }
}

/// The worker behind a request's `qmw_` token, and that token's hash.
async fn authenticated_worker(state: &AppState, headers: &HeaderMap) -> ApiResult<(qm_store::Worker, String)> {
    let token = presented_token(headers)
        .filter(|token| token.starts_with(WORKER_TOKEN_PREFIX))
        .ok_or_else(|| Problem::unauthorized("send the worker token as `Authorization: Bearer qmw_…`"))?;
    let hash = token_hash(&token);
    let worker = state
        .dependencies
        .store
        .worker_by_token(&hash, qm_store::now())
        .await?
        .ok_or_else(|| Problem::unauthorized("the worker token is unknown, expired or revoked"))?;
    Ok((worker, hash))
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
    let (worker, _) = authenticated_worker(&state, &headers).await?;
    state.heartbeats.take(&worker.instance_id.to_string()).map_err(|seconds| {
        Problem::too_many_requests(format!("heartbeats come too fast; the next in {seconds} s"), seconds)
    })?;
    validate_heartbeat(&request)?;
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
        kv_cache_usage: request.kv_cache_usage,
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
        (InstanceState::Ready | InstanceState::Unhealthy, WorkerStatus::Draining) => {
            transition(&mut *tx, &instance, InstanceState::Draining, "worker reported draining", None).await?
        }
        _ => None,
    };
    let reported = WorkerHeartbeat {
        instance_id: instance.id,
        status: request.status,
        queue_depth: request.queue_depth,
        in_flight: request.in_flight,
        kv_cache_usage: request.kv_cache_usage,
        gpus: request.gpus.clone(),
    };
    tx.enqueue(&Envelope::of(&reported, crate::NAME, Some(instance.organization_id))).await?;
    if let Some(usage) = request.usage.filter(|usage| usage.prompt_tokens > 0 || usage.completion_tokens > 0) {
        let tokens = UsageTokens {
            instance_id: Some(instance.id),
            api_key_id: None,
            model: instance.model.clone(),
            prompt_tokens: i64::try_from(usage.prompt_tokens).unwrap_or(i64::MAX),
            completion_tokens: i64::try_from(usage.completion_tokens).unwrap_or(i64::MAX),
            provider: Some(instance.provider.clone()),
            region: None,
            zone: Some(instance.zone.clone()),
            instance_type: Some(instance.instance_type.clone()),
        };
        tx.enqueue(&Envelope::of(&tokens, crate::NAME, Some(instance.organization_id))).await?;
    }
    tx.commit().await?;
    let instance_state = moved.map_or(instance.state, |moved| moved.state);
    Ok(Json(HeartbeatResponse { instance_state, heartbeat_interval_seconds: HEARTBEAT_INTERVAL.as_secs() }))
}

/// Bounds on what a heartbeat reports.
fn validate_heartbeat(request: &HeartbeatRequest) -> Result<(), Problem> {
    if request.gpus.len() > MAX_GPUS {
        return Err(Problem::invalid("gpus", format!("at most {MAX_GPUS} GPUs")));
    }
    let finite = |value: f64| value.is_finite() && (0.0..=1e6).contains(&value);
    let plausible = request.gpus.iter().all(|gpu| {
        finite(gpu.utilization_percent)
            && gpu.utilization_percent <= 100.0
            && gpu.temperature_c.is_none_or(finite)
            && gpu.power_w.is_none_or(finite)
    });
    if !plausible {
        return Err(Problem::invalid(
            "gpus",
            "utilisation is 0 to 100 %, temperature and power finite and not negative",
        ));
    }
    if request.kv_cache_usage.is_some_and(|usage| !(0.0..=1.0).contains(&usage)) {
        return Err(Problem::invalid("kv_cache_usage", "a share from 0 to 1"));
    }
    let limit = u64::try_from(qm_events::MAX_TOKENS_PER_REPORT).unwrap_or(u64::MAX);
    if let Some(usage) = &request.usage
        && (usage.prompt_tokens > limit || usage.completion_tokens > limit)
    {
        return Err(Problem::invalid("usage", format!("at most {limit} tokens of each kind per heartbeat")));
    }
    Ok(())
}

/// Replace the worker token; the old one keeps working for a grace period.
#[utoipa::path(post, path = "/internal/worker/rotate", tag = "workers",
    responses((status = 200, body = RotatedToken)), security(("bearer" = [])))]
pub async fn rotate(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<RotatedToken>> {
    let (worker, current_hash) = authenticated_worker(&state, &headers).await?;
    let store = &state.dependencies.store;
    let instance =
        store.instance(worker.instance_id).await?.ok_or_else(|| Problem::unauthorized("no such instance"))?;
    let worker_token = generate_token(WORKER_TOKEN_PREFIX);
    let previous_valid_until = qm_store::now() + chrono::Duration::from_std(ROTATION_GRACE).unwrap_or_default();
    let mut tx = store.begin().await?;
    if !tx
        .rotate_worker_token(worker.instance_id, &current_hash, &token_hash(&worker_token), previous_valid_until)
        .await?
    {
        return Err(Problem::unauthorized("only the current worker token may rotate (not one in its grace period)"));
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
