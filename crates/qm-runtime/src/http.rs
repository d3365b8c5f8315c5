//! Serving a router: request timeout, body size limit, request metrics, trace context from the
//! `traceparent` header, and graceful shutdown with a bound on how long in-flight requests get.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use prometheus::{HistogramVec, IntCounterVec, Registry};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::Shutdown;

/// Longest a request may take before the client gets 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// What the standard layers bound. A service that bounds bodies and time itself, in its own
/// error shape and per phase (the router: OpenAI's errors, a first-byte timeout, streams that
/// run for minutes), turns them off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `None`: the service reads bodies with its own bound.
    pub max_body_bytes: Option<usize>,
    /// `None`: no overall timeout until the answer starts.
    pub request_timeout: Option<Duration>,
}

impl Limits {
    /// [`MAX_BODY_BYTES`] and [`REQUEST_TIMEOUT`].
    pub const STANDARD: Self = Self { max_body_bytes: Some(MAX_BODY_BYTES), request_timeout: Some(REQUEST_TIMEOUT) };
    /// Neither: the service bounds both itself.
    pub const OWN: Self = Self { max_body_bytes: None, request_timeout: None };
}

/// How long in-flight requests may run on after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct HttpMetrics {
    requests: IntCounterVec,
    durations: HistogramVec,
}

impl HttpMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            requests: qm_telemetry::metrics::counter_vec(
                registry,
                "qm_http_requests_total",
                "HTTP requests served, by route and status",
                &["method", "route", "status"],
            ),
            durations: qm_telemetry::metrics::histogram_vec(
                registry,
                "qm_http_request_duration_seconds",
                "HTTP request latency, by route",
                &["method", "route"],
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
            ),
        }
    }
}

/// Every answer names its request (`x-request-id`), as it appears in the logs: the caller's own
/// id when it sent a sane one (1 to 64 letters, digits, `.`, `_`, `-`), else a new one.
const REQUEST_ID: &str = "x-request-id";

fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            (1..=64).contains(&id.len())
                && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

async fn observe(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    // The route template (`/instances/{id}`), never the raw path, keeps label cardinality bounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let traceparent = request.headers().get("traceparent").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let request_id = request_id(&request);
    let span = tracing::info_span!(
        "http_request",
        %method,
        %route,
        %request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty
    );
    qm_telemetry::traceparent::continue_from(&span, traceparent.as_deref());
    let started = Instant::now();
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    metrics.requests.with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()]).inc();
    metrics.durations.with_label_values(&[method.as_str(), route.as_str()]).observe(started.elapsed().as_secs_f64());
    response
}

/// A handler panicked: the client gets a bare problem+json 500 (never the panic message), and
/// the panic is logged.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "request handler panicked");
    problem(StatusCode::INTERNAL_SERVER_ERROR, "the server failed to handle the request; it has been logged")
}

const PROBLEM_JSON: &str = "application/problem+json";

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, PROBLEM_JSON)
        .body(axum::body::Body::from(body.to_string()))
        .unwrap_or_default()
}

/// Turns whatever error escaped the handlers as plain text (wrong method, a body over the limit,
/// a timeout) into problem+json, so that clients parse one error shape.
async fn normalize_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem || is_json {
        return response;
    }
    let detail = match status {
        StatusCode::NOT_FOUND => "no such route".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => "the body is too large".to_owned(),
        StatusCode::REQUEST_TIMEOUT => format!("the request took longer than {} s", REQUEST_TIMEOUT.as_secs()),
        other => other.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut normalized = problem(status, &detail);
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            normalized.headers_mut().insert(name, value.clone());
        }
    }
    normalized
}

/// Bodies declared larger than this are refused without reading them (the client may then see
/// the connection reset instead of the answer).
pub const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// When `request` declares a body over `limit`: the body is read and discarded (up to
/// [`DRAIN_LIMIT`]; closing the connection while the client still uploads would reset it before
/// the client reads the 413) and `Err` holds the request's parts; otherwise `Ok(request)`.
///
/// # Errors
/// The declared length is over `limit`.
pub async fn drain_oversized(request: Request, limit: usize) -> Result<Request, axum::http::request::Parts> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let Some(length) = declared.filter(|length| *length > limit as u64) else {
        return Ok(request);
    };
    let (parts, body) = request.into_parts();
    if length <= DRAIN_LIMIT {
        use futures::StreamExt as _;
        let mut body = body.into_data_stream();
        while let Some(Ok(_)) = body.next().await {}
    }
    Err(parts)
}

/// Refuses a body whose declared length is over `limit` before any handler runs.
async fn refuse_oversized(State(limit): State<usize>, request: Request, next: Next) -> Response {
    match drain_oversized(request, limit).await {
        Ok(request) => next.run(request).await,
        Err(_) => problem(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body exceeds {limit} bytes")),
    }
}

/// Adds the standard layers to a service's router.
pub fn with_standard_layers(router: Router, registry: &Registry) -> Router {
    with_layers(router, registry, Limits::STANDARD)
}

/// Adds the standard layers with `limits`.
pub fn with_layers(router: Router, registry: &Registry, limits: Limits) -> Router {
    // Innermost first: the metrics see what the limits and the panic guard answered, and every
    // stray error, a timeout included, leaves as problem+json.
    let router = match limits.max_body_bytes {
        Some(limit) => router
            .layer(RequestBodyLimitLayer::new(limit))
            .layer(middleware::from_fn_with_state(limit, refuse_oversized)),
        None => router,
    };
    let router = router
        .layer(CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(HttpMetrics::new(registry), observe));
    let router = match limits.request_timeout {
        Some(timeout) => router.layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout)),
        None => router,
    };
    router.layer(middleware::map_response(normalize_errors))
}

/// A bound listener, so that callers (and tests on port 0) know the address before serving.
pub struct Server {
    listener: TcpListener,
    address: SocketAddr,
}

impl Server {
    /// # Errors
    /// The bind error, e.g. address in use.
    pub async fn bind(address: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        Ok(Self { listener, address })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` fires, then lets in-flight requests finish for at most
    /// [`DRAIN_TIMEOUT`].
    ///
    /// # Errors
    /// An IO error from the listener.
    pub async fn serve(self, router: Router, shutdown: Shutdown) -> std::io::Result<()> {
        let graceful = {
            let shutdown = shutdown.clone();
            async move { shutdown.wait().await }
        };
        let serving = axum::serve(self.listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(graceful)
            .into_future();
        tokio::pin!(serving);
        tokio::select! {
            result = &mut serving => result,
            () = async { shutdown.wait().await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
                tracing::warn!(address = %self.address, "in-flight requests did not finish in time; closing");
                Ok(())
            }
        }
    }
}
