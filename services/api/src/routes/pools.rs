//! `/pools`: a model served at a size the orchestrator keeps (docs/pools.md). A pool is a
//! deployment that is `managed`: its placements are resolved like a deployment's (an exact
//! place with failovers, or the cheapest offers meeting constraints), and the orchestrator's pool
//! controller creates, heals, scales and drains its replicas. This API only records what is
//! wanted; it never creates an instance itself.

use axum::extract::State;
use axum::http::StatusCode;
use qm_domain::engine::EngineSettings;
use qm_domain::scaling::ScalingPolicy;
use qm_domain::{DeploymentId, Role};
use qm_store::{Deployment, Instance, NewPool, Pool, PoolChange};
use serde::{Deserialize, Serialize};

use super::deployments::{Constraints, DeploymentRequest, PlacementRequest, enforce_budget, model_name, placements};
use super::{Audit, Page, PageParams, bounded_text};
use crate::AppState;
use crate::auth::Principal;
use crate::problem::{ApiResult, Json, Path, Problem, Query};

/// The most replicas a pool may have.
pub const MAX_REPLICAS: i32 = 100;

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    /// 1 to 100 characters; the pool's id when left out.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// As for deployments.
    #[schema(min_length = 1, max_length = 200, pattern = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")]
    pub model: String,
    #[schema(minimum = 0, maximum = 100)]
    pub min_replicas: i32,
    #[schema(minimum = 1, maximum = 100)]
    pub max_replicas: i32,
    /// The size to start at (`min_replicas`, at least 1, when left out).
    #[schema(minimum = 0, maximum = 100)]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub policy: ScalingPolicy,
    /// The arguments its engines start with (vLLM's, after the model).
    #[serde(default)]
    pub engine: EngineSettings,
    #[schema(schema_with = crate::openapi::optional_provider_name)]
    pub provider: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    #[serde(default)]
    pub failover: Vec<PlacementRequest>,
    pub constraints: Option<Constraints>,
}

#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolUpdate {
    #[schema(minimum = 0, maximum = 100)]
    pub min_replicas: Option<i32>,
    #[schema(minimum = 1, maximum = 100)]
    pub max_replicas: Option<i32>,
    pub policy: Option<ScalingPolicy>,
    /// A new model: replicas are replaced one by one (a rolling update).
    #[schema(min_length = 1, max_length = 200, pattern = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")]
    pub model: Option<String>,
    /// New engine settings: replicas are replaced one by one (a rolling update).
    pub engine: Option<EngineSettings>,
    /// New placements, as at creation (an exact place with `zone` and `instance_type`, a
    /// provider's cheapest offer, or `constraints`): replicas are replaced one by one onto them
    /// (a rolling update).
    #[schema(schema_with = crate::openapi::optional_provider_name)]
    pub provider: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub failover: Option<Vec<PlacementRequest>>,
    pub constraints: Option<Constraints>,
}

impl PoolUpdate {
    /// Whether it asks for new placements.
    fn moves(&self) -> bool {
        self.provider.is_some() || self.zone.is_some() || self.instance_type.is_some() || self.constraints.is_some()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolView {
    #[serde(flatten)]
    pub pool: Pool,
    /// Its replicas that are not finished, and the finished ones of the last hour.
    pub instances: Vec<Instance>,
}

fn check_bounds(min: i32, max: i32, policy: &ScalingPolicy) -> ApiResult<()> {
    if !(0..=MAX_REPLICAS).contains(&min) {
        return Err(Problem::invalid("min_replicas", format!("must be between 0 and {MAX_REPLICAS}")));
    }
    if !(1..=MAX_REPLICAS).contains(&max) {
        return Err(Problem::invalid("max_replicas", format!("must be between 1 and {MAX_REPLICAS}")));
    }
    if min > max {
        // Each bound may be valid alone: the pair conflicts (409), as with the pool's other bound.
        return Err(Problem::conflict("max_replicas must not be below min_replicas"));
    }
    policy.validate().map_err(|error| Problem::invalid(&format!("policy.{}", error.field), error.message))
}

fn check_engine(engine: &EngineSettings) -> ApiResult<()> {
    engine.validate().map_err(|message| Problem::invalid("engine.args", message))
}

async fn visible(state: &AppState, principal: &Principal, id: DeploymentId) -> ApiResult<Pool> {
    let pool = state.dependencies.store.pool(id).await?;
    pool.filter(|pool| pool.deleted_at.is_none() && principal.sees(pool.organization_id))
        .ok_or_else(|| Problem::not_found("pool"))
}

/// Create a pool: validated against the catalog like a deployment; the orchestrator's
/// controller then brings it to its size.
#[utoipa::path(post, path = "/pools", tag = "pools", request_body = PoolRequest,
    responses((status = 201, description = "Created; the controller brings it to its size", body = Pool),
               (status = 402, description = "A hard-capped budget would be exceeded", body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<PoolRequest>,
) -> ApiResult<(StatusCode, Json<Pool>)> {
    let audit = Audit::start("pool.create");
    principal.require(Role::Operator)?;
    let model = model_name(&request.model)?;
    check_bounds(request.min_replicas, request.max_replicas, &request.policy)?;
    check_engine(&request.engine)?;
    let desired = request.replicas.unwrap_or(request.min_replicas.max(1));
    if !(request.min_replicas..=request.max_replicas).contains(&desired) {
        return Err(Problem::invalid("replicas", "must be between min_replicas and max_replicas"));
    }
    let name = request.name.as_deref().map(|name| bounded_text("name", name, 100)).transpose()?;
    let PoolRequest { provider, zone, instance_type, failover, constraints, .. } = request;
    let placement = DeploymentRequest {
        model: model.clone(),
        count: i64::from(desired.max(1)),
        provider,
        zone,
        instance_type,
        failover,
        constraints,
    };
    let placements = placements(&state, &placement).await?;
    let _turn = state.organization_locks.lock(&principal.organization_id.to_string()).await;
    let mut tx = state.dependencies.store.begin().await?;
    tx.lock_organization(principal.organization_id).await?;
    enforce_budget(&state, &principal, &placements, desired).await?;
    let id = DeploymentId::new();
    let deployment = Deployment {
        id,
        organization_id: principal.organization_id,
        created_by: principal.user_id,
        model: model.clone(),
        count: desired,
        request: serde_json::to_value(&placement).unwrap_or_default(),
        placements,
        created_at: qm_store::now(),
    };
    let new = NewPool {
        deployment,
        name: name.unwrap_or_else(|| id.to_string()),
        min_replicas: request.min_replicas,
        max_replicas: request.max_replicas,
        desired,
        policy: request.policy,
        engine: request.engine,
    };
    tx.insert_pool(&new).await?;
    audit
        .record(
            &mut *tx,
            &principal,
            None,
            serde_json::json!({ "pool_id": id, "model": model, "min": new.min_replicas, "max": new.max_replicas, "desired": desired }),
        )
        .await?;
    tx.commit().await?;
    let pool = state.dependencies.store.pool(id).await?.ok_or_else(|| Problem::not_found("pool"))?;
    Ok((StatusCode::CREATED, Json(pool)))
}

/// The organization's pools, newest first.
#[utoipa::path(get, path = "/pools", tag = "pools", params(PageParams),
    responses((status = 200, description = "The pools", body = Page<Pool>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Pool>>> {
    let (limit, cursor) = page.resolve::<DeploymentId>()?;
    let pools = state.dependencies.store.pools(Some(principal.organization_id), cursor, limit + 1).await?;
    Ok(Json(Page::from_overfetch(pools, limit, |pool: &Pool| pool.id.to_string())))
}

/// A pool, its status (counts, conditions, recent decisions) and its replicas.
#[utoipa::path(get, path = "/pools/{id}", tag = "pools", params(("id" = DeploymentId, Path)),
    responses((status = 200, description = "The pool and its replicas", body = PoolView)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<DeploymentId>,
) -> ApiResult<Json<PoolView>> {
    let pool = visible(&state, &principal, id).await?;
    let hour_ago = qm_store::now() - chrono::Duration::hours(1);
    let instances = state.dependencies.store.deployment_instances(id, hour_ago, 500).await?;
    Ok(Json(PoolView { pool, instances }))
}

/// Change a pool's bounds, scaling policy, model, engine settings or placements; the controller
/// applies them at its next tick. A new model, new engine settings or new placements start a
/// rolling update: one replica of the new revision is added, and once it is ready one of the old
/// is drained, until none is left. A new placement is `provider` with `zone` and
/// `instance_type` (and an optional `failover`), a provider alone, or `constraints`, naming an
/// active offer of the catalog (422 otherwise, as for deployments).
#[utoipa::path(patch, path = "/pools/{id}", tag = "pools", params(("id" = DeploymentId, Path)), request_body = PoolUpdate,
    responses((status = 200, description = "The pool as changed", body = Pool)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<DeploymentId>,
    Json(update): Json<PoolUpdate>,
) -> ApiResult<Json<Pool>> {
    let audit = Audit::start("pool.update");
    principal.require(Role::Operator)?;
    let pool = visible(&state, &principal, id).await?;
    let min = update.min_replicas.unwrap_or(pool.min_replicas);
    let max = update.max_replicas.unwrap_or(pool.max_replicas);
    let policy = update.policy.clone().unwrap_or(pool.policy);
    check_bounds(min, max, &policy)?;
    let model = update.model.as_deref().map(model_name).transpose()?.unwrap_or(pool.model.clone());
    let engine = update.engine.clone().unwrap_or(pool.engine.clone());
    check_engine(&engine)?;
    let placements = if update.moves() {
        let placement = DeploymentRequest {
            model: model.clone(),
            count: i64::from(pool.desired.max(1)),
            provider: update.provider.clone(),
            zone: update.zone.clone(),
            instance_type: update.instance_type.clone(),
            failover: update.failover.clone().unwrap_or_default(),
            constraints: update.constraints.clone(),
        };
        Some(placements(&state, &placement).await?)
    } else if update.failover.is_some() {
        return Err(Problem::invalid("failover", "goes with provider, zone and instance_type"));
    } else {
        None
    };
    let moved = placements.as_ref().is_some_and(|placements| *placements != pool.placements);
    let new_revision = model != pool.model || engine != pool.engine || moved;
    let change = PoolChange {
        min_replicas: min,
        max_replicas: max,
        policy: &policy,
        model: &model,
        engine: &engine,
        placements: placements.as_deref().filter(|_| moved),
        new_revision,
    };
    let mut tx = state.dependencies.store.begin().await?;
    if !tx.update_pool(id, &change).await? {
        return Err(Problem::not_found("pool"));
    }
    audit.record(&mut *tx, &principal, None, serde_json::json!({ "pool_id": id, "update": update })).await?;
    tx.commit().await?;
    let pool = state.dependencies.store.pool(id).await?.ok_or_else(|| Problem::not_found("pool"))?;
    Ok(Json(pool))
}

/// Delete a pool: its replicas are drained and terminated by the controller.
#[utoipa::path(delete, path = "/pools/{id}", tag = "pools", params(("id" = DeploymentId, Path)),
    responses((status = 202, description = "Deleted; replicas drain and terminate")))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<DeploymentId>,
) -> ApiResult<StatusCode> {
    let audit = Audit::start("pool.delete");
    principal.require(Role::Operator)?;
    visible(&state, &principal, id).await?;
    let mut tx = state.dependencies.store.begin().await?;
    if !tx.delete_pool(id).await? {
        return Err(Problem::not_found("pool"));
    }
    audit.record(&mut *tx, &principal, None, serde_json::json!({ "pool_id": id })).await?;
    tx.commit().await?;
    Ok(StatusCode::ACCEPTED)
}
