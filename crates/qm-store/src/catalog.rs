//! The catalog: providers, their regions, zones and instance types, and which types each zone
//! offers. Platform-wide (not per organization).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qm_domain::{InstanceTypeId, RegionId, ZoneId};
use serde::Serialize;

use crate::StoreError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Provider {
    /// `aws`, `scaleway`, `local` or `sim`.
    pub name: String,
    pub display_name: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Region {
    pub id: RegionId,
    pub provider: String,
    /// The provider's code, e.g. `eu-west-1` or `fr-par`.
    pub code: String,
    pub name: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Zone {
    pub id: ZoneId,
    pub region_id: RegionId,
    pub provider: String,
    /// The provider's code, e.g. `eu-west-1a` or `fr-par-2`.
    pub code: String,
    pub name: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InstanceType {
    pub id: InstanceTypeId,
    pub provider: String,
    /// The provider's name for it, e.g. `g5.xlarge` or `L4-1-24G`.
    pub code: String,
    /// `None` for CPU-only types.
    pub gpu_model: Option<String>,
    pub gpu_count: i32,
    /// Memory of one GPU, in GB.
    pub gpu_memory_gb: i32,
    pub vcpus: i32,
    pub memory_gb: i32,
    /// List price per hour in micro-units of `currency` (1 EUR = 1,000,000).
    pub hourly_price_micros: i64,
    pub currency: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl InstanceType {
    /// The write that stores this type as it is (change fields before writing).
    pub fn to_input(&self) -> InstanceTypeInput {
        InstanceTypeInput {
            id: self.id,
            provider: self.provider.clone(),
            code: self.code.clone(),
            gpu_model: self.gpu_model.clone(),
            gpu_count: self.gpu_count,
            gpu_memory_gb: self.gpu_memory_gb,
            vcpus: self.vcpus,
            memory_gb: self.memory_gb,
            hourly_price_micros: self.hourly_price_micros,
            currency: self.currency.clone(),
            active: self.active,
        }
    }
}

/// What a write of a region carries (the id comes from the caller).
#[derive(Clone, Debug)]
pub struct RegionInput {
    pub id: RegionId,
    pub provider: String,
    pub code: String,
    pub name: String,
    pub active: bool,
}

#[derive(Clone, Debug)]
pub struct ZoneInput {
    pub id: ZoneId,
    pub region_id: RegionId,
    pub code: String,
    pub name: String,
    pub active: bool,
}

#[derive(Clone, Debug)]
pub struct InstanceTypeInput {
    pub id: InstanceTypeId,
    pub provider: String,
    pub code: String,
    pub gpu_model: Option<String>,
    pub gpu_count: i32,
    pub gpu_memory_gb: i32,
    pub vcpus: i32,
    pub memory_gb: i32,
    pub hourly_price_micros: i64,
    pub currency: String,
    pub active: bool,
}

/// An instance type offered in a zone (the domain's [`qm_domain::Offer`]).
pub use qm_domain::Offer;

#[async_trait]
pub trait CatalogStore {
    async fn providers(&self) -> Result<Vec<Provider>, StoreError>;
    async fn provider(&self, name: &str) -> Result<Option<Provider>, StoreError>;
    async fn regions(&self, provider: Option<&str>) -> Result<Vec<Region>, StoreError>;
    async fn region(&self, id: RegionId) -> Result<Option<Region>, StoreError>;
    async fn region_by_code(&self, provider: &str, code: &str) -> Result<Option<Region>, StoreError>;
    async fn zones(&self, provider: Option<&str>, region: Option<RegionId>) -> Result<Vec<Zone>, StoreError>;
    async fn zone(&self, id: ZoneId) -> Result<Option<Zone>, StoreError>;
    async fn zone_by_code(&self, provider: &str, code: &str) -> Result<Option<Zone>, StoreError>;
    async fn instance_types(&self, provider: Option<&str>) -> Result<Vec<InstanceType>, StoreError>;
    async fn instance_type(&self, id: InstanceTypeId) -> Result<Option<InstanceType>, StoreError>;
    async fn instance_type_by_code(&self, provider: &str, code: &str) -> Result<Option<InstanceType>, StoreError>;
    /// Zones that offer the type.
    async fn instance_type_zones(&self, id: InstanceTypeId) -> Result<Vec<Zone>, StoreError>;
    /// Types the zone offers.
    async fn zone_instance_types(&self, id: ZoneId) -> Result<Vec<InstanceType>, StoreError>;
    /// Every active offer (provider, region, zone and type all active), cheapest first within a
    /// currency; callers filter and rank across currencies.
    async fn offers(&self) -> Result<Vec<Offer>, StoreError>;
}

#[async_trait]
pub trait CatalogTx {
    /// Creates or updates the provider named `name`.
    async fn upsert_provider(&mut self, name: &str, display_name: &str, active: bool) -> Result<Provider, StoreError>;
    async fn upsert_region(&mut self, region: &RegionInput) -> Result<Region, StoreError>;
    async fn upsert_zone(&mut self, zone: &ZoneInput) -> Result<Zone, StoreError>;
    async fn upsert_instance_type(&mut self, instance_type: &InstanceTypeInput) -> Result<InstanceType, StoreError>;
    /// Replaces the zones offering the type with `zones`.
    async fn replace_instance_type_zones(&mut self, id: InstanceTypeId, zones: &[ZoneId]) -> Result<(), StoreError>;
}

macro_rules! impl_catalog_sql {
    (store: $store:ty, tx: $tx:ty, db: $db:ty) => {
        mod catalog_sql {
            use async_trait::async_trait;
            use qm_domain::{InstanceTypeId, RegionId, ZoneId};
            use sqlx::Row as _;

            use super::*;
            use crate::catalog::{
                CatalogStore, CatalogTx, InstanceType, InstanceTypeInput, Offer, Provider, Region, RegionInput, Zone,
                ZoneInput,
            };
            use crate::{StoreError, now};

            type DbRow = <$db as sqlx::Database>::Row;

            const PROVIDER_COLUMNS: &str = "name, display_name, active, created_at, updated_at";
            const REGION_COLUMNS: &str = "id, provider, code, name, active, created_at, updated_at";
            const ZONE_SELECT: &str = "SELECT z.id, z.region_id, r.provider, z.code, z.name, z.active, z.created_at, z.updated_at \
                 FROM zones z JOIN regions r ON r.id = z.region_id";
            const TYPE_COLUMNS: &str = "id, provider, code, gpu_model, gpu_count, gpu_memory_gb, vcpus, memory_gb, hourly_price_micros, currency, active, created_at, updated_at";

            fn provider_from_row(row: &DbRow) -> Result<Provider, StoreError> {
                Ok(Provider {
                    name: row.try_get("name")?,
                    display_name: row.try_get("display_name")?,
                    active: row.try_get("active")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn region_from_row(row: &DbRow) -> Result<Region, StoreError> {
                Ok(Region {
                    id: RegionId::from_uuid(row.try_get("id")?),
                    provider: row.try_get("provider")?,
                    code: row.try_get("code")?,
                    name: row.try_get("name")?,
                    active: row.try_get("active")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn zone_from_row(row: &DbRow) -> Result<Zone, StoreError> {
                Ok(Zone {
                    id: ZoneId::from_uuid(row.try_get("id")?),
                    region_id: RegionId::from_uuid(row.try_get("region_id")?),
                    provider: row.try_get("provider")?,
                    code: row.try_get("code")?,
                    name: row.try_get("name")?,
                    active: row.try_get("active")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn type_from_row(row: &DbRow) -> Result<InstanceType, StoreError> {
                Ok(InstanceType {
                    id: InstanceTypeId::from_uuid(row.try_get("id")?),
                    provider: row.try_get("provider")?,
                    code: row.try_get("code")?,
                    gpu_model: row.try_get("gpu_model")?,
                    gpu_count: row.try_get("gpu_count")?,
                    gpu_memory_gb: row.try_get("gpu_memory_gb")?,
                    vcpus: row.try_get("vcpus")?,
                    memory_gb: row.try_get("memory_gb")?,
                    hourly_price_micros: row.try_get("hourly_price_micros")?,
                    currency: row.try_get("currency")?,
                    active: row.try_get("active")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn offer_from_row(row: &DbRow) -> Result<Offer, StoreError> {
                Ok(Offer {
                    provider: row.try_get("provider")?,
                    region: row.try_get("region")?,
                    zone_id: ZoneId::from_uuid(row.try_get("zone_id")?),
                    zone: row.try_get("zone")?,
                    instance_type_id: InstanceTypeId::from_uuid(row.try_get("instance_type_id")?),
                    instance_type: row.try_get("instance_type")?,
                    gpu_model: row.try_get("gpu_model")?,
                    gpu_count: row.try_get("gpu_count")?,
                    gpu_memory_gb: row.try_get("gpu_memory_gb")?,
                    hourly_price_micros: row.try_get("hourly_price_micros")?,
                    currency: row.try_get("currency")?,
                })
            }

            #[async_trait]
            impl CatalogStore for $store {
                async fn providers(&self) -> Result<Vec<Provider>, StoreError> {
                    let sql = format!("SELECT {PROVIDER_COLUMNS} FROM providers ORDER BY name");
                    sqlx::query(&sql).fetch_all(self.reader()).await?.iter().map(provider_from_row).collect()
                }

                async fn provider(&self, name: &str) -> Result<Option<Provider>, StoreError> {
                    let sql = format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE name = $1");
                    sqlx::query(&sql).bind(name).fetch_optional(self.reader()).await?.as_ref().map(provider_from_row).transpose()
                }

                async fn regions(&self, provider: Option<&str>) -> Result<Vec<Region>, StoreError> {
                    let sql = format!(
                        "SELECT {REGION_COLUMNS} FROM regions WHERE ($1 IS NULL OR provider = $1) ORDER BY provider, code"
                    );
                    sqlx::query(&sql).bind(provider).fetch_all(self.reader()).await?.iter().map(region_from_row).collect()
                }

                async fn region(&self, id: RegionId) -> Result<Option<Region>, StoreError> {
                    let sql = format!("SELECT {REGION_COLUMNS} FROM regions WHERE id = $1");
                    let row = sqlx::query(&sql).bind(id.as_uuid()).fetch_optional(self.reader()).await?;
                    row.as_ref().map(region_from_row).transpose()
                }

                async fn region_by_code(&self, provider: &str, code: &str) -> Result<Option<Region>, StoreError> {
                    let sql = format!("SELECT {REGION_COLUMNS} FROM regions WHERE provider = $1 AND code = $2");
                    let row = sqlx::query(&sql).bind(provider).bind(code).fetch_optional(self.reader()).await?;
                    row.as_ref().map(region_from_row).transpose()
                }

                async fn zones(&self, provider: Option<&str>, region: Option<RegionId>) -> Result<Vec<Zone>, StoreError> {
                    let sql = format!(
                        "{ZONE_SELECT} WHERE ($1 IS NULL OR r.provider = $1) AND ($2 IS NULL OR z.region_id = $2) ORDER BY r.provider, z.code"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(provider)
                        .bind(region.map(|id| id.as_uuid()))
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(zone_from_row).collect()
                }

                async fn zone(&self, id: ZoneId) -> Result<Option<Zone>, StoreError> {
                    let sql = format!("{ZONE_SELECT} WHERE z.id = $1");
                    let row = sqlx::query(&sql).bind(id.as_uuid()).fetch_optional(self.reader()).await?;
                    row.as_ref().map(zone_from_row).transpose()
                }

                async fn zone_by_code(&self, provider: &str, code: &str) -> Result<Option<Zone>, StoreError> {
                    let sql = format!("{ZONE_SELECT} WHERE r.provider = $1 AND z.code = $2");
                    let row = sqlx::query(&sql).bind(provider).bind(code).fetch_optional(self.reader()).await?;
                    row.as_ref().map(zone_from_row).transpose()
                }

                async fn instance_types(&self, provider: Option<&str>) -> Result<Vec<InstanceType>, StoreError> {
                    let sql = format!(
                        "SELECT {TYPE_COLUMNS} FROM instance_types WHERE ($1 IS NULL OR provider = $1) ORDER BY provider, code"
                    );
                    sqlx::query(&sql).bind(provider).fetch_all(self.reader()).await?.iter().map(type_from_row).collect()
                }

                async fn instance_type(&self, id: InstanceTypeId) -> Result<Option<InstanceType>, StoreError> {
                    let sql = format!("SELECT {TYPE_COLUMNS} FROM instance_types WHERE id = $1");
                    let row = sqlx::query(&sql).bind(id.as_uuid()).fetch_optional(self.reader()).await?;
                    row.as_ref().map(type_from_row).transpose()
                }

                async fn instance_type_by_code(&self, provider: &str, code: &str) -> Result<Option<InstanceType>, StoreError> {
                    let sql = format!("SELECT {TYPE_COLUMNS} FROM instance_types WHERE provider = $1 AND code = $2");
                    let row = sqlx::query(&sql).bind(provider).bind(code).fetch_optional(self.reader()).await?;
                    row.as_ref().map(type_from_row).transpose()
                }

                async fn instance_type_zones(&self, id: InstanceTypeId) -> Result<Vec<Zone>, StoreError> {
                    let sql = format!(
                        "{ZONE_SELECT} JOIN instance_type_zones o ON o.zone_id = z.id WHERE o.instance_type_id = $1 ORDER BY z.code"
                    );
                    sqlx::query(&sql).bind(id.as_uuid()).fetch_all(self.reader()).await?.iter().map(zone_from_row).collect()
                }

                async fn zone_instance_types(&self, id: ZoneId) -> Result<Vec<InstanceType>, StoreError> {
                    let columns = TYPE_COLUMNS.split(", ").map(|column| format!("t.{column}")).collect::<Vec<_>>().join(", ");
                    let sql = format!(
                        "SELECT {columns} FROM instance_types t JOIN instance_type_zones o ON o.instance_type_id = t.id \
                         WHERE o.zone_id = $1 ORDER BY t.code"
                    );
                    sqlx::query(&sql).bind(id.as_uuid()).fetch_all(self.reader()).await?.iter().map(type_from_row).collect()
                }

                async fn offers(&self) -> Result<Vec<Offer>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT p.name AS provider, r.code AS region, z.id AS zone_id, z.code AS zone, t.id AS instance_type_id, \
                                t.code AS instance_type, t.gpu_model, t.gpu_count, t.gpu_memory_gb, t.hourly_price_micros, t.currency \
                         FROM instance_type_zones o \
                         JOIN instance_types t ON t.id = o.instance_type_id \
                         JOIN zones z ON z.id = o.zone_id \
                         JOIN regions r ON r.id = z.region_id \
                         JOIN providers p ON p.name = r.provider \
                         WHERE t.active AND z.active AND r.active AND p.active AND t.provider = p.name \
                         ORDER BY t.currency, t.hourly_price_micros, p.name, z.code, t.code",
                    )
                    .fetch_all(self.reader())
                    .await?;
                    rows.iter().map(offer_from_row).collect()
                }
            }

            #[async_trait]
            impl CatalogTx for $tx {
                async fn upsert_provider(&mut self, name: &str, display_name: &str, active: bool) -> Result<Provider, StoreError> {
                    let sql = format!(
                        "INSERT INTO providers ({PROVIDER_COLUMNS}) VALUES ($1, $2, $3, $4, $4) \
                         ON CONFLICT (name) DO UPDATE SET display_name = excluded.display_name, active = excluded.active, updated_at = excluded.updated_at \
                         RETURNING {PROVIDER_COLUMNS}"
                    );
                    let row = sqlx::query(&sql)
                        .bind(name)
                        .bind(display_name)
                        .bind(active)
                        .bind(now())
                        .fetch_one(&mut *self.transaction)
                        .await?;
                    provider_from_row(&row)
                }

                async fn upsert_region(&mut self, region: &RegionInput) -> Result<Region, StoreError> {
                    let sql = format!(
                        "INSERT INTO regions ({REGION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                         ON CONFLICT (id) DO UPDATE SET provider = excluded.provider, code = excluded.code, name = excluded.name, \
                         active = excluded.active, updated_at = excluded.updated_at RETURNING {REGION_COLUMNS}"
                    );
                    let row = sqlx::query(&sql)
                        .bind(region.id.as_uuid())
                        .bind(&region.provider)
                        .bind(&region.code)
                        .bind(&region.name)
                        .bind(region.active)
                        .bind(now())
                        .fetch_one(&mut *self.transaction)
                        .await?;
                    region_from_row(&row)
                }

                async fn upsert_zone(&mut self, zone: &ZoneInput) -> Result<Zone, StoreError> {
                    sqlx::query(
                        "INSERT INTO zones (id, region_id, code, name, active, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                         ON CONFLICT (id) DO UPDATE SET region_id = excluded.region_id, code = excluded.code, name = excluded.name, \
                         active = excluded.active, updated_at = excluded.updated_at",
                    )
                    .bind(zone.id.as_uuid())
                    .bind(zone.region_id.as_uuid())
                    .bind(&zone.code)
                    .bind(&zone.name)
                    .bind(zone.active)
                    .bind(now())
                    .execute(&mut *self.transaction)
                    .await?;
                    let sql = format!("{ZONE_SELECT} WHERE z.id = $1");
                    let row = sqlx::query(&sql).bind(zone.id.as_uuid()).fetch_one(&mut *self.transaction).await?;
                    zone_from_row(&row)
                }

                async fn upsert_instance_type(&mut self, input: &InstanceTypeInput) -> Result<InstanceType, StoreError> {
                    let sql = format!(
                        "INSERT INTO instance_types ({TYPE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
                         ON CONFLICT (id) DO UPDATE SET provider = excluded.provider, code = excluded.code, gpu_model = excluded.gpu_model, \
                         gpu_count = excluded.gpu_count, gpu_memory_gb = excluded.gpu_memory_gb, vcpus = excluded.vcpus, \
                         memory_gb = excluded.memory_gb, hourly_price_micros = excluded.hourly_price_micros, currency = excluded.currency, \
                         active = excluded.active, updated_at = excluded.updated_at RETURNING {TYPE_COLUMNS}"
                    );
                    let row = sqlx::query(&sql)
                        .bind(input.id.as_uuid())
                        .bind(&input.provider)
                        .bind(&input.code)
                        .bind(&input.gpu_model)
                        .bind(input.gpu_count)
                        .bind(input.gpu_memory_gb)
                        .bind(input.vcpus)
                        .bind(input.memory_gb)
                        .bind(input.hourly_price_micros)
                        .bind(&input.currency)
                        .bind(input.active)
                        .bind(now())
                        .fetch_one(&mut *self.transaction)
                        .await?;
                    type_from_row(&row)
                }

                async fn replace_instance_type_zones(&mut self, id: InstanceTypeId, zones: &[ZoneId]) -> Result<(), StoreError> {
                    sqlx::query("DELETE FROM instance_type_zones WHERE instance_type_id = $1")
                        .bind(id.as_uuid())
                        .execute(&mut *self.transaction)
                        .await?;
                    for zone in zones {
                        sqlx::query("INSERT INTO instance_type_zones (instance_type_id, zone_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                            .bind(id.as_uuid())
                            .bind(zone.as_uuid())
                            .execute(&mut *self.transaction)
                            .await?;
                    }
                    Ok(())
                }
            }
        }
    };
}

pub(crate) use impl_catalog_sql;
