//! Records the store reads and writes. Timestamps are UTC with microsecond precision.

use chrono::{DateTime, Utc};
use qm_domain::{ActionLogId, EventId, InstanceId, OrganizationId, Role, UserId};
use qm_events::Envelope;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Organization {
    pub id: OrganizationId,
    pub name: String,
    pub slug: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewOrganization {
    pub id: OrganizationId,
    pub name: String,
    pub slug: String,
}

/// A user account. Holds the password hash, so it is deliberately not `Serialize`: the API maps
/// it to a response type that leaves the hash out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub organization_id: OrganizationId,
    pub username: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub role: Role,
    pub password_hash: String,
    /// The bootstrap admin administers the platform (every organization), not only its own.
    pub is_platform_admin: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub id: UserId,
    pub organization_id: OrganizationId,
    pub username: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub role: Role,
    pub password_hash: String,
    pub is_platform_admin: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Started,
    Succeeded,
    Failed,
}

impl ActionStatus {
    pub const fn as_str(&self) -> &'static str {
        match self {
            ActionStatus::Started => "started",
            ActionStatus::Succeeded => "succeeded",
            ActionStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [ActionStatus::Started, ActionStatus::Succeeded, ActionStatus::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// What a component did, how long it took and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ActionLog {
    pub id: ActionLogId,
    pub organization_id: Option<OrganizationId>,
    pub component: String,
    pub action_type: String,
    pub status: ActionStatus,
    pub duration_ms: Option<i64>,
    pub instance_id: Option<InstanceId>,
    pub user_id: Option<UserId>,
    pub error: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewActionLog {
    pub organization_id: Option<OrganizationId>,
    pub component: String,
    pub action_type: String,
    pub status: ActionStatus,
    pub duration_ms: Option<i64>,
    pub instance_id: Option<InstanceId>,
    pub user_id: Option<UserId>,
    pub error: Option<String>,
    pub metadata: Value,
}

impl NewActionLog {
    pub fn new(component: &str, action_type: &str, status: ActionStatus) -> Self {
        Self {
            organization_id: None,
            component: component.to_owned(),
            action_type: action_type.to_owned(),
            status,
            duration_ms: None,
            instance_id: None,
            user_id: None,
            error: None,
            metadata: Value::Object(serde_json::Map::new()),
        }
    }
}

/// A message waiting in (or claimed from) the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxMessage {
    pub seq: i64,
    pub id: EventId,
    pub envelope: Envelope,
    /// Publish attempts so far, this claim included.
    pub attempts: i32,
}
