//! The OpenAI-compatible endpoints: `POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `GET /v1/models`.
//!
//! A request is authenticated by its API key, bounded ([`MAX_BODY`]), read as a JSON object with
//! a `model`, and sent to a worker of the key's organization serving that model
//! ([`Fleet::choose`]). A failure before the first byte of the answer (connection refused or
//! reset, a timeout, a 5xx, 429 or 503 from the engine) counts against that worker's breaker and
//! the request goes to another, up to [`MAX_ATTEMPTS`] workers and within the fleet's retry
//! budget ([`crate::fleet::RetryBudget`]); after the first byte nothing is retried. Streams pass
//! through event by event as the engine sends them; the router asks the
//! engine for the usage of a stream (`stream_options.include_usage`) and removes it again when the
//! client did not ask. A client that goes away drops the upstream request with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use serde_json::{Map, Value, json};

use crate::fleet::{Fleet, InFlight, Upstream};
use crate::keys::KeyCache;
use crate::openai::ApiError;
use crate::usage::{Usage, UsageSink};

/// The largest request body taken.
pub const MAX_BODY: usize = 8 << 20;
/// The largest non-streamed answer relayed.
const MAX_ANSWER: usize = 64 << 20;
/// The largest server-sent event read whole (for its usage); past it, what arrived is relayed
/// as it is.
const MAX_EVENT: usize = 1 << 20;
/// Workers tried for one request.
pub const MAX_ATTEMPTS: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes of a prompt's beginning that choose its worker (shared system prompts and few-shot
/// examples live there).
const AFFINITY_PREFIX: usize = 1024;

pub struct RouterState {
    pub store: Arc<dyn qm_store::Store>,
    pub keys: KeyCache,
    pub limiter: Arc<crate::limits::Limiter>,
    pub budgets: crate::budgets::BudgetGate,
    pub fleet: Arc<Fleet>,
    pub client: reqwest::Client,
    pub usage: UsageSink,
    pub metrics: crate::Metrics,
    /// `QM_ENGINE_API_KEY`, sent to engines as `Authorization: Bearer`.
    pub engine_key: Option<qm_config::Secret>,
    /// Pools' activity, and requests held for a pool with no worker yet.
    pub pools: Arc<crate::pools::PoolActivity>,
    /// Until the engine's answer starts (`QM_ROUTER_FIRST_BYTE_TIMEOUT_SECONDS`): prefill of a
    /// long prompt under load, or a whole answer when not streamed.
    pub first_byte_timeout: Duration,
    /// Between two events of a stream (`QM_ROUTER_STREAM_IDLE_TIMEOUT_SECONDS`).
    pub stream_idle_timeout: Duration,
}

impl RouterState {
    pub fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
        }
    }
}

pub fn routes(state: Arc<RouterState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(|state, request| handle(state, Endpoint::Chat, request)))
        .route("/v1/completions", post(|state, request| handle(state, Endpoint::Completions, request)))
        .route("/v1/embeddings", post(|state, request| handle(state, Endpoint::Embeddings, request)))
        .route("/v1/models", get(models))
        .with_state(state)
}

async fn authenticate(state: &RouterState, headers: &HeaderMap) -> Result<qm_store::ApiKey, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else { return Err(ApiError::unauthorized()) };
    state.keys.authenticate(&*state.store, token).await?.ok_or_else(ApiError::unauthorized)
}

async fn models(State(state): State<Arc<RouterState>>, headers: HeaderMap) -> Response {
    match authenticate(&state, &headers).await {
        Ok(key) => {
            let data: Vec<Value> = state
                .fleet
                .models(key.organization_id)
                .into_iter()
                .filter(|model| allowed(&key, model))
                .map(|model| json!({ "id": model, "object": "model", "created": 0, "owned_by": "quartermaster" }))
                .collect();
            axum::Json(json!({ "object": "list", "data": data })).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// Answers a request and counts it. The `model` label is the requested model only when the
/// organization serves it (else empty), so that made-up model names cannot grow the metrics.
async fn handle(
    State(state): State<Arc<RouterState>>,
    endpoint: Endpoint,
    request: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    // A body declared too large is refused before it is read (after draining it, so that the
    // client reads the answer); one that only turns out too large is refused by `read`.
    let routed = match qm_runtime::http::drain_oversized(request, MAX_BODY).await {
        Ok(request) => {
            let (parts, body) = request.into_parts();
            route(&state, endpoint, &parts.headers, body, started).await
        }
        Err(_) => Err((String::new(), ApiError::too_large(MAX_BODY))),
    };
    let (model, response) = match routed {
        Ok((model, response)) => (model, response),
        Err((model, error)) => {
            state.metrics.rejections.with_label_values(&[error.code]).inc();
            (model, error.into_response())
        }
    };
    let code = response.status().as_u16().to_string();
    state.metrics.requests.with_label_values(&[model.as_str(), code.as_str()]).inc();
    response
}

/// Whether `key` may use `model`.
fn allowed(key: &qm_store::ApiKey, model: &str) -> bool {
    key.limits.models.as_ref().is_none_or(|models| models.iter().any(|allowed| allowed == model))
}

/// What the request asks for, read once.
struct Ask {
    model: String,
    stream: bool,
    /// The client asked for the stream's usage itself.
    usage_asked: bool,
    affinity: Option<u64>,
    body: Bytes,
}

fn hash_of(text: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// The text that picks the worker: a session (`x-session-id`, or the `user` field), else the
/// prompt's first [`AFFINITY_PREFIX`] bytes; none for embeddings.
fn affinity(endpoint: Endpoint, headers: &HeaderMap, request: &Map<String, Value>) -> Option<String> {
    let session = headers.get("x-session-id").and_then(|value| value.to_str().ok()).filter(|value| !value.is_empty());
    if let Some(session) = session.or_else(|| request.get("user").and_then(Value::as_str)) {
        return Some(format!("session:{session}"));
    }
    let mut prefix = String::new();
    match endpoint {
        Endpoint::Chat => {
            for message in request.get("messages").and_then(Value::as_array).into_iter().flatten() {
                match &message["content"] {
                    Value::String(text) => prefix.push_str(text),
                    other => prefix.push_str(&other.to_string()),
                }
                prefix.push('\n');
                if prefix.len() >= AFFINITY_PREFIX {
                    break;
                }
            }
        }
        Endpoint::Completions => match request.get("prompt") {
            Some(Value::String(text)) => prefix.push_str(text),
            Some(other) => prefix.push_str(&other.to_string()),
            None => {}
        },
        Endpoint::Embeddings => return None,
    }
    let mut end = prefix.len().min(AFFINITY_PREFIX);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    prefix.truncate(end);
    (!prefix.is_empty()).then(|| format!("prompt:{prefix}"))
}

async fn read(endpoint: Endpoint, headers: &HeaderMap, body: Body) -> Result<Ask, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| ApiError::too_large(MAX_BODY))?;
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(ApiError::invalid_request("The body must be a JSON object."));
    };
    let Some(model) = request.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return Err(ApiError::invalid_request("`model` is required and must be a string."));
    };
    if model.is_empty() || model.len() > 256 {
        return Err(ApiError::invalid_request("`model` must be 1 to 256 characters."));
    }
    let stream = request.get("stream") == Some(&Value::Bool(true));
    let usage_asked =
        request.get("stream_options").and_then(|options| options.get("include_usage")) == Some(&Value::Bool(true));
    let affinity = affinity(endpoint, headers, &request).map(|text| hash_of(&format!("{model}\n{text}")));
    let body = if stream && !usage_asked && endpoint != Endpoint::Embeddings {
        let options = request.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(options) = options {
            options.insert("include_usage".into(), Value::Bool(true));
        } else {
            return Err(ApiError::invalid_request("`stream_options` must be an object."));
        }
        Bytes::from(serde_json::to_vec(&request).map_err(|_| ApiError::internal())?)
    } else {
        bytes
    };
    Ok(Ask { model, stream, usage_asked, affinity, body })
}

/// Whether an engine's answer means "try another worker" (before anything was relayed).
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

async fn route(
    state: &Arc<RouterState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<(String, Response), (String, ApiError)> {
    let key = authenticate(state, headers).await.map_err(|error| (String::new(), error))?;
    let ask = read(endpoint, headers, body).await.map_err(|error| (String::new(), error))?;
    if !allowed(&key, &ask.model) {
        return Err((String::new(), ApiError::model_not_found(&ask.model)));
    }
    let mut candidates = state.fleet.serving(key.organization_id, &ask.model);
    if candidates.is_empty() {
        candidates = hold(state, key.organization_id, &ask.model).await?;
    }
    let fail = |error: ApiError| (ask.model.clone(), error);
    if state.budgets.spent(&*state.store, key.organization_id).await.map_err(|error| fail(error.into()))? {
        return Err(fail(ApiError::insufficient_quota()));
    }
    state.limiter.admit(key.id.as_uuid(), &key.limits).await.map_err(fail)?;
    state.fleet.retries.deposit();
    let mut tried = Vec::new();
    while tried.len() < MAX_ATTEMPTS {
        // The budget before the choice: a chosen worker may hold its breaker's one trial.
        if !tried.is_empty() && !state.fleet.retries.withdraw() {
            tracing::info!(model = %ask.model, "retry budget spent; not retrying");
            break;
        }
        let Some(worker) = state.fleet.choose(&candidates, ask.affinity, &tried) else { break };
        if !tried.is_empty() {
            state.metrics.retries.inc();
        }
        tried.push(worker.instance_id);
        let in_flight = worker.start();
        let mut upstream = state
            .client
            .post(format!("{}{}", worker.base, endpoint.path()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(ask.body.clone());
        if let Some(key) = &state.engine_key {
            upstream = upstream.bearer_auth(key.expose());
        }
        let sent = upstream.send();
        let response = match tokio::time::timeout(state.first_byte_timeout, sent).await {
            Ok(Ok(response)) if !retryable(response.status()) => response,
            Ok(Ok(response)) => {
                tracing::info!(worker = %worker.instance_id, status = %response.status(), "worker refused; trying another");
                worker.failed();
                continue;
            }
            Ok(Err(error)) => {
                tracing::info!(worker = %worker.instance_id, error = %error.without_url(), "worker unreachable; trying another");
                worker.failed();
                continue;
            }
            Err(_) => {
                tracing::info!(worker = %worker.instance_id, "worker did not answer in time; trying another");
                worker.failed();
                continue;
            }
        };
        worker.succeeded();
        let accounting = Accounting {
            limiter: state.limiter.clone(),
            limits: key.limits.clone(),
            sink: state.usage.clone(),
            usage: Usage {
                organization_id: key.organization_id,
                api_key_id: key.id.as_uuid(),
                instance_id: worker.instance_id,
                model: ask.model.clone(),
                provider: worker.provider.clone(),
                zone: worker.zone.clone(),
                instance_type: worker.instance_type.clone(),
                prompt_tokens: 0,
                completion_tokens: 0,
            },
            metrics: state.metrics.clone(),
            started,
            worker: worker.clone(),
        };
        let streamed = ask.stream
            && response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("text/event-stream"));
        let relayed = if streamed {
            relay_stream(response, accounting, in_flight, !ask.usage_asked, state.stream_idle_timeout)
        } else {
            relay_whole(response, accounting, &worker, in_flight).await.map_err(fail)?
        };
        return Ok((ask.model.clone(), relayed));
    }
    if tried.is_empty() {
        Err(fail(ApiError::unavailable(format!("No worker serving `{}` can take requests now; try again.", ask.model))))
    } else {
        Err(fail(ApiError::upstream(format!("{} worker(s) serving `{}` failed this request.", tried.len(), ask.model))))
    }
}

/// Waits for a worker of `model` when a pool of the organization serves it (scaled to zero, or
/// starting), waking the pool; `model_not_found` when none does.
async fn hold(
    state: &RouterState,
    organization: qm_domain::OrganizationId,
    model: &str,
) -> Result<Vec<Arc<crate::fleet::Upstream>>, (String, ApiError)> {
    let pool = state.pools.pool_for(organization, model).await.map_err(|error| (String::new(), error.into()))?;
    let Some(pool) = pool else { return Err((String::new(), ApiError::model_not_found(model))) };
    let fail = |message: String| (model.to_owned(), ApiError::unavailable_for(message, 10));
    let Ok(_held) = state.pools.held.try_acquire() else {
        return Err(fail(format!("Too many requests are waiting for `{model}` to start; try again.")));
    };
    state.pools.wake(pool);
    let (started, mut woken) = (Instant::now(), Instant::now());
    tracing::info!(%model, %pool, "no worker yet; request held while the pool starts one");
    while started.elapsed() < crate::pools::HOLD_FOR {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let candidates = state.fleet.serving(organization, model);
        if !candidates.is_empty() {
            return Ok(candidates);
        }
        // Still asked for: the pool must not count as idle while requests wait.
        if woken.elapsed() >= crate::pools::FLUSH_EVERY * 5 {
            state.pools.wake(pool);
            woken = Instant::now();
        }
    }
    Err(fail(format!("No worker of `{model}` became ready within {} s; try again.", crate::pools::HOLD_FOR.as_secs())))
}

/// The usage of one answer, reported when the answer is done (or abandoned).
struct Accounting {
    limiter: Arc<crate::limits::Limiter>,
    limits: qm_store::KeyLimits,
    sink: UsageSink,
    usage: Usage,
    metrics: crate::Metrics,
    started: Instant,
    /// The worker answering (its time to first token feeds its pool's autoscaler).
    worker: Arc<crate::fleet::Upstream>,
}

impl Accounting {
    fn read_usage(&mut self, usage: &Value) {
        let count = |name: &str| usage.get(name).and_then(Value::as_i64).filter(|count| *count >= 0);
        if let Some(prompt) = count("prompt_tokens") {
            self.usage.prompt_tokens = prompt;
        }
        if let Some(completion) = count("completion_tokens") {
            self.usage.completion_tokens = completion;
        }
    }

    fn first_byte(&self) {
        let elapsed = self.started.elapsed();
        self.metrics.time_to_first_token.observe(elapsed.as_secs_f64());
        if self.worker.pool.is_some() {
            self.worker.ttft.record(elapsed);
        }
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        self.metrics.duration.observe(self.started.elapsed().as_secs_f64());
        self.sink.record(self.usage.clone());
        let tokens = self.usage.prompt_tokens.saturating_add(self.usage.completion_tokens);
        if self.limits.tokens_per_minute.is_some() && tokens > 0 {
            let (limiter, limits, key) = (self.limiter.clone(), self.limits.clone(), self.usage.api_key_id);
            tokio::spawn(async move { limiter.spend(key, &limits, tokens).await });
        }
    }
}

fn content_type(response: &reqwest::Response) -> HeaderValue {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/json"))
}

async fn relay_whole(
    response: reqwest::Response,
    mut accounting: Accounting,
    worker: &Upstream,
    in_flight: InFlight,
) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let kind = content_type(&response);
    let too_large = || ApiError::upstream("The worker's answer is too large.");
    if response.content_length().is_some_and(|length| length > MAX_ANSWER as u64) {
        return Err(too_large());
    }
    let broke_off = |error: reqwest::Error| {
        tracing::info!(worker = %worker.instance_id, error = %error.without_url(), "worker's answer broke off");
        worker.failed();
        ApiError::upstream("The worker's answer broke off.")
    };
    // With a length (checked above) the answer is read at once; a chunked one, chunk by chunk,
    // up to the bound.
    let bytes = if response.content_length().is_some() {
        response.bytes().await.map_err(broke_off)?
    } else {
        let mut body = response.bytes_stream();
        let mut read = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(broke_off)?;
            if read.len() + chunk.len() > MAX_ANSWER {
                return Err(too_large());
            }
            read.extend_from_slice(&chunk);
        }
        Bytes::from(read)
    };
    drop(in_flight);
    accounting.first_byte();
    if status.is_success()
        && let Ok(answer) = serde_json::from_slice::<Value>(&bytes)
        && let Some(usage) = answer.get("usage")
    {
        accounting.read_usage(usage);
    }
    Ok((status, [(header::CONTENT_TYPE, kind)], bytes).into_response())
}

/// A stream relayed event by event: each complete server-sent event goes on as soon as it is in;
/// `usage` is read from the events that carry it and removed when the client did not ask for it.
fn relay_stream(
    response: reqwest::Response,
    accounting: Accounting,
    in_flight: InFlight,
    strip_usage: bool,
    idle_timeout: Duration,
) -> Response {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::OK);
    let kind = content_type(&response);
    struct Relay {
        upstream: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
        buffer: Vec<u8>,
        accounting: Accounting,
        strip_usage: bool,
        first: bool,
        last_event: Instant,
        _in_flight: InFlight,
        done: bool,
    }
    let relay = Relay {
        upstream: response.bytes_stream().boxed(),
        buffer: Vec::new(),
        accounting,
        strip_usage,
        first: true,
        last_event: Instant::now(),
        _in_flight: in_flight,
        done: false,
    };
    let events = futures::stream::unfold(relay, move |mut relay| async move {
        loop {
            // An event too long to be one the router reads goes on as it is, unread.
            let end =
                event_end(&relay.buffer).or_else(|| (relay.buffer.len() > MAX_EVENT).then_some(relay.buffer.len()));
            if let Some(end) = end {
                let event: Vec<u8> = relay.buffer.drain(..end).collect();
                if let Some(out) = rewrite(event, &mut relay.accounting, relay.strip_usage) {
                    if relay.first {
                        relay.first = false;
                        relay.accounting.first_byte();
                    } else {
                        relay.accounting.metrics.inter_token.observe(relay.last_event.elapsed().as_secs_f64());
                    }
                    relay.last_event = Instant::now();
                    return Some((Ok::<Bytes, std::io::Error>(out), relay));
                }
                continue;
            }
            if relay.done {
                if relay.buffer.is_empty() {
                    return None;
                }
                let rest = Bytes::from(std::mem::take(&mut relay.buffer));
                return Some((Ok(rest), relay));
            }
            match tokio::time::timeout(idle_timeout, relay.upstream.next()).await {
                Ok(Some(Ok(chunk))) => relay.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(error))) => {
                    tracing::info!(error = %error.without_url(), "a worker's stream broke off");
                    relay.done = true;
                }
                Ok(None) => relay.done = true,
                Err(_) => {
                    tracing::info!("a worker's stream went idle; closing it");
                    relay.done = true;
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(events));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, kind);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Where the first complete event in `buffer` ends (after its blank line).
fn event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|window| window == b"\n\n").map(|at| at + 2);
    let crlf = buffer.windows(4).position(|window| window == b"\r\n\r\n").map(|at| at + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The event to send on (`None`: drop it), its usage read. Only an event that mentions
/// `"usage"` is parsed: the token events of a stream pass untouched.
fn rewrite(event: Vec<u8>, accounting: &mut Accounting, strip_usage: bool) -> Option<Bytes> {
    if !event.windows(7).any(|window| window == b"\"usage\"") {
        return Some(Bytes::from(event));
    }
    let text = std::str::from_utf8(&event).ok();
    let data = text.and_then(|text| text.lines().find_map(|line| line.strip_prefix("data:")).map(str::trim));
    let chunk = data.filter(|data| data.starts_with('{')).and_then(|data| serde_json::from_str::<Value>(data).ok());
    let Some(Value::Object(mut chunk)) = chunk else { return Some(Bytes::from(event)) };
    let Some(usage) = chunk.get("usage").filter(|usage| !usage.is_null()).cloned() else {
        return Some(Bytes::from(event));
    };
    accounting.read_usage(&usage);
    if !strip_usage {
        return Some(Bytes::from(event));
    }
    // The usage-only chunk the router asked for goes; a chunk with choices loses its usage.
    if chunk.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty) {
        return None;
    }
    chunk.remove("usage");
    Some(Bytes::from(format!("data: {}\n\n", Value::Object(chunk))))
}
