//! An organization whose budget has a hard cap stops sending traffic once its month-to-date
//! spend reaches the budget: its requests get OpenAI's `insufficient_quota`. The answer is
//! cached per organization for [`CHECK_EVERY`], so a busy organization costs two queries per
//! interval, not per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use qm_domain::OrganizationId;
use qm_store::{CostFilter, Store, StoreError};

pub const CHECK_EVERY: Duration = Duration::from_secs(5);

pub struct BudgetGate {
    currency: String,
    checked: Mutex<HashMap<OrganizationId, (Instant, bool)>>,
}

impl BudgetGate {
    pub fn new(currency: &str) -> Self {
        Self { currency: currency.to_owned(), checked: Mutex::new(HashMap::new()) }
    }

    /// Whether `organization`'s hard cap is reached.
    ///
    /// # Errors
    /// The store's (when no recent answer is cached).
    pub async fn spent(&self, store: &dyn Store, organization: OrganizationId) -> Result<bool, StoreError> {
        if let Some((at, spent)) = self.lock().get(&organization)
            && at.elapsed() < CHECK_EVERY
        {
            return Ok(*spent);
        }
        let spent = match store.budget(organization).await? {
            Some(budget) if budget.hard_cap => {
                let filter = CostFilter { organization: Some(organization), ..CostFilter::default() };
                let outlook = qm_costs::outlook(store, &self.currency, qm_store::now(), &filter).await?;
                outlook.month_to_date_micros >= budget.amount_micros
            }
            _ => false,
        };
        self.lock().insert(organization, (Instant::now(), spent));
        Ok(spent)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrganizationId, (Instant, bool)>> {
        self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
