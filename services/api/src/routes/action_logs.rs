//! `/action_logs`: what every component did in the caller's organization, filtered, paged by
//! cursor, and counted by status and type for a virtualized table; `/action_types` labels them.

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use qm_domain::{ActionLogId, InstanceId, UserId};
use qm_store::{ActionLog, ActionLogQuery, ActionStatus};
use serde::{Deserialize, Serialize};

use super::{Page, PageParams};
use crate::AppState;
use crate::auth::Principal;
use crate::problem::{ApiResult, Json, Problem, Query};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActionLogFilter {
    /// `api`, `orchestrator`, `finops`, ...
    pub component: Option<String>,
    pub action_type: Option<String>,
    pub status: Option<ActionStatus>,
    pub instance_id: Option<InstanceId>,
    pub user_id: Option<UserId>,
    /// Entries at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Entries before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActionLogCountsView {
    /// Entries matching the filters, across all pages.
    pub total: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_type: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActionLogSearch {
    pub items: Vec<ActionLog>,
    pub next_cursor: Option<String>,
    pub counts: ActionLogCountsView,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActionTypeView {
    #[serde(rename = "type")]
    pub name: String,
    pub component: String,
    pub label: String,
}

fn query(principal: &Principal, filter: ActionLogFilter, page: &PageParams) -> ApiResult<ActionLogQuery> {
    let (limit, cursor) = page.resolve::<ActionLogId>()?;
    if let (Some(since), Some(until)) = (filter.since, filter.until)
        && since > until
    {
        return Err(Problem::invalid("since", "must not be after `until`"));
    }
    Ok(ActionLogQuery {
        organization: Some(principal.organization_id),
        component: filter.component,
        action_type: filter.action_type,
        status: filter.status,
        instance: filter.instance_id,
        user: filter.user_id,
        since: filter.since,
        until: filter.until,
        before: cursor.map(|id| id.as_uuid()),
        limit: limit + 1,
    })
}

/// Action log entries, newest first.
#[utoipa::path(get, path = "/action_logs", tag = "action_logs", params(PageParams, ActionLogFilter),
    responses((status = 200, body = Page<ActionLog>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
    Query(filter): Query<ActionLogFilter>,
) -> ApiResult<Json<Page<ActionLog>>> {
    let query = query(&principal, filter, &page)?;
    let entries = state.dependencies.store.search_action_logs(&query).await?;
    Ok(Json(Page::from_overfetch(entries, query.limit - 1, |entry: &ActionLog| entry.id.to_string())))
}

/// Action log entries with counts by status and type under the same filters.
#[utoipa::path(get, path = "/action_logs/search", tag = "action_logs", params(PageParams, ActionLogFilter),
    responses((status = 200, body = ActionLogSearch)))]
pub async fn search(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
    Query(filter): Query<ActionLogFilter>,
) -> ApiResult<Json<ActionLogSearch>> {
    let query = query(&principal, filter, &page)?;
    let store = &state.dependencies.store;
    let entries = store.search_action_logs(&query).await?;
    let counts = store.count_action_logs(&query).await?;
    let page = Page::from_overfetch(entries, query.limit - 1, |entry: &ActionLog| entry.id.to_string());
    Ok(Json(ActionLogSearch {
        items: page.items,
        next_cursor: page.next_cursor,
        counts: ActionLogCountsView {
            total: counts.total,
            by_status: counts.by_status.into_iter().collect(),
            by_type: counts.by_type.into_iter().collect(),
        },
    }))
}

/// Every action type, with a label.
#[utoipa::path(get, path = "/action_types", tag = "action_logs", responses((status = 200, body = Page<ActionTypeView>)))]
pub async fn types(_principal: Principal) -> Json<Page<ActionTypeView>> {
    let items = qm_domain::actions::ACTION_TYPES
        .iter()
        .map(|action| ActionTypeView {
            name: action.name.to_owned(),
            component: action.component.to_owned(),
            label: action.label.to_owned(),
        })
        .collect();
    Json(Page::all(items))
}
