//! Prometheus helpers. Each service owns a [`Registry`] and defines its metrics in one module
//! (`metrics.rs` of the service); this module only builds and renders them.

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// A registry for one service, with `qm_build_info{service,version}` = 1 already in it.
pub fn registry(service: &str) -> Registry {
    let registry = Registry::new();
    let build_info =
        gauge_vec(&registry, "qm_build_info", "Build information of the running service", &["service", "version"]);
    build_info.with_label_values(&[service, env!("CARGO_PKG_VERSION")]).set(1);
    registry
}

/// Registers a counter family. Metric names and label sets are compile-time constants in the
/// services, so a registration failure is a programming error caught by every test run.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let counter =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|error| panic!("metric {name}: {error}"));
    registry.register(Box::new(counter.clone())).unwrap_or_else(|error| panic!("metric {name}: {error}"));
    counter
}

pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).unwrap_or_else(|error| panic!("metric {name}: {error}"));
    registry.register(Box::new(gauge.clone())).unwrap_or_else(|error| panic!("metric {name}: {error}"));
    gauge
}

pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let gauge =
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|error| panic!("metric {name}: {error}"));
    registry.register(Box::new(gauge.clone())).unwrap_or_else(|error| panic!("metric {name}: {error}"));
    gauge
}

pub fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let histogram = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|error| panic!("metric {name}: {error}"));
    registry.register(Box::new(histogram.clone())).unwrap_or_else(|error| panic!("metric {name}: {error}"));
    histogram
}

/// Sets a gauge family to `values` (label values, value); label sets it had before that are not
/// in `values` read 0, so that a series drops to zero instead of vanishing.
pub fn set_all(gauge: &IntGaugeVec, values: &[(Vec<String>, i64)]) {
    for family in prometheus::core::Collector::collect(gauge) {
        for metric in family.get_metric() {
            let labels: Vec<&str> = metric.get_label().iter().map(|label| label.value()).collect();
            gauge.with_label_values(&labels).set(0);
        }
    }
    for (labels, value) in values {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        gauge.with_label_values(&labels).set(*value);
    }
}

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        tracing::error!(%error, "cannot encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_registry_reports_its_build() {
        let text = render(&registry("api"));
        assert!(text.contains("qm_build_info{service=\"api\",version=\""), "{text}");
    }
}
