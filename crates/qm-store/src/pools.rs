//! Pools: deployments the orchestrator keeps at a size (`managed`), with their bounds, scaling
//! policy, the controller's last status and when a router last had a request for them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qm_domain::engine::EngineSettings;
use qm_domain::scaling::ScalingPolicy;
use qm_domain::{DeploymentId, OrganizationId};
use serde::Serialize;
use serde_json::Value;

use crate::StoreError;
use crate::catalog::Offer;

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Pool {
    pub id: DeploymentId,
    pub organization_id: OrganizationId,
    pub name: String,
    pub model: String,
    /// Where replicas may run, cheapest first: each new replica takes the first with capacity.
    pub placements: Vec<Offer>,
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// The size the controller keeps.
    pub desired: i32,
    pub policy: ScalingPolicy,
    /// The arguments its engines start with.
    pub engine: EngineSettings,
    /// Bumped when the model or the engine settings change: replicas of an older revision are
    /// replaced one by one (a rolling update).
    pub revision: i32,
    /// The controller's last view: counts, conditions, recent decisions.
    #[schema(value_type = Object)]
    pub status: Value,
    /// When a router last had a request for the pool's model.
    pub requested_at: Option<DateTime<Utc>>,
    /// A router's p90 time to first token for the pool over its last window, and when it was
    /// written.
    pub ttft_p90_ms: Option<f64>,
    pub ttft_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What a new pool is.
#[derive(Clone, Debug)]
pub struct NewPool {
    pub deployment: crate::Deployment,
    pub name: String,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub desired: i32,
    pub policy: ScalingPolicy,
    pub engine: EngineSettings,
}

/// A pool's new bounds, policy, model and engine settings.
#[derive(Clone, Debug)]
pub struct PoolChange<'a> {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub policy: &'a ScalingPolicy,
    pub model: &'a str,
    pub engine: &'a EngineSettings,
    /// New placements (`None`: unchanged).
    pub placements: Option<&'a [Offer]>,
    /// The model, the engine settings or the placements differ: the revision is bumped (a
    /// rolling update).
    pub new_revision: bool,
}

#[async_trait]
pub trait PoolStore {
    async fn pool(&self, id: DeploymentId) -> Result<Option<Pool>, StoreError>;
    /// The organization's pools (every organization's with `None`), newest first, not deleted.
    async fn pools(
        &self,
        organization: Option<OrganizationId>,
        before: Option<DeploymentId>,
        limit: u32,
    ) -> Result<Vec<Pool>, StoreError>;
    /// The pools the controller looks after: live ones, and those deleted since `deleted_since`
    /// (until their replicas are gone).
    async fn pools_to_control(&self, deleted_since: DateTime<Utc>) -> Result<Vec<Pool>, StoreError>;
    /// The live pool of `organization` serving `model`, newest first.
    async fn pool_for_model(&self, organization: OrganizationId, model: &str) -> Result<Option<Pool>, StoreError>;
    /// Every router's time-to-first-token counts per pool written since `since`, summed per
    /// pool (`qm_domain::ttft` buckets).
    async fn pool_ttft_counts(
        &self,
        since: DateTime<Utc>,
    ) -> Result<std::collections::HashMap<DeploymentId, qm_domain::ttft::Counts>, StoreError>;
}

#[async_trait]
pub trait PoolTx {
    async fn insert_pool(&mut self, pool: &NewPool) -> Result<(), StoreError>;
    /// New bounds, policy, model or engine settings (the controller brings `desired` within the
    /// bounds, as a decision, and rolls replicas to a new revision); `false` when the pool is
    /// unknown or deleted.
    async fn update_pool(&mut self, id: DeploymentId, change: &PoolChange<'_>) -> Result<bool, StoreError>;
    async fn set_pool_status(&mut self, id: DeploymentId, desired: i32, status: &Value) -> Result<(), StoreError>;
    /// Marks it deleted (its replicas are then drained and terminated); `false` when unknown.
    async fn delete_pool(&mut self, id: DeploymentId) -> Result<bool, StoreError>;
    /// Records that routers had requests for these pools at `at`.
    async fn note_pool_requests(&mut self, ids: &[DeploymentId], at: DateTime<Utc>) -> Result<(), StoreError>;
    /// Records `router`'s window of time-to-first-token counts per pool at `at` (and, for the
    /// pool's view, that window's p90 in `ttft_p90_ms`).
    async fn note_pool_ttft(
        &mut self,
        router: &str,
        windows: &[(DeploymentId, qm_domain::ttft::Counts)],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

macro_rules! impl_pools_sql {
    (store: $store:ty, tx: $tx:ty, db: $db:ty) => {
        mod pools_sql {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use qm_domain::{DeploymentId, OrganizationId};
            use sqlx::Row as _;

            use super::*;
            use crate::StoreError;
            use crate::pools::{NewPool, Pool, PoolChange, PoolStore, PoolTx};

            type DbRow = <$db as sqlx::Database>::Row;

            const POOL_COLUMNS: &str = "id, organization_id, name, model, placements, min_replicas, max_replicas, desired, \
                 policy, engine, revision, status, requested_at, ttft_p90_ms, ttft_at, deleted_at, created_at";

            fn pool_from_row(row: &DbRow) -> Result<Pool, StoreError> {
                let placements: sqlx::types::Json<Vec<crate::catalog::Offer>> = row.try_get("placements")?;
                let policy: Option<sqlx::types::Json<qm_domain::scaling::ScalingPolicy>> = row.try_get("policy")?;
                let status: Option<sqlx::types::Json<serde_json::Value>> = row.try_get("status")?;
                let engine: Option<sqlx::types::Json<qm_domain::engine::EngineSettings>> = row.try_get("engine")?;
                let name: Option<String> = row.try_get("name")?;
                let id = DeploymentId::from_uuid(row.try_get("id")?);
                Ok(Pool {
                    id,
                    organization_id: OrganizationId::from_uuid(row.try_get("organization_id")?),
                    name: name.unwrap_or_else(|| id.to_string()),
                    model: row.try_get("model")?,
                    placements: placements.0,
                    min_replicas: row.try_get::<Option<i32>, _>("min_replicas")?.unwrap_or(0),
                    max_replicas: row.try_get::<Option<i32>, _>("max_replicas")?.unwrap_or(0),
                    desired: row.try_get::<Option<i32>, _>("desired")?.unwrap_or(0),
                    policy: policy.map(|policy| policy.0).unwrap_or_default(),
                    engine: engine.map(|engine| engine.0).unwrap_or_default(),
                    revision: row.try_get("revision")?,
                    status: status.map_or_else(|| serde_json::json!({}), |status| status.0),
                    requested_at: row.try_get("requested_at")?,
                    ttft_p90_ms: row.try_get("ttft_p90_ms")?,
                    ttft_at: row.try_get("ttft_at")?,
                    deleted_at: row.try_get("deleted_at")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            #[async_trait]
            impl PoolStore for $store {
                async fn pool(&self, id: DeploymentId) -> Result<Option<Pool>, StoreError> {
                    let sql = format!("SELECT {POOL_COLUMNS} FROM deployments WHERE id = $1 AND managed");
                    let row = sqlx::query(&sql).bind(id.as_uuid()).fetch_optional(self.reader()).await?;
                    row.as_ref().map(pool_from_row).transpose()
                }

                async fn pools(
                    &self,
                    organization: Option<OrganizationId>,
                    before: Option<DeploymentId>,
                    limit: u32,
                ) -> Result<Vec<Pool>, StoreError> {
                    let sql = format!(
                        "SELECT {POOL_COLUMNS} FROM deployments WHERE managed AND deleted_at IS NULL \
                         AND ($1 IS NULL OR organization_id = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(organization.map(|id| id.as_uuid()))
                        .bind(before.map(|id| id.as_uuid()))
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(pool_from_row).collect()
                }

                async fn pools_to_control(&self, deleted_since: DateTime<Utc>) -> Result<Vec<Pool>, StoreError> {
                    let sql = format!(
                        "SELECT {POOL_COLUMNS} FROM deployments WHERE managed AND (deleted_at IS NULL OR deleted_at >= $1) ORDER BY id"
                    );
                    let rows = sqlx::query(&sql).bind(deleted_since).fetch_all(self.reader()).await?;
                    rows.iter().map(pool_from_row).collect()
                }

                async fn pool_for_model(&self, organization: OrganizationId, model: &str) -> Result<Option<Pool>, StoreError> {
                    let sql = format!(
                        "SELECT {POOL_COLUMNS} FROM deployments WHERE managed AND deleted_at IS NULL AND organization_id = $1 \
                         AND model = $2 ORDER BY id DESC LIMIT 1"
                    );
                    let row =
                        sqlx::query(&sql).bind(organization.as_uuid()).bind(model).fetch_optional(self.reader()).await?;
                    row.as_ref().map(pool_from_row).transpose()
                }

                async fn pool_ttft_counts(
                    &self,
                    since: DateTime<Utc>,
                ) -> Result<std::collections::HashMap<DeploymentId, qm_domain::ttft::Counts>, StoreError> {
                    let rows = sqlx::query("SELECT pool_id, counts FROM pool_ttft WHERE written_at >= $1")
                        .bind(since)
                        .fetch_all(self.reader())
                        .await?;
                    let mut merged = std::collections::HashMap::new();
                    for row in &rows {
                        let id: uuid::Uuid = row.try_get("pool_id")?;
                        let counts: sqlx::types::Json<Vec<u32>> = row.try_get("counts")?;
                        let total = merged.entry(DeploymentId::from_uuid(id)).or_insert([0; qm_domain::ttft::BUCKETS]);
                        qm_domain::ttft::add(total, &counts.0);
                    }
                    Ok(merged)
                }
            }

            #[async_trait]
            impl PoolTx for $tx {
                async fn insert_pool(&mut self, pool: &NewPool) -> Result<(), StoreError> {
                    crate::fleet::FleetTx::insert_deployment(self, &pool.deployment).await?;
                    sqlx::query(
                        "UPDATE deployments SET managed = TRUE, name = $1, min_replicas = $2, max_replicas = $3, desired = $4, \
                         policy = $5, engine = $6 WHERE id = $7",
                    )
                    .bind(&pool.name)
                    .bind(pool.min_replicas)
                    .bind(pool.max_replicas)
                    .bind(pool.desired)
                    .bind(sqlx::types::Json(&pool.policy))
                    .bind(sqlx::types::Json(&pool.engine))
                    .bind(pool.deployment.id.as_uuid())
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(())
                }

                async fn update_pool(&mut self, id: DeploymentId, change: &PoolChange<'_>) -> Result<bool, StoreError> {
                    let result = sqlx::query(
                        "UPDATE deployments SET min_replicas = $1, max_replicas = $2, policy = $3, model = $4, engine = $5, \
                         revision = revision + $6, placements = COALESCE($8, placements) \
                         WHERE id = $7 AND managed AND deleted_at IS NULL",
                    )
                    .bind(change.min_replicas)
                    .bind(change.max_replicas)
                    .bind(sqlx::types::Json(change.policy))
                    .bind(change.model)
                    .bind(sqlx::types::Json(change.engine))
                    .bind(i32::from(change.new_revision))
                    .bind(id.as_uuid())
                    .bind(change.placements.map(sqlx::types::Json))
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(result.rows_affected() == 1)
                }

                async fn set_pool_status(
                    &mut self,
                    id: DeploymentId,
                    desired: i32,
                    status: &serde_json::Value,
                ) -> Result<(), StoreError> {
                    sqlx::query("UPDATE deployments SET desired = $1, status = $2 WHERE id = $3 AND managed")
                        .bind(desired)
                        .bind(sqlx::types::Json(status))
                        .bind(id.as_uuid())
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(())
                }

                async fn delete_pool(&mut self, id: DeploymentId) -> Result<bool, StoreError> {
                    let result = sqlx::query(
                        "UPDATE deployments SET deleted_at = $1, desired = 0 WHERE id = $2 AND managed AND deleted_at IS NULL",
                    )
                    .bind(crate::now())
                    .bind(id.as_uuid())
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(result.rows_affected() == 1)
                }

                async fn note_pool_ttft(
                    &mut self,
                    router: &str,
                    windows: &[(DeploymentId, qm_domain::ttft::Counts)],
                    at: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    for (id, counts) in windows {
                        if let Some(p90_ms) = qm_domain::ttft::p90_ms(counts) {
                            sqlx::query("UPDATE deployments SET ttft_p90_ms = $1, ttft_at = $2 WHERE id = $3 AND managed")
                                .bind(p90_ms)
                                .bind(at)
                                .bind(id.as_uuid())
                                .execute(&mut *self.transaction)
                                .await?;
                        }
                        sqlx::query(
                            "INSERT INTO pool_ttft (pool_id, router, counts, written_at) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (pool_id, router) DO UPDATE SET counts = excluded.counts, written_at = excluded.written_at",
                        )
                        .bind(id.as_uuid())
                        .bind(router)
                        .bind(sqlx::types::Json(counts.as_slice()))
                        .bind(at)
                        .execute(&mut *self.transaction)
                        .await?;
                    }
                    // Windows of routers long gone are of no use to anyone.
                    sqlx::query("DELETE FROM pool_ttft WHERE written_at < $1")
                        .bind(at - chrono::Duration::hours(1))
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(())
                }

                async fn note_pool_requests(&mut self, ids: &[DeploymentId], at: DateTime<Utc>) -> Result<(), StoreError> {
                    for id in ids {
                        sqlx::query("UPDATE deployments SET requested_at = $1 WHERE id = $2 AND managed")
                            .bind(at)
                            .bind(id.as_uuid())
                            .execute(&mut *self.transaction)
                            .await?;
                    }
                    Ok(())
                }
            }
        }
    };
}

pub(crate) use impl_pools_sql;
