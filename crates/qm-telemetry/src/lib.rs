//! Logs, traces and metrics, set up the same way in every service (DESIGN section 9).
//!
//! - Logs: `tracing`, human-readable by default, JSON with `QM_LOG_FORMAT=json`, filtered by
//!   `RUST_LOG` (default `info`).
//! - Traces: every span carries an OpenTelemetry context, exported over OTLP/HTTP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The W3C `traceparent` crosses HTTP calls and bus
//!   messages through [`traceparent`].
//! - Metrics: one Prometheus [`prometheus::Registry`] per service, rendered by
//!   [`metrics::render`]; every name starts with `qm_`.
//!
//! Layout: [`init`] and [`TelemetryGuard`] here; [`traceparent`]; [`metrics`].

pub mod metrics;
pub mod traceparent;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("RUST_LOG is invalid: {0}")]
    InvalidFilter(String),
    #[error("QM_LOG_FORMAT must be `human` or `json`, not `{0}`")]
    InvalidFormat(String),
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
    #[error("telemetry was already initialised in this process")]
    AlreadyInitialised,
}

/// Flushes pending spans when dropped; keep it alive for the life of `main`.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {error}");
        }
    }
}

/// Installs the global subscriber for `service` (the OpenTelemetry `service.name`).
///
/// # Errors
/// [`TelemetryError`] naming the variable at fault; [`TelemetryError::AlreadyInitialised`] when
/// called twice in one process.
pub fn init(service: &str) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(directives).map_err(|error| TelemetryError::InvalidFilter(error.to_string()))?
        }
        _ => EnvFilter::new("info"),
    };
    let format = std::env::var("QM_LOG_FORMAT").unwrap_or_else(|_| "human".into());
    let logs = match format.as_str() {
        "human" | "" => tracing_subscriber::fmt::layer().with_target(false).boxed(),
        "json" => tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(true).boxed(),
        other => return Err(TelemetryError::InvalidFormat(other.to_owned())),
    };

    let mut provider =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(service.to_owned()).build());
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|endpoint| !endpoint.trim().is_empty()) {
        // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other OTEL_* variables) itself.
        // Its HTTP client (rustls without a built-in provider) needs the process's crypto
        // provider installed first, or building it panics.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        provider = provider.with_batch_exporter(exporter);
    }
    // Without an exporter spans still get trace ids, so the traceparent flows and logs correlate.
    let provider = provider.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer(service.to_owned());

    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(TelemetryGuard { provider })
}
