//! The budget watcher and the cost gauges, every `every` on the replica holding the
//! `finops.budgets` lease: for each budget, this month's spend against its thresholds; a
//! threshold crossed for the first time in the period is recorded (once, by its primary key),
//! announced as `budget.threshold_crossed` and written to the action log, in one transaction.
//! The gauges show the burn rate and month-to-date cost per provider and each budget's spend.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Registry};
use qm_events::Envelope;
use qm_events::payloads::BudgetThresholdCrossed;
use qm_runtime::Shutdown;
use qm_runtime::singleton::{Lease, Singleton};
use qm_store::{ActionStatus, BudgetAlert, CostFilter, NewActionLog, Store, StoreError};

use qm_costs as cost;

pub struct Watcher {
    pub store: Arc<dyn Store>,
    pub currency: String,
    pub every: Duration,
    burn_rate: IntGaugeVec,
    month_to_date: IntGaugeVec,
    budget_spend: IntGaugeVec,
    crossed: IntCounterVec,
}

/// Sets `gauge` per provider from `entries`; a provider whose instances stopped reads 0.
fn set_per_provider(gauge: &IntGaugeVec, entries: &[cost::Entry]) {
    let values: Vec<(Vec<String>, i64)> =
        entries.iter().map(|entry| (vec![entry.key.clone()], entry.cost_micros)).collect();
    qm_telemetry::metrics::set_all(gauge, &values);
}

impl Watcher {
    pub fn new(store: Arc<dyn Store>, currency: String, every: Duration, registry: &Registry) -> Self {
        use qm_telemetry::metrics::{counter_vec, gauge_vec};
        Self {
            store,
            currency,
            every,
            burn_rate: gauge_vec(
                registry,
                "qm_finops_burn_rate_micros_per_hour",
                "Summed hourly price of running instances, reporting currency micro-units, by provider",
                &["provider"],
            ),
            month_to_date: gauge_vec(
                registry,
                "qm_finops_month_to_date_cost_micros",
                "Cost since the start of the month, reporting currency micro-units, by provider",
                &["provider"],
            ),
            budget_spend: gauge_vec(
                registry,
                "qm_finops_budget_spent_percent",
                "Month-to-date spend as a percentage of the organization's budget",
                &["organization_id"],
            ),
            crossed: counter_vec(
                registry,
                "qm_finops_budget_thresholds_crossed_total",
                "Budget thresholds crossed (each once per organization and month)",
                &[],
            ),
        }
    }

    /// One pass; returns the thresholds newly crossed.
    ///
    /// # Errors
    /// The store's.
    pub async fn check(&self) -> Result<Vec<BudgetAlert>, StoreError> {
        let now = qm_store::now();
        let outlook = cost::outlook(&*self.store, &self.currency, now, &CostFilter::default()).await?;
        set_per_provider(&self.burn_rate, &outlook.burn_rate_by_provider);
        set_per_provider(&self.month_to_date, &outlook.month_to_date_by_provider);

        let mut crossed = Vec::new();
        for budget in self.store.budgets().await? {
            let status = cost::budget_status(&*self.store, &self.currency, budget.clone(), now).await?;
            let organization = budget.organization_id.to_string();
            #[allow(clippy::cast_possible_truncation)]
            self.budget_spend.with_label_values(&[organization.as_str()]).set(status.spent_percent as i64);
            for threshold in &budget.thresholds {
                let reached = i128::from(status.month_to_date_micros) * 100
                    >= i128::from(budget.amount_micros) * i128::from(*threshold);
                if !reached || status.alerts.iter().any(|alert| alert.threshold == *threshold) {
                    continue;
                }
                let alert = BudgetAlert {
                    organization_id: budget.organization_id,
                    period: status.period.clone(),
                    threshold: *threshold,
                    spend_micros: status.month_to_date_micros,
                    crossed_at: now,
                };
                if self.announce(&alert, budget.amount_micros).await? {
                    self.crossed.with_label_values(&[] as &[&str]).inc();
                    crossed.push(alert);
                }
            }
        }
        Ok(crossed)
    }

    async fn announce(&self, alert: &BudgetAlert, amount_micros: i64) -> Result<bool, StoreError> {
        let mut tx = self.store.begin().await?;
        if !tx.record_budget_alert(alert).await? {
            return Ok(false);
        }
        let crossed = BudgetThresholdCrossed {
            organization_id: alert.organization_id,
            period: alert.period.clone(),
            threshold_percent: alert.threshold,
            amount_micros,
            spend_micros: alert.spend_micros,
            currency: self.currency.clone(),
        };
        let event = Envelope::of(&crossed, crate::NAME, Some(alert.organization_id));
        tx.enqueue(&event).await?;
        let mut entry = NewActionLog::new(crate::NAME, "budget.threshold_crossed", ActionStatus::Succeeded);
        entry.organization_id = Some(alert.organization_id);
        entry.metadata = event.data.clone();
        tx.insert_action_log(&entry).await?;
        tx.commit().await?;
        tracing::warn!(organization = %alert.organization_id, threshold = alert.threshold, "budget threshold crossed");
        Ok(true)
    }

    /// Checks every `every` while this replica holds the `finops.budgets` lease (renewed every
    /// few seconds: a survivor takes over within 25 s of a holder's death).
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let singleton = Singleton::new(self.store.clone(), "finops.budgets", Lease::default());
        singleton
            .run(self.every, Duration::ZERO, shutdown, || {
                let watcher = Arc::clone(&self);
                async move {
                    if let Err(error) = watcher.check().await {
                        tracing::warn!(%error, "budget check failed; trying again next time");
                    }
                }
            })
            .await;
    }
}
