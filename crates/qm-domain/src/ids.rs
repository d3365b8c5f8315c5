//! Typed identifiers. Every id is a UUID; new ones are version 7 so that they sort by creation
//! time, which keeps B-tree inserts append-only and makes ids usable as stable cursors.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered (UUID v7) identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(formatter)
            }
        }
    };
}

uuid_id!(
    /// An organization: the unit of tenancy. One organization never sees another's data.
    OrganizationId
);
uuid_id!(
    /// A user account.
    UserId
);
uuid_id!(
    /// A compute instance managed by Quartermaster.
    InstanceId
);
uuid_id!(
    /// An API key (the id, never the secret).
    ApiKeyId
);
uuid_id!(
    /// An action log entry.
    ActionLogId
);
uuid_id!(
    /// The id of a bus envelope; consumers deduplicate on it.
    EventId
);
uuid_id!(
    /// A login session (the id, never the token).
    SessionId
);
uuid_id!(
    /// A deployment: one request for `count` instances of a model.
    DeploymentId
);
uuid_id!(
    /// A provider region in the catalog.
    RegionId
);
uuid_id!(
    /// A zone (availability zone) of a region in the catalog.
    ZoneId
);
uuid_id!(
    /// An instance type of a provider in the catalog.
    InstanceTypeId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_sort_by_creation_time() {
        let first = InstanceId::new();
        let second = InstanceId::new();
        assert!(first < second);
    }

    #[test]
    fn an_id_round_trips_through_its_text_form() {
        let id = OrganizationId::new();
        let parsed: OrganizationId = id.to_string().parse().expect("valid uuid");
        assert_eq!(parsed, id);
    }

    #[test]
    fn a_malformed_id_is_rejected() {
        assert!("not-a-uuid".parse::<UserId>().is_err());
    }
}
