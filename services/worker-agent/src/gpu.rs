//! GPUs through NVML (DESIGN section 6): the inventory the agent registers with and the
//! utilisation, memory, temperature and power each heartbeat carries. `libnvidia-ml` is loaded
//! at run time, so an agent on a machine without an NVIDIA driver or GPU reports no GPU and
//! nothing else changes. A reading NVML refuses (some boards report no power draw) is left out
//! rather than failing the heartbeat.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use qm_events::worker::{GpuInfo, GpuMetrics};

const MIB: u64 = 1024 * 1024;

pub struct Gpus {
    nvml: Option<Nvml>,
}

impl Gpus {
    /// NVML when it loads and sees at least one GPU; otherwise none.
    pub fn detect() -> Self {
        let nvml = match Nvml::init() {
            Ok(nvml) => match nvml.device_count() {
                Ok(0) => None,
                Ok(count) => {
                    tracing::info!(count, "NVML: reporting GPU metrics");
                    Some(nvml)
                }
                Err(error) => {
                    tracing::warn!(%error, "NVML loaded but cannot count GPUs: reporting none");
                    None
                }
            },
            Err(error) => {
                tracing::info!(%error, "NVML not available: reporting no GPU");
                None
            }
        };
        Self { nvml }
    }

    pub fn present(&self) -> bool {
        self.nvml.is_some()
    }

    /// What registration carries: index, name and total memory per GPU.
    pub fn inventory(&self) -> Vec<GpuInfo> {
        self.each(|index, device| {
            let name = device.name().ok()?;
            let memory = device.memory_info().ok()?;
            Some(GpuInfo { index, name, memory_total_mb: memory.total / MIB })
        })
    }

    /// What a heartbeat carries, per GPU.
    pub fn metrics(&self) -> Vec<GpuMetrics> {
        self.each(|index, device| {
            let memory = device.memory_info().ok()?;
            let utilization = device.utilization_rates().ok().map_or(0, |rates| rates.gpu);
            let temperature = device.temperature(TemperatureSensor::Gpu).ok();
            let power_milliwatts = device.power_usage().ok();
            Some(reading(index, utilization, memory.used, memory.total, temperature, power_milliwatts))
        })
    }

    fn each<T>(&self, read: impl Fn(u32, &nvml_wrapper::Device<'_>) -> Option<T>) -> Vec<T> {
        let Some(nvml) = &self.nvml else { return Vec::new() };
        let count = nvml.device_count().unwrap_or(0);
        (0..count).filter_map(|index| read(index, &nvml.device_by_index(index).ok()?)).collect()
    }
}

/// One GPU's heartbeat entry, in the units the api takes (MiB, °C, W).
fn reading(
    index: u32,
    utilization_percent: u32,
    memory_used_bytes: u64,
    memory_total_bytes: u64,
    temperature_c: Option<u32>,
    power_milliwatts: Option<u32>,
) -> GpuMetrics {
    GpuMetrics {
        index,
        utilization_percent: f64::from(utilization_percent.min(100)),
        memory_used_mb: memory_used_bytes / MIB,
        memory_total_mb: memory_total_bytes / MIB,
        temperature_c: temperature_c.map(f64::from),
        power_w: power_milliwatts.map(|milliwatts| f64::from(milliwatts) / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_converted_to_the_units_the_api_takes() {
        let entry = reading(1, 87, 40 * 1024 * MIB, 80 * 1024 * MIB, Some(64), Some(312_500));
        let expected = GpuMetrics {
            index: 1,
            utilization_percent: 87.0,
            memory_used_mb: 40960,
            memory_total_mb: 81920,
            temperature_c: Some(64.0),
            power_w: Some(312.5),
        };
        assert_eq!(entry, expected);
        let partial = reading(0, 0, 0, MIB, None, None);
        assert_eq!((partial.temperature_c, partial.power_w), (None, None));
    }

    #[test]
    fn without_nvml_nothing_is_reported() {
        let gpus = Gpus { nvml: None };
        assert!(!gpus.present());
        assert!(gpus.inventory().is_empty());
        assert!(gpus.metrics().is_empty());
    }
}
