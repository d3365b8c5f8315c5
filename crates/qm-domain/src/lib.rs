//! Domain types of Quartermaster: identifiers, roles, money and the instance lifecycle.
//!
//! This crate does no IO. Values are parsed at the edge (`parse`/`TryFrom`) so that the rest of
//! the code only ever holds valid ones ("parse, don't validate").
//!
//! Layout:
//! - [`ids`]: UUID newtypes (`OrganizationId`, `UserId`, `InstanceId`, ...).
//! - [`identity`]: roles, usernames and email addresses.
//! - [`money`]: integer micro-unit amounts and ISO currency codes.
//! - [`actions`]: the catalogue of action log types.
//! - [`lifecycle`]: instance states and the pure transition function.
//! - [`offer`]: an instance type in a zone at a price.
//! - [`scaling`]: a pool's scaling policy and the pure autoscaler that applies it.

pub mod actions;
pub mod engine;
pub mod identity;
pub mod ids;
pub mod lifecycle;
pub mod money;
pub mod offer;
pub mod scaling;
pub mod ttft;

pub use identity::{Email, ModelId, Role, Username};
pub use ids::{
    ActionLogId, ApiKeyId, DeploymentId, EventId, InstanceId, InstanceTypeId, OrganizationId, RegionId, SessionId,
    UserId, ZoneId,
};
pub use lifecycle::{InstanceState, TransitionError};
pub use money::{Currency, ExchangeRates, MicroUnits};
pub use offer::Offer;
