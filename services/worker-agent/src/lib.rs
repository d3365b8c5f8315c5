//! The worker agent (`qm-worker-agent`, default port 8090), which runs on each instance beside
//! the inference engine.
//!
//! It serves `/healthz`, `/metrics` and a `/readyz` that answers 200 only while the engine at
//! `QM_ENGINE_URL` accepts connections; registers with the api and heartbeats its engine's
//! status ([`engine`]) and its GPUs ([`gpu`]); supervises an engine command ([`supervisor`]);
//! and drains on SIGTERM. [`mock_engine`] is the built-in OpenAI-compatible engine for
//! development and tests.

pub mod engine;
pub mod gpu;
pub mod mock_engine;
pub mod supervisor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qm_runtime::probes::{self, ReadinessCheck};
use qm_runtime::service::Service;

pub const NAME: &str = "worker-agent";

/// Ready while something listens at the engine's address.
struct EngineReady {
    engine: Option<(String, u16)>,
}

#[async_trait]
impl ReadinessCheck for EngineReady {
    fn name(&self) -> &'static str {
        "engine"
    }

    async fn check(&self) -> Result<(), String> {
        let Some((host, port)) = &self.engine else {
            return Err("no engine configured (set QM_ENGINE_URL)".into());
        };
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect((host.as_str(), *port))).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("engine at {host}:{port} refuses connections: {error}")),
            Err(_) => Err(format!("engine at {host}:{port} did not answer within 2 s")),
        }
    }
}

/// # Errors
/// A malformed engine URL, or an address that cannot be bound.
pub async fn build(address: SocketAddr, engine_url: Option<&str>) -> anyhow::Result<Service> {
    let engine = match engine_url {
        Some(text) => {
            let url = url::Url::parse(text).map_err(|error| anyhow::anyhow!("QM_ENGINE_URL is invalid: {error}"))?;
            let host = url.host_str().ok_or_else(|| anyhow::anyhow!("QM_ENGINE_URL has no host"))?.to_owned();
            let port = url.port_or_known_default().ok_or_else(|| anyhow::anyhow!("QM_ENGINE_URL has no port"))?;
            Some((host, port))
        }
        None => None,
    };
    let registry = qm_telemetry::metrics::registry(NAME);
    let metrics_token = std::env::var("QM_METRICS_TOKEN").ok().filter(|token| !token.is_empty());
    let router = probes::router(registry.clone(), vec![Arc::new(EngineReady { engine })], metrics_token.as_deref());
    Ok(Service::bind(NAME, address, router, &registry).await?)
}
