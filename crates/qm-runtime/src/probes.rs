//! `/healthz` (the process answers), `/readyz` (its dependencies answer) and `/metrics`.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::Registry;
use serde_json::{Map, Value, json};

/// One dependency a service needs to do its work.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &'static str;
    /// # Errors
    /// Why the dependency is not usable now.
    async fn check(&self) -> Result<(), String>;
}

/// The store answers (with the `backends` feature).
#[cfg(feature = "backends")]
pub struct StoreReady(pub Arc<dyn qm_store::Store>);

#[cfg(feature = "backends")]
#[async_trait]
impl ReadinessCheck for StoreReady {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|error| error.to_string())
    }
}

/// The bus answers (with the `backends` feature).
#[cfg(feature = "backends")]
pub struct BusReady(pub Arc<dyn qm_bus::EventBus>);

#[cfg(feature = "backends")]
#[async_trait]
impl ReadinessCheck for BusReady {
    fn name(&self) -> &'static str {
        "bus"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|error| error.to_string())
    }
}

#[derive(Clone)]
struct Probes {
    registry: Registry,
    checks: Arc<Vec<Arc<dyn ReadinessCheck>>>,
    /// SHA-256 of the bearer token `/metrics` requires, when one is configured.
    metrics_token_hash: Option<Arc<String>>,
}

/// The probe routes; merge them into a service's router. With `metrics_token`, `/metrics`
/// answers 401 unless the request bears it (`QM_METRICS_TOKEN`).
pub fn router(registry: Registry, checks: Vec<Arc<dyn ReadinessCheck>>, metrics_token: Option<&str>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Probes {
            registry,
            checks: Arc::new(checks),
            metrics_token_hash: metrics_token.map(|token| Arc::new(crate::tokens::hash(token))),
        })
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(probes): State<Probes>) -> impl IntoResponse {
    let mut results = Map::new();
    let mut ready = true;
    for check in probes.checks.iter() {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(3), check.check()).await;
        let verdict = match outcome {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(reason)) => reason,
            Err(_) => "timed out after 3 s".to_owned(),
        };
        ready &= verdict == "ok";
        results.insert(check.name().to_owned(), Value::String(verdict));
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": results });
    (status, axum::Json(body))
}

async fn metrics(State(probes): State<Probes>, headers: axum::http::HeaderMap) -> axum::response::Response {
    if let Some(expected) = &probes.metrics_token_hash {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|token| crate::tokens::hash(token.trim()));
        // Hashes of equal length compared in full: no early exit to time.
        let matches = presented.is_some_and(|presented| {
            presented.bytes().zip(expected.bytes()).fold(0u8, |difference, (a, b)| difference | (a ^ b)) == 0
        });
        if !matches {
            let body = json!({
                "type": "urn:qm:problem:unauthorized", "title": "Unauthorized", "status": 401,
                "detail": "/metrics needs `Authorization: Bearer <QM_METRICS_TOKEN>`",
            });
            return (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string())
                .into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        qm_telemetry::metrics::render(&probes.registry),
    )
        .into_response()
}
