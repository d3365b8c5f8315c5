//! The REST resources, one module each, and what they share: pages and cursors, action logs
//! of mutations, and commands for the bus.

pub mod action_logs;
pub mod api_keys;
pub mod catalog;
pub mod deployments;
pub mod downloads;
pub mod events;
pub mod finops;
pub mod instances;
pub mod organizations;
pub mod pools;
pub mod session;
pub mod users;
pub mod workers;

use std::str::FromStr;
use std::time::Instant;

use axum::response::Response;
use qm_domain::InstanceId;
use qm_events::Envelope;
use qm_store::{ActionStatus, InstanceFilter, NewActionLog, Store, StoreError, StoreTx};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::problem::Problem;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page of at most `limit` items from `items` (fetched with `limit + 1` to learn whether
    /// more follow); the cursor is the id of the last item returned.
    pub fn from_overfetch(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> String) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = if more { items.last().map(id) } else { None };
        Self { items, next_cursor }
    }

    /// Everything in one page (short lists such as the catalog).
    pub fn all(items: Vec<T>) -> Self {
        Self { items, next_cursor: None }
    }
}

/// About what one instance takes as JSON (700 to 900 bytes), so that a page's buffer is
/// allocated once (up to the default page; longer ones grow it).
const INSTANCE_JSON_BYTES: usize = 1024;

/// The page of at most `filter.limit` instances, as serde writes a [`Page`] of [`qm_store::Instance`], written
/// by the store straight from its rows ([`qm_store::FleetStore::write_instances_json`]): the
/// instance list is the page read most (dashboards and the console poll it), and reading each
/// row into an `Instance` and serializing that was most of its cost (decisions 121 and 123).
pub async fn instance_page(store: &dyn Store, mut filter: InstanceFilter) -> Result<Response, StoreError> {
    let limit = filter.limit;
    // One more, to learn whether more follow.
    filter.limit = limit.saturating_add(1);
    let mut body = Vec::with_capacity(64 + limit.min(DEFAULT_LIMIT) as usize * INSTANCE_JSON_BYTES);
    body.extend_from_slice(b"{\"items\":[");
    let next = store.write_instances_json(&filter, limit as usize, &mut body).await?;
    body.extend_from_slice(b"],\"next_cursor\":");
    // An `Option<String>` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut body, &next.map(|id| id.to_string()));
    body.push(b'}');
    Ok(crate::problem::json_response(body))
}

/// `limit` and `cursor`, as every list takes them.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

impl PageParams {
    /// # Errors
    /// 422 naming `limit` or `cursor`.
    pub fn resolve<Id: FromStr>(&self) -> Result<(u32, Option<Id>), Problem> {
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(limit) => u32::try_from(limit)
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or_else(|| Problem::invalid("limit", format!("must be between 1 and {MAX_LIMIT}")))?,
        };
        let cursor = self
            .cursor
            .as_deref()
            .map(|cursor| {
                cursor.parse::<Id>().map_err(|_| Problem::invalid("cursor", "is not a cursor this list returned"))
            })
            .transpose()?;
        Ok((limit, cursor))
    }
}

/// Records a mutation in the action log, in the same transaction as the mutation.
pub struct Audit {
    action_type: &'static str,
    started: Instant,
}

impl Audit {
    pub fn start(action_type: &'static str) -> Self {
        Self { action_type, started: Instant::now() }
    }

    /// # Errors
    /// The store's.
    pub async fn record(
        self,
        tx: &mut dyn StoreTx,
        principal: &Principal,
        instance: Option<InstanceId>,
        metadata: serde_json::Value,
    ) -> Result<(), Problem> {
        let mut entry = NewActionLog::new(crate::NAME, self.action_type, ActionStatus::Succeeded);
        entry.organization_id = Some(principal.organization_id);
        entry.user_id = principal.user_id;
        entry.instance_id = instance;
        entry.duration_ms = Some(i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX));
        entry.metadata = with_credential(metadata, principal);
        tx.insert_action_log(&entry).await?;
        Ok(())
    }
}

fn with_credential(metadata: serde_json::Value, principal: &Principal) -> serde_json::Value {
    let mut object = match metadata {
        serde_json::Value::Object(object) => object,
        serde_json::Value::Null => serde_json::Map::new(),
        other => serde_json::Map::from_iter([("value".to_owned(), other)]),
    };
    if let crate::auth::Credential::ApiKey(key) = principal.credential {
        object.insert("api_key_id".into(), serde_json::Value::String(key.to_string()));
    }
    serde_json::Value::Object(object)
}

/// A message written by the API, carrying the caller's trace.
pub fn message<P: qm_events::Payload>(payload: &P, principal: Option<&Principal>) -> Envelope {
    Envelope::of(payload, crate::NAME, principal.map(|principal| principal.organization_id))
        .with_traceparent(qm_telemetry::traceparent::current())
}

/// Rejects text that is empty or longer than `max` characters.
///
/// # Errors
/// 422 naming `field`.
pub fn bounded_text(field: &str, value: &str, max: usize) -> Result<String, Problem> {
    if value.chars().count() > max {
        return Err(Problem::invalid(field, format!("must be at most {max} characters")));
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(Problem::invalid(field, "must not be empty"));
    }
    Ok(trimmed.to_owned())
}
