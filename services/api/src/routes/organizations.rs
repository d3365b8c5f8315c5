//! `/organizations`: tenants. The platform admin creates, lists and deletes them; an
//! organization's admins may rename their own.

use axum::extract::State;
use axum::http::StatusCode;
use qm_domain::{OrganizationId, Role};
use qm_store::{NewOrganization, Organization};
use serde::Deserialize;

use super::{Audit, Page, PageParams, bounded_text};
use crate::AppState;
use crate::auth::Principal;
use crate::problem::{ApiResult, Json, Path, Problem, Query};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganizationRequest {
    pub name: String,
    /// Lowercase letters, digits and `-`, 2 to 63 characters; unique.
    pub slug: String,
}

fn slug(text: &str) -> Result<String, Problem> {
    let valid = (2..=63).contains(&text.len())
        && text.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(Problem::invalid("slug", "use 2 to 63 lowercase letters, digits and inner dashes"))
    }
}

async fn visible(state: &AppState, principal: &Principal, id: OrganizationId) -> ApiResult<Organization> {
    let organization = state.dependencies.store.organization(id).await?;
    organization
        .filter(|organization| principal.platform_admin || principal.sees(organization.id))
        .ok_or_else(|| Problem::not_found("organization"))
}

/// Organizations the caller may see: all of them for the platform admin, else its own.
#[utoipa::path(get, path = "/organizations", tag = "organizations", params(PageParams),
    responses((status = 200, body = Page<Organization>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Organization>>> {
    let (limit, cursor) = page.resolve::<OrganizationId>()?;
    if !principal.platform_admin {
        let own = visible(&state, &principal, principal.organization_id).await?;
        return Ok(Json(Page::all(vec![own])));
    }
    let organizations = state.dependencies.store.organizations(cursor, limit + 1).await?;
    Ok(Json(Page::from_overfetch(organizations, limit, |organization: &Organization| organization.id.to_string())))
}

/// Create an organization (platform admin).
#[utoipa::path(post, path = "/organizations", tag = "organizations", request_body = OrganizationRequest,
    responses((status = 201, body = Organization), (status = 409, description = "Slug taken", body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<OrganizationRequest>,
) -> ApiResult<(StatusCode, Json<Organization>)> {
    let audit = Audit::start("organization.create");
    principal.require_platform_admin()?;
    let new = NewOrganization {
        id: OrganizationId::new(),
        name: bounded_text("name", &request.name, 200)?,
        slug: slug(&request.slug)?,
    };
    let mut tx = state.dependencies.store.begin().await?;
    let organization = tx.insert_organization(&new).await?;
    audit
        .record(
            &mut *tx,
            &principal,
            None,
            serde_json::json!({ "organization_id": organization.id, "slug": organization.slug }),
        )
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(organization)))
}

/// An organization.
#[utoipa::path(get, path = "/organizations/{id}", tag = "organizations", params(("id" = OrganizationId, Path)),
    responses((status = 200, body = Organization)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<OrganizationId>,
) -> ApiResult<Json<Organization>> {
    Ok(Json(visible(&state, &principal, id).await?))
}

/// Rename an organization (its admins, or the platform admin).
#[utoipa::path(put, path = "/organizations/{id}", tag = "organizations", params(("id" = OrganizationId, Path)),
    request_body = OrganizationRequest, responses((status = 200, body = Organization)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<OrganizationId>,
    Json(request): Json<OrganizationRequest>,
) -> ApiResult<Json<Organization>> {
    let audit = Audit::start("organization.update");
    let mut organization = visible(&state, &principal, id).await?;
    principal.require(Role::Admin)?;
    organization.name = bounded_text("name", &request.name, 200)?;
    organization.slug = slug(&request.slug)?;
    let mut tx = state.dependencies.store.begin().await?;
    let updated = tx.update_organization(&organization).await?.ok_or_else(|| Problem::not_found("organization"))?;
    audit
        .record(&mut *tx, &principal, None, serde_json::json!({ "organization_id": id, "slug": updated.slug }))
        .await?;
    tx.commit().await?;
    Ok(Json(updated))
}

/// Delete an organization with everything in it (platform admin). Refused while it has
/// instances a provider may still bill for, and for the platform admin's own.
#[utoipa::path(delete, path = "/organizations/{id}", tag = "organizations", params(("id" = OrganizationId, Path)),
    responses((status = 204, description = "Deleted"),
              (status = 409, description = "It still runs instances, or holds the platform admin", body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<OrganizationId>,
) -> ApiResult<StatusCode> {
    let audit = Audit::start("organization.delete");
    principal.require_platform_admin()?;
    let organization = visible(&state, &principal, id).await?;
    if organization.id == principal.organization_id {
        return Err(Problem::conflict("the platform administrator's own organization cannot be deleted"));
    }
    let live = state.dependencies.store.live_instance_count(id).await?;
    if live > 0 {
        return Err(Problem::conflict(format!(
            "the organization still has {live} instance(s) that may be running; terminate them first"
        )));
    }
    let mut tx = state.dependencies.store.begin().await?;
    if !tx.delete_organization(id).await? {
        return Err(Problem::not_found("organization"));
    }
    // The entry belongs to the platform admin's organization: the deleted one takes its own
    // action logs with it.
    audit
        .record(&mut *tx, &principal, None, serde_json::json!({ "organization_id": id, "slug": organization.slug }))
        .await?;
    tx.commit().await?;
    state.credentials.evict(|cached| cached.organization_id == id);
    Ok(StatusCode::NO_CONTENT)
}
