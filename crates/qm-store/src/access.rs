//! Who may call: organizations and users (beyond their creation), login sessions and API keys.
//!
//! Session tokens and API keys are stored as SHA-256 hashes only (they are long random strings,
//! so a fast hash is enough; passwords, which people choose, get argon2id instead).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qm_domain::{ApiKeyId, OrganizationId, Role, SessionId, UserId};
use serde::Serialize;

use crate::StoreError;
use crate::model::{Organization, User};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: SessionId,
    pub user_id: UserId,
    pub token_hash: String,
    pub client_address: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// An API key as listed: the secret itself is never stored, only its hash and a short prefix
/// that lets people tell keys apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub organization_id: OrganizationId,
    pub created_by: Option<UserId>,
    pub name: String,
    pub role: Role,
    /// The first characters of the key, e.g. `qm_3fA9`.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// After this the key no longer works; `null`: it works until revoked.
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub limits: KeyLimits,
}

/// What a key may do through the router.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct KeyLimits {
    /// The models the key may use; `null`: every model of its organization.
    pub models: Option<Vec<String>>,
    /// Requests per minute the router admits for the key; `null`: no limit.
    pub requests_per_minute: Option<i32>,
    /// Tokens (prompt and completion) per minute; `null`: no limit.
    pub tokens_per_minute: Option<i32>,
}

#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub organization_id: OrganizationId,
    pub created_by: Option<UserId>,
    pub name: String,
    pub role: Role,
    pub prefix: String,
    pub key_hash: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub limits: KeyLimits,
}

/// Reads about accounts and credentials.
#[async_trait]
pub trait AccessStore {
    /// Organizations by id, newest first, after the cursor.
    async fn organizations(&self, before: Option<OrganizationId>, limit: u32) -> Result<Vec<Organization>, StoreError>;
    /// Users, newest first; `organization = None` lists every organization's.
    async fn users(
        &self,
        organization: Option<OrganizationId>,
        before: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, StoreError>;
    /// The live session (not revoked, not expired at `at`) with this token hash, and its user.
    async fn live_session(&self, token_hash: &str, at: DateTime<Utc>) -> Result<Option<(Session, User)>, StoreError>;
    /// The key with this hash if it still works at `at`: not revoked, not expired, and its
    /// creator still a member of the key's organization. Its `role` is the effective one: the
    /// key's, capped by the creator's current role.
    async fn live_api_key(&self, key_hash: &str, at: DateTime<Utc>) -> Result<Option<ApiKey>, StoreError>;
    async fn api_key(&self, id: ApiKeyId) -> Result<Option<ApiKey>, StoreError>;
    /// Keys of an organization, newest first, revoked ones included.
    async fn api_keys(
        &self,
        organization: OrganizationId,
        before: Option<ApiKeyId>,
        limit: u32,
    ) -> Result<Vec<ApiKey>, StoreError>;
    /// Records a use of the key. Writes at most once per `granularity`, so that a busy key does
    /// not turn every read into a write.
    async fn touch_api_key(
        &self,
        id: ApiKeyId,
        at: DateTime<Utc>,
        granularity: std::time::Duration,
    ) -> Result<(), StoreError>;
    /// Instances of the organization that are not finished: running, or about to be.
    async fn live_instance_count(&self, organization: OrganizationId) -> Result<u64, StoreError>;
    /// Instances of the organization that are not finished and have not started billing yet
    /// (requested, provisioning): what they may cost once placed.
    async fn unbilled_instances(&self, organization: OrganizationId) -> Result<Vec<UnbilledInstance>, StoreError>;
}

/// An instance that will bill once placed: its recorded price, and every placement its
/// deployment allows (it may fail over to any of them).
#[derive(Clone, Debug)]
pub struct UnbilledInstance {
    pub hourly_price_micros: i64,
    pub currency: String,
    pub placements: Vec<crate::catalog::Offer>,
}

/// Writes about accounts and credentials.
#[async_trait]
pub trait AccessTx {
    /// Writes name and slug; `None` when the organization does not exist.
    async fn update_organization(&mut self, organization: &Organization) -> Result<Option<Organization>, StoreError>;
    async fn delete_organization(&mut self, id: OrganizationId) -> Result<bool, StoreError>;
    /// Holds the organization's row until the transaction ends, so that writers that decide
    /// on the organization's totals (its budget) go one at a time.
    async fn lock_organization(&mut self, id: OrganizationId) -> Result<(), StoreError>;
    /// Writes every mutable field (email, names, role, password hash).
    async fn update_user(&mut self, user: &User) -> Result<Option<User>, StoreError>;
    /// Deletes the user and revokes the API keys it created.
    async fn delete_user(&mut self, id: UserId) -> Result<bool, StoreError>;
    async fn insert_session(&mut self, session: &NewSession) -> Result<Session, StoreError>;
    async fn revoke_session(&mut self, id: SessionId) -> Result<bool, StoreError>;
    /// Revokes every session of the user but `keep`; returns how many.
    async fn revoke_user_sessions(&mut self, user: UserId, keep: Option<SessionId>) -> Result<u64, StoreError>;
    async fn insert_api_key(&mut self, key: &NewApiKey) -> Result<ApiKey, StoreError>;
    async fn revoke_api_key(&mut self, id: ApiKeyId) -> Result<bool, StoreError>;
}

/// Expands to `impl AccessStore` and `impl AccessTx` for a backend (see `sql::impl_sql_store`).
macro_rules! impl_access_sql {
    (store: $store:ty, tx: $tx:ty, db: $db:ty) => {
        mod access_sql {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use qm_domain::{ApiKeyId, OrganizationId, Role, SessionId, UserId};
            use sqlx::Row as _;
            use uuid::Uuid;

            use super::*;
            use crate::access::{AccessStore, AccessTx, ApiKey, NewApiKey, NewSession, Session};
            use crate::model::{Organization, User};
            use crate::{StoreError, now};

            type DbRow = <$db as sqlx::Database>::Row;

            const API_KEY_COLUMNS: &str =
                "id, organization_id, created_by, name, role, prefix, created_at, last_used_at, revoked_at, expires_at, \
                 models, requests_per_minute, tokens_per_minute";
            const SESSION_COLUMNS: &str = "id, user_id, created_at, expires_at";

            fn api_key_from_row(row: &DbRow) -> Result<ApiKey, StoreError> {
                let role: String = row.try_get("role")?;
                Ok(ApiKey {
                    id: ApiKeyId::from_uuid(row.try_get("id")?),
                    organization_id: OrganizationId::from_uuid(row.try_get("organization_id")?),
                    created_by: row.try_get::<Option<Uuid>, _>("created_by")?.map(UserId::from_uuid),
                    name: row.try_get("name")?,
                    role: role.parse::<Role>().map_err(|error| StoreError::Corrupt(error.to_string()))?,
                    prefix: row.try_get("prefix")?,
                    created_at: row.try_get("created_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                    expires_at: row.try_get("expires_at")?,
                    limits: crate::access::KeyLimits {
                        models: row
                            .try_get::<Option<String>, _>("models")?
                            .map(|models| serde_json::from_str(&models))
                            .transpose()
                            .map_err(|error| StoreError::Corrupt(format!("api_keys.models: {error}")))?,
                        requests_per_minute: row.try_get("requests_per_minute")?,
                        tokens_per_minute: row.try_get("tokens_per_minute")?,
                    },
                })
            }

            fn session_from_row(row: &DbRow) -> Result<Session, StoreError> {
                Ok(Session {
                    id: SessionId::from_uuid(row.try_get("id")?),
                    user_id: UserId::from_uuid(row.try_get("user_id")?),
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                })
            }

            #[async_trait]
            impl AccessStore for $store {
                async fn organizations(
                    &self,
                    before: Option<OrganizationId>,
                    limit: u32,
                ) -> Result<Vec<Organization>, StoreError> {
                    let sql = format!(
                        "SELECT {ORGANIZATION_COLUMNS} FROM organizations WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(before.map(|id| id.as_uuid()))
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(organization_from_row).collect()
                }

                async fn users(
                    &self,
                    organization: Option<OrganizationId>,
                    before: Option<UserId>,
                    limit: u32,
                ) -> Result<Vec<User>, StoreError> {
                    let sql = format!(
                        "SELECT {USER_COLUMNS} FROM users WHERE ($1 IS NULL OR organization_id = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(organization.map(|id| id.as_uuid()))
                        .bind(before.map(|id| id.as_uuid()))
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(user_from_row).collect()
                }

                async fn live_session(
                    &self,
                    token_hash: &str,
                    at: DateTime<Utc>,
                ) -> Result<Option<(Session, User)>, StoreError> {
                    let user_columns = USER_COLUMNS.split(", ").map(|column| format!("u.{column}")).collect::<Vec<_>>().join(", ");
                    let sql = format!(
                        "SELECT s.id AS session_id, s.created_at AS session_created_at, s.expires_at AS session_expires_at, {user_columns} \
                         FROM sessions s JOIN users u ON u.id = s.user_id \
                         WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2"
                    );
                    let Some(row) = sqlx::query(&sql).bind(token_hash).bind(at).fetch_optional(self.reader()).await? else {
                        return Ok(None);
                    };
                    let user = user_from_row(&row)?;
                    let session = Session {
                        id: SessionId::from_uuid(row.try_get("session_id")?),
                        user_id: user.id,
                        created_at: row.try_get("session_created_at")?,
                        expires_at: row.try_get("session_expires_at")?,
                    };
                    Ok(Some((session, user)))
                }

                async fn live_api_key(&self, key_hash: &str, at: DateTime<Utc>) -> Result<Option<ApiKey>, StoreError> {
                    let key_columns = API_KEY_COLUMNS.split(", ").map(|column| format!("k.{column}")).collect::<Vec<_>>().join(", ");
                    let sql = format!(
                        "SELECT {key_columns}, u.role AS creator_role FROM api_keys k \
                         JOIN users u ON u.id = k.created_by AND u.organization_id = k.organization_id \
                         WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)"
                    );
                    let Some(row) = sqlx::query(&sql).bind(key_hash).bind(at).fetch_optional(self.reader()).await? else {
                        return Ok(None);
                    };
                    let mut key = api_key_from_row(&row)?;
                    let creator_role: String = row.try_get("creator_role")?;
                    let creator_role = creator_role.parse::<Role>().map_err(|error| StoreError::Corrupt(error.to_string()))?;
                    key.role = key.role.min(creator_role);
                    Ok(Some(key))
                }

                async fn api_key(&self, id: ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
                    let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1");
                    let row = sqlx::query(&sql).bind(id.as_uuid()).fetch_optional(self.reader()).await?;
                    row.as_ref().map(api_key_from_row).transpose()
                }

                async fn api_keys(
                    &self,
                    organization: OrganizationId,
                    before: Option<ApiKeyId>,
                    limit: u32,
                ) -> Result<Vec<ApiKey>, StoreError> {
                    let sql = format!(
                        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(organization.as_uuid())
                        .bind(before.map(|id| id.as_uuid()))
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(api_key_from_row).collect()
                }

                async fn touch_api_key(
                    &self,
                    id: ApiKeyId,
                    at: DateTime<Utc>,
                    granularity: std::time::Duration,
                ) -> Result<(), StoreError> {
                    let granularity = chrono::Duration::from_std(granularity).unwrap_or(chrono::Duration::MAX);
                    sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)")
                        .bind(at)
                        .bind(id.as_uuid())
                        .bind(at - granularity)
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                async fn live_instance_count(&self, organization: OrganizationId) -> Result<u64, StoreError> {
                    let terminal = crate::fleet::terminal_states_sql();
                    let sql = format!("SELECT COUNT(*) FROM instances WHERE organization_id = $1 AND state NOT IN ({terminal})");
                    let count: i64 = sqlx::query_scalar(&sql)
                        .bind(organization.as_uuid())
                    .fetch_one(self.reader())
                    .await?;
                    Ok(u64::try_from(count).unwrap_or_default())
                }

                async fn unbilled_instances(
                    &self,
                    organization: OrganizationId,
                ) -> Result<Vec<crate::access::UnbilledInstance>, StoreError> {
                    let terminal = crate::fleet::terminal_states_sql();
                    let sql = format!(
                        "SELECT i.hourly_price_micros, i.currency, d.placements FROM instances i \
                         LEFT JOIN deployments d ON d.id = i.deployment_id \
                         WHERE i.organization_id = $1 AND i.state NOT IN ({terminal}) \
                         AND NOT EXISTS (SELECT 1 FROM cost_intervals c WHERE c.instance_id = i.id AND c.started_s IS NOT NULL)"
                    );
                    let rows = sqlx::query(&sql).bind(organization.as_uuid()).fetch_all(self.reader()).await?;
                    rows.iter()
                        .map(|row| {
                            let placements: Option<sqlx::types::Json<Vec<crate::catalog::Offer>>> = row.try_get("placements")?;
                            Ok(crate::access::UnbilledInstance {
                                hourly_price_micros: row.try_get("hourly_price_micros")?,
                                currency: row.try_get("currency")?,
                                placements: placements.map(|json| json.0).unwrap_or_default(),
                            })
                        })
                        .collect()
                }
            }

            #[async_trait]
            impl AccessTx for $tx {
                async fn lock_organization(&mut self, id: OrganizationId) -> Result<(), StoreError> {
                    sqlx::query("UPDATE organizations SET updated_at = updated_at WHERE id = $1")
                        .bind(id.as_uuid())
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(())
                }

                async fn update_organization(
                    &mut self,
                    organization: &Organization,
                ) -> Result<Option<Organization>, StoreError> {
                    let sql = format!(
                        "UPDATE organizations SET name = $1, slug = $2, updated_at = $3 WHERE id = $4 RETURNING {ORGANIZATION_COLUMNS}"
                    );
                    let row = sqlx::query(&sql)
                        .bind(&organization.name)
                        .bind(&organization.slug)
                        .bind(now())
                        .bind(organization.id.as_uuid())
                        .fetch_optional(&mut *self.transaction)
                        .await?;
                    row.as_ref().map(organization_from_row).transpose()
                }

                async fn delete_organization(&mut self, id: OrganizationId) -> Result<bool, StoreError> {
                    let result = sqlx::query("DELETE FROM organizations WHERE id = $1")
                        .bind(id.as_uuid())
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(result.rows_affected() == 1)
                }

                async fn update_user(&mut self, user: &User) -> Result<Option<User>, StoreError> {
                    let sql = format!(
                        "UPDATE users SET email = $1, first_name = $2, last_name = $3, role = $4, password_hash = $5, updated_at = $6 \
                         WHERE id = $7 RETURNING {USER_COLUMNS}"
                    );
                    let row = sqlx::query(&sql)
                        .bind(user.email.to_lowercase())
                        .bind(&user.first_name)
                        .bind(&user.last_name)
                        .bind(user.role.as_str())
                        .bind(&user.password_hash)
                        .bind(now())
                        .bind(user.id.as_uuid())
                        .fetch_optional(&mut *self.transaction)
                        .await?;
                    row.as_ref().map(user_from_row).transpose()
                }

                async fn delete_user(&mut self, id: UserId) -> Result<bool, StoreError> {
                    sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE created_by = $2 AND revoked_at IS NULL")
                        .bind(now())
                        .bind(id.as_uuid())
                        .execute(&mut *self.transaction)
                        .await?;
                    let result =
                        sqlx::query("DELETE FROM users WHERE id = $1").bind(id.as_uuid()).execute(&mut *self.transaction).await?;
                    Ok(result.rows_affected() == 1)
                }

                async fn insert_session(&mut self, session: &NewSession) -> Result<Session, StoreError> {
                    let sql = format!(
                        "INSERT INTO sessions (id, user_id, token_hash, client_address, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {SESSION_COLUMNS}"
                    );
                    let row = sqlx::query(&sql)
                        .bind(session.id.as_uuid())
                        .bind(session.user_id.as_uuid())
                        .bind(&session.token_hash)
                        .bind(&session.client_address)
                        .bind(now())
                        .bind(session.expires_at)
                        .fetch_one(&mut *self.transaction)
                        .await?;
                    session_from_row(&row)
                }

                async fn revoke_session(&mut self, id: SessionId) -> Result<bool, StoreError> {
                    let result = sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                        .bind(now())
                        .bind(id.as_uuid())
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(result.rows_affected() == 1)
                }

                async fn revoke_user_sessions(&mut self, user: UserId, keep: Option<SessionId>) -> Result<u64, StoreError> {
                    let result = sqlx::query(
                        "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL AND ($3 IS NULL OR id <> $3)",
                    )
                    .bind(now())
                    .bind(user.as_uuid())
                    .bind(keep.map(|id| id.as_uuid()))
                    .execute(&mut *self.transaction)
                    .await?;
                    Ok(result.rows_affected())
                }

                async fn insert_api_key(&mut self, key: &NewApiKey) -> Result<ApiKey, StoreError> {
                    let sql = format!(
                        "INSERT INTO api_keys (id, organization_id, created_by, name, role, prefix, key_hash, created_at, expires_at, \
                         models, requests_per_minute, tokens_per_minute) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {API_KEY_COLUMNS}"
                    );
                    let row = sqlx::query(&sql)
                        .bind(key.id.as_uuid())
                        .bind(key.organization_id.as_uuid())
                        .bind(key.created_by.map(|id| id.as_uuid()))
                        .bind(&key.name)
                        .bind(key.role.as_str())
                        .bind(&key.prefix)
                        .bind(&key.key_hash)
                        .bind(now())
                        .bind(key.expires_at)
                        .bind(key.limits.models.as_ref().map(|models| serde_json::Value::from(models.clone()).to_string()))
                        .bind(key.limits.requests_per_minute)
                        .bind(key.limits.tokens_per_minute)
                        .fetch_one(&mut *self.transaction)
                        .await?;
                    api_key_from_row(&row)
                }

                async fn revoke_api_key(&mut self, id: ApiKeyId) -> Result<bool, StoreError> {
                    let result = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                        .bind(now())
                        .bind(id.as_uuid())
                        .execute(&mut *self.transaction)
                        .await?;
                    Ok(result.rows_affected() == 1)
                }
            }
        }
    };
}

pub(crate) use impl_access_sql;
