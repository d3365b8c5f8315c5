//! `/api_keys`: bearer tokens for programs, scoped to one organization, shown once.

use axum::extract::State;
use axum::http::StatusCode;
use qm_domain::{ApiKeyId, Role};
use qm_store::{ApiKey, NewApiKey};
use serde::{Deserialize, Serialize};

use super::{Audit, Page, PageParams, bounded_text};
use crate::AppState;
use crate::auth::{API_KEY_PREFIX, Principal, generate_token, token_hash};
use crate::problem::{ApiResult, Json, Path, Problem, Query};

/// Characters of a key kept in clear to tell keys apart.
const SHOWN_PREFIX: usize = 8;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// At most the caller's own role (the default). The key never does more than its
    /// creator's current role allows, and stops working when the creator is deleted.
    pub role: Option<Role>,
    /// When the key stops working (RFC 3339, in the future); never when left out.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The models the key may use through the router (at most 50); every model of the
    /// organization when left out.
    #[schema(max_items = 50, min_items = 1)]
    pub models: Option<Vec<String>>,
    /// Requests per minute the router admits for the key; unlimited when left out.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub requests_per_minute: Option<i32>,
    /// Tokens (prompt and completion) per minute; unlimited when left out.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub tokens_per_minute: Option<i32>,
}

/// The router limits of a new key, checked.
fn limits(request: &CreateApiKey) -> Result<qm_store::KeyLimits, Problem> {
    let models = match &request.models {
        None => None,
        Some(models) if models.is_empty() || models.len() > 50 => {
            return Err(Problem::invalid("models", "1 to 50 models, or leave it out for every model"));
        }
        Some(models) => Some(
            models
                .iter()
                .map(|model| {
                    qm_domain::ModelId::parse(model)
                        .map(|model| model.as_str().to_owned())
                        .map_err(|error| Problem::invalid("models", error.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let rate = |field: &str, value: Option<i32>, max: i32| match value {
        Some(rate) if !(1..=max).contains(&rate) => Err(Problem::invalid(field, format!("1 to {max}"))),
        _ => Ok(value),
    };
    Ok(qm_store::KeyLimits {
        models,
        requests_per_minute: rate("requests_per_minute", request.requests_per_minute, 1_000_000)?,
        tokens_per_minute: rate("tokens_per_minute", request.tokens_per_minute, 1_000_000_000)?,
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The key itself (`qm_…`). Shown this once; only its hash is kept.
    pub secret: String,
}

/// The organization's keys, revoked ones included.
#[utoipa::path(get, path = "/api_keys", tag = "api_keys", params(PageParams),
    responses((status = 200, body = Page<ApiKey>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<ApiKey>>> {
    let (limit, cursor) = page.resolve::<ApiKeyId>()?;
    let keys = state.dependencies.store.api_keys(principal.organization_id, cursor, limit + 1).await?;
    Ok(Json(Page::from_overfetch(keys, limit, |key: &ApiKey| key.id.to_string())))
}

/// Create a key (operators and admins).
#[utoipa::path(post, path = "/api_keys", tag = "api_keys", request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKey)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    let audit = Audit::start("api_key.create");
    principal.require(Role::Operator)?;
    let role = request.role.unwrap_or(principal.role);
    if !principal.role.allows(role) {
        return Err(Problem::invalid("role", format!("cannot exceed your own role (`{}`)", principal.role)));
    }
    if request.expires_at.is_some_and(|expires_at| expires_at <= qm_store::now()) {
        return Err(Problem::invalid("expires_at", "must be in the future"));
    }
    let secret = generate_token(API_KEY_PREFIX);
    let new_key = NewApiKey {
        id: ApiKeyId::new(),
        organization_id: principal.organization_id,
        created_by: principal.user_id,
        name: bounded_text("name", &request.name, 200)?,
        role,
        prefix: secret.chars().take(SHOWN_PREFIX).collect(),
        key_hash: token_hash(&secret),
        expires_at: request.expires_at,
        limits: limits(&request)?,
    };
    let mut tx = state.dependencies.store.begin().await?;
    let key = tx.insert_api_key(&new_key).await?;
    audit
        .record(&mut *tx, &principal, None, serde_json::json!({ "key_id": key.id, "name": key.name, "role": key.role }))
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(CreatedApiKey { key, secret })))
}

/// Revoke a key: it stops working at once. Operators revoke their own keys, admins any.
#[utoipa::path(delete, path = "/api_keys/{id}", tag = "api_keys", params(("id" = ApiKeyId, Path)),
    responses((status = 204, description = "Revoked")))]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<ApiKeyId>,
) -> ApiResult<StatusCode> {
    let audit = Audit::start("api_key.revoke");
    principal.require(Role::Operator)?;
    let key = state.dependencies.store.api_key(id).await?;
    let key = key.filter(|key| principal.sees(key.organization_id)).ok_or_else(|| Problem::not_found("API key"))?;
    if !principal.role.allows(Role::Admin) && key.created_by != principal.user_id {
        return Err(Problem::forbidden("operators may revoke only the keys they created"));
    }
    let mut tx = state.dependencies.store.begin().await?;
    tx.revoke_api_key(id).await?;
    audit.record(&mut *tx, &principal, None, serde_json::json!({ "key_id": key.id, "name": key.name })).await?;
    tx.commit().await?;
    state.credentials.evict(|cached| cached.credential == crate::auth::Credential::ApiKey(id));
    Ok(StatusCode::NO_CONTENT)
}
