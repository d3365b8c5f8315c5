//! Catalog sync (`catalog.sync`): each provider's offers (regions, zones, instance types, list
//! prices) written into the catalog. Records are matched by (provider, code), so a sync updates
//! in place; an instance type the provider no longer offers is deactivated, not deleted
//! (instances and deployments still name it). Names and active flags an operator set on regions
//! and zones are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use qm_domain::{InstanceTypeId, RegionId, ZoneId};
use qm_providers::CloudProvider;
use qm_store::{ActionStatus, InstanceTypeInput, NewActionLog, RegionInput, Store, ZoneInput};

use crate::saga::SagaError;

/// What one sync wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub regions: usize,
    pub zones: usize,
    pub instance_types: usize,
    pub deactivated: usize,
}

pub struct CatalogSync {
    pub store: Arc<dyn Store>,
    pub providers: BTreeMap<String, Arc<dyn CloudProvider>>,
}

impl CatalogSync {
    /// Syncs `provider` (all enabled ones when `None`).
    ///
    /// # Errors
    /// [`SagaError::Retry`] when a provider cannot be read or the store fails.
    pub async fn sync(&self, provider: Option<&str>) -> Result<SyncReport, SagaError> {
        let mut total = SyncReport::default();
        for (name, cloud) in &self.providers {
            if provider.is_some_and(|wanted| wanted != name) {
                continue;
            }
            let report = self.sync_provider(name, &**cloud).await?;
            total.regions += report.regions;
            total.zones += report.zones;
            total.instance_types += report.instance_types;
            total.deactivated += report.deactivated;
        }
        Ok(total)
    }

    async fn sync_provider(&self, name: &str, cloud: &dyn CloudProvider) -> Result<SyncReport, SagaError> {
        let offers = cloud.offers().await.map_err(|error| SagaError::Retry(error.to_string()))?;
        let store = &self.store;
        let mut report = SyncReport::default();
        let mut tx = store.begin().await?;
        let existing = store.provider(name).await?;
        let display_name = existing.as_ref().map_or_else(|| name.to_owned(), |provider| provider.display_name.clone());
        tx.upsert_provider(name, &display_name, existing.as_ref().is_none_or(|provider| provider.active)).await?;

        let mut regions: BTreeMap<String, RegionId> = BTreeMap::new();
        let mut zones: BTreeMap<String, ZoneId> = BTreeMap::new();
        for offer in &offers {
            if !regions.contains_key(&offer.region) {
                let found = store.region_by_code(name, &offer.region).await?;
                let input = RegionInput {
                    id: found.as_ref().map_or_else(RegionId::new, |region| region.id),
                    provider: name.to_owned(),
                    code: offer.region.clone(),
                    name: found.as_ref().map_or_else(|| offer.region.clone(), |region| region.name.clone()),
                    active: found.as_ref().is_none_or(|region| region.active),
                };
                tx.upsert_region(&input).await?;
                regions.insert(offer.region.clone(), input.id);
                report.regions += 1;
            }
            if !zones.contains_key(&offer.zone) {
                let found = store.zone_by_code(name, &offer.zone).await?;
                let input = ZoneInput {
                    id: found.as_ref().map_or_else(ZoneId::new, |zone| zone.id),
                    region_id: regions[&offer.region],
                    code: offer.zone.clone(),
                    name: found.as_ref().map_or_else(|| offer.zone.clone(), |zone| zone.name.clone()),
                    active: found.as_ref().is_none_or(|zone| zone.active),
                };
                tx.upsert_zone(&input).await?;
                zones.insert(offer.zone.clone(), input.id);
                report.zones += 1;
            }
        }

        let mut offered_in: BTreeMap<&str, BTreeSet<ZoneId>> = BTreeMap::new();
        for offer in &offers {
            offered_in.entry(offer.instance_type.as_str()).or_default().insert(zones[&offer.zone]);
        }
        for (code, zone_ids) in &offered_in {
            let Some(offer) = offers.iter().find(|offer| offer.instance_type == *code) else { continue };
            let found = store.instance_type_by_code(name, code).await?;
            let input = InstanceTypeInput {
                id: found.as_ref().map_or_else(InstanceTypeId::new, |instance_type| instance_type.id),
                provider: name.to_owned(),
                code: (*code).to_owned(),
                gpu_model: offer.gpu_model.clone(),
                gpu_count: offer.gpu_count,
                gpu_memory_gb: offer.gpu_memory_gb,
                vcpus: offer.vcpus,
                memory_gb: offer.memory_gb,
                hourly_price_micros: offer.hourly_price_micros,
                currency: offer.currency.clone(),
                active: true,
            };
            tx.upsert_instance_type(&input).await?;
            tx.replace_instance_type_zones(input.id, &zone_ids.iter().copied().collect::<Vec<_>>()).await?;
            report.instance_types += 1;
        }
        for stale in store.instance_types(Some(name)).await? {
            if stale.active && !offered_in.contains_key(stale.code.as_str()) {
                let input = InstanceTypeInput { active: false, ..stale.to_input() };
                tx.upsert_instance_type(&input).await?;
                report.deactivated += 1;
            }
        }
        let mut entry = NewActionLog::new(crate::NAME, "catalog.synced", ActionStatus::Succeeded);
        entry.metadata = serde_json::json!({
            "provider": name, "offers": offers.len(), "regions": report.regions, "zones": report.zones,
            "instance_types": report.instance_types, "deactivated": report.deactivated,
        });
        tx.insert_action_log(&entry).await?;
        tx.commit().await?;
        Ok(report)
    }
}
