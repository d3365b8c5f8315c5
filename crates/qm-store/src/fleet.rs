//! The fleet: deployments, instances and their state history; the searchable action log; and
//! the event feed (events in the outbox, read back per organization for live streams).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qm_domain::{DeploymentId, InstanceId, InstanceState, InstanceTypeId, OrganizationId, UserId, ZoneId};
use qm_events::Envelope;
use qm_events::payloads::{InstanceBillingStopped, InstanceStateChanged};
use serde::Serialize;
use serde_json::Value;

use crate::StoreError;
use crate::catalog::Offer;
use crate::model::{ActionLog, ActionStatus};

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Deployment {
    pub id: DeploymentId,
    pub organization_id: OrganizationId,
    pub created_by: Option<UserId>,
    pub model: String,
    pub count: i32,
    /// The request as accepted.
    #[schema(value_type = Object)]
    pub request: Value,
    /// Where its instances may run, in the order the orchestrator tries them.
    pub placements: Vec<Offer>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Instance {
    pub id: InstanceId,
    pub organization_id: OrganizationId,
    pub deployment_id: Option<DeploymentId>,
    pub provider: String,
    pub zone_id: ZoneId,
    pub zone: String,
    pub instance_type_id: InstanceTypeId,
    pub instance_type: String,
    pub model: String,
    pub state: InstanceState,
    #[serde(serialize_with = "crate::timestamp")]
    pub state_changed_at: DateTime<Utc>,
    /// 0 to 100, from completed steps: provider create, start, address, agent registered,
    /// engine ready, ready.
    pub progress_percent: i32,
    pub provider_instance_id: Option<String>,
    pub address: Option<String>,
    pub hourly_price_micros: i64,
    pub currency: String,
    pub failure_reason: Option<String>,
    pub deleted_by_provider: bool,
    pub archived: bool,
    /// A pool replica: the revision of the pool (its model and engine settings) it runs.
    pub revision: Option<i32>,
    #[serde(serialize_with = "crate::timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp")]
    pub updated_at: DateTime<Utc>,
}

/// An [`Instance`] borrowed from where it lies: a database row, or an `Instance`. The instance
/// list writes its page from these, straight from the rows, without copying each row's text
/// into strings first (decision 123); reading an `Instance` from a row goes through one too,
/// so that the columns are read in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceRef<'a> {
    pub id: InstanceId,
    pub organization_id: OrganizationId,
    pub deployment_id: Option<DeploymentId>,
    pub provider: &'a str,
    pub zone_id: ZoneId,
    pub zone: &'a str,
    pub instance_type_id: InstanceTypeId,
    pub instance_type: &'a str,
    pub model: &'a str,
    pub state: InstanceState,
    pub state_changed_at: DateTime<Utc>,
    pub progress_percent: i32,
    pub provider_instance_id: Option<&'a str>,
    pub address: Option<&'a str>,
    pub hourly_price_micros: i64,
    pub currency: &'a str,
    pub failure_reason: Option<&'a str>,
    pub deleted_by_provider: bool,
    pub archived: bool,
    pub revision: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl InstanceRef<'_> {
    pub fn to_instance(&self) -> Instance {
        Instance {
            id: self.id,
            organization_id: self.organization_id,
            deployment_id: self.deployment_id,
            provider: self.provider.to_owned(),
            zone_id: self.zone_id,
            zone: self.zone.to_owned(),
            instance_type_id: self.instance_type_id,
            instance_type: self.instance_type.to_owned(),
            model: self.model.to_owned(),
            state: self.state,
            state_changed_at: self.state_changed_at,
            progress_percent: self.progress_percent,
            provider_instance_id: self.provider_instance_id.map(str::to_owned),
            address: self.address.map(str::to_owned),
            hourly_price_micros: self.hourly_price_micros,
            currency: self.currency.to_owned(),
            failure_reason: self.failure_reason.map(str::to_owned),
            deleted_by_provider: self.deleted_by_provider,
            archived: self.archived,
            revision: self.revision,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

impl Instance {
    pub fn borrow(&self) -> InstanceRef<'_> {
        InstanceRef {
            id: self.id,
            organization_id: self.organization_id,
            deployment_id: self.deployment_id,
            provider: &self.provider,
            zone_id: self.zone_id,
            zone: &self.zone,
            instance_type_id: self.instance_type_id,
            instance_type: &self.instance_type,
            model: &self.model,
            state: self.state,
            state_changed_at: self.state_changed_at,
            progress_percent: self.progress_percent,
            provider_instance_id: self.provider_instance_id.as_deref(),
            address: self.address.as_deref(),
            hourly_price_micros: self.hourly_price_micros,
            currency: &self.currency,
            failure_reason: self.failure_reason.as_deref(),
            deleted_by_provider: self.deleted_by_provider,
            archived: self.archived,
            revision: self.revision,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// The `data` of the `instance.state_changed` event announcing its current state.
    pub fn state_changed(&self, from: Option<InstanceState>, reason: Option<&str>) -> InstanceStateChanged {
        InstanceStateChanged {
            instance_id: self.id,
            deployment_id: self.deployment_id,
            provider: self.provider.clone(),
            zone: self.zone.clone(),
            instance_type: self.instance_type.clone(),
            from,
            to: self.state,
            reason: reason.map(str::to_owned),
            progress_percent: self.progress_percent,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NewInstance {
    pub id: InstanceId,
    pub organization_id: OrganizationId,
    pub deployment_id: Option<DeploymentId>,
    pub placement: Offer,
    pub model: String,
    /// A pool replica: the pool's revision (model and engine settings) it is created for.
    pub revision: Option<i32>,
}

/// One move of an instance, recorded in `instance_state_history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StateChange {
    pub from_state: Option<InstanceState>,
    pub to_state: InstanceState,
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// A conditional state change: applied only while the instance is still in `from`.
#[derive(Clone, Debug)]
pub struct Transition {
    pub instance: InstanceId,
    pub from: InstanceState,
    pub to: InstanceState,
    pub reason: Option<String>,
    /// New progress, when the step changes it.
    pub progress_percent: Option<i32>,
}

/// Facts learned about an instance while provisioning it; `None` fields are left as they are.
#[derive(Clone, Debug, Default)]
pub struct InstanceAnnotation {
    pub provider_instance_id: Option<String>,
    pub address: Option<String>,
    /// A new placement (after a failover).
    pub placement: Option<Offer>,
    pub progress_percent: Option<i32>,
    pub failure_reason: Option<String>,
    /// The provider removed it (found gone by reconciliation).
    pub deleted_by_provider: Option<bool>,
}

/// `'terminated', 'provisioning_failed'`: the terminal states (from the domain) as an SQL list.
pub(crate) fn terminal_states_sql() -> String {
    InstanceState::ALL
        .iter()
        .filter(|state| state.is_terminal())
        .map(|state| format!("'{}'", state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A state change as every component records it (see [`record_transition`]).
#[derive(Clone, Debug)]
pub struct RecordedTransition<'a> {
    pub to: InstanceState,
    pub reason: &'a str,
    pub progress_percent: Option<i32>,
    /// Who moves the instance (`api`, `orchestrator`): the action log's component and the event's
    /// source.
    pub component: &'a str,
    /// The message that caused the move; the event then carries its correlation and trace.
    pub cause: Option<&'a Envelope>,
    /// Trace context for an event without a cause.
    pub traceparent: Option<String>,
    pub duration: Option<std::time::Duration>,
}

/// Moves `instance` if it is still in its state, within `tx`: the conditional update and its
/// history, an action log entry `instance.<to>` (failed, with the reason as its error, for a
/// failure state, which also becomes the instance's `failure_reason`) and an
/// `instance.state_changed` event. Returns the moved instance and that
/// event (for messages it causes), or `None` when the instance had moved on.
///
/// # Errors
/// The store's.
pub async fn record_transition(
    tx: &mut dyn crate::StoreTx,
    instance: &Instance,
    change: &RecordedTransition<'_>,
) -> Result<Option<(Instance, Envelope)>, StoreError> {
    let transition = Transition {
        instance: instance.id,
        from: instance.state,
        to: change.to,
        reason: Some(change.reason.to_owned()),
        progress_percent: change.progress_percent,
    };
    let Some(moved) = tx.transition_instance(&transition).await? else { return Ok(None) };
    let failed = change.to.is_failure();
    let status = if failed { ActionStatus::Failed } else { ActionStatus::Succeeded };
    let mut entry = crate::NewActionLog::new(change.component, &format!("instance.{}", change.to), status);
    entry.organization_id = Some(moved.organization_id);
    entry.instance_id = Some(moved.id);
    entry.duration_ms = change.duration.map(|duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
    entry.error = failed.then(|| change.reason.to_owned());
    entry.metadata = serde_json::json!({
        "from": instance.state, "to": change.to, "reason": change.reason, "provider": moved.provider,
        "zone": moved.zone, "instance_type": moved.instance_type, "provider_instance_id": moved.provider_instance_id,
    });
    tx.insert_action_log(&entry).await?;
    let changed = moved.state_changed(Some(instance.state), Some(change.reason));
    let event = match change.cause {
        Some(cause) => cause.caused_by(&changed, change.component),
        None => Envelope::of(&changed, change.component, Some(moved.organization_id))
            .with_traceparent(change.traceparent.clone()),
    };
    tx.enqueue(&event).await?;
    // Billing stops when the instance is gone for good (FinOps, issue 6), once.
    if change.to.is_terminal() && crate::FinopsTx::stop_billing(tx, moved.id, moved.state_changed_at).await? {
        let stopped = InstanceBillingStopped { instance_id: moved.id, stopped_at: moved.state_changed_at };
        tx.enqueue(&event.caused_by(&stopped, change.component)).await?;
    }
    Ok(Some((moved, event)))
}

#[derive(Clone, Debug, Default)]
pub struct InstanceFilter {
    pub organization: Option<OrganizationId>,
    pub deployment: Option<DeploymentId>,
    pub state: Option<InstanceState>,
    pub provider: Option<String>,
    /// Zone code.
    pub zone: Option<String>,
    pub archived: Option<bool>,
    /// Cursor: only instances with a smaller id (older).
    pub before: Option<InstanceId>,
    pub limit: u32,
}

#[derive(Clone, Debug, Default)]
pub struct ActionLogQuery {
    pub organization: Option<OrganizationId>,
    pub component: Option<String>,
    pub action_type: Option<String>,
    pub status: Option<ActionStatus>,
    pub instance: Option<InstanceId>,
    pub user: Option<UserId>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Cursor: only entries with a smaller id (older).
    pub before: Option<uuid::Uuid>,
    pub limit: u32,
}

/// How many entries match a query, by status and by type (the cursor is ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionLogCounts {
    pub total: u64,
    pub by_status: Vec<(String, u64)>,
    pub by_type: Vec<(String, u64)>,
}

/// A message of the outbox as the event feed reads it.
#[derive(Clone, Debug)]
pub struct FeedEntry {
    /// Position in the outbox; feeds resume from it.
    pub seq: i64,
    pub organization_id: Option<OrganizationId>,
    pub is_event: bool,
    pub created_at: DateTime<Utc>,
    pub envelope: Envelope,
}

#[async_trait]
pub trait FleetStore {
    async fn deployment(&self, id: DeploymentId) -> Result<Option<Deployment>, StoreError>;
    async fn deployments(
        &self,
        organization: Option<OrganizationId>,
        before: Option<DeploymentId>,
        limit: u32,
    ) -> Result<Vec<Deployment>, StoreError>;
    async fn instance(&self, id: InstanceId) -> Result<Option<Instance>, StoreError>;
    /// Newest first.
    async fn instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>, StoreError>;
    /// [`FleetStore::instances`] as JSON, for the instance list: the first `shown` instances
    /// found, each as its `Serialize` writes it, separated by commas, appended to `out` straight
    /// from the rows. Returns the id of the last one written when the filter found more (where
    /// the next page starts). On an error, what `out` holds is unspecified.
    async fn write_instances_json(
        &self,
        filter: &InstanceFilter,
        shown: usize,
        out: &mut Vec<u8>,
    ) -> Result<Option<InstanceId>, StoreError>;
    /// The instances of a deployment (or pool) that are not finished, and the finished ones
    /// updated since `finished_since`; newest first, at most `limit`.
    async fn deployment_instances(
        &self,
        deployment: DeploymentId,
        finished_since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Instance>, StoreError>;
    /// Oldest first.
    async fn instance_history(&self, id: InstanceId) -> Result<Vec<StateChange>, StoreError>;
    /// Instances (of every organization) in `state` since before `changed_before`, longest
    /// waiting first: the ones past a deadline.
    async fn instances_in_state_since(
        &self,
        state: InstanceState,
        changed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Instance>, StoreError>;
    /// Instances (of every organization) on `provider` in one of `states`.
    async fn instances_on_provider(
        &self,
        provider: &str,
        states: &[InstanceState],
    ) -> Result<Vec<Instance>, StoreError>;
    /// Instances of `provider` in one of `states` with a provider id but no address yet.
    async fn instances_awaiting_address(
        &self,
        provider: &str,
        states: &[InstanceState],
    ) -> Result<Vec<Instance>, StoreError>;
    /// The instances among `ids` that exist, whatever their state.
    async fn instances_by_ids(&self, ids: &[InstanceId]) -> Result<Vec<Instance>, StoreError>;
    /// How many unarchived instances each (provider, state) has, for the fleet gauge.
    async fn count_instances_by_state(&self) -> Result<Vec<(String, InstanceState, i64)>, StoreError>;
    /// `ready` instances whose worker has not heartbeaten since `heartbeat_before`.
    async fn silent_ready_instances(
        &self,
        heartbeat_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Instance>, StoreError>;
    /// Newest first.
    async fn search_action_logs(&self, query: &ActionLogQuery) -> Result<Vec<ActionLog>, StoreError>;
    async fn count_action_logs(&self, query: &ActionLogQuery) -> Result<ActionLogCounts, StoreError>;
    /// Outbox messages after `after`, oldest first: events only and of one organization when
    /// asked, and never past `up_to`.
    async fn feed(
        &self,
        after: i64,
        up_to: Option<i64>,
        organization: Option<OrganizationId>,
        limit: u32,
    ) -> Result<Vec<FeedEntry>, StoreError>;
    /// The newest outbox position (0 when empty).
    async fn feed_head(&self) -> Result<i64, StoreError>;
    /// Takes or renews the lease `name` for `holder` until `ttl` from now; `false` while another
    /// holder's lease runs. Periodic jobs run only on the replica that holds their lease.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool, StoreError>;
}

#[async_trait]
pub trait FleetTx {
    async fn insert_deployment(&mut self, deployment: &Deployment) -> Result<(), StoreError>;
    /// Inserts the instance in `requested` and records that first state.
    async fn insert_instance(&mut self, instance: &NewInstance) -> Result<Instance, StoreError>;
    /// Applies the transition if the instance is still in `from` and records it; `None` when it
    /// had moved on (or does not exist), so that racing writers cannot both win. Moving to a
    /// failure state records the reason as the instance's `failure_reason`.
    async fn transition_instance(&mut self, transition: &Transition) -> Result<Option<Instance>, StoreError>;
    /// Archives a terminated or failed instance; `None` when it is in another state.
    async fn archive_instance(&mut self, id: InstanceId) -> Result<Option<Instance>, StoreError>;
    /// Records what provisioning learned; `None` when the instance does not exist.
    async fn annotate_instance(
        &mut self,
        id: InstanceId,
        annotation: &InstanceAnnotation,
    ) -> Result<Option<Instance>, StoreError>;
}

/// Whether a backend keeps each instance's JSON in a column (`instances.json`, PostgreSQL's
/// generated column) for the instance list, or the list writes it from the columns (SQLite).
pub(crate) trait InstanceJsonColumn {
    const STORED: bool;
}

impl InstanceJsonColumn for sqlx::Postgres {
    const STORED: bool = true;
}

impl InstanceJsonColumn for sqlx::Sqlite {
    const STORED: bool = false;
}

macro_rules! impl_fleet_sql {
    (store: $store:ty, tx: $tx:ty, db: $db:ty) => {
        mod fleet_sql {
            use async_trait::async_trait;
            use qm_domain::{DeploymentId, InstanceId, InstanceState, OrganizationId};
            use qm_events::Envelope;
            use sqlx::Row as _;
            use uuid::Uuid;

            use super::*;
            use crate::fleet::{
                ActionLogCounts, ActionLogQuery, Deployment, FeedEntry, FleetStore, FleetTx, Instance, InstanceAnnotation,
                InstanceFilter, InstanceRef, NewInstance, StateChange, Transition,
            };
            use crate::model::ActionLog;
            use crate::{StoreError, now};

            type DbRow = <$db as sqlx::Database>::Row;

            const DEPLOYMENT_COLUMNS: &str = "id, organization_id, created_by, model, count, request, placements, created_at";
            const INSTANCE_COLUMNS: &str = "id, organization_id, deployment_id, provider, zone_id, zone, instance_type_id, instance_type, model, state, \
                 state_changed_at, progress_percent, provider_instance_id, address, hourly_price_micros, currency, failure_reason, \
                 deleted_by_provider, archived, revision, created_at, updated_at";
            /// The filters shared by the action log search and its counts; `$1`..`$8`.
            const ACTION_LOG_FILTER: &str = "($1 IS NULL OR organization_id = $1) AND ($2 IS NULL OR component = $2) \
                 AND ($3 IS NULL OR action_type = $3) AND ($4 IS NULL OR status = $4) AND ($5 IS NULL OR instance_id = $5) \
                 AND ($6 IS NULL OR user_id = $6) AND ($7 IS NULL OR created_at >= $7) AND ($8 IS NULL OR created_at < $8)";

            fn state_from_text(text: &str) -> Result<InstanceState, StoreError> {
                text.parse().map_err(|error: qm_domain::lifecycle::UnknownState| StoreError::Corrupt(error.to_string()))
            }

            fn deployment_from_row(row: &DbRow) -> Result<Deployment, StoreError> {
                let request: sqlx::types::Json<serde_json::Value> = row.try_get("request")?;
                let placements: sqlx::types::Json<Vec<crate::catalog::Offer>> = row.try_get("placements")?;
                Ok(Deployment {
                    id: DeploymentId::from_uuid(row.try_get("id")?),
                    organization_id: OrganizationId::from_uuid(row.try_get("organization_id")?),
                    created_by: row.try_get::<Option<Uuid>, _>("created_by")?.map(Into::into),
                    model: row.try_get("model")?,
                    count: row.try_get("count")?,
                    request: request.0,
                    placements: placements.0,
                    created_at: row.try_get("created_at")?,
                })
            }

            /// Reads the columns by position, in the order of [`INSTANCE_COLUMNS`] (by name, each
            /// read hashed the name: a tenth of the decoding of a page), borrowing the text. Debug
            /// builds check every position against its name and every column's type against the
            /// field's; release builds skip the type check (a clone of the column's type per
            /// read), which a mismatch would still fail, as a decoding error.
            fn instance_ref(row: &DbRow) -> Result<InstanceRef<'_>, StoreError> {
                fn at<'r, T: sqlx::Decode<'r, $db> + sqlx::Type<$db>>(
                    row: &'r DbRow,
                    index: usize,
                    name: &str,
                ) -> Result<T, sqlx::Error> {
                    if cfg!(debug_assertions) {
                        assert_eq!(sqlx::Column::name(&sqlx::Row::columns(row)[index]), name, "INSTANCE_COLUMNS order");
                        row.try_get(index)
                    } else {
                        row.try_get_unchecked(index)
                    }
                }
                Ok(InstanceRef {
                    id: InstanceId::from_uuid(at(row, 0, "id")?),
                    organization_id: OrganizationId::from_uuid(at(row, 1, "organization_id")?),
                    deployment_id: at::<Option<Uuid>>(row, 2, "deployment_id")?.map(Into::into),
                    provider: at(row, 3, "provider")?,
                    zone_id: at::<Uuid>(row, 4, "zone_id")?.into(),
                    zone: at(row, 5, "zone")?,
                    instance_type_id: at::<Uuid>(row, 6, "instance_type_id")?.into(),
                    instance_type: at(row, 7, "instance_type")?,
                    model: at(row, 8, "model")?,
                    state: state_from_text(at(row, 9, "state")?)?,
                    state_changed_at: at(row, 10, "state_changed_at")?,
                    progress_percent: at(row, 11, "progress_percent")?,
                    provider_instance_id: at(row, 12, "provider_instance_id")?,
                    address: at(row, 13, "address")?,
                    hourly_price_micros: at(row, 14, "hourly_price_micros")?,
                    currency: at(row, 15, "currency")?,
                    failure_reason: at(row, 16, "failure_reason")?,
                    deleted_by_provider: at(row, 17, "deleted_by_provider")?,
                    archived: at(row, 18, "archived")?,
                    revision: at(row, 19, "revision")?,
                    created_at: at(row, 20, "created_at")?,
                    updated_at: at(row, 21, "updated_at")?,
                })
            }

            fn instance_from_row(row: &DbRow) -> Result<Instance, StoreError> {
                instance_ref(row).map(|instance| instance.to_instance())
            }

            /// Decoded into a vector of the right size from the start (collecting a `Result`
            /// iterator grows it, copying the instances each time).
            fn instances_from_rows(rows: &[DbRow]) -> Result<Vec<Instance>, StoreError> {
                let mut instances = Vec::with_capacity(rows.len());
                for row in rows {
                    instances.push(instance_from_row(row)?);
                }
                Ok(instances)
            }

            fn feed_from_row(row: &DbRow) -> Result<FeedEntry, StoreError> {
                let payload: String = row.try_get("payload")?;
                let channel: String = row.try_get("channel")?;
                Ok(FeedEntry {
                    seq: row.try_get("seq")?,
                    organization_id: row.try_get::<Option<Uuid>, _>("organization_id")?.map(Into::into),
                    is_event: channel == "evt",
                    created_at: row.try_get("created_at")?,
                    envelope: Envelope::from_json(payload.as_bytes()).map_err(|error| StoreError::Corrupt(error.to_string()))?,
                })
            }

            fn bind_action_log_filter<'q>(
                query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
                filter: &'q ActionLogQuery,
            ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
                query
                    .bind(filter.organization.map(|id| id.as_uuid()))
                    .bind(filter.component.as_deref())
                    .bind(filter.action_type.as_deref())
                    .bind(filter.status.map(|status| status.as_str()))
                    .bind(filter.instance.map(|id| id.as_uuid()))
                    .bind(filter.user.map(|id| id.as_uuid()))
                    .bind(filter.since)
                    .bind(filter.until)
            }

            async fn counts_by(
                store: &$store,
                column: &str,
                filter: &ActionLogQuery,
            ) -> Result<Vec<(String, u64)>, StoreError> {
                let sql = format!(
                    "SELECT {column} AS label, COUNT(*) AS n FROM action_logs WHERE {ACTION_LOG_FILTER} GROUP BY {column} ORDER BY {column}"
                );
                let rows = bind_action_log_filter(sqlx::query(&sql), filter).fetch_all(store.reader()).await?;
                rows.iter()
                    .map(|row| {
                        let count: i64 = row.try_get("n")?;
                        Ok((row.try_get("label")?, u64::try_from(count).unwrap_or_default()))
                    })
                    .collect()
            }

            impl $store {
                /// The `columns` of [`FleetStore::instances`].
                async fn instance_rows(&self, filter: &InstanceFilter, columns: &str) -> Result<Vec<DbRow>, StoreError> {
                    // Only the filters given become conditions, so that each shape gets a plan
                    // that walks (organization_id, id DESC) and stops at the limit.
                    let mut conditions = Vec::new();
                    let mut placeholder = 0;
                    let mut condition = |column: &str, present: bool| {
                        if present {
                            placeholder += 1;
                            conditions.push(format!("{column} ${placeholder}"));
                        }
                    };
                    condition("organization_id =", filter.organization.is_some());
                    condition("deployment_id =", filter.deployment.is_some());
                    condition("state =", filter.state.is_some());
                    condition("provider =", filter.provider.is_some());
                    condition("zone =", filter.zone.is_some());
                    condition("archived =", filter.archived.is_some());
                    condition("id <", filter.before.is_some());
                    let clause = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
                    let sql = format!("SELECT {columns} FROM instances {clause} ORDER BY id DESC LIMIT ${}", conditions.len() + 1);
                    let mut query = sqlx::query(&sql);
                    if let Some(organization) = filter.organization {
                        query = query.bind(organization.as_uuid());
                    }
                    if let Some(deployment) = filter.deployment {
                        query = query.bind(deployment.as_uuid());
                    }
                    if let Some(state) = filter.state {
                        query = query.bind(state.as_str());
                    }
                    if let Some(provider) = &filter.provider {
                        query = query.bind(provider.as_str());
                    }
                    if let Some(zone) = &filter.zone {
                        query = query.bind(zone.as_str());
                    }
                    if let Some(archived) = filter.archived {
                        query = query.bind(archived);
                    }
                    if let Some(before) = filter.before {
                        query = query.bind(before.as_uuid());
                    }
                    Ok(query.bind(i64::from(filter.limit)).fetch_all(self.reader()).await?)
                }

                /// Instances of `provider` in one of `states` that also meet `condition` (SQL).
                async fn instances_of_provider_where(
                    &self,
                    provider: &str,
                    states: &[InstanceState],
                    condition: &str,
                ) -> Result<Vec<Instance>, StoreError> {
                    if states.is_empty() {
                        return Ok(Vec::new());
                    }
                    let placeholders = (0..states.len()).map(|index| format!("${}", index + 2)).collect::<Vec<_>>().join(", ");
                    let sql = format!(
                        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE provider = $1 AND state IN ({placeholders}) AND {condition}"
                    );
                    let mut query = sqlx::query(&sql).bind(provider);
                    for state in states {
                        query = query.bind(state.as_str());
                    }
                    query.fetch_all(self.reader()).await?.iter().map(instance_from_row).collect()
                }
            }

            #[async_trait]
            impl FleetStore for $store {
                async fn deployment(&self, id: DeploymentId) -> Result<Option<Deployment>, StoreError> {
                    let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1");
                    let row = sqlx::query(&sql).bind(id.as_uuid()).fetch_optional(self.reader()).await?;
                    row.as_ref().map(deployment_from_row).transpose()
                }

                async fn deployments(
                    &self,
                    organization: Option<OrganizationId>,
                    before: Option<DeploymentId>,
                    limit: u32,
                ) -> Result<Vec<Deployment>, StoreError> {
                    let sql = format!(
                        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE ($1 IS NULL OR organization_id = $1) AND ($2 IS NULL OR id < $2) \
                         ORDER BY id DESC LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(organization.map(|id| id.as_uuid()))
                        .bind(before.map(|id| id.as_uuid()))
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(deployment_from_row).collect()
                }

                async fn instance(&self, id: InstanceId) -> Result<Option<Instance>, StoreError> {
                    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1");
                    let row = sqlx::query(&sql).bind(id.as_uuid()).fetch_optional(self.reader()).await?;
                    row.as_ref().map(instance_from_row).transpose()
                }

                async fn instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>, StoreError> {
                    instances_from_rows(&self.instance_rows(filter, INSTANCE_COLUMNS).await?)
                }

                async fn write_instances_json(
                    &self,
                    filter: &InstanceFilter,
                    shown: usize,
                    out: &mut Vec<u8>,
                ) -> Result<Option<InstanceId>, StoreError> {
                    let stored = <$db as crate::fleet::InstanceJsonColumn>::STORED;
                    let rows = self.instance_rows(filter, if stored { "id, json" } else { INSTANCE_COLUMNS }).await?;
                    let mut last_shown = None;
                    // The rows past `shown` (a page's look ahead) are counted, not read.
                    for (index, row) in rows.iter().take(shown).enumerate() {
                        if index > 0 {
                            out.push(b',');
                        }
                        if stored {
                            let json: &str = row.try_get(1)?;
                            out.extend_from_slice(json.as_bytes());
                            last_shown = Some(InstanceId::from_uuid(row.try_get(0)?));
                        } else {
                            let instance = instance_ref(row)?;
                            instance.write_json(out);
                            last_shown = Some(instance.id);
                        }
                    }
                    Ok(last_shown.filter(|_| rows.len() > shown))
                }

                async fn instance_history(&self, id: InstanceId) -> Result<Vec<StateChange>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT from_state, to_state, reason, occurred_at FROM instance_state_history WHERE instance_id = $1 ORDER BY id",
                    )
                    .bind(id.as_uuid())
                    .fetch_all(self.reader())
                    .await?;
                    rows.iter()
                        .map(|row| {
                            let from: Option<String> = row.try_get("from_state")?;
                            let to: String = row.try_get("to_state")?;
                            Ok(StateChange {
                                from_state: from.as_deref().map(state_from_text).transpose()?,
                                to_state: state_from_text(&to)?,
                                reason: row.try_get("reason")?,
                                occurred_at: row.try_get("occurred_at")?,
                            })
                        })
                        .collect()
                }

                async fn deployment_instances(
                    &self,
                    deployment: DeploymentId,
                    finished_since: chrono::DateTime<chrono::Utc>,
                    limit: u32,
                ) -> Result<Vec<Instance>, StoreError> {
                    let sql = format!(
                        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE deployment_id = $1 \
                         AND (state NOT IN ({}) OR updated_at >= $2) ORDER BY id DESC LIMIT $3",
                        crate::fleet::terminal_states_sql()
                    );
                    let rows = sqlx::query(&sql)
                        .bind(deployment.as_uuid())
                        .bind(finished_since)
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?;
                    instances_from_rows(&rows)
                }

                async fn instances_in_state_since(
                    &self,
                    state: InstanceState,
                    changed_before: chrono::DateTime<chrono::Utc>,
                    limit: u32,
                ) -> Result<Vec<Instance>, StoreError> {
                    let sql = format!(
                        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE state = $1 AND state_changed_at < $2 ORDER BY state_changed_at LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(state.as_str())
                        .bind(changed_before)
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?;
                    instances_from_rows(&rows)
                }

                async fn instances_on_provider(&self, provider: &str, states: &[InstanceState]) -> Result<Vec<Instance>, StoreError> {
                    self.instances_of_provider_where(provider, states, "TRUE").await
                }

                async fn instances_awaiting_address(&self, provider: &str, states: &[InstanceState]) -> Result<Vec<Instance>, StoreError> {
                    self.instances_of_provider_where(provider, states, "address IS NULL AND provider_instance_id IS NOT NULL").await
                }

                async fn count_instances_by_state(&self) -> Result<Vec<(String, InstanceState, i64)>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT provider, state, COUNT(*) AS instances FROM instances WHERE NOT archived GROUP BY provider, state ORDER BY provider, state",
                    )
                    .fetch_all(self.reader())
                    .await?;
                    rows.iter()
                        .map(|row| {
                            let state: String = row.try_get("state")?;
                            let state = state.parse::<InstanceState>().map_err(|error| StoreError::Corrupt(error.to_string()))?;
                            Ok((row.try_get("provider")?, state, row.try_get("instances")?))
                        })
                        .collect()
                }

                async fn instances_by_ids(&self, ids: &[InstanceId]) -> Result<Vec<Instance>, StoreError> {
                    let mut found = Vec::with_capacity(ids.len());
                    for (placeholders, chunk) in crate::in_chunks(ids) {
                        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id IN ({placeholders})");
                        let mut query = sqlx::query(&sql);
                        for id in chunk {
                            query = query.bind(id.as_uuid());
                        }
                        for row in query.fetch_all(self.reader()).await? {
                            found.push(instance_from_row(&row)?);
                        }
                    }
                    Ok(found)
                }

                async fn silent_ready_instances(
                    &self,
                    heartbeat_before: chrono::DateTime<chrono::Utc>,
                    limit: u32,
                ) -> Result<Vec<Instance>, StoreError> {
                    let columns = INSTANCE_COLUMNS.split(',').map(|column| format!("i.{}", column.trim())).collect::<Vec<_>>().join(", ");
                    let sql = format!(
                        "SELECT {columns} FROM instances i LEFT JOIN workers w ON w.instance_id = i.id \
                         WHERE i.state = 'ready' AND i.state_changed_at < $1 \
                         AND (w.last_heartbeat_at IS NULL OR w.last_heartbeat_at < $1) ORDER BY i.state_changed_at LIMIT $2"
                    );
                    let rows = sqlx::query(&sql).bind(heartbeat_before).bind(i64::from(limit)).fetch_all(self.reader()).await?;
                    instances_from_rows(&rows)
                }

                async fn search_action_logs(&self, query: &ActionLogQuery) -> Result<Vec<ActionLog>, StoreError> {
                    let sql = format!(
                        "SELECT {ACTION_LOG_COLUMNS} FROM action_logs WHERE {ACTION_LOG_FILTER} AND ($9 IS NULL OR id < $9) \
                         ORDER BY id DESC LIMIT $10"
                    );
                    let rows = bind_action_log_filter(sqlx::query(&sql), query)
                        .bind(query.before)
                        .bind(i64::from(query.limit))
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(action_log_from_row).collect()
                }

                async fn count_action_logs(&self, query: &ActionLogQuery) -> Result<ActionLogCounts, StoreError> {
                    let by_status = counts_by(self, "status", query).await?;
                    let by_type = counts_by(self, "action_type", query).await?;
                    Ok(ActionLogCounts { total: by_status.iter().map(|(_, count)| count).sum(), by_status, by_type })
                }

                async fn feed(
                    &self,
                    after: i64,
                    up_to: Option<i64>,
                    organization: Option<OrganizationId>,
                    limit: u32,
                ) -> Result<Vec<FeedEntry>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT seq, organization_id, channel, created_at, payload FROM outbox \
                         WHERE seq > $1 AND ($2 IS NULL OR seq <= $2) AND ($3 IS NULL OR (organization_id = $3 AND channel = 'evt')) \
                         ORDER BY seq LIMIT $4",
                    )
                    .bind(after)
                    .bind(up_to)
                    .bind(organization.map(|id| id.as_uuid()))
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                    rows.iter().map(feed_from_row).collect()
                }

                async fn acquire_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
                    let at = now();
                    let until = at + chrono::Duration::from_std(ttl).map_err(|_| StoreError::Database("lease too long".into()))?;
                    let result = sqlx::query(
                        "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                         WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
                    )
                    .bind(name)
                    .bind(holder)
                    .bind(until)
                    .bind(at)
                    .execute(self.writer())
                    .await?;
                    Ok(result.rows_affected() == 1)
                }

                async fn feed_head(&self) -> Result<i64, StoreError> {
                    let head: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM outbox").fetch_one(self.reader()).await?;
                    Ok(head.unwrap_or(0))
                }
            }

            #[async_trait]
            impl FleetTx for $tx {
                async fn insert_deployment(&mut self, deployment: &Deployment) -> Result<(), StoreError> {
                    let sql = format!("INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
                    sqlx::query(&sql)
                        .bind(deployment.id.as_uuid())
                        .bind(deployment.organization_id.as_uuid())
                        .bind(deployment.created_by.map(|id| id.as_uuid()))
                        .bind(&deployment.model)
                        .bind(deployment.count)
                        .bind(sqlx::types::Json(&deployment.request))
                        .bind(sqlx::types::Json(&deployment.placements))
                        .bind(deployment.created_at)
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(())
                }

                async fn insert_instance(&mut self, instance: &NewInstance) -> Result<Instance, StoreError> {
                    let at = now();
                    let placement = &instance.placement;
                    let sql = format!(
                        "INSERT INTO instances (id, organization_id, deployment_id, provider, zone_id, zone, instance_type_id, instance_type, \
                         model, state, state_changed_at, hourly_price_micros, currency, revision, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'requested', $10, $11, $12, $13, $10, $10) RETURNING {INSTANCE_COLUMNS}"
                    );
                    let row = sqlx::query(&sql)
                        .bind(instance.id.as_uuid())
                        .bind(instance.organization_id.as_uuid())
                        .bind(instance.deployment_id.map(|id| id.as_uuid()))
                        .bind(&placement.provider)
                        .bind(placement.zone_id.as_uuid())
                        .bind(&placement.zone)
                        .bind(placement.instance_type_id.as_uuid())
                        .bind(&placement.instance_type)
                        .bind(&instance.model)
                        .bind(at)
                        .bind(placement.hourly_price_micros)
                        .bind(&placement.currency)
                        .bind(instance.revision)
                        .fetch_one(&mut *self.transaction)
                        .await?;
                    sqlx::query(
                        "INSERT INTO instance_state_history (id, instance_id, from_state, to_state, reason, occurred_at) \
                         VALUES ($1, $2, NULL, 'requested', NULL, $3)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(instance.id.as_uuid())
                    .bind(at)
                    .execute(&mut *self.transaction)
                    .await?;
                    instance_from_row(&row)
                }

                async fn transition_instance(&mut self, transition: &Transition) -> Result<Option<Instance>, StoreError> {
                    // Every state change passes the lifecycle, here, in one place.
                    transition.from.transition(transition.to)?;
                    let at = now();
                    let sql = format!(
                        "UPDATE instances SET state = $1, state_changed_at = $2, updated_at = $2, \
                         progress_percent = COALESCE($3, progress_percent), failure_reason = COALESCE($6, failure_reason) \
                         WHERE id = $4 AND state = $5 RETURNING {INSTANCE_COLUMNS}"
                    );
                    // A failure state's reason is the instance's failure reason.
                    let failure = transition.reason.as_deref().filter(|_| transition.to.is_failure());
                    let row = sqlx::query(&sql)
                        .bind(transition.to.as_str())
                        .bind(at)
                        .bind(transition.progress_percent)
                        .bind(transition.instance.as_uuid())
                        .bind(transition.from.as_str())
                        .bind(failure)
                        .fetch_optional(&mut *self.transaction)
                        .await?;
                    let Some(row) = row else { return Ok(None) };
                    sqlx::query(
                        "INSERT INTO instance_state_history (id, instance_id, from_state, to_state, reason, occurred_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(transition.instance.as_uuid())
                    .bind(transition.from.as_str())
                    .bind(transition.to.as_str())
                    .bind(&transition.reason)
                    .bind(at)
                    .execute(&mut *self.transaction)
                    .await?;
                    instance_from_row(&row).map(Some)
                }

                async fn annotate_instance(
                    &mut self,
                    id: InstanceId,
                    annotation: &InstanceAnnotation,
                ) -> Result<Option<Instance>, StoreError> {
                    let placement = annotation.placement.as_ref();
                    let sql = format!(
                        "UPDATE instances SET provider_instance_id = COALESCE($1, provider_instance_id), address = COALESCE($2, address), \
                         provider = COALESCE($3, provider), zone_id = COALESCE($4, zone_id), zone = COALESCE($5, zone), \
                         instance_type_id = COALESCE($6, instance_type_id), instance_type = COALESCE($7, instance_type), \
                         hourly_price_micros = COALESCE($8, hourly_price_micros), currency = COALESCE($9, currency), \
                         progress_percent = COALESCE($10, progress_percent), failure_reason = COALESCE($11, failure_reason), \
                         deleted_by_provider = COALESCE($14, deleted_by_provider), updated_at = $12 WHERE id = $13 RETURNING {INSTANCE_COLUMNS}"
                    );
                    let row = sqlx::query(&sql)
                        .bind(annotation.provider_instance_id.as_deref())
                        .bind(annotation.address.as_deref())
                        .bind(placement.map(|offer| offer.provider.as_str()))
                        .bind(placement.map(|offer| offer.zone_id.as_uuid()))
                        .bind(placement.map(|offer| offer.zone.as_str()))
                        .bind(placement.map(|offer| offer.instance_type_id.as_uuid()))
                        .bind(placement.map(|offer| offer.instance_type.as_str()))
                        .bind(placement.map(|offer| offer.hourly_price_micros))
                        .bind(placement.map(|offer| offer.currency.as_str()))
                        .bind(annotation.progress_percent)
                        .bind(annotation.failure_reason.as_deref())
                        .bind(now())
                        .bind(id.as_uuid())
                        .bind(annotation.deleted_by_provider)
                        .fetch_optional(&mut *self.transaction)
                        .await?;
                    row.as_ref().map(instance_from_row).transpose()
                }

                async fn archive_instance(&mut self, id: InstanceId) -> Result<Option<Instance>, StoreError> {
                    let terminal = crate::fleet::terminal_states_sql();
                    let sql = format!(
                        "UPDATE instances SET archived = TRUE, updated_at = $1 \
                         WHERE id = $2 AND state IN ({terminal}) RETURNING {INSTANCE_COLUMNS}"
                    );
                    let row = sqlx::query(&sql).bind(now()).bind(id.as_uuid()).fetch_optional(&mut *self.transaction).await?;
                    row.as_ref().map(instance_from_row).transpose()
                }
            }
        }
    };
}

pub(crate) use impl_fleet_sql;
