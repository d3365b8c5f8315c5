//! `GET /downloads/qm-worker-agent` and its `.sha256`: the agent binary that cloud instances
//! fetch at boot when `QM_AGENT_BINARY` is set (their user data carries the same checksum and
//! the boot script refuses a download that does not match it). Public: the binary is no secret,
//! and an instance has no credential before its agent runs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::problem::Problem;

/// The binary, read once at start-up so that what is served is exactly what was checksummed
/// (a file replaced on disk later changes neither).
#[derive(Debug)]
pub struct AgentDownload {
    pub bytes: axum::body::Bytes,
    /// Lowercase hex.
    pub sha256: String,
}

impl AgentDownload {
    /// # Errors
    /// When the file cannot be read.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Arc<Self>> {
        let bytes = std::fs::read(path)
            .map_err(|error| anyhow::anyhow!("QM_AGENT_BINARY {} cannot be read: {error}", path.display()))?;
        let sha256 = qm_runtime::tokens::sha256_hex(&bytes);
        Ok(Arc::new(Self { bytes: bytes.into(), sha256 }))
    }
}

fn configured(state: &AppState) -> Result<&AgentDownload, Problem> {
    state.agent_download.as_deref().ok_or_else(|| Problem::not_found("agent download (QM_AGENT_BINARY is not set)"))
}

/// The worker agent's executable.
#[utoipa::path(get, path = "/downloads/qm-worker-agent", tag = "downloads", security(()),
    responses((status = 200, description = "The executable", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No agent download is configured (`QM_AGENT_BINARY`)", body = Problem)))]
pub async fn agent(State(state): State<AppState>) -> Result<Response, Problem> {
    let download = configured(&state)?;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_DISPOSITION, "attachment; filename=\"qm-worker-agent\"".to_owned()),
        (header::ETAG, format!("\"{}\"", download.sha256)),
    ];
    Ok((headers, download.bytes.clone()).into_response())
}

/// Its SHA-256, as `sha256sum` prints it.
#[utoipa::path(get, path = "/downloads/qm-worker-agent.sha256", tag = "downloads", security(()),
    responses((status = 200, description = "`<hex>  qm-worker-agent`", content_type = "text/plain", body = String),
        (status = 404, description = "No agent download is configured (`QM_AGENT_BINARY`)", body = Problem)))]
pub async fn agent_checksum(State(state): State<AppState>) -> Result<Response, Problem> {
    let download = configured(&state)?;
    let body = format!("{}  qm-worker-agent\n", download.sha256);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}
