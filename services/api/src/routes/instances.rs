//! `/instances`: list and inspect the fleet, terminate and archive instances, and ask for a
//! reconciliation with the providers.

use axum::extract::State;
use axum::http::StatusCode;
use qm_domain::{InstanceId, InstanceState, Role};
use qm_events::payloads::{FleetReconcile, InstanceTerminate};
use qm_store::{Instance, InstanceFilter, StateChange, Transition};
use serde::{Deserialize, Serialize};

use super::catalog::{Accepted, issue_command};
use super::{Audit, Page, PageParams, instance_page, message};
use crate::AppState;
use crate::auth::Principal;
use crate::problem::{ApiResult, Json, Path, Problem, Query};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceQuery {
    pub state: Option<InstanceState>,
    pub provider: Option<String>,
    /// Zone code.
    pub zone: Option<String>,
    /// `true` lists only archived instances, `false` (the default) only the others.
    pub archived: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceDetail {
    #[serde(flatten)]
    pub instance: Instance,
    /// Every state the instance went through, oldest first.
    pub history: Vec<StateChange>,
    /// When the provider confirmed the instance exists (FinOps; null until then).
    pub billing_started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it was confirmed gone.
    pub billing_stopped_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The hourly price captured when billing started, in the provider's currency...
    pub billed_hourly_price_micros: Option<i64>,
    pub billed_currency: Option<String>,
    /// ...and in the reporting currency.
    pub reporting_hourly_price_micros: Option<i64>,
    pub reporting_currency: Option<String>,
    /// Cost so far in the reporting currency (prorated to the second).
    pub cost_to_date_micros: Option<i64>,
}

async fn visible(state: &AppState, principal: &Principal, id: InstanceId) -> ApiResult<Instance> {
    let instance = state.dependencies.store.instance(id).await?;
    instance.filter(|instance| principal.sees(instance.organization_id)).ok_or_else(|| Problem::not_found("instance"))
}

/// The organization's instances, newest first.
#[utoipa::path(get, path = "/instances", tag = "instances", params(PageParams, InstanceQuery),
    responses((status = 200, body = Page<Instance>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
    Query(query): Query<InstanceQuery>,
) -> ApiResult<axum::response::Response> {
    let (limit, cursor) = page.resolve::<InstanceId>()?;
    let filter = InstanceFilter {
        organization: Some(principal.organization_id),
        deployment: None,
        state: query.state,
        provider: query.provider,
        zone: query.zone,
        archived: Some(query.archived.unwrap_or(false)),
        before: cursor,
        limit,
    };
    Ok(instance_page(&*state.dependencies.store, filter).await?)
}

/// An instance with its state history and progress.
#[utoipa::path(get, path = "/instances/{id}", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 200, body = InstanceDetail)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<InstanceId>,
) -> ApiResult<Json<InstanceDetail>> {
    let instance = visible(&state, &principal, id).await?;
    let history = state.dependencies.store.instance_history(id).await?;
    let interval = state.dependencies.store.cost_interval(id).await?.filter(|interval| interval.started_s.is_some());
    let now_s = qm_store::now().timestamp();
    let cost_to_date = interval.as_ref().and_then(|interval| {
        let started = interval.started_s?;
        let ended = interval.stopped_s.unwrap_or(now_s).min(now_s).max(started);
        Some(qm_costs::project(interval.reporting_hourly_micros?, ended - started))
    });
    Ok(Json(InstanceDetail {
        instance,
        history,
        billing_started_at: interval.as_ref().and_then(|interval| interval.started_s).map(qm_costs::time),
        billing_stopped_at: interval.as_ref().and_then(|interval| interval.stopped_s).map(qm_costs::time),
        billed_hourly_price_micros: interval.as_ref().and_then(|interval| interval.hourly_price_micros),
        billed_currency: interval.as_ref().and_then(|interval| interval.currency.clone()),
        reporting_hourly_price_micros: interval.as_ref().and_then(|interval| interval.reporting_hourly_micros),
        reporting_currency: interval.as_ref().and_then(|interval| interval.reporting_currency.clone()),
        cost_to_date_micros: cost_to_date,
    }))
}

/// How often a termination request re-reads an instance that moved on under it.
const TERMINATE_ATTEMPTS: u32 = 5;

/// Terminate an instance: it moves to `terminating` and the orchestrator releases it at the
/// provider. Asking again while it terminates changes nothing.
#[utoipa::path(delete, path = "/instances/{id}", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 202, description = "Terminating", body = Instance),
              (status = 409, description = "Already terminated or failed", body = Problem)))]
pub async fn terminate(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<InstanceId>,
) -> ApiResult<(StatusCode, Json<Instance>)> {
    let audit = Audit::start("instance.terminate");
    principal.require(Role::Operator)?;
    let reason = "terminated by request";
    // The instance may move on between the read and the conditional update (provisioning
    // reaching `booting`, a heartbeat making it `ready`): read it again and retry, a few times.
    let mut attempts = 0;
    let (instance, updated, mut tx) = loop {
        let instance = visible(&state, &principal, id).await?;
        if instance.state == InstanceState::Terminating {
            return Ok((StatusCode::ACCEPTED, Json(instance)));
        }
        // A move the lifecycle does not have (from a terminal state) is refused by the store: 409.
        let mut tx = state.dependencies.store.begin().await?;
        let transition = Transition {
            instance: id,
            from: instance.state,
            to: InstanceState::Terminating,
            reason: Some(reason.into()),
            progress_percent: None,
        };
        if let Some(updated) = tx.transition_instance(&transition).await? {
            break (instance, updated, tx);
        }
        attempts += 1;
        if attempts == TERMINATE_ATTEMPTS {
            return Err(Problem::conflict("the instance keeps changing state; read it again and retry"));
        }
    };
    let payload = InstanceTerminate { instance_id: id, reason: reason.to_owned(), requested_by: principal.user_id };
    let command = message(&payload, Some(&principal));
    tx.enqueue(&command).await?;
    tx.enqueue(&command.caused_by(&updated.state_changed(Some(instance.state), Some(reason)), crate::NAME)).await?;
    audit
        .record(&mut *tx, &principal, Some(id), serde_json::json!({ "from": instance.state, "command_id": command.id }))
        .await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(updated)))
}

/// Archive a terminated or failed instance: it leaves the default listing.
#[utoipa::path(put, path = "/instances/{id}/archive", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 200, body = Instance),
              (status = 409, description = "Not terminated or failed", body = Problem)))]
pub async fn archive(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<InstanceId>,
) -> ApiResult<Json<Instance>> {
    let audit = Audit::start("instance.archive");
    principal.require(Role::Operator)?;
    let instance = visible(&state, &principal, id).await?;
    let mut tx = state.dependencies.store.begin().await?;
    let Some(archived) = tx.archive_instance(id).await? else {
        return Err(Problem::conflict(format!(
            "only terminated or failed instances can be archived; this one is `{}`",
            instance.state
        )));
    };
    audit.record(&mut *tx, &principal, Some(id), serde_json::json!({ "state": archived.state })).await?;
    tx.commit().await?;
    Ok(Json(archived))
}

/// Ask the orchestrator to reconcile the fleet with the providers now (operators).
#[utoipa::path(post, path = "/fleet/reconcile", tag = "instances",
    request_body(content = Option<super::catalog::SyncRequest>, description = "Optional: without a body, every enabled provider"),
    responses((status = 202, body = Accepted),
              (status = 429, description = "Requested too often by this organization; see `Retry-After`", body = Problem)))]
pub async fn reconcile(
    State(state): State<AppState>,
    principal: Principal,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let request = crate::problem::optional_json(&body)?;
    issue_command(&state, &principal, "fleet.reconcile", request, |provider, requested_by| FleetReconcile {
        provider,
        requested_by,
    })
    .await
}
