//! The built-in mock inference engine: OpenAI-compatible (`/v1/models`, `/v1/chat/completions`
//! and `/v1/completions`, with and without `stream`), deterministic (the same request always gets
//! the same answer), reporting `usage` token counts, and exposing vLLM-style metrics
//! (`vllm:num_requests_running`, `vllm:num_requests_waiting`, token counters) on `/metrics`.
//! Tokens are whitespace-separated words, which is all a control plane needs to account for them.

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
}

#[derive(Clone)]
pub struct MockEngine {
    model: String,
    /// Delay per generated token, to make queues visible under load.
    token_delay: Duration,
    counters: Arc<Counters>,
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
    pub fn new(model: &str, token_delay: Duration) -> Self {
        Self { model: model.to_owned(), token_delay, counters: Arc::new(Counters::default()) }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/health", get(|| async { StatusCode::OK }))
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
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

    async fn generate(&self, prompt_tokens: usize, max_tokens: usize) -> Vec<&'static str> {
        self.counters.running.fetch_add(1, Ordering::Relaxed);
        if !self.token_delay.is_zero() {
            tokio::time::sleep(self.token_delay * u32::try_from(max_tokens).unwrap_or(u32::MAX)).await;
        }
        let answer = self.answer(prompt_tokens, max_tokens);
        self.counters.running.fetch_sub(1, Ordering::Relaxed);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        self.counters.generation_tokens.fetch_add(answer.len() as u64, Ordering::Relaxed);
        answer
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

/// A stream of chunks (one per word) then a final chunk with `finish_reason` and `usage`, then
/// `[DONE]`, as OpenAI-compatible servers send them.
fn stream(chunks: Vec<Value>, last: Value) -> Response {
    let events = chunks
        .into_iter()
        .chain(std::iter::once(last))
        .map(|chunk| Ok::<_, Infallible>(Event::default().data(chunk.to_string())))
        .chain(std::iter::once(Ok(Event::default().data("[DONE]"))));
    Sse::new(futures::stream::iter(events)).into_response()
}

async fn chat(State(engine): State<MockEngine>, body: axum::body::Bytes) -> Response {
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(parse) => return error(StatusCode::BAD_REQUEST, &parse.to_string(), "invalid_request"),
    };
    if let Some(response) = engine.unknown_model(&request.model) {
        return response;
    }
    let prompt_tokens: usize = request.messages.iter().map(|message| words(&text_of(&message.content))).sum();
    let answer = engine.generate(prompt_tokens, request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)).await;
    let id = format!("chatcmpl-mock-{prompt_tokens}-{}", answer.len());
    if request.stream {
        let chunks = answer
            .iter()
            .map(|word| {
                json!({ "id": id, "object": "chat.completion.chunk", "model": engine.model,
                "choices": [{ "index": 0, "delta": { "content": format!("{word} ") }, "finish_reason": null }] })
            })
            .collect();
        let last = json!({ "id": id, "object": "chat.completion.chunk", "model": engine.model,
            "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }], "usage": usage(prompt_tokens, answer.len()) });
        return stream(chunks, last);
    }
    axum::Json(json!({
        "id": id, "object": "chat.completion", "model": engine.model,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": answer.join(" ") }, "finish_reason": "stop" }],
        "usage": usage(prompt_tokens, answer.len()),
    }))
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
    let prompt_tokens = words(&text_of(&request.prompt));
    let answer = engine.generate(prompt_tokens, request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)).await;
    let id = format!("cmpl-mock-{prompt_tokens}-{}", answer.len());
    if request.stream {
        let chunks = answer
            .iter()
            .map(|word| {
                json!({ "id": id, "object": "text_completion", "model": engine.model,
                "choices": [{ "index": 0, "text": format!("{word} "), "finish_reason": null }] })
            })
            .collect();
        let last = json!({ "id": id, "object": "text_completion", "model": engine.model,
            "choices": [{ "index": 0, "text": "", "finish_reason": "stop" }], "usage": usage(prompt_tokens, answer.len()) });
        return stream(chunks, last);
    }
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
         # TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{{model_name=\"{model}\"}} {}\n",
        counters.running.load(Ordering::Relaxed),
        counters.waiting.load(Ordering::Relaxed),
        counters.requests.load(Ordering::Relaxed),
        counters.prompt_tokens.load(Ordering::Relaxed),
        counters.generation_tokens.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
