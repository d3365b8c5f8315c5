//! One `sim` cloud shared by several processes, as one provider account is shared by every
//! orchestrator replica in production: [`serve`] runs a [`SimCloud`] (its instances and their
//! simulated agents) behind a small HTTP API, and [`RemoteSim`] is the `sim` provider an
//! orchestrator uses when `QM_SIM_URL` names such a server. An orchestrator killed with
//! `kill -9` then takes none of the cloud's instances with it, and a second replica sees what
//! the first created.
//!
//! The API: `POST /instances` (a [`CreateRequest`]), `POST /instances/{id}/start`,
//! `GET /instances/{id}`, `GET /instances`, `DELETE /instances/{id}`, `GET /offers`; a failure
//! answers 4xx or 5xx with `{"kind": …, "message": …}`, read back as the same
//! [`ProviderError`] kind.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::sim::{NAME, SimCloud};
use crate::{CloudProvider, CreateRequest, ErrorKind, ProviderError, ProviderInstance, ProviderOffer};

#[derive(Serialize, Deserialize)]
struct WireError {
    kind: ErrorKind,
    message: String,
}

fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Auth => StatusCode::FORBIDDEN,
        ErrorKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Capacity | ErrorKind::Quota => StatusCode::CONFLICT,
        ErrorKind::Transient => StatusCode::SERVICE_UNAVAILABLE,
    }
}

struct Failed(ProviderError);

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        (status(self.0.kind), Json(WireError { kind: self.0.kind, message: self.0.message })).into_response()
    }
}

type Answer<T> = Result<Json<T>, Failed>;

async fn create(State(cloud): State<Arc<SimCloud>>, Json(request): Json<CreateRequest>) -> Answer<ProviderInstance> {
    cloud.create(&request).await.map(Json).map_err(Failed)
}

async fn start(State(cloud): State<Arc<SimCloud>>, Path(id): Path<String>) -> Answer<ProviderInstance> {
    cloud.start(&id).await.map(Json).map_err(Failed)
}

async fn describe(State(cloud): State<Arc<SimCloud>>, Path(id): Path<String>) -> Answer<ProviderInstance> {
    cloud.describe(&id).await.map(Json).map_err(Failed)
}

async fn list(State(cloud): State<Arc<SimCloud>>) -> Answer<Vec<ProviderInstance>> {
    cloud.list().await.map(Json).map_err(Failed)
}

async fn terminate(State(cloud): State<Arc<SimCloud>>, Path(id): Path<String>) -> Result<StatusCode, Failed> {
    cloud.terminate(&id).await.map(|()| StatusCode::NO_CONTENT).map_err(Failed)
}

async fn offers(State(cloud): State<Arc<SimCloud>>) -> Answer<Vec<ProviderOffer>> {
    cloud.offers().await.map(Json).map_err(Failed)
}

/// Serves `cloud` on `listener` until the task is dropped.
///
/// # Errors
/// When serving fails.
pub async fn serve(cloud: Arc<SimCloud>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/instances", post(create).get(list))
        .route("/instances/{id}", get(describe).delete(terminate))
        .route("/instances/{id}/start", post(start))
        .route("/offers", get(offers))
        .with_state(cloud);
    axum::serve(listener, app).await
}

/// The `sim` provider of a shared cloud at `base` (`QM_SIM_URL`).
pub struct RemoteSim {
    base: String,
    http: reqwest::Client,
}

impl RemoteSim {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: &str) -> Result<Self, ProviderError> {
        // reqwest's rustls needs the process's crypto provider before a client is built.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|error| ProviderError::new(NAME, ErrorKind::Invalid, format!("HTTP client: {error}")))?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `request`; a transport failure is transient, a failure answer keeps its kind.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ProviderError> {
        let response = request.send().await.map_err(|error| {
            ProviderError::new(NAME, ErrorKind::Transient, format!("sim cloud unreachable: {error}"))
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status();
        let body = response.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<WireError>(&body) {
            Ok(wire) => ProviderError::new(NAME, wire.kind, wire.message),
            Err(_) => ProviderError::new(NAME, ErrorKind::Transient, format!("sim cloud answered {code}")),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, ProviderError> {
        self.call(request).await?.json().await.map_err(|error| {
            ProviderError::new(NAME, ErrorKind::Transient, format!("sim cloud answer unreadable: {error}"))
        })
    }

    /// An id as one path segment (the cloud's ids are `sim-` and hex; anything else is refused).
    fn segment(id: &str) -> Result<&str, ProviderError> {
        if !id.is_empty() && id.len() <= 100 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            Ok(id)
        } else {
            Err(ProviderError::new(NAME, ErrorKind::Invalid, "not a sim instance id"))
        }
    }
}

#[async_trait]
impl CloudProvider for RemoteSim {
    fn name(&self) -> &str {
        NAME
    }

    async fn create(&self, request: &CreateRequest) -> Result<ProviderInstance, ProviderError> {
        self.json(self.http.post(self.url("/instances")).json(request)).await
    }

    async fn start(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        let id = Self::segment(provider_id)?;
        self.json(self.http.post(self.url(&format!("/instances/{id}/start")))).await
    }

    async fn describe(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        let id = Self::segment(provider_id)?;
        self.json(self.http.get(self.url(&format!("/instances/{id}")))).await
    }

    async fn list(&self) -> Result<Vec<ProviderInstance>, ProviderError> {
        self.json(self.http.get(self.url("/instances"))).await
    }

    async fn terminate(&self, provider_id: &str) -> Result<(), ProviderError> {
        let id = Self::segment(provider_id)?;
        self.call(self.http.delete(self.url(&format!("/instances/{id}")))).await.map(|_| ())
    }

    async fn offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        self.json(self.http.get(self.url("/offers"))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimConfig;

    /// The remote cloud is the same cloud: what one client creates another lists, errors keep
    /// their kind, a path-like id is refused before any call (the conformance suite runs
    /// through HTTP in `tests/conformance.rs`).
    #[tokio::test]
    async fn a_shared_cloud_over_http_behaves_as_the_cloud_itself() {
        let cloud = Arc::new(SimCloud::new(SimConfig { boot_delay: Duration::ZERO, ..SimConfig::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(serve(cloud.clone(), listener));
        let (one, two) = (RemoteSim::new(&base).expect("client"), RemoteSim::new(&base).expect("client"));
        let offer = one.offers().await.expect("offers").into_iter().next().expect("an offer");
        let request = CreateRequest {
            instance_id: qm_domain::InstanceId::new(),
            zone: offer.zone.clone(),
            instance_type: offer.instance_type.clone(),
            user_data: String::new(),
            tags: std::collections::BTreeMap::new(),
        };
        let created = one.create(&request).await.expect("create");
        let listed = two.list().await.expect("list");
        assert!(listed.iter().any(|instance| instance.provider_id == created.provider_id));
        assert_eq!(cloud.stats().created, 1);
        let missing = two.describe("sim-0000").await.expect_err("refused");
        assert_eq!(missing.kind, ErrorKind::NotFound);
        assert_eq!(two.describe("../etc").await.expect_err("refused").kind, ErrorKind::Invalid);
        two.terminate(&created.provider_id).await.expect("terminate");
        assert_eq!(cloud.stats().live, 0);
        server.abort();
    }
}
