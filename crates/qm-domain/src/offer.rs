//! An offer: an instance type in a zone at a price, as deployments are placed and provision
//! commands carry them.

use serde::{Deserialize, Serialize};

use crate::{InstanceTypeId, ZoneId};

/// An instance type offered in a zone, with everything up the chain active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Offer {
    pub provider: String,
    pub region: String,
    pub zone_id: ZoneId,
    pub zone: String,
    pub instance_type_id: InstanceTypeId,
    pub instance_type: String,
    pub gpu_model: Option<String>,
    pub gpu_count: i32,
    pub gpu_memory_gb: i32,
    pub hourly_price_micros: i64,
    pub currency: String,
}
