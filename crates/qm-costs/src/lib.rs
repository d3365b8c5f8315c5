//! Costs, series, forecasts, token usage and budgets, computed from cost intervals (never from a
//! row per instance per minute), so that they stay cheap as fleets and history grow. The api
//! serves these queries and the finops service's budget watcher and gauges use them; both depend
//! on this crate, not on each other.
//!
//! Exactness: an interval costs `hourly × seconds / 3600` micro-units. Over a range, every figure
//! is the exact sum rounded down once: a total or a breakdown entry is `⌊Σ h·o / 3600⌋` of its
//! intervals, and the series' buckets are differences of the rounded cumulative sum, so the
//! buckets of a range add up to its total to the micro-unit and the cumulative series never
//! decreases. (Breakdown entries, each rounded, may add up to a few micro-units under the total.)

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use qm_domain::InstanceId;
use qm_store::{Budget, BudgetAlert, CostFilter, InstanceCost, Store, StoreError, TimeRange, UsageGroup};
use serde::Serialize;

pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

/// The windows of `/finops/dashboard/costs/window`, and the forecast horizons.
pub const WINDOWS: [(&str, i64); 5] =
    [("minute", 60), ("hour", HOUR), ("day", DAY), ("30_days", 30 * DAY), ("365_days", 365 * DAY)];

/// Exact micro-units as `quotient + remainder / 3600`.
#[derive(Clone, Copy, Debug, Default)]
struct Exact {
    quotient: i128,
    remainder: i128,
}

impl Exact {
    fn add(&mut self, quotient: i64, remainder: i64) {
        self.quotient += i128::from(quotient);
        self.remainder += i128::from(remainder);
    }

    fn micros(self) -> i64 {
        saturate(self.quotient + self.remainder / i128::from(HOUR))
    }
}

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// `hourly` micro-units per hour over `seconds`, rounded down.
pub fn project(hourly: i64, seconds: i64) -> i64 {
    saturate(i128::from(hourly) * i128::from(seconds) / i128::from(HOUR))
}

pub fn epoch(time: DateTime<Utc>) -> i64 {
    time.timestamp()
}

pub fn time(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `[start of the month of now, start of the next month)`, in epoch seconds.
pub fn month_of(now: DateTime<Utc>) -> (i64, i64) {
    let start = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now);
    let (year, month) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
    let end = Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single().unwrap_or(now);
    (epoch(start), epoch(end))
}

/// `YYYY-MM`: the budget period containing `now`.
pub fn period(now: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", now.year(), now.month())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub key: String,
    pub cost_micros: i64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Summary {
    /// The reporting currency of every amount.
    pub currency: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub total_micros: i64,
    pub by_provider: Vec<Entry>,
    pub by_region: Vec<Entry>,
    pub by_zone: Vec<Entry>,
    pub by_instance_type: Vec<Entry>,
    pub by_organization: Vec<Entry>,
    pub by_model: Vec<Entry>,
    /// The costliest instances, at most `top`.
    pub by_instance: Vec<Entry>,
}

fn entries(groups: BTreeMap<String, Exact>) -> Vec<Entry> {
    let mut entries: Vec<Entry> =
        groups.into_iter().map(|(key, exact)| Entry { key, cost_micros: exact.micros() }).collect();
    entries.sort_by(|a, b| b.cost_micros.cmp(&a.cost_micros).then_with(|| a.key.cmp(&b.key)));
    entries
}

/// Total and breakdowns over `range`.
///
/// # Errors
/// The store's.
pub async fn summary(
    store: &dyn Store,
    currency: &str,
    range: TimeRange,
    filter: &CostFilter,
    top: u32,
) -> Result<Summary, StoreError> {
    // The breakdowns and the costliest instances are two queries; they run at once.
    let instances = async { if top == 0 { Ok(Vec::new()) } else { store.instance_costs(range, filter, top).await } };
    let (groups, instances) = futures::try_join!(store.cost_groups(range, filter), instances)?;
    let mut total = Exact::default();
    let mut dimensions: [BTreeMap<String, Exact>; 6] = Default::default();
    for group in &groups {
        total.add(group.quotient, group.remainder);
        let keys = [
            &group.key.provider,
            &group.key.region,
            &group.key.zone,
            &group.key.instance_type,
            &group.key.organization_id.to_string(),
            &group.key.model,
        ];
        for (dimension, key) in dimensions.iter_mut().zip(keys) {
            dimension.entry(key.clone()).or_default().add(group.quotient, group.remainder);
        }
    }
    let [by_provider, by_region, by_zone, by_instance_type, by_organization, by_model] = dimensions.map(entries);
    Ok(Summary {
        currency: currency.to_owned(),
        from: time(range.from_s),
        to: time(range.to_s),
        total_micros: total.micros(),
        by_provider,
        by_region,
        by_zone,
        by_instance_type,
        by_organization,
        by_model,
        by_instance: instances
            .into_iter()
            .map(|cost| Entry { key: cost.instance_id.to_string(), cost_micros: cost.cost_micros })
            .collect(),
    })
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Window {
    /// `minute`, `hour`, `day`, `30_days` or `365_days`.
    pub window: String,
    pub summary: Summary,
}

/// The summary for each of [`WINDOWS`], ending at `now_s`; the windows are queried at once.
///
/// # Errors
/// The store's.
pub async fn windows(
    store: &dyn Store,
    currency: &str,
    now_s: i64,
    filter: &CostFilter,
    top: u32,
) -> Result<Vec<Window>, StoreError> {
    let queries = WINDOWS.map(|(name, seconds)| async move {
        let range = TimeRange { from_s: now_s - seconds, to_s: now_s, now_s };
        Ok::<_, StoreError>(Window {
            window: name.to_owned(),
            summary: summary(store, currency, range, filter, top).await?,
        })
    });
    futures::future::try_join_all(queries).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Point {
    pub start: DateTime<Utc>,
    /// Cost within `[start, start + step)`.
    pub cost_micros: i64,
    /// Cost from the range's start to the end of this bucket.
    pub cumulative_micros: i64,
}

/// Buckets of `step_s` from `range.from_s` (the last one cut at `to_s`) from the changes of the
/// summed hourly price, as [`qm_store::FinopsStore::cost_changes`] gives them.
pub fn buckets(range: TimeRange, step_s: i64, changes: &[(i64, i64)]) -> Vec<Point> {
    let step_s = step_s.max(1);
    let mut points = Vec::new();
    let (mut area, mut slope, mut cursor, mut next, mut rounded) = (0_i128, 0_i128, range.from_s, 0, 0_i128);
    let mut start = range.from_s;
    while start < range.to_s {
        let end = start.saturating_add(step_s).min(range.to_s);
        while let Some(&(at, change)) = changes.get(next).filter(|(at, _)| *at <= end) {
            area += slope * i128::from(at - cursor);
            cursor = at;
            slope += i128::from(change);
            next += 1;
        }
        area += slope * i128::from(end - cursor);
        cursor = end;
        let cumulative = area / i128::from(HOUR);
        points.push(Point {
            start: time(start),
            cost_micros: saturate(cumulative - rounded),
            cumulative_micros: saturate(cumulative),
        });
        rounded = cumulative;
        start = end;
    }
    points
}

/// The series over `range`.
///
/// # Errors
/// The store's.
pub async fn series(
    store: &dyn Store,
    range: TimeRange,
    step_s: i64,
    filter: &CostFilter,
) -> Result<Vec<Point>, StoreError> {
    let changes = store.cost_changes(range, filter).await?;
    Ok(buckets(range, step_s, &changes))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Projection {
    /// `minute`, `hour`, `day`, `30_days` or `365_days`.
    pub horizon: String,
    pub seconds: i64,
    pub projected_micros: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenForecast {
    /// Tokens served in the last hour: the rate projected forward.
    pub tokens_last_hour: i64,
    pub horizons: Vec<TokenProjection>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenProjection {
    pub horizon: String,
    pub seconds: i64,
    pub projected_tokens: i64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Forecast {
    pub currency: String,
    pub at: DateTime<Utc>,
    /// Summed hourly price of everything running now.
    pub burn_rate_micros_per_hour: i64,
    pub burn_rate_by_provider: Vec<Entry>,
    /// `burn_rate × horizon`, rounded down.
    pub horizons: Vec<Projection>,
    pub month_to_date_micros: i64,
    /// Month to date plus the burn rate until the end of the month.
    pub projected_month_end_micros: i64,
    pub tokens: TokenForecast,
}

/// Burn rate now, what it comes to over each horizon, and the month's projected total.
///
/// # Errors
/// The store's.
pub async fn forecast(
    store: &dyn Store,
    currency: &str,
    now: DateTime<Utc>,
    filter: &CostFilter,
) -> Result<Forecast, StoreError> {
    let now_s = epoch(now);
    let outlook = outlook(store, currency, now, filter).await?;
    let burn = outlook.burn_rate_micros_per_hour;
    let usage = store.usage_groups(now_s - HOUR, now_s + 1, filter).await?;
    let tokens_last_hour: i64 = usage
        .iter()
        .map(|group| group.prompt_tokens.saturating_add(group.completion_tokens))
        .fold(0_i64, i64::saturating_add);
    Ok(Forecast {
        currency: currency.to_owned(),
        at: now,
        burn_rate_micros_per_hour: burn,
        burn_rate_by_provider: outlook.burn_rate_by_provider,
        horizons: WINDOWS
            .iter()
            .map(|(name, seconds)| Projection {
                horizon: (*name).to_owned(),
                seconds: *seconds,
                projected_micros: project(burn, *seconds),
            })
            .collect(),
        month_to_date_micros: outlook.month_to_date_micros,
        projected_month_end_micros: outlook.projected_month_end_micros,
        tokens: TokenForecast {
            tokens_last_hour,
            horizons: WINDOWS
                .iter()
                .map(|(name, seconds)| TokenProjection {
                    horizon: (*name).to_owned(),
                    seconds: *seconds,
                    projected_tokens: project(tokens_last_hour, *seconds),
                })
                .collect(),
        },
    })
}

/// Where spending stands this (UTC calendar) month: what everything running costs per hour, what
/// was spent so far, and the month's projection at that rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outlook {
    pub burn_rate_micros_per_hour: i64,
    pub burn_rate_by_provider: Vec<Entry>,
    pub month_to_date_micros: i64,
    pub month_to_date_by_provider: Vec<Entry>,
    pub projected_month_end_micros: i64,
    /// Seconds from now to the end of the month.
    pub month_left_s: i64,
}

/// The month's [`Outlook`]: two queries (running rates, the month's costs).
///
/// # Errors
/// The store's.
pub async fn outlook(
    store: &dyn Store,
    currency: &str,
    now: DateTime<Utc>,
    filter: &CostFilter,
) -> Result<Outlook, StoreError> {
    let now_s = epoch(now);
    let (month_start, month_end) = month_of(now);
    let month = TimeRange { from_s: month_start, to_s: month_end, now_s };
    let (rates, month) =
        futures::try_join!(store.running_rates(now_s, filter), summary(store, currency, month, filter, 0))?;
    let burn: i64 = rates.iter().map(|rate| rate.hourly_micros).sum();
    let mut by_provider: BTreeMap<String, Exact> = BTreeMap::new();
    for rate in &rates {
        by_provider.entry(rate.key.provider.clone()).or_default().add(rate.hourly_micros, 0);
    }
    let month_left_s = month_end - now_s;
    Ok(Outlook {
        burn_rate_micros_per_hour: burn,
        burn_rate_by_provider: entries(by_provider),
        month_to_date_micros: month.total_micros,
        month_to_date_by_provider: month.by_provider,
        projected_month_end_micros: month.total_micros.saturating_add(project(burn, month_left_s)),
        month_left_s,
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageEntry {
    pub key: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub by_model: Vec<UsageEntry>,
    pub by_instance: Vec<UsageEntry>,
    pub by_instance_type: Vec<UsageEntry>,
    pub by_zone: Vec<UsageEntry>,
    pub by_provider: Vec<UsageEntry>,
    pub by_organization: Vec<UsageEntry>,
    /// By the API key the router counted the tokens for (`direct` for tokens an agent reported
    /// for traffic that did not come through the router).
    pub by_api_key: Vec<UsageEntry>,
}

/// Token usage over `[from_s, to_s)`, broken down.
///
/// # Errors
/// The store's.
pub async fn usage(store: &dyn Store, from_s: i64, to_s: i64, filter: &CostFilter) -> Result<Usage, StoreError> {
    let groups = store.usage_groups(from_s, to_s, filter).await?;
    Ok(usage_of(&groups, from_s, to_s))
}

fn usage_of(groups: &[UsageGroup], from_s: i64, to_s: i64) -> Usage {
    let mut dimensions: [BTreeMap<String, (i64, i64)>; 7] = Default::default();
    let (mut prompt, mut completion) = (0_i64, 0_i64);
    let unknown = || "unknown".to_owned();
    for group in groups {
        prompt = prompt.saturating_add(group.prompt_tokens);
        completion = completion.saturating_add(group.completion_tokens);
        let keys = [
            group.model.clone(),
            group.instance_id.map_or_else(unknown, |id| id.to_string()),
            group.instance_type.clone().unwrap_or_else(unknown),
            group.zone.clone().unwrap_or_else(unknown),
            group.provider.clone().unwrap_or_else(unknown),
            group.organization_id.to_string(),
            group.api_key_id.map_or_else(|| "direct".to_owned(), |id| id.to_string()),
        ];
        for (dimension, key) in dimensions.iter_mut().zip(keys) {
            let entry = dimension.entry(key).or_default();
            entry.0 = entry.0.saturating_add(group.prompt_tokens);
            entry.1 = entry.1.saturating_add(group.completion_tokens);
        }
    }
    let list = |groups: BTreeMap<String, (i64, i64)>| {
        let mut entries: Vec<UsageEntry> = groups
            .into_iter()
            .map(|(key, (prompt_tokens, completion_tokens))| UsageEntry {
                key,
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens.saturating_add(completion_tokens),
            })
            .collect();
        entries.sort_by(|a, b| b.total_tokens.cmp(&a.total_tokens).then_with(|| a.key.cmp(&b.key)));
        entries
    };
    let [by_model, by_instance, by_instance_type, by_zone, by_provider, by_organization, by_api_key] =
        dimensions.map(list);
    Usage {
        from: time(from_s),
        to: time(to_s),
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        by_model,
        by_instance,
        by_instance_type,
        by_zone,
        by_provider,
        by_organization,
        by_api_key,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenCost {
    pub key: String,
    pub cost_micros: i64,
    pub tokens: i64,
    /// `cost × 1,000,000 / tokens`, rounded down; absent without tokens.
    pub cost_per_million_tokens_micros: Option<i64>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CostPerToken {
    pub currency: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub by_model: Vec<TokenCost>,
    pub by_instance_type: Vec<TokenCost>,
    /// Each instance's cost shared among the API keys by their tokens on it (`direct` for tokens
    /// an agent reported without the router); the cost of instances that served no token in the
    /// range is `idle`. The entries add up to the range's total, less each instance's rounding down
    /// (under a micro-unit per instance).
    pub by_api_key: Vec<TokenCost>,
}

fn token_costs(costs: &[Entry], tokens: &[UsageEntry]) -> Vec<TokenCost> {
    let mut keys: Vec<&String> =
        costs.iter().map(|entry| &entry.key).chain(tokens.iter().map(|entry| &entry.key)).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let cost_micros = costs.iter().find(|entry| &entry.key == key).map_or(0, |entry| entry.cost_micros);
            let tokens = tokens.iter().find(|entry| &entry.key == key).map_or(0, |entry| entry.total_tokens);
            let per_million = (tokens > 0).then(|| saturate(i128::from(cost_micros) * 1_000_000 / i128::from(tokens)));
            TokenCost { key: key.clone(), cost_micros, tokens, cost_per_million_tokens_micros: per_million }
        })
        .collect()
}

/// Cost per million tokens per model and per instance type: the cost of the instances serving
/// them divided by the tokens they served, over the range.
///
/// # Errors
/// The store's.
pub async fn cost_per_token(
    store: &dyn Store,
    currency: &str,
    range: TimeRange,
    filter: &CostFilter,
) -> Result<CostPerToken, StoreError> {
    let (costs, instances, groups) = futures::try_join!(
        summary(store, currency, range, filter, 0),
        store.instance_costs(range, filter, MAX_INSTANCES),
        store.usage_groups(range.from_s, range.to_s, filter),
    )?;
    let tokens = usage_of(&groups, range.from_s, range.to_s);
    Ok(CostPerToken {
        currency: currency.to_owned(),
        from: time(range.from_s),
        to: time(range.to_s),
        by_model: token_costs(&costs.by_model, &tokens.by_model),
        by_instance_type: token_costs(&costs.by_instance_type, &tokens.by_instance_type),
        by_api_key: key_costs(&instances, &groups),
    })
}

/// The most instances whose costs are shared among keys in one answer.
const MAX_INSTANCES: u32 = 100_000;

/// Shares each instance's cost among the keys whose tokens it served, in proportion to them
/// (rounded down, the remainder to the key with the most tokens there, so the shares add up to
/// the instance's cost); the cost of an instance without tokens goes to `idle`.
fn key_costs(instances: &[InstanceCost], groups: &[UsageGroup]) -> Vec<TokenCost> {
    let key_of = |group: &UsageGroup| group.api_key_id.map_or_else(|| "direct".to_owned(), |id| id.to_string());
    let mut served: HashMap<InstanceId, BTreeMap<String, i64>> = HashMap::new();
    let mut totals: BTreeMap<String, (i128, i64)> = BTreeMap::new();
    for group in groups {
        let tokens = group.prompt_tokens.saturating_add(group.completion_tokens);
        totals.entry(key_of(group)).or_default().1 += tokens;
        if let Some(instance) = group.instance_id {
            *served.entry(instance).or_default().entry(key_of(group)).or_default() += tokens;
        }
    }
    for cost in instances {
        let shares = served.get(&cost.instance_id).filter(|keys| keys.values().any(|tokens| *tokens > 0));
        let Some(keys) = shares else {
            totals.entry("idle".to_owned()).or_default().0 += i128::from(cost.cost_micros);
            continue;
        };
        let all: i128 = keys.values().map(|tokens| i128::from(*tokens)).sum();
        let mut given = 0_i128;
        for (key, tokens) in keys {
            let share = i128::from(cost.cost_micros) * i128::from(*tokens) / all;
            given += share;
            totals.entry(key.clone()).or_default().0 += share;
        }
        if let Some((largest, _)) = keys.iter().max_by_key(|(key, tokens)| (**tokens, std::cmp::Reverse(*key))) {
            totals.entry(largest.clone()).or_default().0 += i128::from(cost.cost_micros) - given;
        }
    }
    let mut entries: Vec<TokenCost> = totals
        .into_iter()
        .map(|(key, (cost, tokens))| TokenCost {
            key,
            cost_micros: saturate(cost),
            tokens,
            cost_per_million_tokens_micros: (tokens > 0).then(|| saturate(cost * 1_000_000 / i128::from(tokens))),
        })
        .collect();
    entries.sort_by(|a, b| b.cost_micros.cmp(&a.cost_micros).then_with(|| a.key.cmp(&b.key)));
    entries
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BudgetStatus {
    #[serde(flatten)]
    pub budget: Budget,
    pub currency: String,
    /// `YYYY-MM`.
    pub period: String,
    pub month_to_date_micros: i64,
    pub projected_month_end_micros: i64,
    /// Month to date as a percentage of the amount.
    pub spent_percent: f64,
    /// Thresholds crossed in this period.
    pub alerts: Vec<BudgetAlert>,
}

/// Where an organization stands against its budget this month.
///
/// # Errors
/// The store's.
pub async fn budget_status(
    store: &dyn Store,
    currency: &str,
    budget: Budget,
    now: DateTime<Utc>,
) -> Result<BudgetStatus, StoreError> {
    let filter = CostFilter { organization: Some(budget.organization_id), ..CostFilter::default() };
    let outlook = outlook(store, currency, now, &filter).await?;
    let period = period(now);
    let alerts = store.budget_alerts(budget.organization_id, &period).await?;
    #[allow(clippy::cast_precision_loss)]
    let spent_percent = if budget.amount_micros > 0 {
        outlook.month_to_date_micros as f64 * 100.0 / budget.amount_micros as f64
    } else {
        0.0
    };
    Ok(BudgetStatus {
        budget,
        currency: currency.to_owned(),
        period,
        month_to_date_micros: outlook.month_to_date_micros,
        projected_month_end_micros: outlook.projected_month_end_micros,
        spent_percent,
        alerts,
    })
}

/// Why a hard cap refuses a deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapExceeded {
    pub amount_micros: i64,
    pub projected_micros: i64,
    pub period: String,
}

/// What `count` more instances would add per hour in the reporting currency of `configured`
/// rates: each at the most expensive of `placements` (failover may land it there), plus the
/// organization's instances that are not billing yet, each at its most expensive placement.
///
/// # Errors
/// The store's.
pub async fn added_hourly(
    store: &dyn Store,
    configured: &qm_domain::ExchangeRates,
    organization: qm_domain::OrganizationId,
    placements: &[qm_store::Offer],
    count: i32,
) -> Result<i64, StoreError> {
    let rates = qm_store::finops::effective_rates(store, configured).await?;
    let hourly = |price: i64, currency: &str| {
        qm_domain::Currency::parse(currency)
            .ok()
            .and_then(|currency| rates.convert(qm_domain::MicroUnits::new(price), currency))
            .map_or(price, |price| price.get())
    };
    let most_expensive = |offers: &[qm_store::Offer], fallback: i64| {
        offers.iter().map(|offer| hourly(offer.hourly_price_micros, &offer.currency)).fold(fallback, i64::max)
    };
    let pending: i64 = store
        .unbilled_instances(organization)
        .await?
        .iter()
        .map(|instance| most_expensive(&instance.placements, hourly(instance.hourly_price_micros, &instance.currency)))
        .fold(0, i64::saturating_add);
    Ok(most_expensive(placements, 0).saturating_mul(i64::from(count)).saturating_add(pending))
}

/// Refuses spending `added_hourly` more (reporting currency, per hour, until the month ends)
/// when the organization's budget has a hard cap that the projected month would exceed.
///
/// # Errors
/// The store's.
pub async fn check_cap(
    store: &dyn Store,
    currency: &str,
    organization: qm_domain::OrganizationId,
    added_hourly: i64,
    now: DateTime<Utc>,
) -> Result<Option<CapExceeded>, StoreError> {
    let Some(budget) = store.budget(organization).await? else { return Ok(None) };
    if !budget.hard_cap {
        return Ok(None);
    }
    let filter = CostFilter { organization: Some(organization), ..CostFilter::default() };
    let outlook = outlook(store, currency, now, &filter).await?;
    let projected = outlook.projected_month_end_micros.saturating_add(project(added_hourly, outlook.month_left_s));
    Ok((projected > budget.amount_micros).then(|| CapExceeded {
        amount_micros: budget.amount_micros,
        projected_micros: projected,
        period: period(now),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_add_up_and_never_decrease() {
        // 1 EUR/h from 30 s to 150 s, 3.6 EUR/h from 90 s on, over [0, 180) in minutes.
        let range = TimeRange { from_s: 0, to_s: 180, now_s: 1_000 };
        let changes = [(30, 1_000_000), (90, 3_600_000), (150, -1_000_000), (180, -3_600_000)];
        let points = buckets(range, 60, &changes);
        let costs: Vec<i64> = points.iter().map(|point| point.cost_micros).collect();
        // Cumulative: 8333.3, then 55000, then 123333.3; buckets are differences of the floors.
        assert_eq!(costs, [8_333, 46_667, 68_333]);
        assert_eq!(points.last().map(|point| point.cumulative_micros), Some(123_333));
        assert_eq!(project(3_600_000, 60), 60_000);
    }

    #[test]
    fn months_and_periods() {
        let now = Utc.with_ymd_and_hms(2026, 12, 31, 23, 0, 0).single().expect("time");
        let (start, end) = month_of(now);
        assert_eq!(time(start), Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).single().expect("time"));
        assert_eq!(time(end), Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).single().expect("time"));
        assert_eq!(period(now), "2026-12");
    }

    #[test]
    fn instance_costs_are_shared_among_keys_by_their_tokens_and_add_up() {
        let (a, b) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let (served, idle) = (InstanceId::new(), InstanceId::new());
        let group = |key: Option<uuid::Uuid>, prompt: i64, completion: i64| UsageGroup {
            organization_id: qm_domain::OrganizationId::new(),
            model: "m".into(),
            instance_id: Some(served),
            api_key_id: key,
            provider: None,
            region: None,
            zone: None,
            instance_type: None,
            prompt_tokens: prompt,
            completion_tokens: completion,
        };
        // 1,000 micros over 3 tokens: a gets 2/3 (666 + the remainder), b 1/3; 500 idle.
        let groups = [group(Some(a), 1, 1), group(Some(b), 1, 0)];
        let instances = [
            InstanceCost { instance_id: served, cost_micros: 1_000 },
            InstanceCost { instance_id: idle, cost_micros: 500 },
        ];
        let costs = key_costs(&instances, &groups);
        let find = |key: &str| costs.iter().find(|cost| cost.key == key).map(|cost| (cost.cost_micros, cost.tokens));
        assert_eq!(find(&a.to_string()), Some((667, 2)));
        assert_eq!(find(&b.to_string()), Some((333, 1)));
        assert_eq!(find("idle"), Some((500, 0)));
        assert_eq!(costs.iter().map(|cost| cost.cost_micros).sum::<i64>(), 1_500, "the shares add up");
        assert_eq!(costs[0].cost_per_million_tokens_micros, Some(333_500_000));
    }
}
