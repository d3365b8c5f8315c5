//! The platform's first account: organization `default` and user `admin` (role `admin`,
//! platform administrator). Created once; later starts find it and change nothing, so a
//! password changed through the API is not reset by a restart.

use qm_config::Secret;
use qm_domain::{OrganizationId, Role, UserId};
use qm_store::{ActionStatus, NewActionLog, NewOrganization, NewUser, Store, StoreError};

pub const ADMIN_USERNAME: &str = "admin";
pub const ADMIN_EMAIL: &str = "admin@quartermaster.local";
pub const DEFAULT_ORGANIZATION_SLUG: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("no admin user exists yet and QM_ADMIN_PASSWORD (or QM_ADMIN_PASSWORD_FILE) is not set")]
    NoPassword,
    #[error("QM_ADMIN_PASSWORD: {0}")]
    Password(#[from] crate::password::PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`ensure_admin`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    Created,
    AlreadyPresent,
}

/// Creates the default organization and the admin unless the admin exists.
///
/// # Errors
/// [`BootstrapError::NoPassword`] when the admin must be created and no password was given;
/// store errors. Two replicas racing to create it are fine: the loser sees a conflict and finds
/// the winner's admin.
pub async fn ensure_admin(store: &dyn Store, password: Option<&Secret>) -> Result<Bootstrap, BootstrapError> {
    if store.user_by_login(ADMIN_USERNAME).await?.is_some() {
        return Ok(Bootstrap::AlreadyPresent);
    }
    let password = password.ok_or(BootstrapError::NoPassword)?;
    let password_hash = crate::password::hash(password.expose())?;
    match create(store, password_hash).await {
        Ok(()) => {
            tracing::info!(username = ADMIN_USERNAME, "bootstrap admin created");
            Ok(Bootstrap::Created)
        }
        Err(StoreError::Conflict { .. }) if store.user_by_login(ADMIN_USERNAME).await?.is_some() => {
            Ok(Bootstrap::AlreadyPresent)
        }
        Err(error) => Err(error.into()),
    }
}

async fn create(store: &dyn Store, password_hash: String) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    let organization = match store.organization_by_slug(DEFAULT_ORGANIZATION_SLUG).await? {
        Some(organization) => organization,
        None => {
            tx.insert_organization(&NewOrganization {
                id: OrganizationId::new(),
                name: "Default".into(),
                slug: DEFAULT_ORGANIZATION_SLUG.into(),
            })
            .await?
        }
    };
    let admin = tx
        .insert_user(&NewUser {
            id: UserId::new(),
            organization_id: organization.id,
            username: ADMIN_USERNAME.into(),
            email: ADMIN_EMAIL.into(),
            first_name: "Platform".into(),
            last_name: "Admin".into(),
            role: Role::Admin,
            password_hash,
            is_platform_admin: true,
        })
        .await?;
    let mut entry = NewActionLog::new("api", "admin.bootstrap", ActionStatus::Succeeded);
    entry.organization_id = Some(organization.id);
    entry.user_id = Some(admin.id);
    tx.insert_action_log(&entry).await?;
    tx.commit().await
}
