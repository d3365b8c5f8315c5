//! `/users`: accounts, managed by their organization's admins (and by the platform admin in
//! any organization).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use qm_domain::{Email, OrganizationId, Role, UserId, Username};
use qm_store::{NewUser, User};
use serde::{Deserialize, Serialize};

use super::{Audit, Page, PageParams};
use crate::AppState;
use crate::auth::Principal;
use crate::password;
use crate::problem::{ApiResult, Json, Path, Problem, Query};

/// A user as the API shows it (never the password hash).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: UserId,
    pub organization_id: OrganizationId,
    pub username: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub role: Role,
    pub is_platform_admin: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id,
            organization_id: user.organization_id,
            username: user.username.clone(),
            email: user.email.clone(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            role: user.role,
            is_platform_admin: user.is_platform_admin,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Lowercase letters, digits, `.`, `_` and `-`.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{2,63}$")]
    pub username: String,
    #[schema(max_length = 254, pattern = r"^\s*[^@\s]+@[^@\s.]+(\.[^@\s.]+)+\s*$")]
    pub email: String,
    /// 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
    #[serde(default)]
    #[schema(max_length = 100)]
    pub first_name: String,
    #[serde(default)]
    #[schema(max_length = 100)]
    pub last_name: String,
    pub role: Role,
    /// Defaults to the caller's organization; only the platform admin may name another.
    pub organization_id: Option<OrganizationId>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[schema(max_length = 254, pattern = r"^\s*[^@\s]+@[^@\s.]+(\.[^@\s.]+)+\s*$")]
    pub email: Option<String>,
    #[schema(max_length = 100)]
    pub first_name: Option<String>,
    #[schema(max_length = 100)]
    pub last_name: Option<String>,
    pub role: Option<Role>,
    /// Sets a new password (and revokes the user's sessions): 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    pub password: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserFilter {
    /// Platform admin only: another organization's users.
    pub organization_id: Option<OrganizationId>,
}

/// A first or last name: may be empty, at most 100 characters.
///
/// # Errors
/// 422 naming `field`.
pub fn name_field(field: &str, value: &str) -> Result<String, Problem> {
    if value.chars().count() > 100 {
        return Err(Problem::invalid(field, "must be at most 100 characters"));
    }
    Ok(value.trim().to_owned())
}

/// The user, if the caller administers its organization.
async fn administered_user(state: &AppState, principal: &Principal, id: UserId) -> ApiResult<User> {
    principal.require(Role::Admin)?;
    let user = state.dependencies.store.user(id).await?;
    user.filter(|user| principal.platform_admin || principal.sees(user.organization_id))
        .ok_or_else(|| Problem::not_found("user"))
}

/// The user, if the caller may change it: it administers the user's organization, the user's
/// role is not above its own, and only the platform administrator (or the user itself) touches
/// the platform administrator's account.
async fn changeable_user(state: &AppState, principal: &Principal, id: UserId) -> ApiResult<User> {
    let user = administered_user(state, principal, id).await?;
    let itself = principal.user_id == Some(user.id) && principal.session().is_some();
    if user.is_platform_admin && !principal.platform_admin && !itself {
        return Err(Problem::forbidden("only the platform administrator changes the platform administrator's account"));
    }
    if user.role > principal.role {
        return Err(Problem::forbidden(format!(
            "the user's role (`{}`) is above yours (`{}`)",
            user.role, principal.role
        )));
    }
    Ok(user)
}

/// 403 when `role` is above the caller's own.
fn grantable(principal: &Principal, role: Role) -> Result<(), Problem> {
    if principal.role.allows(role) {
        Ok(())
    } else {
        Err(Problem::forbidden(format!("cannot grant `{role}`, which is above your own role (`{}`)", principal.role)))
    }
}

/// List users of the caller's organization.
#[utoipa::path(get, path = "/users", tag = "users", params(PageParams, UserFilter),
    responses((status = 200, body = Page<UserView>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
    Query(filter): Query<UserFilter>,
) -> ApiResult<Json<Page<UserView>>> {
    principal.require(Role::Admin)?;
    let organization = match filter.organization_id {
        Some(other) if other != principal.organization_id => {
            principal.require_platform_admin()?;
            other
        }
        _ => principal.organization_id,
    };
    let (limit, cursor) = page.resolve::<UserId>()?;
    let users = state.dependencies.store.users(Some(organization), cursor, limit + 1).await?;
    let views = users.iter().map(UserView::from).collect();
    Ok(Json(Page::from_overfetch(views, limit, |user: &UserView| user.id.to_string())))
}

/// Create a user.
#[utoipa::path(post, path = "/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 409, description = "Username or email taken", body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let audit = Audit::start("user.create");
    principal.require(Role::Admin)?;
    grantable(&principal, request.role)?;
    let organization_id = request.organization_id.unwrap_or(principal.organization_id);
    if organization_id != principal.organization_id {
        principal.require_platform_admin()?;
    }
    let store = &state.dependencies.store;
    if store.organization(organization_id).await?.is_none() {
        return Err(Problem::invalid("organization_id", "no such organization"));
    }
    let username =
        Username::parse(&request.username).map_err(|error| Problem::invalid("username", error.to_string()))?;
    let email = Email::parse(&request.email).map_err(|error| Problem::invalid("email", error.to_string()))?;
    let password_hash = password::hash_async("password", &request.password).await?;
    let new_user = NewUser {
        id: UserId::new(),
        organization_id,
        username: username.as_str().to_owned(),
        email: email.as_str().to_owned(),
        first_name: name_field("first_name", &request.first_name)?,
        last_name: name_field("last_name", &request.last_name)?,
        role: request.role,
        password_hash,
        is_platform_admin: false,
    };
    let mut tx = store.begin().await?;
    let user = match tx.insert_user(&new_user).await {
        Ok(user) => user,
        Err(qm_store::StoreError::Conflict { field }) => {
            return Err(conflict(&state, &principal, &new_user, &field).await);
        }
        Err(error) => return Err(error.into()),
    };
    audit
        .record(
            &mut *tx,
            &principal,
            None,
            serde_json::json!({ "user_id": user.id, "username": user.username, "role": user.role }),
        )
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// A uniqueness conflict, told without revealing another organization's users: the field is
/// named only when the account holding it is one the caller administers.
async fn conflict(state: &AppState, principal: &Principal, user: &NewUser, field: &str) -> Problem {
    let store = &state.dependencies.store;
    let mut holders = Vec::new();
    for login in [&user.username, &user.email] {
        if let Ok(Some(holder)) = store.user_by_login(login).await {
            holders.push(holder);
        }
    }
    let visible = holders.iter().any(|holder| principal.platform_admin || principal.sees(holder.organization_id));
    if visible {
        let mut problem = Problem::conflict(format!("`{field}` is already taken"));
        problem.errors.push(crate::problem::FieldError { field: field.to_owned(), message: "already taken".into() });
        problem
    } else {
        Problem::conflict("this username or email address cannot be used; choose another")
    }
}

/// A user.
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = UserId, Path)),
    responses((status = 200, body = UserView)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<UserId>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(UserView::from(&administered_user(&state, &principal, id).await?)))
}

/// Change a user's email, names, role or password.
#[utoipa::path(put, path = "/users/{id}", tag = "users", params(("id" = UserId, Path)), request_body = UpdateUser,
    responses((status = 200, body = UserView)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<UserId>,
    Json(request): Json<UpdateUser>,
) -> ApiResult<Json<UserView>> {
    let audit = Audit::start("user.update");
    let mut user = changeable_user(&state, &principal, id).await?;
    if let Some(email) = &request.email {
        user.email =
            Email::parse(email).map_err(|error| Problem::invalid("email", error.to_string()))?.as_str().to_owned();
    }
    if let Some(first_name) = &request.first_name {
        user.first_name = name_field("first_name", first_name)?;
    }
    if let Some(last_name) = &request.last_name {
        user.last_name = name_field("last_name", last_name)?;
    }
    if let Some(role) = request.role
        && role != user.role
    {
        if Some(user.id) == principal.user_id {
            return Err(Problem::conflict("you cannot change your own role"));
        }
        if user.is_platform_admin {
            return Err(Problem::conflict("the platform administrator stays an admin"));
        }
        grantable(&principal, role)?;
        user.role = role;
    }
    if let Some(new_password) = &request.password {
        user.password_hash = password::hash_async("password", new_password).await?;
    }
    let mut tx = state.dependencies.store.begin().await?;
    let updated = tx.update_user(&user).await?.ok_or_else(|| Problem::not_found("user"))?;
    if request.password.is_some() {
        tx.revoke_user_sessions(user.id, principal.session().filter(|_| principal.user_id == Some(user.id))).await?;
    }
    audit.record(&mut *tx, &principal, None, serde_json::json!({ "user_id": user.id, "role": updated.role })).await?;
    tx.commit().await?;
    // Its sessions and keys carry the old role (and, after a password change, sessions are revoked).
    let keep = principal.session();
    state.credentials.evict(|cached| cached.user_id == Some(user.id) && (keep.is_none() || cached.session() != keep));
    let view = UserView::from(&updated);
    state.credentials.refresh_account(&view);
    Ok(Json(view))
}

/// Delete a user (their sessions go with them).
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = UserId, Path)),
    responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<UserId>,
) -> ApiResult<StatusCode> {
    let audit = Audit::start("user.delete");
    let user = changeable_user(&state, &principal, id).await?;
    if Some(user.id) == principal.user_id {
        return Err(Problem::conflict("you cannot delete your own account"));
    }
    if user.is_platform_admin {
        return Err(Problem::conflict("the platform administrator cannot be deleted"));
    }
    let mut tx = state.dependencies.store.begin().await?;
    if !tx.delete_user(user.id).await? {
        return Err(Problem::not_found("user"));
    }
    audit
        .record(&mut *tx, &principal, None, serde_json::json!({ "user_id": user.id, "username": user.username }))
        .await?;
    tx.commit().await?;
    // Its sessions went with it and its keys were revoked.
    state.credentials.evict(|cached| cached.user_id == Some(user.id));
    Ok(StatusCode::NO_CONTENT)
}
