//! The SQL of the store, written once and expanded for each backend by `impl_sql_store!`.
//!
//! Both databases accept `$1` placeholders, `RETURNING`, `ON CONFLICT DO NOTHING` and the same
//! bound types (UUIDs, UTC timestamps, JSON); where they differ the backend passes the dialect
//! in: PostgreSQL adds `FOR UPDATE SKIP LOCKED` to claims so that relays on several replicas
//! never take the same rows, SQLite has a single writer and needs nothing.

/// Expands to `impl Store for $store` and `impl StoreTx for $tx` on database `$db`.
/// `$store` must have `fn reader(&self) -> &Pool<$db>` and `fn writer(&self) -> &Pool<$db>`.
macro_rules! impl_sql_store {
    (store: $store:ty, tx: $tx:ident, db: $db:ty, backend: $backend:expr, skip_locked: $skip_locked:literal) => {
        use std::time::Duration;

        use async_trait::async_trait;
        use qm_domain::{EventId, OrganizationId, Role, UserId};
        use qm_events::Envelope;
        use sqlx::Row as _;
        use uuid::Uuid;

        use crate::model::{ActionLog, ActionStatus, NewActionLog, NewOrganization, NewUser, Organization, OutboxMessage, User};
        use crate::{Backend, Store, StoreError, StoreTx, now};

        type DbRow = <$db as sqlx::Database>::Row;

        const ORGANIZATION_COLUMNS: &str = "id, name, slug, created_at, updated_at";
        const USER_COLUMNS: &str = "id, organization_id, username, email, first_name, last_name, role, password_hash, is_platform_admin, created_at, updated_at";
        const ACTION_LOG_COLUMNS: &str = "id, organization_id, component, action_type, status, duration_ms, instance_id, user_id, error, metadata, created_at";

        fn organization_from_row(row: &DbRow) -> Result<Organization, StoreError> {
            Ok(Organization {
                id: OrganizationId::from_uuid(row.try_get("id")?),
                name: row.try_get("name")?,
                slug: row.try_get("slug")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        fn user_from_row(row: &DbRow) -> Result<User, StoreError> {
            let role: String = row.try_get("role")?;
            Ok(User {
                id: UserId::from_uuid(row.try_get("id")?),
                organization_id: OrganizationId::from_uuid(row.try_get("organization_id")?),
                username: row.try_get("username")?,
                email: row.try_get("email")?,
                first_name: row.try_get("first_name")?,
                last_name: row.try_get("last_name")?,
                role: role.parse::<Role>().map_err(|error| StoreError::Corrupt(error.to_string()))?,
                password_hash: row.try_get("password_hash")?,
                is_platform_admin: row.try_get("is_platform_admin")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        fn action_log_from_row(row: &DbRow) -> Result<ActionLog, StoreError> {
            let status: String = row.try_get("status")?;
            let metadata: sqlx::types::Json<serde_json::Value> = row.try_get("metadata")?;
            Ok(ActionLog {
                id: row.try_get::<Uuid, _>("id")?.into(),
                organization_id: row.try_get::<Option<Uuid>, _>("organization_id")?.map(Into::into),
                component: row.try_get("component")?,
                action_type: row.try_get("action_type")?,
                status: ActionStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("action status `{status}`")))?,
                duration_ms: row.try_get("duration_ms")?,
                instance_id: row.try_get::<Option<Uuid>, _>("instance_id")?.map(Into::into),
                user_id: row.try_get::<Option<Uuid>, _>("user_id")?.map(Into::into),
                error: row.try_get("error")?,
                metadata: metadata.0,
                created_at: row.try_get("created_at")?,
            })
        }

        fn outbox_from_row(row: &DbRow) -> Result<OutboxMessage, StoreError> {
            let payload: String = row.try_get("payload")?;
            let envelope = Envelope::from_json(payload.as_bytes()).map_err(|error| StoreError::Corrupt(error.to_string()))?;
            Ok(OutboxMessage {
                seq: row.try_get("seq")?,
                id: EventId::from_uuid(row.try_get("id")?),
                envelope,
                attempts: row.try_get("attempts")?,
            })
        }

        fn lease_end(lease: Duration) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
            let lease = chrono::Duration::from_std(lease).map_err(|_| StoreError::Database("lease too long".into()))?;
            Ok(now() + lease)
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> Backend {
                $backend
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
            }

            async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError> {
                let transaction = self.writer().begin().await?;
                Ok(Box::new($tx { transaction, enqueued: false, outbox_committed: self.outbox_notify().clone() }))
            }

            fn outbox_committed(&self) -> std::sync::Arc<tokio::sync::Notify> {
                self.outbox_notify().clone()
            }

            async fn organization(&self, id: OrganizationId) -> Result<Option<Organization>, StoreError> {
                let sql = format!("SELECT {ORGANIZATION_COLUMNS} FROM organizations WHERE id = $1");
                let row = sqlx::query(&sql).bind(id.as_uuid()).fetch_optional(self.reader()).await?;
                row.as_ref().map(organization_from_row).transpose()
            }

            async fn organization_by_slug(&self, slug: &str) -> Result<Option<Organization>, StoreError> {
                let sql = format!("SELECT {ORGANIZATION_COLUMNS} FROM organizations WHERE slug = $1");
                let row = sqlx::query(&sql).bind(slug).fetch_optional(self.reader()).await?;
                row.as_ref().map(organization_from_row).transpose()
            }

            async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
                let row = sqlx::query(&sql).bind(id.as_uuid()).fetch_optional(self.reader()).await?;
                row.as_ref().map(user_from_row).transpose()
            }

            async fn user_by_login(&self, login: &str) -> Result<Option<User>, StoreError> {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1 OR email = $2");
                let row = sqlx::query(&sql)
                    .bind(login)
                    .bind(login.trim().to_lowercase())
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(user_from_row).transpose()
            }

            async fn action_logs(&self, organization: Option<OrganizationId>, limit: u32) -> Result<Vec<ActionLog>, StoreError> {
                let sql = format!(
                    "SELECT {ACTION_LOG_COLUMNS} FROM action_logs WHERE ($1 IS NULL OR organization_id = $1) ORDER BY id DESC LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(organization.map(|id| id.as_uuid()))
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(action_log_from_row).collect()
            }

            async fn claim_outbox(&self, limit: u32, lease: Duration) -> Result<Vec<OutboxMessage>, StoreError> {
                let rows = sqlx::query(concat!(
                    "UPDATE outbox SET claimed_until = $1, attempts = attempts + 1 WHERE seq IN (",
                    "SELECT seq FROM outbox WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until < $2) ",
                    "ORDER BY seq LIMIT $3",
                    $skip_locked,
                    ") RETURNING seq, id, payload, attempts"
                ))
                .bind(lease_end(lease)?)
                .bind(now())
                .bind(i64::from(limit))
                .fetch_all(self.writer())
                .await?;
                let mut messages = rows.iter().map(outbox_from_row).collect::<Result<Vec<_>, _>>()?;
                // RETURNING does not promise an order.
                messages.sort_by_key(|message| message.seq);
                Ok(messages)
            }

            async fn mark_outbox_published(&self, ids: &[EventId]) -> Result<(), StoreError> {
                let published_at = now();
                let mut transaction = self.writer().begin().await?;
                for id in ids {
                    sqlx::query("UPDATE outbox SET published_at = $1, claimed_until = NULL WHERE id = $2")
                        .bind(published_at)
                        .bind(id.as_uuid())
                        .execute(&mut *transaction)
                        .await?;
                }
                transaction.commit().await?;
                Ok(())
            }

            async fn release_outbox(&self, id: EventId, error: &str) -> Result<(), StoreError> {
                sqlx::query("UPDATE outbox SET claimed_until = NULL, last_error = $1 WHERE id = $2 AND published_at IS NULL")
                    .bind(error)
                    .bind(id.as_uuid())
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn outbox_backlog(&self) -> Result<u64, StoreError> {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(self.reader())
                    .await?;
                Ok(u64::try_from(count).unwrap_or_default())
            }

            async fn purge_published_outbox(&self, age: Duration) -> Result<u64, StoreError> {
                let age = chrono::Duration::from_std(age).map_err(|_| StoreError::Database("age too long".into()))?;
                let result = sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1")
                    .bind(now() - age)
                    .execute(self.writer())
                    .await?;
                Ok(result.rows_affected())
            }
        }

        pub struct $tx {
            transaction: sqlx::Transaction<'static, $db>,
            /// Whether the transaction put a message in the outbox (the relay is woken on commit).
            enqueued: bool,
            outbox_committed: std::sync::Arc<tokio::sync::Notify>,
        }

        #[async_trait]
        impl StoreTx for $tx {
            async fn insert_organization(&mut self, organization: &NewOrganization) -> Result<Organization, StoreError> {
                let created_at = now();
                let sql = format!(
                    "INSERT INTO organizations ({ORGANIZATION_COLUMNS}) VALUES ($1, $2, $3, $4, $4) RETURNING {ORGANIZATION_COLUMNS}"
                );
                let row = sqlx::query(&sql)
                    .bind(organization.id.as_uuid())
                    .bind(&organization.name)
                    .bind(&organization.slug)
                    .bind(created_at)
                    .fetch_one(&mut *self.transaction)
                    .await?;
                organization_from_row(&row)
            }

            async fn insert_user(&mut self, user: &NewUser) -> Result<User, StoreError> {
                let created_at = now();
                let sql = format!(
                    "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING {USER_COLUMNS}"
                );
                let row = sqlx::query(&sql)
                    .bind(user.id.as_uuid())
                    .bind(user.organization_id.as_uuid())
                    .bind(&user.username)
                    .bind(user.email.to_lowercase())
                    .bind(&user.first_name)
                    .bind(&user.last_name)
                    .bind(user.role.as_str())
                    .bind(&user.password_hash)
                    .bind(user.is_platform_admin)
                    .bind(created_at)
                    .fetch_one(&mut *self.transaction)
                    .await?;
                user_from_row(&row)
            }

            async fn insert_action_log(&mut self, entry: &NewActionLog) -> Result<ActionLog, StoreError> {
                let sql = format!(
                    "INSERT INTO action_logs ({ACTION_LOG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {ACTION_LOG_COLUMNS}"
                );
                let row = sqlx::query(&sql)
                    .bind(Uuid::now_v7())
                    .bind(entry.organization_id.map(|id| id.as_uuid()))
                    .bind(&entry.component)
                    .bind(&entry.action_type)
                    .bind(entry.status.as_str())
                    .bind(entry.duration_ms)
                    .bind(entry.instance_id.map(|id| id.as_uuid()))
                    .bind(entry.user_id.map(|id| id.as_uuid()))
                    .bind(&entry.error)
                    .bind(sqlx::types::Json(&entry.metadata))
                    .bind(now())
                    .fetch_one(&mut *self.transaction)
                    .await?;
                action_log_from_row(&row)
            }

            async fn enqueue(&mut self, envelope: &Envelope) -> Result<(), StoreError> {
                let payload = String::from_utf8(envelope.to_json()).map_err(|error| StoreError::Corrupt(error.to_string()))?;
                sqlx::query(
                    "INSERT INTO outbox (id, channel, message_type, payload, created_at, organization_id) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(envelope.id.as_uuid())
                .bind(envelope.channel().short_name())
                .bind(&envelope.message_type)
                .bind(payload)
                .bind(now())
                .bind(envelope.org_id.map(|id| id.as_uuid()))
                .execute(&mut *self.transaction)
                .await?;
                self.enqueued = true;
                Ok(())
            }

            async fn mark_processed(&mut self, consumer: &str, event: EventId) -> Result<bool, StoreError> {
                let result = sqlx::query(
                    "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(consumer)
                .bind(event.as_uuid())
                .bind(now())
                .execute(&mut *self.transaction)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn commit(self: Box<Self>) -> Result<(), StoreError> {
                self.transaction.commit().await?;
                if self.enqueued {
                    self.outbox_committed.notify_waiters();
                    self.outbox_committed.notify_one();
                }
                Ok(())
            }
        }
    };
}

pub(crate) use impl_sql_store;
