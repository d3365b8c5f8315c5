//! The built-in mock inference engine: OpenAI-compatible (`/v1/models`, `/v1/chat/completions`
//! and `/v1/completions`, with and without `stream`), deterministic (the same request always gets
//! the same answer), reporting `usage` token counts, and exposing vLLM-style metrics
//! (`vllm:num_requests_running`, `vllm:num_requests_waiting`, token counters) on `/metrics`.
//! Tokens are whitespace-separated words, which is all a control plane needs to account for them.
//!
//! It can behave like an engine under load ([`Latency`]): a cold start before `/health` answers,
//! prefill time per prompt token that is not in its prefix cache (an LRU of 16-token blocks,
//! chained as vLLM's automatic prefix caching is), decode time per generated token, both slowed
//! by the number of requests running, and streams that send each token when it is decoded. Its
//! `/metrics` then also reports `vllm:prefix_cache_queries_total` and `vllm:prefix_cache_hits_total`
//! (in tokens), so routing quality can be measured on it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

/// Words the mock answers with, in order, cycling.
const VOCABULARY: [&str; 12] =
    ["Quartermaster", "mock", "engine", "reply", "to", "your", "request", "about", "the", "fleet", "and", "costs."];
const DEFAULT_MAX_TOKENS: usize = 16;

#[derive(Default)]
struct Counters {
    running: AtomicI64,
    waiting: AtomicI64,
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    cache_queries: AtomicU64,
    cache_hits: AtomicU64,
    /// KV-cache blocks held by the requests running now.
    kv_blocks: AtomicU64,
}

pub use qm_domain::engine::Latency;

/// Tokens per prefix-cache block.
pub const CACHE_BLOCK: usize = 16;

/// An LRU of prompt blocks, each named by the hash of every token up to its end.
#[derive(Default)]
struct PrefixCache {
    stamps: std::collections::HashMap<u64, u64>,
    order: std::collections::BTreeMap<u64, u64>,
    clock: u64,
}

impl PrefixCache {
    /// How many leading tokens of `words` were cached; then caches all of its blocks.
    fn lookup_and_insert(&mut self, words: &[&str], capacity: usize) -> usize {
        use std::hash::{Hash as _, Hasher as _};
        let mut chain = 0_u64;
        let mut cached = 0;
        let mut hit = true;
        for block in words.chunks(CACHE_BLOCK).filter(|block| block.len() == CACHE_BLOCK) {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            chain.hash(&mut hasher);
            block.hash(&mut hasher);
            chain = hasher.finish();
            hit = hit && self.stamps.contains_key(&chain);
            if hit {
                cached += CACHE_BLOCK;
            }
            self.clock += 1;
            if let Some(old) = self.stamps.insert(chain, self.clock) {
                self.order.remove(&old);
            }
            self.order.insert(self.clock, chain);
            while self.stamps.len() > capacity.max(1) {
                let Some((_, evicted)) = self.order.pop_first() else { break };
                self.stamps.remove(&evicted);
            }
        }
        cached
    }
}

#[derive(Clone)]
pub struct MockEngine {
    model: String,
    latency: Latency,
    started: std::time::Instant,
    cache: Arc<std::sync::Mutex<PrefixCache>>,
    counters: Arc<Counters>,
}

/// A request running, and the KV-cache blocks its prompt holds, until dropped.
struct Running(Arc<Counters>, u64);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        self.0.kv_blocks.fetch_sub(self.1, Ordering::Relaxed);
    }
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    max_tokens: Option<usize>,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[allow(dead_code)]
    role: String,
    content: Value,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: Value,
    max_tokens: Option<usize>,
    #[serde(default)]
    stream: bool,
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|part| part.get("text").and_then(Value::as_str).or(part.as_str()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn error(status: StatusCode, message: &str, code: &str) -> Response {
    let body = json!({ "error": { "message": message, "type": "invalid_request_error", "code": code } });
    (status, axum::Json(body)).into_response()
}

impl MockEngine {
    /// A mock that decodes a token every `token_delay` and is otherwise instant.
    pub fn new(model: &str, token_delay: Duration) -> Self {
        Self::with_latency(model, Latency { decode_per_token: token_delay, ..Latency::default() })
    }

    pub fn with_latency(model: &str, latency: Latency) -> Self {
        Self {
            model: model.to_owned(),
            latency,
            started: std::time::Instant::now(),
            cache: Arc::default(),
            counters: Arc::new(Counters::default()),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// The share of the KV cache the running requests' prompts hold (vLLM's
    /// `vllm:kv_cache_usage_perc`, a fraction).
    pub fn kv_cache_usage(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let usage = self.counters.kv_blocks.load(Ordering::Relaxed) as f64 / self.latency.cache_blocks.max(1) as f64;
        usage.min(1.0)
    }

    /// Requests being answered now, and waiting (the mock answers all at once: none wait).
    pub fn queue(&self) -> (i64, i64) {
        (self.counters.running.load(Ordering::Relaxed), self.counters.waiting.load(Ordering::Relaxed))
    }

    /// The deterministic answer: `max_tokens` words of the vocabulary, starting at a place
    /// chosen by the prompt's length.
    fn answer(&self, prompt_tokens: usize, max_tokens: usize) -> Vec<&'static str> {
        (0..max_tokens).map(|index| VOCABULARY[(prompt_tokens + index) % VOCABULARY.len()]).collect()
    }

    /// `base` stretched by the requests running now.
    fn slowed(&self, base: Duration) -> Duration {
        #[allow(clippy::cast_precision_loss)]
        let others = self.counters.running.load(Ordering::Relaxed).max(1) as f64 - 1.0;
        self.latency.slowed(base, others)
    }

    /// Admits a request: counts it running and spends its prefill (uncached tokens only).
    async fn prefill(&self, prompt: &str) -> (usize, Running) {
        self.counters.running.fetch_add(1, Ordering::Relaxed);
        let words: Vec<&str> = prompt.split_whitespace().collect();
        let blocks = words.len().div_ceil(CACHE_BLOCK).max(1) as u64;
        self.counters.kv_blocks.fetch_add(blocks, Ordering::Relaxed);
        let running = Running(self.counters.clone(), blocks);
        let cached = {
            let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            cache.lookup_and_insert(&words, self.latency.cache_blocks)
        };
        self.counters.cache_queries.fetch_add(words.len() as u64, Ordering::Relaxed);
        self.counters.cache_hits.fetch_add(cached as u64, Ordering::Relaxed);
        let uncached = u32::try_from(words.len() - cached).unwrap_or(u32::MAX);
        if !self.latency.prefill_per_token.is_zero() {
            tokio::time::sleep(self.slowed(self.latency.prefill_per_token * uncached)).await;
        }
        (words.len(), running)
    }

    /// One decode step.
    async fn decode(&self) {
        if !self.latency.decode_per_token.is_zero() {
            tokio::time::sleep(self.slowed(self.latency.decode_per_token)).await;
        }
    }

    fn finish(&self, prompt_tokens: usize, completion_tokens: usize) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        self.counters.generation_tokens.fetch_add(completion_tokens as u64, Ordering::Relaxed);
    }

    /// A whole answer: prefill, then every decode step.
    async fn generate(&self, prompt: &str, max_tokens: usize) -> (usize, Vec<&'static str>) {
        let (prompt_tokens, running) = self.prefill(prompt).await;
        for _ in 0..max_tokens {
            self.decode().await;
        }
        drop(running);
        let answer = self.answer(prompt_tokens, max_tokens);
        self.finish(prompt_tokens, answer.len());
        (prompt_tokens, answer)
    }

    /// A streamed answer: prefill, then each chunk when its token is decoded, then the last
    /// chunk (`last(prompt_tokens, completion_tokens)`) and `[DONE]`.
    async fn stream(
        &self,
        prompt: &str,
        max_tokens: usize,
        chunk: impl Fn(&'static str) -> Value + Send + 'static,
        last: impl Fn(usize, usize) -> Value + Send + 'static,
    ) -> Response {
        let (prompt_tokens, running) = self.prefill(prompt).await;
        let answer = self.answer(prompt_tokens, max_tokens);
        let engine = self.clone();
        let steps = futures::stream::unfold((0_usize, Some(running)), move |(index, running)| {
            let (engine, answer) = (engine.clone(), answer.clone());
            let chunk = &chunk;
            let event = match index.cmp(&answer.len()) {
                std::cmp::Ordering::Less => Some(chunk(answer[index])),
                std::cmp::Ordering::Equal => {
                    engine.finish(prompt_tokens, answer.len());
                    Some(last(prompt_tokens, answer.len()))
                }
                std::cmp::Ordering::Greater => None,
            };
            async move {
                let event = event?;
                if index < answer.len() {
                    engine.decode().await;
                }
                let running = if index == answer.len() { None } else { running };
                Some((Ok::<_, Infallible>(Event::default().data(event.to_string())), (index + 1, running)))
            }
        });
        let done = futures::stream::once(async { Ok(Event::default().data("[DONE]")) });
        Sse::new(futures::StreamExt::chain(steps, done)).into_response()
    }

    /// The OpenAI-style 404 for a model this engine does not serve.
    fn unknown_model(&self, model: &str) -> Option<Response> {
        (model != self.model)
            .then(|| error(StatusCode::NOT_FOUND, &format!("The model `{model}` does not exist."), "model_not_found"))
    }
}

async fn models(State(engine): State<MockEngine>) -> impl IntoResponse {
    axum::Json(
        json!({ "object": "list", "data": [{ "id": engine.model, "object": "model", "owned_by": "quartermaster" }] }),
    )
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({ "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens })
}

async fn health(State(engine): State<MockEngine>) -> StatusCode {
    if engine.started.elapsed() < engine.latency.cold_start { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

async fn chat(State(engine): State<MockEngine>, body: axum::body::Bytes) -> Response {
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(parse) => return error(StatusCode::BAD_REQUEST, &parse.to_string(), "invalid_request"),
    };
    if let Some(response) = engine.unknown_model(&request.model) {
        return response;
    }
    let prompt = request.messages.iter().map(|message| text_of(&message.content)).collect::<Vec<_>>().join(" ");
    let max_tokens = request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if request.stream {
        let id = format!("chatcmpl-mock-{}-{max_tokens}", words(&prompt));
        let (model, last_id, last_model) = (engine.model.clone(), id.clone(), engine.model.clone());
        let chunk = move |word: &str| {
            json!({ "id": id, "object": "chat.completion.chunk", "model": model,
                "choices": [{ "index": 0, "delta": { "content": format!("{word} ") }, "finish_reason": null }] })
        };
        let last = move |prompt_tokens, completion_tokens| {
            json!({ "id": last_id, "object": "chat.completion.chunk", "model": last_model,
                "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }], "usage": usage(prompt_tokens, completion_tokens) })
        };
        return engine.stream(&prompt, max_tokens, chunk, last).await;
    }
    let (prompt_tokens, answer) = engine.generate(&prompt, max_tokens).await;
    let id = format!("chatcmpl-mock-{prompt_tokens}-{}", answer.len());
    axum::Json(json!({
        "id": id, "object": "chat.completion", "model": engine.model,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": answer.join(" ") }, "finish_reason": "stop" }],
        "usage": usage(prompt_tokens, answer.len()),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    model: String,
    /// A string or a list of strings.
    input: Value,
}

/// Dimensions of the mock's embeddings.
const EMBEDDING_DIMENSIONS: usize = 8;

/// A deterministic unit vector for `text`.
fn embedding_of(text: &str) -> Vec<f64> {
    use std::hash::{Hash as _, Hasher as _};
    let raw: Vec<f64> = (0..EMBEDDING_DIMENSIONS)
        .map(|dimension| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (dimension, text).hash(&mut hasher);
            #[allow(clippy::cast_precision_loss)]
            let value = (hasher.finish() % 2_001) as f64 / 1_000.0 - 1.0;
            value
        })
        .collect();
    let norm = raw.iter().map(|value| value * value).sum::<f64>().sqrt().max(f64::EPSILON);
    raw.into_iter().map(|value| value / norm).collect()
}

/// `POST /v1/embeddings`: one vector per input, prefill only (no decode), usage in prompt tokens.
async fn embeddings(State(engine): State<MockEngine>, body: axum::body::Bytes) -> Response {
    let request: EmbeddingRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(parse) => return error(StatusCode::BAD_REQUEST, &parse.to_string(), "invalid_request"),
    };
    if let Some(response) = engine.unknown_model(&request.model) {
        return response;
    }
    let inputs: Vec<String> = match &request.input {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        _ => return error(StatusCode::BAD_REQUEST, "`input` must be a string or a list of strings", "invalid_request"),
    };
    let mut prompt_tokens = 0;
    let mut data = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let (tokens, running) = engine.prefill(input).await;
        drop(running);
        prompt_tokens += tokens;
        data.push(json!({ "object": "embedding", "index": index, "embedding": embedding_of(input) }));
    }
    engine.finish(prompt_tokens, 0);
    axum::Json(json!({ "object": "list", "data": data, "model": engine.model,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens } }))
    .into_response()
}

async fn completions(State(engine): State<MockEngine>, body: axum::body::Bytes) -> Response {
    let request: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(parse) => return error(StatusCode::BAD_REQUEST, &parse.to_string(), "invalid_request"),
    };
    if let Some(response) = engine.unknown_model(&request.model) {
        return response;
    }
    let prompt = text_of(&request.prompt);
    let max_tokens = request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if request.stream {
        let id = format!("cmpl-mock-{}-{max_tokens}", words(&prompt));
        let (model, last_id, last_model) = (engine.model.clone(), id.clone(), engine.model.clone());
        let chunk = move |word: &str| {
            json!({ "id": id, "object": "text_completion", "model": model,
                "choices": [{ "index": 0, "text": format!("{word} "), "finish_reason": null }] })
        };
        let last = move |prompt_tokens, completion_tokens| {
            json!({ "id": last_id, "object": "text_completion", "model": last_model,
                "choices": [{ "index": 0, "text": "", "finish_reason": "stop" }], "usage": usage(prompt_tokens, completion_tokens) })
        };
        return engine.stream(&prompt, max_tokens, chunk, last).await;
    }
    let (prompt_tokens, answer) = engine.generate(&prompt, max_tokens).await;
    let id = format!("cmpl-mock-{prompt_tokens}-{}", answer.len());
    axum::Json(json!({
        "id": id, "object": "text_completion", "model": engine.model,
        "choices": [{ "index": 0, "text": answer.join(" "), "finish_reason": "stop" }],
        "usage": usage(prompt_tokens, answer.len()),
    }))
    .into_response()
}

async fn metrics(State(engine): State<MockEngine>) -> impl IntoResponse {
    let counters = &engine.counters;
    let model = &engine.model;
    let text = format!(
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"{model}\"}} {}\n\
         # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"{model}\"}} {}\n\
         # TYPE vllm:request_success_total counter\nvllm:request_success_total{{model_name=\"{model}\"}} {}\n\
         # TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{{model_name=\"{model}\"}} {}\n\
         # TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{{model_name=\"{model}\"}} {}\n\
         # TYPE vllm:prefix_cache_queries_total counter\nvllm:prefix_cache_queries_total{{model_name=\"{model}\"}} {}\n\
         # TYPE vllm:prefix_cache_hits_total counter\nvllm:prefix_cache_hits_total{{model_name=\"{model}\"}} {}\n\
         # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"{model}\"}} {}\n",
        counters.running.load(Ordering::Relaxed),
        counters.waiting.load(Ordering::Relaxed),
        counters.requests.load(Ordering::Relaxed),
        counters.prompt_tokens.load(Ordering::Relaxed),
        counters.generation_tokens.load(Ordering::Relaxed),
        counters.cache_queries.load(Ordering::Relaxed),
        counters.cache_hits.load(Ordering::Relaxed),
        engine.kv_cache_usage(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
