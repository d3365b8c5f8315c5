//! `/auth/*`: log in and out, and the caller's own account.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use qm_domain::{Email, SessionId};
use qm_store::{NewSession, User};
use serde::{Deserialize, Serialize};

use super::Audit;
use super::users::UserView;
use crate::AppState;
use crate::auth::{
    Attempt, ClientAddress, Principal, SESSION_COOKIE, SESSION_TOKEN_PREFIX, generate_token, token_hash,
};
use crate::password;
use crate::problem::{ApiResult, Json, Problem};

/// Longest `login` accepted (an email address is at most 254 characters).
pub const MAX_LOGIN_LENGTH: usize = 254;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username or email address.
    #[schema(min_length = 1, max_length = 254, pattern = r"\S")]
    pub login: String,
    #[schema(max_length = 1024)]
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`; the same token is set as the `qm_session`
    /// HttpOnly cookie.
    pub token: String,
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
    pub user: UserView,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMe {
    #[schema(max_length = 254, pattern = r"^\s*[^@\s]+@[^@\s.]+(\.[^@\s.]+)+\s*$")]
    pub email: Option<String>,
    #[schema(max_length = 100)]
    pub first_name: Option<String>,
    #[schema(max_length = 100)]
    pub last_name: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    #[schema(max_length = 1024)]
    pub current_password: String,
    /// 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    pub new_password: String,
}

fn session_cookie(state: &AppState, value: &str, max_age_seconds: u64) -> HeaderValue {
    let secure = if state.dependencies.settings.cookie_secure { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_seconds}{secure}");
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static("qm_session=; Max-Age=0"))
}

/// Log in with a username or email and a password.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, description = "Logged in; also sets the `qm_session` cookie", body = LoginResponse),
              (status = 401, description = "Wrong login or password", body = Problem),
              (status = 429, description = "Too many failed attempts; see `Retry-After`", body = Problem)),
    security(()))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    Json(request): Json<LoginRequest>,
) -> ApiResult<Response> {
    let login = request.login.trim();
    if login.is_empty() || request.login.chars().count() > MAX_LOGIN_LENGTH {
        return Err(Problem::invalid("login", format!("must be 1 to {MAX_LOGIN_LENGTH} characters")));
    }
    if request.password.chars().count() > password::MAX_LENGTH {
        return Err(Problem::invalid("password", format!("must be at most {} characters", password::MAX_LENGTH)));
    }
    let store = &state.dependencies.store;
    let user = store.user_by_login(login).await?;
    // Counted per account (its username and its email are one), else per login text; the
    // attempt is reserved before the (slow) check, so racing guesses cannot outrun the limit.
    let account = user.as_ref().map_or_else(|| login.to_owned(), |user| user.id.to_string());
    let limiter = &state.login_limiter;
    let reservation = limiter.reserve(&Attempt::new(client, &account)).map_err(|seconds| {
        Problem::too_many_requests(format!("too many failed logins; try again in {seconds} s"), seconds)
    })?;
    // Verify against a real hash even for unknown users, so timing does not reveal accounts.
    let stored_hash = user.as_ref().map_or(password::dummy_hash(), |user| user.password_hash.as_str());
    let verified = password::verify_async(&request.password, stored_hash).await?;
    let Some(user) = user.filter(|_| verified) else {
        tracing::info!(%client, "failed login");
        return Err(Problem::unauthorized("wrong login or password"));
    };
    limiter.succeeded(reservation);
    let token = generate_token(SESSION_TOKEN_PREFIX);
    let ttl = state.dependencies.settings.session_ttl;
    let expires_at = qm_store::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(12));
    let mut tx = store.begin().await?;
    let session = tx
        .insert_session(&NewSession {
            id: SessionId::new(),
            user_id: user.id,
            token_hash: token_hash(&token),
            client_address: Some(client.to_string()),
            expires_at,
        })
        .await?;
    let principal = Principal {
        organization_id: user.organization_id,
        role: user.role,
        user_id: Some(user.id),
        platform_admin: user.is_platform_admin,
        credential: crate::auth::Credential::Session(session.id),
        expires_in: ttl,
        account: Some(std::sync::Arc::new(UserView::from(&user))),
    };
    Audit::start("auth.login")
        .record(&mut *tx, &principal, None, serde_json::json!({ "client_address": client.to_string() }))
        .await?;
    tx.commit().await?;
    let body =
        LoginResponse { token: token.clone(), token_type: "Bearer".into(), expires_at, user: UserView::from(&user) };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie(&state, &token, ttl.as_secs()));
    Ok(response)
}

/// End the current session.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    responses((status = 204, description = "Session revoked and cookie cleared")))]
pub async fn logout(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    let Some(session) = principal.session() else {
        return Err(Problem::forbidden("API keys do not log out; revoke them with DELETE /api_keys/{id}"));
    };
    let mut tx = state.dependencies.store.begin().await?;
    tx.revoke_session(session).await?;
    Audit::start("auth.logout").record(&mut *tx, &principal, None, serde_json::Value::Null).await?;
    tx.commit().await?;
    state.credentials.evict(|cached| cached.session() == Some(session));
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    Ok(response)
}

/// 403 for an API key: the routes of one's own account need a user's session.
fn account(principal: &Principal) -> ApiResult<&UserView> {
    principal
        .account
        .as_deref()
        .ok_or_else(|| Problem::forbidden("an API key has no account of its own; log in as a user"))
}

async fn caller(state: &AppState, principal: &Principal) -> ApiResult<User> {
    let user_id = account(principal)?.id;
    state.dependencies.store.user(user_id).await?.ok_or_else(|| Problem::unauthorized("the account no longer exists"))
}

/// The caller's account, as read with the session (no further lookup).
#[utoipa::path(get, path = "/auth/me", tag = "auth", responses((status = 200, body = UserView)))]
pub async fn me(principal: Principal) -> ApiResult<Json<UserView>> {
    Ok(Json(account(&principal)?.clone()))
}

/// Change the caller's email address or names.
#[utoipa::path(put, path = "/auth/me", tag = "auth", request_body = UpdateMe, responses((status = 200, body = UserView)))]
pub async fn update_me(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<UpdateMe>,
) -> ApiResult<Json<UserView>> {
    let audit = Audit::start("user.update_self");
    let mut user = caller(&state, &principal).await?;
    if let Some(email) = &request.email {
        user.email =
            Email::parse(email).map_err(|error| Problem::invalid("email", error.to_string()))?.as_str().to_owned();
    }
    if let Some(first_name) = &request.first_name {
        user.first_name = super::users::name_field("first_name", first_name)?;
    }
    if let Some(last_name) = &request.last_name {
        user.last_name = super::users::name_field("last_name", last_name)?;
    }
    let mut tx = state.dependencies.store.begin().await?;
    let updated = tx.update_user(&user).await?.ok_or_else(|| Problem::unauthorized("the account no longer exists"))?;
    audit.record(&mut *tx, &principal, None, serde_json::json!({ "user_id": user.id })).await?;
    tx.commit().await?;
    let view = UserView::from(&updated);
    state.credentials.refresh_account(&view);
    Ok(Json(view))
}

/// Change the caller's password; other sessions of the account are revoked.
#[utoipa::path(put, path = "/auth/me/password", tag = "auth", request_body = ChangePassword,
    responses((status = 204, description = "Changed")))]
pub async fn change_password(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    principal: Principal,
    Json(request): Json<ChangePassword>,
) -> ApiResult<StatusCode> {
    let audit = Audit::start("user.change_password");
    let mut user = caller(&state, &principal).await?;
    if request.current_password.len() > password::MAX_LENGTH {
        return Err(Problem::invalid("current_password", "is wrong"));
    }
    let reservation = state.login_limiter.reserve(&Attempt::new(client, &user.id.to_string())).map_err(|seconds| {
        Problem::too_many_requests(format!("too many wrong passwords; try again in {seconds} s"), seconds)
    })?;
    if !password::verify_async(&request.current_password, &user.password_hash).await? {
        return Err(Problem::invalid("current_password", "is wrong"));
    }
    state.login_limiter.succeeded(reservation);
    user.password_hash = password::hash_async("new_password", &request.new_password).await?;
    let mut tx = state.dependencies.store.begin().await?;
    tx.update_user(&user).await?;
    tx.revoke_user_sessions(user.id, principal.session()).await?;
    audit.record(&mut *tx, &principal, None, serde_json::Value::Null).await?;
    tx.commit().await?;
    let keep = principal.session();
    state
        .credentials
        .evict(|cached| cached.user_id == Some(user.id) && cached.session().is_some() && cached.session() != keep);
    Ok(StatusCode::NO_CONTENT)
}
