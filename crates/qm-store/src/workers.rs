//! The worker protocol's records (DESIGN section 6): per instance, the one-time bootstrap token,
//! the agent's token (with the one a rotation replaced, valid for a grace period), what the
//! agent registered with, and its last heartbeat. Tokens are stored as SHA-256 hashes only.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qm_domain::InstanceId;
use serde::Serialize;
use serde_json::Value;

use crate::StoreError;

/// How long after a worker's registration the same bootstrap token may register it again while
/// it has not sent a heartbeat (the answer to the first was lost).
pub const REGISTRATION_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Worker {
    pub instance_id: InstanceId,
    pub registered: bool,
    pub revoked: bool,
    pub agent_version: Option<String>,
    pub engine_url: Option<String>,
    /// The engine's port as registered: the router reaches the worker at the address its
    /// provider reports and this port, never at a host the agent names.
    pub engine_port: Option<i32>,
    pub model: Option<String>,
    /// As registered: index, name, memory_total_mb per GPU.
    #[schema(value_type = Vec<Object>)]
    pub gpus: Value,
    pub status: Option<String>,
    pub queue_depth: Option<i32>,
    pub in_flight: Option<i32>,
    /// The share of the engine's KV cache in use (0 to 1) at the last heartbeat.
    pub kv_cache_usage: Option<f64>,
    /// From the last heartbeat, per GPU.
    #[schema(value_type = Vec<Object>)]
    pub gpu_metrics: Value,
    pub registered_at: Option<DateTime<Utc>>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug)]
pub struct Registration {
    pub token_hash: String,
    pub agent_version: String,
    pub engine_url: String,
    pub engine_port: u16,
    pub model: String,
    pub gpus: Value,
}

#[derive(Clone, Debug)]
pub struct Heartbeat {
    pub status: String,
    pub queue_depth: i32,
    pub in_flight: i32,
    pub kv_cache_usage: Option<f64>,
    pub gpu_metrics: Value,
}

#[async_trait]
pub trait WorkerStore {
    async fn worker(&self, instance: InstanceId) -> Result<Option<Worker>, StoreError>;
    /// The unrevoked worker of an instance that is not finished, whose current token, or whose
    /// previous token still in its grace period at `at`, has this hash.
    async fn worker_by_token(&self, token_hash: &str, at: DateTime<Utc>) -> Result<Option<Worker>, StoreError>;
    /// The workers of `instances` that have one (the router's discovery reads them in one go).
    async fn workers_of(&self, instances: &[InstanceId]) -> Result<Vec<Worker>, StoreError>;
}

#[async_trait]
pub trait WorkerTx {
    /// Gives the instance a (new) bootstrap token, valid until `expires_at`; a previous
    /// registration is forgotten.
    async fn issue_bootstrap_token(
        &mut self,
        instance: InstanceId,
        token_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Registers with the bootstrap token, which works once. `false` when it is wrong, used,
    /// expired or revoked.
    /// Registers the worker with its bootstrap token (the last issued, or the one before it):
    /// once, or again (a retry whose first answer was lost) until its first heartbeat within
    /// [`REGISTRATION_RETRY`]; `false` otherwise.
    async fn register_worker(
        &mut self,
        instance: InstanceId,
        bootstrap_hash: &str,
        registration: &Registration,
    ) -> Result<bool, StoreError>;
    async fn record_heartbeat(&mut self, instance: InstanceId, heartbeat: &Heartbeat) -> Result<(), StoreError>;
    /// Replaces the token, if `current_hash` is the current one (a token in its grace period
    /// cannot rotate); the old one stays valid until `grace_until`.
    async fn rotate_worker_token(
        &mut self,
        instance: InstanceId,
        current_hash: &str,
        token_hash: &str,
        grace_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Revokes every token of the instance's worker.
    async fn revoke_worker(&mut self, instance: InstanceId) -> Result<bool, StoreError>;
}

macro_rules! impl_workers_sql {
    (store: $store:ty, tx: $tx:ty, db: $db:ty) => {
        mod workers_sql {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use qm_domain::InstanceId;
            use sqlx::Row as _;

            use super::*;
            use crate::workers::{Heartbeat, Registration, Worker, WorkerStore, WorkerTx};
            use crate::{StoreError, now};

            type DbRow = <$db as sqlx::Database>::Row;

            const WORKER_COLUMNS: &str = "instance_id, bootstrap_used_at, revoked_at, agent_version, engine_url, engine_port, model, gpus, \
                 status, queue_depth, in_flight, kv_cache_usage, gpu_metrics, registered_at, last_heartbeat_at";

            /// A JSON list column; empty until the agent first reports it.
            fn json(row: &DbRow, column: &str) -> Result<serde_json::Value, StoreError> {
                let value: Option<sqlx::types::Json<serde_json::Value>> = row.try_get(column)?;
                Ok(value.map_or_else(|| serde_json::Value::Array(Vec::new()), |json| json.0))
            }

            fn worker_from_row(row: &DbRow) -> Result<Worker, StoreError> {
                let used: Option<DateTime<Utc>> = row.try_get("bootstrap_used_at")?;
                let revoked: Option<DateTime<Utc>> = row.try_get("revoked_at")?;
                Ok(Worker {
                    instance_id: InstanceId::from_uuid(row.try_get("instance_id")?),
                    registered: used.is_some(),
                    revoked: revoked.is_some(),
                    agent_version: row.try_get("agent_version")?,
                    engine_url: row.try_get("engine_url")?,
                    engine_port: row.try_get("engine_port")?,
                    model: row.try_get("model")?,
                    gpus: json(row, "gpus")?,
                    status: row.try_get("status")?,
                    queue_depth: row.try_get("queue_depth")?,
                    kv_cache_usage: row.try_get("kv_cache_usage")?,
                    in_flight: row.try_get("in_flight")?,
                    gpu_metrics: json(row, "gpu_metrics")?,
                    registered_at: row.try_get("registered_at")?,
                    last_heartbeat_at: row.try_get("last_heartbeat_at")?,
                })
            }

            #[async_trait]
            impl WorkerStore for $store {
                async fn workers_of(&self, instances: &[InstanceId]) -> Result<Vec<Worker>, StoreError> {
                    let mut found = Vec::with_capacity(instances.len());
                    for (placeholders, chunk) in crate::in_chunks(instances) {
                        let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE instance_id IN ({placeholders})");
                        let mut query = sqlx::query(&sql);
                        for id in chunk {
                            query = query.bind(id.as_uuid());
                        }
                        for row in query.fetch_all(self.reader()).await? {
                            found.push(worker_from_row(&row)?);
                        }
                    }
                    Ok(found)
                }

                async fn worker(&self, instance: InstanceId) -> Result<Option<Worker>, StoreError> {
                    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE instance_id = $1");
                    let row = sqlx::query(&sql).bind(instance.as_uuid()).fetch_optional(self.reader()).await?;
                    row.as_ref().map(worker_from_row).transpose()
                }

                async fn worker_by_token(&self, token_hash: &str, at: DateTime<Utc>) -> Result<Option<Worker>, StoreError> {
                    let terminal = crate::fleet::terminal_states_sql();
                    let sql = format!(
                        "SELECT {WORKER_COLUMNS} FROM workers WHERE revoked_at IS NULL \
                         AND (token_hash = $1 OR (previous_token_hash = $1 AND previous_valid_until > $2)) \
                         AND instance_id IN (SELECT id FROM instances WHERE state NOT IN ({terminal}))"
                    );
                    let row = sqlx::query(&sql).bind(token_hash).bind(at).fetch_optional(self.reader()).await?;
                    row.as_ref().map(worker_from_row).transpose()
                }
            }

            #[async_trait]
            impl WorkerTx for $tx {
                async fn issue_bootstrap_token(
                    &mut self,
                    instance: InstanceId,
                    token_hash: &str,
                    expires_at: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        // Issued again before any registration: the earlier token stays valid
                        // too (the provider may run an instance that carries it). Once a worker
                        // registered, nothing changes: its instance exists and speaks.
                        "INSERT INTO workers (instance_id, bootstrap_token_hash, created_at, bootstrap_expires_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (instance_id) DO UPDATE SET \
                         previous_bootstrap_token_hash = CASE WHEN workers.bootstrap_used_at IS NULL \
                           THEN workers.bootstrap_token_hash ELSE workers.previous_bootstrap_token_hash END, \
                         bootstrap_token_hash = CASE WHEN workers.bootstrap_used_at IS NULL \
                           THEN excluded.bootstrap_token_hash ELSE workers.bootstrap_token_hash END, \
                         bootstrap_expires_at = CASE WHEN workers.bootstrap_used_at IS NULL \
                           THEN excluded.bootstrap_expires_at ELSE workers.bootstrap_expires_at END",
                    )
                    .bind(instance.as_uuid())
                    .bind(token_hash)
                    .bind(now())
                    .bind(expires_at)
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(())
                }

                async fn register_worker(
                    &mut self,
                    instance: InstanceId,
                    bootstrap_hash: &str,
                    registration: &Registration,
                ) -> Result<bool, StoreError> {
                    // Used once; but a registration whose answer was lost (the api replica died
                    // after committing) may be repeated until the worker's first heartbeat, within
                    // REGISTRATION_RETRY of the first: it gets a new token, the unseen one is replaced.
                    let at = now();
                    let retry_since = at - chrono::Duration::from_std(crate::workers::REGISTRATION_RETRY).unwrap_or_default();
                    let result = sqlx::query(
                        "UPDATE workers SET bootstrap_used_at = COALESCE(bootstrap_used_at, $1), registered_at = $1, token_hash = $2, \
                         agent_version = $3, engine_url = $4, model = $5, gpus = $6, engine_port = $9 \
                         WHERE instance_id = $7 AND (bootstrap_token_hash = $8 OR previous_bootstrap_token_hash = $8) \
                         AND revoked_at IS NULL AND bootstrap_expires_at > $1 \
                         AND (bootstrap_used_at IS NULL OR (last_heartbeat_at IS NULL AND bootstrap_used_at > $10))",
                    )
                    .bind(at)
                    .bind(&registration.token_hash)
                    .bind(&registration.agent_version)
                    .bind(&registration.engine_url)
                    .bind(&registration.model)
                    .bind(sqlx::types::Json(&registration.gpus))
                    .bind(instance.as_uuid())
                    .bind(bootstrap_hash)
                    .bind(i32::from(registration.engine_port))
                    .bind(retry_since)
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(result.rows_affected() == 1)
                }

                async fn record_heartbeat(&mut self, instance: InstanceId, heartbeat: &Heartbeat) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE workers SET status = $1, queue_depth = $2, in_flight = $3, gpu_metrics = $4, last_heartbeat_at = $5, \
                         kv_cache_usage = $7 WHERE instance_id = $6",
                    )
                    .bind(&heartbeat.status)
                    .bind(heartbeat.queue_depth)
                    .bind(heartbeat.in_flight)
                    .bind(sqlx::types::Json(&heartbeat.gpu_metrics))
                    .bind(now())
                    .bind(instance.as_uuid())
                    .bind(heartbeat.kv_cache_usage)
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(())
                }

                async fn rotate_worker_token(
                    &mut self,
                    instance: InstanceId,
                    current_hash: &str,
                    token_hash: &str,
                    grace_until: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let result = sqlx::query(
                        "UPDATE workers SET previous_token_hash = token_hash, previous_valid_until = $1, token_hash = $2 \
                         WHERE instance_id = $3 AND revoked_at IS NULL AND token_hash = $4",
                    )
                    .bind(grace_until)
                    .bind(token_hash)
                    .bind(instance.as_uuid())
                    .bind(current_hash)
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(result.rows_affected() == 1)
                }

                async fn revoke_worker(&mut self, instance: InstanceId) -> Result<bool, StoreError> {
                    let result = sqlx::query("UPDATE workers SET revoked_at = $1 WHERE instance_id = $2 AND revoked_at IS NULL")
                        .bind(now())
                        .bind(instance.as_uuid())
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(result.rows_affected() == 1)
                }
            }
        }
    };
}

pub(crate) use impl_workers_sql;
