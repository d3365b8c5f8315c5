//! The catalog: providers, regions, zones, instance types and which zones offer which types.
//! Everyone reads it; the platform admin writes it (`PUT` creates or replaces); operators ask
//! the orchestrator to sync it from the providers.

use axum::extract::State;
use axum::http::StatusCode;
use qm_domain::{Currency, InstanceTypeId, RegionId, Role, ZoneId};
use qm_events::payloads::CatalogSync;
use qm_store::{InstanceType, InstanceTypeInput, Provider, Region, RegionInput, Zone, ZoneInput};
use serde::{Deserialize, Serialize};

use super::{Audit, Page, bounded_text, message};
use crate::AppState;
use crate::auth::Principal;
use crate::problem::{ApiResult, FieldError, Json, Path, Problem, Query};

/// The provider of `/providers/{name}`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProviderPath {
    #[param(schema_with = crate::openapi::provider_name)]
    pub name: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderRequest {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub display_name: String,
    pub active: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionRequest {
    #[schema(schema_with = crate::openapi::provider_name)]
    pub provider: String,
    #[schema(pattern = r"^\s*[A-Za-z0-9._-]{1,64}\s*$")]
    pub code: String,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    pub active: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoneRequest {
    pub region_id: RegionId,
    #[schema(pattern = r"^\s*[A-Za-z0-9._-]{1,64}\s*$")]
    pub code: String,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    pub active: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceTypeRequest {
    #[schema(schema_with = crate::openapi::provider_name)]
    pub provider: String,
    #[schema(pattern = r"^\s*[A-Za-z0-9._-]{1,64}\s*$")]
    pub code: String,
    /// Required when `gpu_count` > 0.
    #[schema(min_length = 1, max_length = 100)]
    pub gpu_model: Option<String>,
    #[schema(minimum = 0, maximum = 64)]
    pub gpu_count: i32,
    /// Memory of one GPU, in GB.
    #[schema(minimum = 0, maximum = 4096)]
    pub gpu_memory_gb: i32,
    #[schema(minimum = 1, maximum = 4096)]
    pub vcpus: i32,
    #[schema(minimum = 1, maximum = 65536)]
    pub memory_gb: i32,
    /// Hourly list price in micro-units (1.25 EUR = 1250000).
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub hourly_price_micros: i64,
    /// ISO 4217, e.g. `EUR`.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    pub active: bool,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoneIds {
    pub zone_ids: Vec<ZoneId>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CatalogFilter {
    pub provider: Option<String>,
    pub region_id: Option<RegionId>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// One provider; all enabled ones when left out.
    #[schema(schema_with = crate::openapi::optional_provider_name)]
    pub provider: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The id of the command written to the bus.
    pub command_id: qm_domain::EventId,
}

fn code(field: &str, value: &str) -> Result<String, Problem> {
    let value = bounded_text(field, value, 64)?;
    if value.chars().all(|character| character.is_ascii_alphanumeric() || "._-".contains(character)) {
        Ok(value)
    } else {
        Err(Problem::invalid(field, "use letters, digits, `.`, `_` and `-`"))
    }
}

fn within(errors: &mut Vec<FieldError>, field: &str, value: i64, range: std::ops::RangeInclusive<i64>) {
    if !range.contains(&value) {
        errors.push(FieldError {
            field: field.to_owned(),
            message: format!("must be between {} and {}", range.start(), range.end()),
        });
    }
}

async fn existing_provider(state: &AppState, name: &str) -> ApiResult<Provider> {
    state
        .dependencies
        .store
        .provider(name)
        .await?
        .ok_or_else(|| Problem::invalid("provider", format!("unknown provider `{name}`")))
}

/// Every provider.
#[utoipa::path(get, path = "/providers", tag = "catalog", responses((status = 200, body = Page<Provider>)))]
pub async fn providers(State(state): State<AppState>, _principal: Principal) -> ApiResult<Json<Page<Provider>>> {
    Ok(Json(Page::all(state.dependencies.store.providers().await?)))
}

/// A provider.
#[utoipa::path(get, path = "/providers/{name}", tag = "catalog", params(ProviderPath),
    responses((status = 200, body = Provider)))]
pub async fn provider(
    State(state): State<AppState>,
    _principal: Principal,
    Path(ProviderPath { name }): Path<ProviderPath>,
) -> ApiResult<Json<Provider>> {
    Ok(Json(state.dependencies.store.provider(&name).await?.ok_or_else(|| Problem::not_found("provider"))?))
}

/// Create or update a provider (platform admin); `name` is one of `local`, `sim`, `aws`, `scaleway`.
#[utoipa::path(put, path = "/providers/{name}", tag = "catalog", params(ProviderPath),
    request_body = ProviderRequest, responses((status = 200, body = Provider)))]
pub async fn put_provider(
    State(state): State<AppState>,
    principal: Principal,
    Path(ProviderPath { name }): Path<ProviderPath>,
    Json(request): Json<ProviderRequest>,
) -> ApiResult<Json<Provider>> {
    let audit = Audit::start("catalog.provider.put");
    principal.require_platform_admin()?;
    if !qm_config::KNOWN_PROVIDERS.contains(&name.as_str()) {
        return Err(Problem::invalid("name", format!("known providers: {}", qm_config::KNOWN_PROVIDERS.join(", "))));
    }
    let display_name = bounded_text("display_name", &request.display_name, 100)?;
    let mut tx = state.dependencies.store.begin().await?;
    let provider = tx.upsert_provider(&name, &display_name, request.active).await?;
    audit.record(&mut *tx, &principal, None, serde_json::json!({ "provider": name, "active": request.active })).await?;
    tx.commit().await?;
    Ok(Json(provider))
}

/// Regions, optionally of one provider.
#[utoipa::path(get, path = "/regions", tag = "catalog", params(CatalogFilter), responses((status = 200, body = Page<Region>)))]
pub async fn regions(
    State(state): State<AppState>,
    _principal: Principal,
    Query(filter): Query<CatalogFilter>,
) -> ApiResult<Json<Page<Region>>> {
    Ok(Json(Page::all(state.dependencies.store.regions(filter.provider.as_deref()).await?)))
}

/// A region.
#[utoipa::path(get, path = "/regions/{id}", tag = "catalog", params(("id" = RegionId, Path)),
    responses((status = 200, body = Region)))]
pub async fn region(
    State(state): State<AppState>,
    _principal: Principal,
    Path(id): Path<RegionId>,
) -> ApiResult<Json<Region>> {
    Ok(Json(state.dependencies.store.region(id).await?.ok_or_else(|| Problem::not_found("region"))?))
}

/// Create or replace a region (platform admin).
#[utoipa::path(put, path = "/regions/{id}", tag = "catalog", params(("id" = RegionId, Path)),
    request_body = RegionRequest, responses((status = 200, body = Region)))]
pub async fn put_region(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<RegionId>,
    Json(request): Json<RegionRequest>,
) -> ApiResult<Json<Region>> {
    let audit = Audit::start("catalog.region.put");
    principal.require_platform_admin()?;
    let provider = existing_provider(&state, &request.provider).await?;
    let input = RegionInput {
        id,
        provider: provider.name,
        code: code("code", &request.code)?,
        name: bounded_text("name", &request.name, 100)?,
        active: request.active,
    };
    let mut tx = state.dependencies.store.begin().await?;
    let region = tx.upsert_region(&input).await?;
    audit.record(&mut *tx, &principal, None, serde_json::json!({ "region_id": id, "code": region.code })).await?;
    tx.commit().await?;
    Ok(Json(region))
}

/// Zones, optionally of one provider or region.
#[utoipa::path(get, path = "/zones", tag = "catalog", params(CatalogFilter), responses((status = 200, body = Page<Zone>)))]
pub async fn zones(
    State(state): State<AppState>,
    _principal: Principal,
    Query(filter): Query<CatalogFilter>,
) -> ApiResult<Json<Page<Zone>>> {
    Ok(Json(Page::all(state.dependencies.store.zones(filter.provider.as_deref(), filter.region_id).await?)))
}

/// A zone.
#[utoipa::path(get, path = "/zones/{id}", tag = "catalog", params(("id" = ZoneId, Path)), responses((status = 200, body = Zone)))]
pub async fn zone(
    State(state): State<AppState>,
    _principal: Principal,
    Path(id): Path<ZoneId>,
) -> ApiResult<Json<Zone>> {
    Ok(Json(state.dependencies.store.zone(id).await?.ok_or_else(|| Problem::not_found("zone"))?))
}

/// Create or replace a zone (platform admin).
#[utoipa::path(put, path = "/zones/{id}", tag = "catalog", params(("id" = ZoneId, Path)),
    request_body = ZoneRequest, responses((status = 200, body = Zone)))]
pub async fn put_zone(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<ZoneId>,
    Json(request): Json<ZoneRequest>,
) -> ApiResult<Json<Zone>> {
    let audit = Audit::start("catalog.zone.put");
    principal.require_platform_admin()?;
    if state.dependencies.store.region(request.region_id).await?.is_none() {
        return Err(Problem::invalid("region_id", "no such region"));
    }
    let input = ZoneInput {
        id,
        region_id: request.region_id,
        code: code("code", &request.code)?,
        name: bounded_text("name", &request.name, 100)?,
        active: request.active,
    };
    let mut tx = state.dependencies.store.begin().await?;
    let zone = tx.upsert_zone(&input).await?;
    audit.record(&mut *tx, &principal, None, serde_json::json!({ "zone_id": id, "code": zone.code })).await?;
    tx.commit().await?;
    Ok(Json(zone))
}

/// Instance types, optionally of one provider.
#[utoipa::path(get, path = "/instance_types", tag = "catalog", params(CatalogFilter),
    responses((status = 200, body = Page<InstanceType>)))]
pub async fn instance_types(
    State(state): State<AppState>,
    _principal: Principal,
    Query(filter): Query<CatalogFilter>,
) -> ApiResult<Json<Page<InstanceType>>> {
    Ok(Json(Page::all(state.dependencies.store.instance_types(filter.provider.as_deref()).await?)))
}

/// An instance type.
#[utoipa::path(get, path = "/instance_types/{id}", tag = "catalog", params(("id" = InstanceTypeId, Path)),
    responses((status = 200, body = InstanceType)))]
pub async fn instance_type(
    State(state): State<AppState>,
    _principal: Principal,
    Path(id): Path<InstanceTypeId>,
) -> ApiResult<Json<InstanceType>> {
    Ok(Json(state.dependencies.store.instance_type(id).await?.ok_or_else(|| Problem::not_found("instance type"))?))
}

fn instance_type_input(
    id: InstanceTypeId,
    request: &InstanceTypeRequest,
    provider: String,
) -> ApiResult<InstanceTypeInput> {
    let mut errors = Vec::new();
    within(&mut errors, "gpu_count", request.gpu_count.into(), 0..=64);
    within(&mut errors, "gpu_memory_gb", request.gpu_memory_gb.into(), 0..=4096);
    within(&mut errors, "vcpus", request.vcpus.into(), 1..=4096);
    within(&mut errors, "memory_gb", request.memory_gb.into(), 1..=65536);
    within(&mut errors, "hourly_price_micros", request.hourly_price_micros, 0..=1_000_000_000_000);
    if request.gpu_model.as_deref().is_some_and(|model| model.is_empty() || model.chars().count() > 100) {
        errors.push(FieldError { field: "gpu_model".into(), message: "must be 1 to 100 characters".into() });
    }
    let gpu_model = request.gpu_model.as_deref().map(str::trim).filter(|model| !model.is_empty()).map(str::to_owned);
    if request.gpu_count > 0 && gpu_model.is_none() {
        errors.push(FieldError { field: "gpu_model".into(), message: "is required when gpu_count > 0".into() });
    }
    if Currency::parse(&request.currency).is_err() {
        errors.push(FieldError { field: "currency".into(), message: "must be an ISO 4217 code such as EUR".into() });
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    Ok(InstanceTypeInput {
        id,
        provider,
        code: code("code", &request.code)?,
        gpu_model,
        gpu_count: request.gpu_count,
        gpu_memory_gb: request.gpu_memory_gb,
        vcpus: request.vcpus,
        memory_gb: request.memory_gb,
        hourly_price_micros: request.hourly_price_micros,
        currency: request.currency.clone(),
        active: request.active,
    })
}

/// Create or replace an instance type (platform admin).
#[utoipa::path(put, path = "/instance_types/{id}", tag = "catalog", params(("id" = InstanceTypeId, Path)),
    request_body = InstanceTypeRequest, responses((status = 200, body = InstanceType)))]
pub async fn put_instance_type(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<InstanceTypeId>,
    Json(request): Json<InstanceTypeRequest>,
) -> ApiResult<Json<InstanceType>> {
    let audit = Audit::start("catalog.instance_type.put");
    principal.require_platform_admin()?;
    let provider = existing_provider(&state, &request.provider).await?;
    let input = instance_type_input(id, &request, provider.name)?;
    let mut tx = state.dependencies.store.begin().await?;
    let instance_type = tx.upsert_instance_type(&input).await?;
    audit
        .record(&mut *tx, &principal, None, serde_json::json!({ "instance_type_id": id, "code": instance_type.code }))
        .await?;
    tx.commit().await?;
    Ok(Json(instance_type))
}

/// The zones that offer an instance type.
#[utoipa::path(get, path = "/instance_types/{id}/zones", tag = "catalog", params(("id" = InstanceTypeId, Path)),
    responses((status = 200, body = Page<Zone>)))]
pub async fn instance_type_zones(
    State(state): State<AppState>,
    _principal: Principal,
    Path(id): Path<InstanceTypeId>,
) -> ApiResult<Json<Page<Zone>>> {
    let store = &state.dependencies.store;
    store.instance_type(id).await?.ok_or_else(|| Problem::not_found("instance type"))?;
    Ok(Json(Page::all(store.instance_type_zones(id).await?)))
}

/// Replace the zones that offer an instance type (platform admin); each must belong to the
/// type's provider.
#[utoipa::path(put, path = "/instance_types/{id}/zones", tag = "catalog", params(("id" = InstanceTypeId, Path)),
    request_body = ZoneIds, responses((status = 200, body = Page<Zone>)))]
pub async fn put_instance_type_zones(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<InstanceTypeId>,
    Json(request): Json<ZoneIds>,
) -> ApiResult<Json<Page<Zone>>> {
    let audit = Audit::start("catalog.instance_type.zones.put");
    principal.require_platform_admin()?;
    let store = &state.dependencies.store;
    let instance_type = store.instance_type(id).await?.ok_or_else(|| Problem::not_found("instance type"))?;
    let mut errors = Vec::new();
    for (index, zone_id) in request.zone_ids.iter().enumerate() {
        match store.zone(*zone_id).await? {
            Some(zone) if zone.provider == instance_type.provider => {}
            Some(zone) => errors.push(FieldError {
                field: format!("zone_ids[{index}]"),
                message: format!(
                    "zone `{}` belongs to `{}`, not `{}`",
                    zone.code, zone.provider, instance_type.provider
                ),
            }),
            None => errors.push(FieldError { field: format!("zone_ids[{index}]"), message: "no such zone".into() }),
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let mut tx = store.begin().await?;
    tx.replace_instance_type_zones(id, &request.zone_ids).await?;
    audit
        .record(&mut *tx, &principal, None, serde_json::json!({ "instance_type_id": id, "zone_ids": request.zone_ids }))
        .await?;
    tx.commit().await?;
    Ok(Json(Page::all(store.instance_type_zones(id).await?)))
}

/// The instance types a zone offers.
#[utoipa::path(get, path = "/zones/{id}/instance_types", tag = "catalog", params(("id" = ZoneId, Path)),
    responses((status = 200, body = Page<InstanceType>)))]
pub async fn zone_instance_types(
    State(state): State<AppState>,
    _principal: Principal,
    Path(id): Path<ZoneId>,
) -> ApiResult<Json<Page<InstanceType>>> {
    let store = &state.dependencies.store;
    store.zone(id).await?.ok_or_else(|| Problem::not_found("zone"))?;
    Ok(Json(Page::all(store.zone_instance_types(id).await?)))
}

/// Ask the orchestrator to refresh the catalog and prices from the providers (operators).
#[utoipa::path(post, path = "/catalog/sync", tag = "catalog", request_body(content = Option<SyncRequest>, description = "Optional: without a body, every enabled provider"),
    responses((status = 202, body = Accepted),
              (status = 429, description = "Requested too often by this organization; see `Retry-After`", body = Problem)))]
pub async fn sync(
    State(state): State<AppState>,
    principal: Principal,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let request = crate::problem::optional_json(&body)?;
    issue_command(&state, &principal, "catalog.sync", request, |provider, requested_by| CatalogSync {
        provider,
        requested_by,
    })
    .await
}

/// Writes a platform-wide command for the orchestrator (catalog sync, reconciliation).
pub(crate) async fn issue_command<P: qm_events::Payload>(
    state: &AppState,
    principal: &Principal,
    action_type: &'static str,
    request: Option<SyncRequest>,
    payload: impl FnOnce(Option<String>, Option<qm_domain::UserId>) -> P,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let audit = Audit::start(action_type);
    principal.require(Role::Operator)?;
    let provider = request.and_then(|request| request.provider);
    if let Some(name) = &provider {
        existing_provider(state, name).await?;
    }
    // Each run touches every provider: an organization may ask a few times, then once a minute
    // (the orchestrator also coalesces what arrives while a run is pending).
    let key = format!("{action_type}:{}", principal.organization_id);
    state.fleet_commands.take(&key).map_err(|seconds| {
        Problem::too_many_requests(format!("`{action_type}` was requested recently; try again in {seconds} s"), seconds)
    })?;
    let command = message(&payload(provider.clone(), principal.user_id), None);
    let mut tx = state.dependencies.store.begin().await?;
    tx.enqueue(&command).await?;
    audit
        .record(&mut *tx, principal, None, serde_json::json!({ "command_id": command.id, "provider": provider }))
        .await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { command_id: command.id })))
}
