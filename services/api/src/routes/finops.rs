//! `/finops/…`: costs, series, forecasts, token usage, cost per token, budgets and exchange
//! rates, computed by `qm_costs` from the cost intervals and usage the finops service
//! records. Every amount is integer micro-units of the reporting currency. Callers see their
//! organization; the platform administrator sees every organization, or one with
//! `organization_id`.

use axum::extract::State;
use chrono::{DateTime, Utc};
use qm_costs as cost;
use qm_domain::{Currency, InstanceId, MicroUnits, OrganizationId, Role};
use qm_store::{Budget, CostFilter, TimeRange};
use serde::{Deserialize, Serialize};

use super::Audit;
use crate::AppState;
use crate::auth::Principal;
use crate::problem::{ApiResult, Json, Path, Problem, Query};

/// Buckets a series may have.
const MAX_POINTS: i64 = 10_000;
const DEFAULT_TOP: u32 = 20;
const MAX_TOP: u32 = 500;

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    #[default]
    Minute,
    Hour,
    Day,
}

impl Step {
    fn seconds(self) -> i64 {
        match self {
            Step::Minute => 60,
            Step::Hour => cost::HOUR,
            Step::Day => cost::DAY,
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CostQuery {
    /// Start (RFC 3339); default 24 hours before `to`.
    pub from: Option<DateTime<Utc>>,
    /// End (RFC 3339, exclusive); default now.
    pub to: Option<DateTime<Utc>>,
    pub provider: Option<String>,
    /// Region code.
    pub region: Option<String>,
    /// Zone code.
    pub zone: Option<String>,
    /// Instance type code.
    pub instance_type: Option<String>,
    pub instance_id: Option<InstanceId>,
    pub model: Option<String>,
    /// Platform administrator only: one organization (default: all).
    pub organization_id: Option<OrganizationId>,
    /// Series only: `minute` (default), `hour` or `day`; the range is widened to whole steps.
    pub step: Option<Step>,
    /// Costliest instances listed (0 to 500, default 20).
    #[param(minimum = 0, maximum = 500)]
    pub top: Option<u32>,
}

struct Resolved {
    range: TimeRange,
    filter: CostFilter,
    top: u32,
}

fn currency(state: &AppState) -> String {
    state.dependencies.settings.reporting_currency.to_string()
}

fn scope(principal: &Principal, asked: Option<OrganizationId>) -> ApiResult<Option<OrganizationId>> {
    if principal.platform_admin {
        return Ok(asked);
    }
    if asked.is_some_and(|other| other != principal.organization_id) {
        return Err(Problem::forbidden("only the platform administrator sees other organizations' costs"));
    }
    Ok(Some(principal.organization_id))
}

fn resolve(principal: &Principal, query: CostQuery, now: DateTime<Utc>) -> ApiResult<Resolved> {
    let to = query.to.unwrap_or(now);
    let from = query.from.unwrap_or(to - chrono::Duration::days(1));
    if from >= to {
        return Err(Problem::invalid("from", "must be before `to`"));
    }
    let top = query.top.unwrap_or(DEFAULT_TOP);
    if top > MAX_TOP {
        return Err(Problem::invalid("top", format!("must be at most {MAX_TOP}")));
    }
    let filter = CostFilter {
        organization: scope(principal, query.organization_id)?,
        provider: query.provider,
        region: query.region,
        zone: query.zone,
        instance_type: query.instance_type,
        instance: query.instance_id,
        model: query.model,
    };
    let range = TimeRange { from_s: cost::epoch(from), to_s: cost::epoch(to), now_s: cost::epoch(now) };
    Ok(Resolved { range, filter, top })
}

/// Total and breakdowns by provider, region, zone, instance type, organization, model and the
/// costliest instances, over a range.
#[utoipa::path(get, path = "/finops/dashboard/costs/summary", tag = "finops", params(CostQuery),
    responses((status = 200, body = cost::Summary)))]
pub async fn summary(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<CostQuery>,
) -> ApiResult<Json<cost::Summary>> {
    let resolved = resolve(&principal, query, qm_store::now())?;
    let store = &*state.dependencies.store;
    Ok(Json(cost::summary(store, &currency(&state), resolved.range, &resolved.filter, resolved.top).await?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WindowsView {
    pub at: DateTime<Utc>,
    pub windows: Vec<cost::Window>,
}

/// The summary for the last minute, hour, day, 30 days and 365 days (`from` and `to` ignored).
#[utoipa::path(get, path = "/finops/dashboard/costs/window", tag = "finops", params(CostQuery),
    responses((status = 200, body = WindowsView)))]
pub async fn window(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<CostQuery>,
) -> ApiResult<Json<WindowsView>> {
    let now = qm_store::now();
    let resolved = resolve(&principal, CostQuery { from: None, to: None, ..query }, now)?;
    let store = &*state.dependencies.store;
    let windows = cost::windows(store, &currency(&state), resolved.range.now_s, &resolved.filter, resolved.top).await?;
    Ok(Json(WindowsView { at: now, windows }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeriesView {
    pub currency: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step: Step,
    pub points: Vec<cost::Point>,
}

async fn series(state: &AppState, principal: &Principal, query: CostQuery) -> ApiResult<Json<SeriesView>> {
    let step = query.step.unwrap_or_default();
    let seconds = step.seconds();
    let mut resolved = resolve(principal, query, qm_store::now())?;
    // Whole steps, so that buckets fall on minute, hour or day boundaries.
    resolved.range.from_s = resolved.range.from_s.div_euclid(seconds) * seconds;
    resolved.range.to_s = (resolved.range.to_s + seconds - 1).div_euclid(seconds) * seconds;
    if (resolved.range.to_s - resolved.range.from_s) / seconds > MAX_POINTS {
        return Err(Problem::invalid(
            "step",
            format!("the range holds more than {MAX_POINTS} steps; use a larger step"),
        ));
    }
    let points = cost::series(&*state.dependencies.store, resolved.range, seconds, &resolved.filter).await?;
    Ok(Json(SeriesView {
        currency: currency(state),
        from: cost::time(resolved.range.from_s),
        to: cost::time(resolved.range.to_s),
        step,
        points,
    }))
}

/// Cost per step (`cost_micros` of each point) over a range.
#[utoipa::path(get, path = "/finops/cost/actual/minute", tag = "finops", params(CostQuery),
    responses((status = 200, body = SeriesView)))]
pub async fn actual(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<CostQuery>,
) -> ApiResult<Json<SeriesView>> {
    series(&state, &principal, query).await
}

/// Cost from the range's start to the end of each step (`cumulative_micros`); never decreases.
#[utoipa::path(get, path = "/finops/cost/cumulative/minute", tag = "finops", params(CostQuery),
    responses((status = 200, body = SeriesView)))]
pub async fn cumulative(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<CostQuery>,
) -> ApiResult<Json<SeriesView>> {
    series(&state, &principal, query).await
}

/// Burn rate now, projected spend at 1 minute, 1 hour, 1 day, 30 and 365 days, the month's
/// projected total, and the token rate projected likewise (`from` and `to` ignored).
#[utoipa::path(get, path = "/finops/cost/forecast", tag = "finops", params(CostQuery),
    responses((status = 200, body = cost::Forecast)))]
pub async fn forecast(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<CostQuery>,
) -> ApiResult<Json<cost::Forecast>> {
    let now = qm_store::now();
    let resolved = resolve(&principal, CostQuery { from: None, to: None, ..query }, now)?;
    Ok(Json(cost::forecast(&*state.dependencies.store, &currency(&state), now, &resolved.filter).await?))
}

/// Tokens served over a range, by model, instance, instance type, zone, provider and
/// organization.
#[utoipa::path(get, path = "/finops/usage/tokens", tag = "finops", params(CostQuery),
    responses((status = 200, body = cost::Usage)))]
pub async fn usage(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<CostQuery>,
) -> ApiResult<Json<cost::Usage>> {
    let resolved = resolve(&principal, query, qm_store::now())?;
    let range = resolved.range;
    Ok(Json(cost::usage(&*state.dependencies.store, range.from_s, range.to_s, &resolved.filter).await?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageWindow {
    pub window: String,
    pub usage: cost::Usage,
}

/// Token usage for the last minute, hour, day, 30 days and 365 days.
#[utoipa::path(get, path = "/finops/usage/tokens/window", tag = "finops", params(CostQuery),
    responses((status = 200, body = Vec<UsageWindow>)))]
pub async fn usage_window(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<CostQuery>,
) -> ApiResult<Json<Vec<UsageWindow>>> {
    let resolved = resolve(&principal, CostQuery { from: None, to: None, ..query }, qm_store::now())?;
    let now_s = resolved.range.now_s;
    let mut windows = Vec::new();
    for (name, seconds) in cost::WINDOWS {
        let usage = cost::usage(&*state.dependencies.store, now_s - seconds, now_s + 1, &resolved.filter).await?;
        windows.push(UsageWindow { window: name.to_owned(), usage });
    }
    Ok(Json(windows))
}

/// Cost per million tokens per model, per instance type and per API key over a range: what the
/// instances cost divided by the tokens they served (an instance's cost shared among the keys by
/// their tokens on it).
#[utoipa::path(get, path = "/finops/cost/per_token", tag = "finops", params(CostQuery),
    responses((status = 200, body = cost::CostPerToken)))]
pub async fn per_token(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<CostQuery>,
) -> ApiResult<Json<cost::CostPerToken>> {
    let resolved = resolve(&principal, query, qm_store::now())?;
    let store = &*state.dependencies.store;
    Ok(Json(cost::cost_per_token(store, &currency(&state), resolved.range, &resolved.filter).await?))
}

/// An alert threshold, in percent of the budget: 1 to 1000.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Threshold(pub u32);

impl utoipa::PartialSchema for Threshold {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .minimum(Some(1))
            .maximum(Some(1000))
            .into()
    }
}

impl utoipa::ToSchema for Threshold {}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetInput {
    /// Per calendar month (UTC), micro-units of the reporting currency.
    #[schema(minimum = 1)]
    pub amount_micros: i64,
    /// Alert thresholds in percent of the amount (default 50, 80, 100).
    #[schema(max_items = 10)]
    pub thresholds: Option<Vec<Threshold>>,
    /// Refuse new deployments (402) while the projected month exceeds the amount.
    #[serde(default)]
    pub hard_cap: bool,
}

fn may_manage(principal: &Principal, organization: OrganizationId) -> ApiResult<()> {
    if principal.platform_admin {
        return Ok(());
    }
    if organization != principal.organization_id {
        return Err(Problem::not_found("organization"));
    }
    principal.require(Role::Admin)
}

async fn status(state: &AppState, budget: Budget) -> ApiResult<cost::BudgetStatus> {
    let store = &*state.dependencies.store;
    Ok(cost::budget_status(store, &currency(state), budget, qm_store::now()).await?)
}

/// Budgets with this month's spend: the caller's organization's, or every one for the platform
/// administrator.
#[utoipa::path(get, path = "/finops/budgets", tag = "finops", responses((status = 200, body = Vec<cost::BudgetStatus>)))]
pub async fn budgets(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Vec<cost::BudgetStatus>>> {
    let mut list = Vec::new();
    for budget in state.dependencies.store.budgets().await? {
        if principal.platform_admin || principal.sees(budget.organization_id) {
            list.push(status(&state, budget).await?);
        }
    }
    Ok(Json(list))
}

/// One organization's budget with this month's spend.
#[utoipa::path(get, path = "/finops/budgets/{organization_id}", tag = "finops",
    params(("organization_id" = OrganizationId, Path)), responses((status = 200, body = cost::BudgetStatus)))]
pub async fn budget(
    State(state): State<AppState>,
    principal: Principal,
    Path(organization): Path<OrganizationId>,
) -> ApiResult<Json<cost::BudgetStatus>> {
    if !principal.platform_admin && !principal.sees(organization) {
        return Err(Problem::not_found("budget"));
    }
    let budget = state.dependencies.store.budget(organization).await?.ok_or_else(|| Problem::not_found("budget"))?;
    Ok(Json(status(&state, budget).await?))
}

/// Set an organization's monthly budget (admin of the organization, or the platform
/// administrator).
#[utoipa::path(put, path = "/finops/budgets/{organization_id}", tag = "finops", request_body = BudgetInput,
    params(("organization_id" = OrganizationId, Path)), responses((status = 200, body = cost::BudgetStatus)))]
pub async fn put_budget(
    State(state): State<AppState>,
    principal: Principal,
    Path(organization): Path<OrganizationId>,
    Json(input): Json<BudgetInput>,
) -> ApiResult<Json<cost::BudgetStatus>> {
    may_manage(&principal, organization)?;
    if input.amount_micros <= 0 {
        return Err(Problem::invalid("amount_micros", "must be positive"));
    }
    let thresholds = input.thresholds.map_or_else(
        || vec![50, 80, 100],
        |thresholds| thresholds.into_iter().map(|Threshold(percent)| percent).collect(),
    );
    if thresholds.len() > 10 || thresholds.iter().any(|threshold| !(1..=1000).contains(threshold)) {
        return Err(Problem::invalid("thresholds", "at most 10 percentages, each from 1 to 1000"));
    }
    let mut sorted = thresholds.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if state.dependencies.store.organization(organization).await?.is_none() {
        return Err(Problem::not_found("organization"));
    }
    let audit = Audit::start("finops.budget.put");
    let mut tx = state.dependencies.store.begin().await?;
    let budget = tx.put_budget(organization, input.amount_micros, &sorted, input.hard_cap).await?;
    let metadata = serde_json::json!({ "organization_id": organization, "amount_micros": input.amount_micros, "thresholds": sorted, "hard_cap": input.hard_cap });
    audit.record(&mut *tx, &principal, None, metadata).await?;
    tx.commit().await?;
    Ok(Json(status(&state, budget).await?))
}

/// Remove an organization's budget.
#[utoipa::path(delete, path = "/finops/budgets/{organization_id}", tag = "finops",
    params(("organization_id" = OrganizationId, Path)), responses((status = 204, description = "Removed")))]
pub async fn delete_budget(
    State(state): State<AppState>,
    principal: Principal,
    Path(organization): Path<OrganizationId>,
) -> ApiResult<axum::http::StatusCode> {
    may_manage(&principal, organization)?;
    let audit = Audit::start("finops.budget.delete");
    let mut tx = state.dependencies.store.begin().await?;
    if !tx.delete_budget(organization).await? {
        return Err(Problem::not_found("budget"));
    }
    audit.record(&mut *tx, &principal, None, serde_json::json!({ "organization_id": organization })).await?;
    tx.commit().await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RateView {
    pub currency: String,
    /// Micro-units of the reporting currency per unit.
    pub rate_micros: i64,
    /// `configured` (`QM_FX_RATES`) or `edited` (through this API, which wins).
    pub source: String,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RatesView {
    pub reporting_currency: String,
    pub rates: Vec<RateView>,
}

/// Exchange rates into the reporting currency, as billing captures them.
#[utoipa::path(get, path = "/finops/exchange_rates", tag = "finops", responses((status = 200, body = RatesView)))]
pub async fn exchange_rates(State(state): State<AppState>, _principal: Principal) -> ApiResult<Json<RatesView>> {
    let settings = &state.dependencies.settings;
    let edited = state.dependencies.store.exchange_rates().await?;
    let effective = qm_store::finops::effective_rates(&*state.dependencies.store, &settings.exchange_rates).await?;
    let rates = effective
        .rates()
        .iter()
        .map(|(currency, rate)| {
            let edit = edited.iter().find(|edit| edit.currency == currency.as_str());
            RateView {
                currency: currency.to_string(),
                rate_micros: rate.get(),
                source: if edit.is_some() { "edited" } else { "configured" }.to_owned(),
                updated_at: edit.map(|edit| edit.updated_at),
            }
        })
        .collect();
    Ok(Json(RatesView { reporting_currency: settings.reporting_currency.to_string(), rates }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateInput {
    /// Units of the reporting currency per unit of this one, as a positive decimal (`"0.92"`)
    /// with at most 6 decimals.
    #[schema(pattern = r"^\s*[0-9]+(\.[0-9]{0,6})?\s*$")]
    pub rate: String,
}

/// Set the rate of a currency (platform administrator); instances billed from now on capture it.
#[utoipa::path(put, path = "/finops/exchange_rates/{currency}", tag = "finops", request_body = RateInput,
    params(("currency" = String, Path, pattern = "^[A-Z]{3}$", description = "ISO 4217, not the reporting currency (409)")),
    responses((status = 200, body = RateView)))]
pub async fn put_exchange_rate(
    State(state): State<AppState>,
    principal: Principal,
    Path(code): Path<String>,
    Json(input): Json<RateInput>,
) -> ApiResult<Json<RateView>> {
    principal.require_platform_admin()?;
    let currency =
        Currency::parse(&code).map_err(|_| Problem::invalid("currency", "must be an ISO 4217 code such as USD"))?;
    if currency == state.dependencies.settings.reporting_currency {
        return Err(Problem::conflict("the reporting currency's rate is always 1"));
    }
    let rate = MicroUnits::parse_decimal(&input.rate)
        .ok()
        .filter(|rate| rate.get() > 0)
        .ok_or_else(|| Problem::invalid("rate", "must be a positive decimal such as 0.92"))?;
    let audit = Audit::start("finops.exchange_rate.put");
    let mut tx = state.dependencies.store.begin().await?;
    let saved = tx.put_exchange_rate(currency.as_str(), rate.get()).await?;
    audit
        .record(&mut *tx, &principal, None, serde_json::json!({ "currency": currency.as_str(), "rate": input.rate }))
        .await?;
    tx.commit().await?;
    Ok(Json(RateView {
        currency: saved.currency,
        rate_micros: saved.rate_micros,
        source: "edited".into(),
        updated_at: Some(saved.updated_at),
    }))
}
