//! `/deployments`: ask for `count` instances of a model, either at an exact place (provider,
//! zone, instance type, plus an optional failover list) or wherever the cheapest offer meets
//! constraints. The API validates against the catalog, records the instances in `requested`,
//! and writes one `instance.provision` command per instance through the outbox.

use axum::extract::State;
use axum::http::StatusCode;
use qm_domain::{Currency, DeploymentId, InstanceId, MicroUnits, Role};
use qm_events::payloads::InstanceProvision;
use qm_store::{Deployment, Instance, InstanceFilter, NewInstance, Offer, Store};
use serde::{Deserialize, Serialize};

use super::{Audit, Page, PageParams, message};
use crate::AppState;
use crate::auth::Principal;
use crate::problem::{ApiResult, FieldError, Json, Path, Problem, Query};

pub const MAX_COUNT: i64 = 100;
/// How many matching offers a constraint deployment keeps to fail over through.
pub const MAX_PLACEMENTS: usize = 20;

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRequest {
    /// The model the workers serve, e.g. `meta-llama/Llama-3.1-8B-Instruct`: 1 to 200 letters,
    /// digits and `._:/@+-`, starting with a letter or digit.
    #[schema(min_length = 1, max_length = 200, pattern = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")]
    pub model: String,
    /// 1 to 100 instances.
    #[schema(minimum = 1, maximum = 100)]
    pub count: i64,
    #[schema(schema_with = crate::openapi::optional_provider_name)]
    pub provider: Option<String>,
    /// Zone code (or id); with `instance_type`, pins the placement.
    pub zone: Option<String>,
    /// Instance type code (or id).
    pub instance_type: Option<String>,
    /// Places to try, in order, when the first has no capacity.
    #[serde(default)]
    pub failover: Vec<PlacementRequest>,
    /// Instead of `zone` and `instance_type`: the cheapest active offer that meets these.
    pub constraints: Option<Constraints>,
}

#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    #[schema(schema_with = crate::openapi::provider_name)]
    pub provider: String,
    pub zone: String,
    pub instance_type: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Exact GPU model, case-insensitive (`L4`, `A10G`, `H100`).
    pub gpu_model: Option<String>,
    pub min_gpus: Option<i32>,
    /// Memory of one GPU, in GB.
    pub min_gpu_memory_gb: Option<i32>,
    /// Decimal, in the reporting currency (`QM_REPORTING_CURRENCY`), e.g. `"2.50"`.
    pub max_hourly_price: Option<String>,
    /// Allowed providers (all when left out).
    pub providers: Option<Vec<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeploymentAccepted {
    pub deployment_id: DeploymentId,
    pub instance_ids: Vec<InstanceId>,
    /// Where the instances will be tried, in order.
    pub placements: Vec<Offer>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeploymentView {
    #[serde(flatten)]
    pub deployment: Deployment,
    pub instances: Vec<Instance>,
}

/// The zone `reference` (its code, or its id) names at `provider`.
async fn find_zone(store: &dyn Store, provider: &str, reference: &str) -> ApiResult<Option<qm_store::Zone>> {
    let found = match reference.parse::<qm_domain::ZoneId>() {
        Ok(id) => store.zone(id).await?.filter(|zone| zone.provider == provider),
        Err(_) => store.zone_by_code(provider, reference).await?,
    };
    Ok(found)
}

/// The instance type `reference` (its code, or its id) names at `provider`.
async fn find_instance_type(
    store: &dyn Store,
    provider: &str,
    reference: &str,
) -> ApiResult<Option<qm_store::InstanceType>> {
    let found = match reference.parse::<qm_domain::InstanceTypeId>() {
        Ok(id) => store.instance_type(id).await?.filter(|instance_type| instance_type.provider == provider),
        Err(_) => store.instance_type_by_code(provider, reference).await?,
    };
    Ok(found)
}

/// Resolves one explicit placement against the catalog, naming the field at fault.
async fn resolve_placement(
    store: &dyn Store,
    prefix: &str,
    provider: &str,
    zone: &str,
    instance_type: &str,
) -> ApiResult<Result<Offer, FieldError>> {
    let field = |name: &str, message: String| Err(FieldError { field: format!("{prefix}{name}"), message });
    let Some(provider_record) = store.provider(provider).await? else {
        return Ok(field("provider", format!("unknown provider `{provider}`")));
    };
    if !provider_record.active {
        return Ok(field("provider", format!("provider `{provider}` is inactive")));
    }
    let Some(zone_record) = find_zone(store, provider, zone).await? else {
        return Ok(field("zone", format!("unknown zone `{zone}` for provider `{provider}`")));
    };
    let region = store.region(zone_record.region_id).await?;
    if !zone_record.active || !region.as_ref().is_some_and(|region| region.active) {
        return Ok(field("zone", format!("zone `{}` is inactive", zone_record.code)));
    }
    let Some(type_record) = find_instance_type(store, provider, instance_type).await? else {
        return Ok(field(
            "instance_type",
            format!("unknown instance type `{instance_type}` for provider `{provider}`"),
        ));
    };
    if !type_record.active {
        return Ok(field("instance_type", format!("instance type `{}` is inactive", type_record.code)));
    }
    let offered = store.zone_instance_types(zone_record.id).await?.iter().any(|offered| offered.id == type_record.id);
    if !offered {
        return Ok(field(
            "instance_type",
            format!("instance type `{}` is not offered in zone `{}`", type_record.code, zone_record.code),
        ));
    }
    Ok(Ok(Offer {
        provider: provider_record.name,
        region: region.map(|region| region.code).unwrap_or_default(),
        zone_id: zone_record.id,
        zone: zone_record.code,
        instance_type_id: type_record.id,
        instance_type: type_record.code,
        gpu_model: type_record.gpu_model,
        gpu_count: type_record.gpu_count,
        gpu_memory_gb: type_record.gpu_memory_gb,
        hourly_price_micros: type_record.hourly_price_micros,
        currency: type_record.currency,
    }))
}

/// 402 when the organization's budget is hard-capped and its month, with `count` more instances
/// running until the month ends, is projected past the amount. Every instance that may still
/// start billing counts at the most expensive placement it may land on: these `count` (across
/// `placements`, since they fail over) and the organization's instances not yet billing
/// (requested, provisioning). Callers hold the organization's lock, so concurrent deployments
/// are decided one after the other.
pub(super) async fn enforce_budget(
    state: &AppState,
    principal: &Principal,
    placements: &[Offer],
    count: i32,
) -> ApiResult<()> {
    let store = &*state.dependencies.store;
    let settings = &state.dependencies.settings;
    let added =
        qm_costs::added_hourly(store, &settings.exchange_rates, principal.organization_id, placements, count).await?;
    let currency = settings.reporting_currency.to_string();
    let now = qm_store::now();
    let Some(exceeded) = qm_costs::check_cap(store, &currency, principal.organization_id, added, now).await? else {
        return Ok(());
    };
    let detail = format!(
        "the organization's {} budget of {} {currency} is hard-capped, and with this deployment the month is projected \
         at {} {currency}; raise the budget or wait for the next month",
        exceeded.period,
        MicroUnits::new(exceeded.amount_micros),
        MicroUnits::new(exceeded.projected_micros),
    );
    let budget = serde_json::json!({
        "organization_id": principal.organization_id, "period": exceeded.period, "currency": currency,
        "amount_micros": exceeded.amount_micros, "projected_micros": exceeded.projected_micros,
    });
    Err(Problem::budget_exceeded(detail, budget))
}

/// Hours in a month for monthly prices (365 × 24 / 12).
pub const HOURS_PER_MONTH: i64 = 730;

/// An offer with its price in the reporting currency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PricedOffer {
    #[serde(flatten)]
    pub offer: Offer,
    /// The reporting currency (`QM_REPORTING_CURRENCY`).
    pub reporting_currency: String,
    /// Per hour in the reporting currency (none for a currency without a rate).
    pub reporting_hourly_price_micros: Option<i64>,
    /// Per month of 730 hours in the reporting currency.
    pub reporting_monthly_price_micros: Option<i64>,
}

/// `offers`, each with its price per hour and per month in the reporting currency.
fn priced(state: &AppState, offers: Vec<Offer>) -> Vec<PricedOffer> {
    let settings = &state.dependencies.settings;
    offers
        .into_iter()
        .map(|offer| {
            let hourly = Currency::parse(&offer.currency)
                .ok()
                .and_then(|currency| {
                    settings.exchange_rates.convert(MicroUnits::new(offer.hourly_price_micros), currency)
                })
                .map(|price| price.get());
            PricedOffer {
                offer,
                reporting_currency: settings.reporting_currency.to_string(),
                reporting_hourly_price_micros: hourly,
                reporting_monthly_price_micros: hourly.map(|hourly| hourly.saturating_mul(HOURS_PER_MONTH)),
            }
        })
        .collect()
}

/// Filters of `GET /offers`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OfferQuery {
    /// Exact GPU model, case-insensitive (`L4`, `H100`).
    #[param(max_length = 64)]
    pub gpu_model: Option<String>,
    #[param(minimum = 0, maximum = 64)]
    pub min_gpus: Option<i32>,
    /// Memory of one GPU, in GB.
    #[param(minimum = 0, maximum = 4096)]
    pub min_gpu_memory_gb: Option<i32>,
    /// Decimal, in the reporting currency, e.g. `1.50`.
    #[param(pattern = r"^[0-9]{1,9}(\.[0-9]{1,6})?$")]
    pub max_hourly_price: Option<String>,
    /// Comma-separated provider names (all when left out).
    #[param(max_length = 200)]
    pub providers: Option<String>,
}

/// The bounds `GET /offers` declares.
fn check_offer_query(query: &OfferQuery) -> ApiResult<()> {
    let mut errors = Vec::new();
    let mut refuse =
        |field: &str, message: &str| errors.push(FieldError { field: field.into(), message: message.into() });
    if query.gpu_model.as_ref().is_some_and(|model| model.chars().count() > 64) {
        refuse("gpu_model", "at most 64 characters");
    }
    if query.providers.as_ref().is_some_and(|providers| providers.chars().count() > 200) {
        refuse("providers", "at most 200 characters");
    }
    if query.min_gpus.is_some_and(|gpus| !(0..=64).contains(&gpus)) {
        refuse("min_gpus", "must be between 0 and 64");
    }
    if query.min_gpu_memory_gb.is_some_and(|memory| !(0..=4096).contains(&memory)) {
        refuse("min_gpu_memory_gb", "must be between 0 and 4096");
    }
    let decimal = |text: &str| {
        let (whole, fraction) = text.split_once('.').map_or((text, None), |(whole, fraction)| (whole, Some(fraction)));
        let digits = |part: &str, most: usize| {
            (1..=most).contains(&part.len()) && part.bytes().all(|byte| byte.is_ascii_digit())
        };
        digits(whole, 9) && fraction.is_none_or(|fraction| digits(fraction, 6))
    };
    if query.max_hourly_price.as_deref().is_some_and(|price| !decimal(price)) {
        refuse("max_hourly_price", "a decimal such as 1.50 (up to 9 digits, then up to 6 after the point)");
    }
    if errors.is_empty() { Ok(()) } else { Err(Problem::invalid_fields(errors)) }
}

/// The catalog's active offers (a zone and an instance type it offers), cheapest first in the
/// reporting currency, with hourly and monthly prices; filtered like a deployment's constraints.
#[utoipa::path(get, path = "/offers", tag = "catalog", params(OfferQuery),
    responses((status = 200, description = "Cheapest first", body = Vec<PricedOffer>)))]
pub async fn offers(
    State(state): State<AppState>,
    _principal: Principal,
    Query(query): Query<OfferQuery>,
) -> ApiResult<Json<Vec<PricedOffer>>> {
    check_offer_query(&query)?;
    let providers = query.providers.as_deref().map(|list| {
        list.split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_owned).collect::<Vec<_>>()
    });
    let constraints = Constraints {
        gpu_model: query.gpu_model,
        min_gpus: query.min_gpus,
        min_gpu_memory_gb: query.min_gpu_memory_gb,
        max_hourly_price: query.max_hourly_price,
        providers,
    };
    let offers = matching_offers(&state, &constraints, None).await?;
    Ok(Json(priced(&state, offers)))
}

/// The active offers meeting `constraints`, cheapest first in the reporting currency.
async fn matching_offers(state: &AppState, constraints: &Constraints, provider: Option<&str>) -> ApiResult<Vec<Offer>> {
    let rates = &state.dependencies.settings.exchange_rates;
    let max_price = constraints
        .max_hourly_price
        .as_deref()
        .map(|text| {
            MicroUnits::parse_decimal(text).map_err(|error| {
                Problem::invalid("constraints.max_hourly_price", format!("{error} (use a decimal such as \"2.50\")"))
            })
        })
        .transpose()?;
    let mut errors = Vec::new();
    for (name, value) in [("min_gpus", constraints.min_gpus), ("min_gpu_memory_gb", constraints.min_gpu_memory_gb)] {
        if value.is_some_and(|value| value < 0) {
            errors.push(FieldError { field: format!("constraints.{name}"), message: "must not be negative".into() });
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let in_reporting_currency = |offer: &Offer| {
        Currency::parse(&offer.currency)
            .ok()
            .and_then(|currency| rates.convert(MicroUnits::new(offer.hourly_price_micros), currency))
    };
    let mut offers: Vec<(Option<MicroUnits>, Offer)> = state
        .dependencies
        .store
        .offers()
        .await?
        .into_iter()
        .filter(|offer| provider.is_none_or(|provider| offer.provider == provider))
        .filter(|offer| constraints.providers.as_ref().is_none_or(|allowed| allowed.contains(&offer.provider)))
        .filter(|offer| {
            constraints.gpu_model.as_ref().is_none_or(|wanted| {
                offer.gpu_model.as_ref().is_some_and(|model| model.eq_ignore_ascii_case(wanted.trim()))
            })
        })
        .filter(|offer| constraints.min_gpus.is_none_or(|min| offer.gpu_count >= min))
        .filter(|offer| constraints.min_gpu_memory_gb.is_none_or(|min| offer.gpu_memory_gb >= min))
        .map(|offer| (in_reporting_currency(&offer), offer))
        .filter(|(price, _)| max_price.is_none_or(|max| price.is_some_and(|price| price <= max)))
        .collect();
    // Unknown currencies rank last; ties break on provider, zone and type for a stable order.
    offers.sort_by(|(left_price, left), (right_price, right)| {
        (left_price.is_none(), left_price, &left.provider, &left.zone, &left.instance_type).cmp(&(
            right_price.is_none(),
            right_price,
            &right.provider,
            &right.zone,
            &right.instance_type,
        ))
    });
    Ok(offers.into_iter().map(|(_, offer)| offer).collect())
}

/// The model a deployment or pool serves, trimmed and checked.
pub(super) fn model_name(model: &str) -> ApiResult<String> {
    let model =
        qm_domain::ModelId::parse(model.trim()).map_err(|error| Problem::invalid("model", error.to_string()))?;
    Ok(model.as_str().to_owned())
}

/// Turns a request into the ordered list of places to try.
pub(super) async fn placements(state: &AppState, request: &DeploymentRequest) -> ApiResult<Vec<Offer>> {
    let store = &*state.dependencies.store;
    let mut placements = Vec::new();
    let mut errors = Vec::new();
    match (&request.zone, &request.instance_type, &request.constraints) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(Problem::invalid(
                "constraints",
                "give either zone and instance_type, or constraints, not both",
            ));
        }
        (Some(zone), Some(instance_type), None) => {
            let Some(provider) = &request.provider else {
                return Err(Problem::invalid("provider", "is required with zone and instance_type"));
            };
            match resolve_placement(store, "", provider, zone, instance_type).await? {
                Ok(offer) => placements.push(offer),
                Err(error) => errors.push(error),
            }
        }
        (Some(_), None, None) => return Err(Problem::invalid("instance_type", "is required with zone")),
        (None, Some(_), None) => return Err(Problem::invalid("zone", "is required with instance_type")),
        (None, None, None) if request.provider.is_none() => {
            return Err(Problem::invalid("zone", "give provider, zone and instance_type, or constraints"));
        }
        // A provider alone: its cheapest offers, as with empty constraints.
        (None, None, constraints) => {
            let constraints = constraints.as_ref().map_or_else(Constraints::default, Constraints::clone);
            if let Some(provider) = &request.provider
                && store.provider(provider).await?.is_none_or(|record| !record.active)
            {
                return Err(Problem::invalid("provider", format!("unknown or inactive provider `{provider}`")));
            }
            let offers = matching_offers(state, &constraints, request.provider.as_deref()).await?;
            if offers.is_empty() {
                return Err(Problem::invalid("constraints", "no active offer in the catalog meets these constraints"));
            }
            placements.extend(offers.into_iter().take(MAX_PLACEMENTS));
        }
    }
    for (index, failover) in request.failover.iter().enumerate() {
        let prefix = format!("failover[{index}].");
        match resolve_placement(store, &prefix, &failover.provider, &failover.zone, &failover.instance_type).await? {
            Ok(offer) => placements.push(offer),
            Err(error) => errors.push(error),
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let mut seen = std::collections::HashSet::new();
    placements.retain(|offer| seen.insert((offer.zone_id, offer.instance_type_id)));
    Ok(placements)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DryRunQuery {
    /// Validate, place and price the deployment without creating anything (200 with the
    /// estimate; a hard-capped budget it would break is still a 402).
    pub dry_run: Option<bool>,
}

/// What a deployment would be: where its instances would go and what they would cost.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeploymentEstimate {
    pub dry_run: bool,
    pub model: String,
    pub count: i32,
    /// Where the instances would be created first, then the places failover would try.
    pub placements: Vec<PricedOffer>,
    pub reporting_currency: String,
    /// The instances together at the first placement, per hour and per month of 730 hours, in
    /// the reporting currency.
    pub hourly_price_micros: Option<i64>,
    pub monthly_price_micros: Option<i64>,
}

/// Deploy a model: validates against the catalog and queues one provision command per instance.
/// With `dry_run=true`, only says where and at what price.
#[utoipa::path(post, path = "/deployments", tag = "deployments", request_body = DeploymentRequest, params(DryRunQuery),
    responses((status = 202, description = "Accepted; instances are `requested`", body = DeploymentAccepted),
               (status = 200, description = "The dry run's estimate; nothing was created", body = DeploymentEstimate),
               (status = 402, description = "A hard-capped budget would be exceeded", body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Query(dry_run): Query<DryRunQuery>,
    Json(request): Json<DeploymentRequest>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let audit = Audit::start("deployment.create");
    principal.require(Role::Operator)?;
    let model = model_name(&request.model)?;
    if !(1..=MAX_COUNT).contains(&request.count) {
        return Err(Problem::invalid("count", format!("must be between 1 and {MAX_COUNT}")));
    }
    let count = i32::try_from(request.count).unwrap_or(1);
    let placements = placements(&state, &request).await?;
    let Some(primary) = placements.first().cloned() else {
        return Err(Problem::invalid("zone", "no placement"));
    };
    if dry_run.dry_run == Some(true) {
        enforce_budget(&state, &principal, &placements, count).await?;
        let placements = priced(&state, placements);
        let hourly = placements[0].reporting_hourly_price_micros.map(|price| price.saturating_mul(i64::from(count)));
        let estimate = DeploymentEstimate {
            dry_run: true,
            model,
            count,
            reporting_currency: state.dependencies.settings.reporting_currency.to_string(),
            hourly_price_micros: hourly,
            monthly_price_micros: hourly.map(|hourly| hourly.saturating_mul(HOURS_PER_MONTH)),
            placements,
        };
        return Ok((StatusCode::OK, Json(estimate)).into_response());
    }
    // One deployment of an organization at a time decides against its budget: in this replica
    // first (waiting without a database connection), then across replicas by the row lock.
    let _turn = state.organization_locks.lock(&principal.organization_id.to_string()).await;
    let mut tx = state.dependencies.store.begin().await?;
    tx.lock_organization(principal.organization_id).await?;
    enforce_budget(&state, &principal, &placements, count).await?;
    let deployment = Deployment {
        id: DeploymentId::new(),
        organization_id: principal.organization_id,
        created_by: principal.user_id,
        model: model.clone(),
        count,
        request: serde_json::to_value(&request).unwrap_or_default(),
        placements: placements.clone(),
        created_at: qm_store::now(),
    };
    tx.insert_deployment(&deployment).await?;
    let mut instance_ids = Vec::with_capacity(usize::try_from(count).unwrap_or_default());
    for _ in 0..count {
        let instance = tx
            .insert_instance(&NewInstance {
                id: InstanceId::new(),
                organization_id: principal.organization_id,
                deployment_id: Some(deployment.id),
                placement: primary.clone(),
                model: model.clone(),
                revision: None,
            })
            .await?;
        let payload = InstanceProvision {
            instance_id: instance.id,
            deployment_id: Some(deployment.id),
            model: model.clone(),
            placements: placements.clone(),
            engine: qm_domain::engine::EngineSettings::default(),
        };
        let provision = message(&payload, Some(&principal));
        tx.enqueue(&provision).await?;
        tx.enqueue(&provision.caused_by(&instance.state_changed(None, Some("deployment created")), crate::NAME))
            .await?;
        instance_ids.push(instance.id);
    }
    audit
        .record(
            &mut *tx,
            &principal,
            None,
            serde_json::json!({ "deployment_id": deployment.id, "model": model, "count": count, "instance_ids": instance_ids, "placements": placements.len() }),
        )
        .await?;
    tx.commit().await?;
    tracing::info!(deployment = %deployment.id, count, "deployment accepted");
    Ok((StatusCode::ACCEPTED, Json(DeploymentAccepted { deployment_id: deployment.id, instance_ids, placements }))
        .into_response())
}

/// The organization's deployments, newest first.
#[utoipa::path(get, path = "/deployments", tag = "deployments", params(PageParams),
    responses((status = 200, body = Page<Deployment>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Deployment>>> {
    let (limit, cursor) = page.resolve::<DeploymentId>()?;
    let deployments = state.dependencies.store.deployments(Some(principal.organization_id), cursor, limit + 1).await?;
    Ok(Json(Page::from_overfetch(deployments, limit, |deployment: &Deployment| deployment.id.to_string())))
}

/// A deployment and its instances.
#[utoipa::path(get, path = "/deployments/{id}", tag = "deployments", params(("id" = DeploymentId, Path)),
    responses((status = 200, body = DeploymentView)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<DeploymentId>,
) -> ApiResult<Json<DeploymentView>> {
    let store = &state.dependencies.store;
    let deployment = store
        .deployment(id)
        .await?
        .filter(|deployment| principal.sees(deployment.organization_id))
        .ok_or_else(|| Problem::not_found("deployment"))?;
    let filter = InstanceFilter {
        organization: Some(principal.organization_id),
        deployment: Some(id),
        limit: u32::try_from(MAX_COUNT).unwrap_or(100),
        ..InstanceFilter::default()
    };
    let instances = store.instances(&filter).await?;
    Ok(Json(DeploymentView { deployment, instances }))
}
