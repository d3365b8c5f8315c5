//! The catalog seed (`seeds/catalog.json`, built into the binary): applied by `qm dev` on an
//! empty catalog and by `qm seed` (`make seed ENV=…`) whenever asked. Records are matched by
//! their natural keys (provider name; provider and code), so applying the seed again updates
//! in place and changes nothing the second time.

use qm_domain::{InstanceTypeId, MicroUnits, RegionId, ZoneId};
use qm_store::{InstanceTypeInput, NewActionLog, RegionInput, Store, StoreError, ZoneInput};
use serde::Deserialize;

pub const CATALOG: &str = include_str!("../../../seeds/catalog.json");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default)]
    pub description: String,
    pub providers: Vec<ProviderSeed>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSeed {
    pub name: String,
    pub display_name: String,
    pub regions: Vec<RegionSeed>,
    pub instance_types: Vec<InstanceTypeSeed>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSeed {
    pub code: String,
    pub name: String,
    pub zones: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceTypeSeed {
    pub code: String,
    pub gpu_model: Option<String>,
    pub gpu_count: i32,
    pub gpu_memory_gb: i32,
    pub vcpus: i32,
    pub memory_gb: i32,
    /// Decimal, e.g. `"1.006"`.
    pub hourly_price: String,
    pub currency: String,
    pub zones: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("the seed is not valid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an application did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    pub providers: usize,
    pub regions: usize,
    pub zones: usize,
    pub instance_types: usize,
}

/// # Errors
/// [`SeedError::Invalid`] when the text is not a seed.
pub fn parse(text: &str) -> Result<Seed, SeedError> {
    serde_json::from_str(text).map_err(|error| SeedError::Invalid(error.to_string()))
}

/// Applies the seed in one transaction.
///
/// # Errors
/// [`SeedError::Invalid`] for a bad price or a zone a type names but no region has; store errors.
pub async fn apply(store: &dyn Store, seed: &Seed) -> Result<SeedReport, SeedError> {
    let mut report = SeedReport::default();
    let mut tx = store.begin().await?;
    for provider in &seed.providers {
        tx.upsert_provider(&provider.name, &provider.display_name, true).await?;
        report.providers += 1;
        let mut zone_ids = std::collections::HashMap::new();
        for region in &provider.regions {
            let id =
                store.region_by_code(&provider.name, &region.code).await?.map_or_else(RegionId::new, |found| found.id);
            let input = RegionInput {
                id,
                provider: provider.name.clone(),
                code: region.code.clone(),
                name: region.name.clone(),
                active: true,
            };
            tx.upsert_region(&input).await?;
            report.regions += 1;
            for zone in &region.zones {
                let zone_id =
                    store.zone_by_code(&provider.name, zone).await?.map_or_else(ZoneId::new, |found| found.id);
                let input =
                    ZoneInput { id: zone_id, region_id: id, code: zone.clone(), name: zone.clone(), active: true };
                tx.upsert_zone(&input).await?;
                zone_ids.insert(zone.clone(), zone_id);
                report.zones += 1;
            }
        }
        for seed_type in &provider.instance_types {
            let price = MicroUnits::parse_decimal(&seed_type.hourly_price)
                .map_err(|error| SeedError::Invalid(format!("{}: hourly_price: {error}", seed_type.code)))?;
            let id = store
                .instance_type_by_code(&provider.name, &seed_type.code)
                .await?
                .map_or_else(InstanceTypeId::new, |found| found.id);
            let input = InstanceTypeInput {
                id,
                provider: provider.name.clone(),
                code: seed_type.code.clone(),
                gpu_model: seed_type.gpu_model.clone(),
                gpu_count: seed_type.gpu_count,
                gpu_memory_gb: seed_type.gpu_memory_gb,
                vcpus: seed_type.vcpus,
                memory_gb: seed_type.memory_gb,
                hourly_price_micros: price.get(),
                currency: seed_type.currency.clone(),
                active: true,
            };
            tx.upsert_instance_type(&input).await?;
            let zones = seed_type
                .zones
                .iter()
                .map(|zone| {
                    zone_ids.get(zone).copied().ok_or_else(|| {
                        SeedError::Invalid(format!(
                            "{}: zone `{zone}` is not in any region of {}",
                            seed_type.code, provider.name
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            tx.replace_instance_type_zones(id, &zones).await?;
            report.instance_types += 1;
        }
    }
    let mut entry = NewActionLog::new(crate::NAME, "catalog.seed", qm_store::ActionStatus::Succeeded);
    entry.metadata = serde_json::json!({
        "providers": report.providers, "regions": report.regions, "zones": report.zones, "instance_types": report.instance_types,
    });
    tx.insert_action_log(&entry).await?;
    tx.commit().await?;
    Ok(report)
}

/// Applies the built-in seed when the catalog is empty (first start of `qm dev`).
///
/// # Errors
/// As [`apply`].
pub async fn apply_if_empty(store: &dyn Store) -> Result<Option<SeedReport>, SeedError> {
    if !store.providers().await?.is_empty() {
        return Ok(None);
    }
    apply(store, &parse(CATALOG)?).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_seed_parses_and_prices_every_type() {
        let seed = parse(CATALOG).expect("seed");
        let names: Vec<_> = seed.providers.iter().map(|provider| provider.name.as_str()).collect();
        assert_eq!(names, ["aws", "scaleway", "local", "sim"]);
        for provider in &seed.providers {
            let zones: Vec<_> = provider.regions.iter().flat_map(|region| region.zones.iter()).collect();
            for instance_type in &provider.instance_types {
                let price = MicroUnits::parse_decimal(&instance_type.hourly_price).expect("price");
                assert!(price.get() > 0, "{} has no price", instance_type.code);
                assert!(instance_type.zones.iter().all(|zone| zones.contains(&zone)), "{}", instance_type.code);
                assert_eq!(instance_type.gpu_count > 0, instance_type.gpu_model.is_some(), "{}", instance_type.code);
            }
        }
    }
}
