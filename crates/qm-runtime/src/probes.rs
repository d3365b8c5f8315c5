//! `/healthz` (the process answers), `/readyz` (its dependencies answer) and `/metrics`.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::Registry;
use qm_bus::EventBus;
use qm_store::Store;
use serde_json::{Map, Value, json};

/// One dependency a service needs to do its work.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &'static str;
    /// # Errors
    /// Why the dependency is not usable now.
    async fn check(&self) -> Result<(), String>;
}

pub struct StoreReady(pub Arc<dyn Store>);

#[async_trait]
impl ReadinessCheck for StoreReady {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|error| error.to_string())
    }
}

pub struct BusReady(pub Arc<dyn EventBus>);

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
}

/// The probe routes; merge them into a service's router.
pub fn router(registry: Registry, checks: Vec<Arc<dyn ReadinessCheck>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Probes { registry, checks: Arc::new(checks) })
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

async fn metrics(State(probes): State<Probes>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        qm_telemetry::metrics::render(&probes.registry),
    )
}
