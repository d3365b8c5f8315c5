//! FinOps records (issue 6): cost intervals from the billing events, token usage, budgets and
//! their alerts, and edited exchange rates.
//!
//! Money is integer micro-units; times are UTC epoch seconds. An interval's cost over a range
//! is `hourly × overlap_seconds / 3600`; sums are returned as a quotient and remainder of that
//! division (`Σ ⌊h·o/3600⌋` and `Σ (h·o mod 3600)`), so callers can add groups exactly and round
//! once, and no sum overflows.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qm_domain::{InstanceId, OrganizationId};
use serde::Serialize;

use crate::StoreError;

/// What `instance.billing_started` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingStart {
    pub instance_id: InstanceId,
    pub organization_id: OrganizationId,
    pub provider: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    pub model: String,
    pub currency: String,
    pub hourly_price_micros: i64,
    pub reporting_currency: String,
    pub reporting_hourly_micros: i64,
    pub started_s: i64,
}

/// Half-open `[from_s, to_s)`, never past `now_s` (running intervals end now).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub from_s: i64,
    pub to_s: i64,
    pub now_s: i64,
}

/// Every field narrows; `None` leaves it open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CostFilter {
    pub organization: Option<OrganizationId>,
    pub provider: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub instance: Option<InstanceId>,
    pub model: Option<String>,
}

/// The dimensions costs are broken down by (an instance aside).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CostKey {
    pub organization_id: OrganizationId,
    pub provider: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    pub model: String,
}

/// Cost of one group over a range, as `quotient + remainder / 3600` micro-units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostGroup {
    pub key: CostKey,
    pub quotient: i64,
    pub remainder: i64,
}

/// The summed hourly price (reporting currency) of one group's running instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateGroup {
    pub key: CostKey,
    pub hourly_micros: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceCost {
    pub instance_id: InstanceId,
    pub cost_micros: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CostInterval {
    pub instance_id: InstanceId,
    pub currency: Option<String>,
    pub hourly_price_micros: Option<i64>,
    pub reporting_currency: Option<String>,
    pub reporting_hourly_micros: Option<i64>,
    pub started_s: Option<i64>,
    pub stopped_s: Option<i64>,
}

/// What one `usage.tokens` event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub event_id: uuid::Uuid,
    pub at_s: i64,
    pub organization_id: OrganizationId,
    pub instance_id: Option<InstanceId>,
    pub api_key_id: Option<uuid::Uuid>,
    pub model: String,
    pub provider: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// Tokens of one (organization, model, instance) over a range, with the instance's placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageGroup {
    pub organization_id: OrganizationId,
    pub model: String,
    pub instance_id: Option<InstanceId>,
    /// The API key whose requests the router counted; `None` for tokens an agent reported.
    pub api_key_id: Option<uuid::Uuid>,
    pub provider: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Budget {
    pub organization_id: OrganizationId,
    /// Per calendar month (UTC), in the reporting currency.
    pub amount_micros: i64,
    /// Percentages of the amount that raise an alert once per month, ascending.
    pub thresholds: Vec<u32>,
    /// Refuse new deployments (402) while the projected month's spend exceeds the amount.
    pub hard_cap: bool,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BudgetAlert {
    pub organization_id: OrganizationId,
    /// `YYYY-MM`.
    pub period: String,
    pub threshold: u32,
    pub spend_micros: i64,
    pub crossed_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ExchangeRate {
    pub currency: String,
    /// Micro-units of the reporting currency per unit of `currency`.
    pub rate_micros: i64,
    pub updated_at: DateTime<Utc>,
}

/// The configured rates (`QM_FX_RATES`) overridden by the ones edited through the api.
///
/// # Errors
/// The store's.
pub async fn effective_rates(
    store: &dyn crate::Store,
    configured: &qm_domain::ExchangeRates,
) -> Result<qm_domain::ExchangeRates, StoreError> {
    let mut rates = configured.clone();
    for edited in store.exchange_rates().await? {
        if let Ok(currency) = qm_domain::Currency::parse(&edited.currency) {
            rates = rates.with_rate(currency, qm_domain::MicroUnits::new(edited.rate_micros));
        }
    }
    Ok(rates)
}

#[async_trait]
pub trait FinopsStore {
    /// Cost per group over `range`.
    async fn cost_groups(&self, range: TimeRange, filter: &CostFilter) -> Result<Vec<CostGroup>, StoreError>;
    /// The `limit` costliest instances over `range`.
    async fn instance_costs(
        &self,
        range: TimeRange,
        filter: &CostFilter,
        limit: u32,
    ) -> Result<Vec<InstanceCost>, StoreError>;
    /// Where the summed hourly price changes within `range`: `(second, change)`, ascending; an
    /// interval running when the range starts appears as a change at `from_s`.
    async fn cost_changes(&self, range: TimeRange, filter: &CostFilter) -> Result<Vec<(i64, i64)>, StoreError>;
    /// Summed hourly price per group of the intervals running at `at_s`.
    async fn running_rates(&self, at_s: i64, filter: &CostFilter) -> Result<Vec<RateGroup>, StoreError>;
    async fn cost_interval(&self, instance: InstanceId) -> Result<Option<CostInterval>, StoreError>;
    /// Tokens over `[from_s, to_s)`; the filter's instance type, zone, region and provider apply
    /// to the instance that served them.
    /// Tokens over `[from_s, to_s)` grouped by every dimension. For an instance the router
    /// served in the range, the router's counts (per API key) are the instance's usage: what its
    /// agent reported from the engine's counters covers the same tokens and is left out.
    async fn usage_groups(&self, from_s: i64, to_s: i64, filter: &CostFilter) -> Result<Vec<UsageGroup>, StoreError>;
    async fn budgets(&self) -> Result<Vec<Budget>, StoreError>;
    async fn budget(&self, organization: OrganizationId) -> Result<Option<Budget>, StoreError>;
    async fn budget_alerts(&self, organization: OrganizationId, period: &str) -> Result<Vec<BudgetAlert>, StoreError>;
    async fn exchange_rates(&self) -> Result<Vec<ExchangeRate>, StoreError>;
}

#[async_trait]
pub trait FinopsTx {
    /// Marks the instance billed from `at`; `false` when it already was (nothing to announce).
    async fn start_billing(&mut self, instance: InstanceId, at: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Marks a billed instance's billing stopped at `at`; `false` when it was not billed or
    /// already stopped.
    async fn stop_billing(&mut self, instance: InstanceId, at: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Opens (or completes, when the stop came first) an interval; a repeat changes nothing.
    async fn open_interval(&mut self, start: &BillingStart) -> Result<(), StoreError>;
    /// Closes an interval at `stopped_s` (the earliest stop wins); a repeat changes nothing.
    async fn close_interval(
        &mut self,
        instance: InstanceId,
        organization: Option<OrganizationId>,
        stopped_s: i64,
    ) -> Result<(), StoreError>;
    /// `false` when the event was already recorded.
    async fn record_usage(&mut self, usage: &UsageRecord) -> Result<bool, StoreError>;
    async fn put_budget(
        &mut self,
        organization: OrganizationId,
        amount_micros: i64,
        thresholds: &[u32],
        hard_cap: bool,
    ) -> Result<Budget, StoreError>;
    async fn delete_budget(&mut self, organization: OrganizationId) -> Result<bool, StoreError>;
    /// `false` when this threshold already fired in this period.
    async fn record_budget_alert(&mut self, alert: &BudgetAlert) -> Result<bool, StoreError>;
    async fn put_exchange_rate(&mut self, currency: &str, rate_micros: i64) -> Result<ExchangeRate, StoreError>;
}

macro_rules! impl_finops_sql {
    (store: $store:ty, tx: $tx:ty, db: $db:ty, least: $least:literal, greatest: $greatest:literal) => {
        mod finops_sql {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use qm_domain::{InstanceId, OrganizationId};
            use sqlx::Row as _;

            use super::*;
            use crate::finops::{
                BillingStart, Budget, BudgetAlert, CostFilter, CostGroup, CostInterval, CostKey, ExchangeRate,
                FinopsStore, FinopsTx, InstanceCost, RateGroup, TimeRange, UsageGroup, UsageRecord,
            };
            use crate::{StoreError, now};

            type DbRow = <$db as sqlx::Database>::Row;
            type Query<'q> = sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>;

            /// The [`CostFilter`] as SQL over placeholders `$first`..`$first + 6`, bound by
            /// [`bind_filter`].
            fn filter_sql(first: usize) -> String {
                ["organization_id", "provider", "region", "zone", "instance_type", "instance_id", "model"]
                    .iter()
                    .enumerate()
                    .map(|(offset, column)| format!("(${n} IS NULL OR {column} = ${n})", n = first + offset))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            }

            fn bind_filter<'q>(query: Query<'q>, filter: &'q CostFilter) -> Query<'q> {
                query
                    .bind(filter.organization.map(|id| id.as_uuid()))
                    .bind(filter.provider.as_deref())
                    .bind(filter.region.as_deref())
                    .bind(filter.zone.as_deref())
                    .bind(filter.instance_type.as_deref())
                    .bind(filter.instance.map(|id| id.as_uuid()))
                    .bind(filter.model.as_deref())
            }
            const KEY_COLUMNS: &str = "organization_id, provider, region, zone, instance_type, model";

            /// The end and start of an interval within `[$1, $2)` and before `$3`.
            fn end() -> String {
                format!("{}(COALESCE(stopped_s, $3), $3, $2)", $least)
            }

            fn start() -> String {
                format!("{}(started_s, $1)", $greatest)
            }

            /// Intervals with a price that overlap the range (`$1`..`$3`), filtered (`$4`..`$10`).
            fn overlapping() -> String {
                format!(
                    "reporting_hourly_micros IS NOT NULL AND started_s IS NOT NULL AND started_s < $2 \
                     AND (stopped_s IS NULL OR stopped_s > $1) AND {} > {} AND {}",
                    end(),
                    start(),
                    filter_sql(4)
                )
            }

            fn bind_range<'q>(query: Query<'q>, range: TimeRange, filter: &'q CostFilter) -> Query<'q> {
                bind_filter(query.bind(range.from_s).bind(range.to_s).bind(range.now_s), filter)
            }

            fn key_from_row(row: &DbRow) -> Result<CostKey, StoreError> {
                Ok(CostKey {
                    organization_id: OrganizationId::from_uuid(row.try_get("organization_id")?),
                    provider: row.try_get("provider")?,
                    region: row.try_get("region")?,
                    zone: row.try_get("zone")?,
                    instance_type: row.try_get("instance_type")?,
                    model: row.try_get("model")?,
                })
            }

            fn budget_from_row(row: &DbRow) -> Result<Budget, StoreError> {
                let thresholds: sqlx::types::Json<Vec<u32>> = row.try_get("thresholds")?;
                Ok(Budget {
                    organization_id: OrganizationId::from_uuid(row.try_get("organization_id")?),
                    amount_micros: row.try_get("amount_micros")?,
                    thresholds: thresholds.0,
                    hard_cap: row.try_get("hard_cap")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn alert_from_row(row: &DbRow) -> Result<BudgetAlert, StoreError> {
                let threshold: i32 = row.try_get("threshold")?;
                Ok(BudgetAlert {
                    organization_id: OrganizationId::from_uuid(row.try_get("organization_id")?),
                    period: row.try_get("period")?,
                    threshold: u32::try_from(threshold).unwrap_or_default(),
                    spend_micros: row.try_get("spend_micros")?,
                    crossed_at: row.try_get("crossed_at")?,
                })
            }

            fn rate_from_row(row: &DbRow) -> Result<ExchangeRate, StoreError> {
                Ok(ExchangeRate {
                    currency: row.try_get("currency")?,
                    rate_micros: row.try_get("rate_micros")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            const BUDGET_COLUMNS: &str = "organization_id, amount_micros, thresholds, hard_cap, updated_at";
            const ALERT_COLUMNS: &str = "organization_id, period, threshold, spend_micros, crossed_at";

            #[async_trait]
            impl FinopsStore for $store {
                async fn cost_groups(&self, range: TimeRange, filter: &CostFilter) -> Result<Vec<CostGroup>, StoreError> {
                    let product = format!("reporting_hourly_micros * ({} - {})", end(), start());
                    let sql = format!(
                        "SELECT {KEY_COLUMNS}, CAST(SUM(({product}) / 3600) AS BIGINT) AS quotient, \
                         CAST(SUM(({product}) % 3600) AS BIGINT) AS remainder \
                         FROM cost_intervals WHERE {} GROUP BY {KEY_COLUMNS}",
                        overlapping()
                    );
                    let rows = bind_range(sqlx::query(&sql), range, filter).fetch_all(self.reader()).await?;
                    rows.iter()
                        .map(|row| {
                            Ok(CostGroup {
                                key: key_from_row(row)?,
                                quotient: row.try_get("quotient")?,
                                remainder: row.try_get("remainder")?,
                            })
                        })
                        .collect()
                }

                async fn instance_costs(
                    &self,
                    range: TimeRange,
                    filter: &CostFilter,
                    limit: u32,
                ) -> Result<Vec<InstanceCost>, StoreError> {
                    let sql = format!(
                        "SELECT instance_id, reporting_hourly_micros * ({} - {}) / 3600 AS cost FROM cost_intervals \
                         WHERE {} ORDER BY cost DESC, instance_id LIMIT $11",
                        end(),
                        start(),
                        overlapping()
                    );
                    let rows = bind_range(sqlx::query(&sql), range, filter)
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter()
                        .map(|row| {
                            Ok(InstanceCost {
                                instance_id: InstanceId::from_uuid(row.try_get("instance_id")?),
                                cost_micros: row.try_get("cost")?,
                            })
                        })
                        .collect()
                }

                async fn cost_changes(&self, range: TimeRange, filter: &CostFilter) -> Result<Vec<(i64, i64)>, StoreError> {
                    let overlapping = overlapping();
                    let sql = format!(
                        "SELECT t, CAST(SUM(change) AS BIGINT) AS change FROM (\
                         SELECT {} AS t, reporting_hourly_micros AS change FROM cost_intervals WHERE {overlapping} \
                         UNION ALL \
                         SELECT {} AS t, -reporting_hourly_micros AS change FROM cost_intervals WHERE {overlapping}\
                         ) changes GROUP BY t ORDER BY t",
                        start(),
                        end()
                    );
                    let rows = bind_range(sqlx::query(&sql), range, filter).fetch_all(self.reader()).await?;
                    rows.iter().map(|row| Ok((row.try_get("t")?, row.try_get("change")?))).collect()
                }

                async fn running_rates(&self, at_s: i64, filter: &CostFilter) -> Result<Vec<RateGroup>, StoreError> {
                    let sql = format!(
                        "SELECT {KEY_COLUMNS}, CAST(SUM(reporting_hourly_micros) AS BIGINT) AS hourly FROM cost_intervals \
                         WHERE reporting_hourly_micros IS NOT NULL AND started_s <= $1 AND (stopped_s IS NULL OR stopped_s > $1) \
                         AND {} GROUP BY {KEY_COLUMNS}",
                        filter_sql(2)
                    );
                    let rows = bind_filter(sqlx::query(&sql).bind(at_s), filter).fetch_all(self.reader()).await?;
                    rows.iter()
                        .map(|row| Ok(RateGroup { key: key_from_row(row)?, hourly_micros: row.try_get("hourly")? }))
                        .collect()
                }

                async fn cost_interval(&self, instance: InstanceId) -> Result<Option<CostInterval>, StoreError> {
                    let row = sqlx::query(
                        "SELECT instance_id, currency, hourly_price_micros, reporting_currency, reporting_hourly_micros, \
                         started_s, stopped_s FROM cost_intervals WHERE instance_id = $1",
                    )
                    .bind(instance.as_uuid())
                    .fetch_optional(self.reader())
                    .await?;
                    row.map(|row| {
                        Ok(CostInterval {
                            instance_id: InstanceId::from_uuid(row.try_get("instance_id")?),
                            currency: row.try_get("currency")?,
                            hourly_price_micros: row.try_get("hourly_price_micros")?,
                            reporting_currency: row.try_get("reporting_currency")?,
                            reporting_hourly_micros: row.try_get("reporting_hourly_micros")?,
                            started_s: row.try_get("started_s")?,
                            stopped_s: row.try_get("stopped_s")?,
                        })
                    })
                    .transpose()
                }

                async fn usage_groups(
                    &self,
                    from_s: i64,
                    to_s: i64,
                    filter: &CostFilter,
                ) -> Result<Vec<UsageGroup>, StoreError> {
                    let sql = format!(
                        "SELECT organization_id, model, instance_id, api_key_id, provider, region, zone, instance_type, \
                         CAST(SUM(prompt_tokens) AS BIGINT) AS prompt, CAST(SUM(completion_tokens) AS BIGINT) AS completion \
                         FROM token_usage WHERE at_s >= $1 AND at_s < $2 AND {} \
                         AND NOT (api_key_id IS NULL AND instance_id IN (SELECT instance_id FROM token_usage \
                             WHERE api_key_id IS NOT NULL AND instance_id IS NOT NULL AND at_s >= $1 AND at_s < $2)) \
                         GROUP BY organization_id, model, instance_id, api_key_id, provider, region, zone, instance_type",
                        filter_sql(3)
                    );
                    let rows =
                        bind_filter(sqlx::query(&sql).bind(from_s).bind(to_s), filter).fetch_all(self.reader()).await?;
                    rows.iter()
                        .map(|row| {
                            let instance: Option<uuid::Uuid> = row.try_get("instance_id")?;
                            Ok(UsageGroup {
                                organization_id: OrganizationId::from_uuid(row.try_get("organization_id")?),
                                model: row.try_get("model")?,
                                instance_id: instance.map(InstanceId::from_uuid),
                                api_key_id: row.try_get("api_key_id")?,
                                provider: row.try_get("provider")?,
                                region: row.try_get("region")?,
                                zone: row.try_get("zone")?,
                                instance_type: row.try_get("instance_type")?,
                                prompt_tokens: row.try_get("prompt")?,
                                completion_tokens: row.try_get("completion")?,
                            })
                        })
                        .collect()
                }

                async fn budgets(&self) -> Result<Vec<Budget>, StoreError> {
                    let sql = format!("SELECT {BUDGET_COLUMNS} FROM budgets ORDER BY organization_id");
                    let rows = sqlx::query(&sql).fetch_all(self.reader()).await?;
                    rows.iter().map(budget_from_row).collect()
                }

                async fn budget(&self, organization: OrganizationId) -> Result<Option<Budget>, StoreError> {
                    let sql = format!("SELECT {BUDGET_COLUMNS} FROM budgets WHERE organization_id = $1");
                    let row = sqlx::query(&sql).bind(organization.as_uuid()).fetch_optional(self.reader()).await?;
                    row.as_ref().map(budget_from_row).transpose()
                }

                async fn budget_alerts(
                    &self,
                    organization: OrganizationId,
                    period: &str,
                ) -> Result<Vec<BudgetAlert>, StoreError> {
                    let sql = format!(
                        "SELECT {ALERT_COLUMNS} FROM budget_alerts WHERE organization_id = $1 AND period = $2 ORDER BY threshold"
                    );
                    let rows =
                        sqlx::query(&sql).bind(organization.as_uuid()).bind(period).fetch_all(self.reader()).await?;
                    rows.iter().map(alert_from_row).collect()
                }

                async fn exchange_rates(&self) -> Result<Vec<ExchangeRate>, StoreError> {
                    let rows = sqlx::query("SELECT currency, rate_micros, updated_at FROM exchange_rates ORDER BY currency")
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(rate_from_row).collect()
                }
            }

            #[async_trait]
            impl FinopsTx for $tx {
                async fn start_billing(&mut self, instance: InstanceId, at: DateTime<Utc>) -> Result<bool, StoreError> {
                    let done = sqlx::query(
                        "UPDATE instances SET billing_started_at = $1 WHERE id = $2 AND billing_started_at IS NULL",
                    )
                    .bind(at)
                    .bind(instance.as_uuid())
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn stop_billing(&mut self, instance: InstanceId, at: DateTime<Utc>) -> Result<bool, StoreError> {
                    let done = sqlx::query(
                        "UPDATE instances SET billing_stopped_at = $1 WHERE id = $2 \
                         AND billing_started_at IS NOT NULL AND billing_stopped_at IS NULL",
                    )
                    .bind(at)
                    .bind(instance.as_uuid())
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn open_interval(&mut self, start: &BillingStart) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO cost_intervals (instance_id, organization_id, provider, region, zone, instance_type, model, \
                         currency, hourly_price_micros, reporting_currency, reporting_hourly_micros, started_s, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                         ON CONFLICT (instance_id) DO UPDATE SET \
                         organization_id = excluded.organization_id, provider = excluded.provider, region = excluded.region, \
                         zone = excluded.zone, instance_type = excluded.instance_type, model = excluded.model, \
                         currency = excluded.currency, hourly_price_micros = excluded.hourly_price_micros, \
                         reporting_currency = excluded.reporting_currency, \
                         reporting_hourly_micros = excluded.reporting_hourly_micros, started_s = excluded.started_s, \
                         updated_at = excluded.updated_at \
                         WHERE cost_intervals.started_s IS NULL",
                    )
                    .bind(start.instance_id.as_uuid())
                    .bind(start.organization_id.as_uuid())
                    .bind(&start.provider)
                    .bind(&start.region)
                    .bind(&start.zone)
                    .bind(&start.instance_type)
                    .bind(&start.model)
                    .bind(&start.currency)
                    .bind(start.hourly_price_micros)
                    .bind(&start.reporting_currency)
                    .bind(start.reporting_hourly_micros)
                    .bind(start.started_s)
                    .bind(now())
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(())
                }

                async fn close_interval(
                    &mut self,
                    instance: InstanceId,
                    organization: Option<OrganizationId>,
                    stopped_s: i64,
                ) -> Result<(), StoreError> {
                    let sql = format!(
                        "INSERT INTO cost_intervals (instance_id, organization_id, stopped_s, updated_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (instance_id) DO UPDATE SET \
                         stopped_s = {}(COALESCE(cost_intervals.stopped_s, excluded.stopped_s), excluded.stopped_s), \
                         updated_at = excluded.updated_at",
                        $least
                    );
                    sqlx::query(&sql)
                        .bind(instance.as_uuid())
                        .bind(organization.map(|id| id.as_uuid()))
                        .bind(stopped_s)
                        .bind(now())
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(())
                }

                async fn record_usage(&mut self, usage: &UsageRecord) -> Result<bool, StoreError> {
                    let done = sqlx::query(
                        "INSERT INTO token_usage (event_id, at_s, organization_id, instance_id, api_key_id, model, provider, \
                         region, zone, instance_type, prompt_tokens, completion_tokens) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (event_id) DO NOTHING",
                    )
                    .bind(usage.event_id)
                    .bind(usage.at_s)
                    .bind(usage.organization_id.as_uuid())
                    .bind(usage.instance_id.map(|id| id.as_uuid()))
                    .bind(usage.api_key_id)
                    .bind(&usage.model)
                    .bind(usage.provider.as_deref())
                    .bind(usage.region.as_deref())
                    .bind(usage.zone.as_deref())
                    .bind(usage.instance_type.as_deref())
                    .bind(usage.prompt_tokens)
                    .bind(usage.completion_tokens)
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn put_budget(
                    &mut self,
                    organization: OrganizationId,
                    amount_micros: i64,
                    thresholds: &[u32],
                    hard_cap: bool,
                ) -> Result<Budget, StoreError> {
                    let sql = format!(
                        "INSERT INTO budgets ({BUDGET_COLUMNS}) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (organization_id) \
                         DO UPDATE SET amount_micros = excluded.amount_micros, thresholds = excluded.thresholds, \
                         hard_cap = excluded.hard_cap, updated_at = excluded.updated_at RETURNING {BUDGET_COLUMNS}"
                    );
                    let row = sqlx::query(&sql)
                        .bind(organization.as_uuid())
                        .bind(amount_micros)
                        .bind(sqlx::types::Json(thresholds))
                        .bind(hard_cap)
                        .bind(now())
                        .fetch_one(&mut *self.transaction)
                        .await?;
                    budget_from_row(&row)
                }

                async fn delete_budget(&mut self, organization: OrganizationId) -> Result<bool, StoreError> {
                    let done = sqlx::query("DELETE FROM budgets WHERE organization_id = $1")
                        .bind(organization.as_uuid())
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn record_budget_alert(&mut self, alert: &BudgetAlert) -> Result<bool, StoreError> {
                    let sql = format!(
                        "INSERT INTO budget_alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (organization_id, period, threshold) DO NOTHING"
                    );
                    let done = sqlx::query(&sql)
                        .bind(alert.organization_id.as_uuid())
                        .bind(&alert.period)
                        .bind(i32::try_from(alert.threshold).unwrap_or(i32::MAX))
                        .bind(alert.spend_micros)
                        .bind(alert.crossed_at)
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn put_exchange_rate(&mut self, currency: &str, rate_micros: i64) -> Result<ExchangeRate, StoreError> {
                    let row = sqlx::query(
                        "INSERT INTO exchange_rates (currency, rate_micros, updated_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (currency) DO UPDATE SET rate_micros = excluded.rate_micros, updated_at = excluded.updated_at \
                         RETURNING currency, rate_micros, updated_at",
                    )
                    .bind(currency)
                    .bind(rate_micros)
                    .bind(now())
                    .fetch_one(&mut *self.transaction)
                    .await?;
                    rate_from_row(&row)
                }
            }
        }
    };
}

pub(crate) use impl_finops_sql;
