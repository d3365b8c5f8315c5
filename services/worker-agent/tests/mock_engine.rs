//! The mock engine over HTTP, as an OpenAI client and a Prometheus scraper see it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use qm_worker_agent::mock_engine::MockEngine;
use serde_json::{Value, json};

async fn post(url: String, body: &Value) -> Value {
    reqwest::Client::new().post(url).json(body).send().await.unwrap().json().await.unwrap()
}

async fn serve() -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let engine = MockEngine::new("mock-model", Duration::ZERO);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, engine.router()).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test]
async fn chat_and_completions_are_deterministic_and_report_usage() {
    let base = serve().await;
    let client = reqwest::Client::new();
    let models: Value = client.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "mock-model");

    let request = json!({ "model": "mock-model", "messages": [{ "role": "user", "content": "how much does a token cost" }], "max_tokens": 5 });
    let first: Value =
        client.post(format!("{base}/v1/chat/completions")).json(&request).send().await.unwrap().json().await.unwrap();
    let second: Value =
        client.post(format!("{base}/v1/chat/completions")).json(&request).send().await.unwrap().json().await.unwrap();
    assert_eq!(first, second, "deterministic");
    assert_eq!(first["usage"], json!({ "prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11 }));
    assert_eq!(first["choices"][0]["message"]["content"].as_str().unwrap().split_whitespace().count(), 5);

    let completion = post(
        format!("{base}/v1/completions"),
        &json!({ "model": "mock-model", "prompt": "one two three", "max_tokens": 2 }),
    )
    .await;
    assert_eq!(completion["usage"]["total_tokens"], 5);

    let unknown = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({ "model": "gpt-9", "messages": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    let malformed = client.post(format!("{base}/v1/chat/completions")).body("{").send().await.unwrap();
    assert_eq!(malformed.status(), 400);

    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("vllm:num_requests_running{model_name=\"mock-model\"} 0"), "{metrics}");
    assert!(metrics.contains("vllm:generation_tokens_total{model_name=\"mock-model\"} 12"), "{metrics}");
}

#[tokio::test]
async fn streams_send_one_chunk_per_token_then_usage_then_done() {
    let base = serve().await;
    let request = json!({ "model": "mock-model", "messages": [{ "role": "user", "content": "hello there" }], "max_tokens": 3, "stream": true });
    let response =
        reqwest::Client::new().post(format!("{base}/v1/chat/completions")).json(&request).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("data: ")).collect();
    assert_eq!(data.len(), 5, "3 tokens, the final chunk, [DONE]: {text}");
    assert_eq!(data[4], "[DONE]");
    let last: Value = serde_json::from_str(data[3]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["completion_tokens"], 3);
    let streamed: String = data[..3]
        .iter()
        .map(|chunk| {
            serde_json::from_str::<Value>(chunk).unwrap()["choices"][0]["delta"]["content"].as_str().unwrap().to_owned()
        })
        .collect();
    let whole = post(
        format!("{base}/v1/chat/completions"),
        &json!({ "model": "mock-model", "messages": [{ "role": "user", "content": "hello there" }], "max_tokens": 3 }),
    )
    .await;
    assert_eq!(
        streamed.trim(),
        whole["choices"][0]["message"]["content"].as_str().unwrap(),
        "the stream says the same"
    );
}

/// The latency model: a repeated prefix is cached (its second prefill skips the cached blocks),
/// streams send each token as it is decoded, and `/health` waits out the cold start.
#[tokio::test]
async fn the_latency_model_caches_prefixes_decodes_token_by_token_and_starts_cold() {
    use qm_worker_agent::mock_engine::{CACHE_BLOCK, Latency};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let latency = Latency {
        prefill_per_token: Duration::from_millis(2),
        decode_per_token: Duration::from_millis(20),
        cold_start: Duration::from_millis(300),
        ..Latency::default()
    };
    let engine = MockEngine::with_latency("m", latency);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, engine.router()).await.unwrap() });
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{base}/health")).send().await.unwrap().status(), 503, "cold");

    // 64 shared words (4 blocks) then a different question each time.
    let system = (0..4 * CACHE_BLOCK).map(|index| format!("w{index}")).collect::<Vec<_>>().join(" ");
    let ask = |question: &str| {
        json!({ "model": "m", "max_tokens": 1,
        "messages": [{ "role": "system", "content": system }, { "role": "user", "content": question }] })
    };
    let timed = |body: Value| {
        let (client, url) = (client.clone(), format!("{base}/v1/chat/completions"));
        async move {
            let started = std::time::Instant::now();
            client.post(url).json(&body).send().await.unwrap().bytes().await.unwrap();
            started.elapsed()
        }
    };
    let cold = timed(ask("first question")).await;
    let warm = timed(ask("second question")).await;
    // 66 uncached tokens (~132 ms) the first time, 2 (~4 ms) the second; decode 20 ms both.
    assert!(cold >= Duration::from_millis(150), "{cold:?}");
    assert!(warm < cold / 2, "the shared prefix was cached: {warm:?} vs {cold:?}");
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("vllm:prefix_cache_hits_total{model_name=\"m\"} 64"), "{metrics}");

    // A stream's tokens arrive as they are decoded: the first long before the last.
    let mut streamed = ask("third question");
    streamed["stream"] = json!(true);
    streamed["max_tokens"] = json!(10);
    let started = std::time::Instant::now();
    let mut response = client.post(format!("{base}/v1/chat/completions")).json(&streamed).send().await.unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    while response.chunk().await.unwrap().is_some() {}
    let done_at = started.elapsed();
    assert!(done_at >= first_at + Duration::from_millis(150), "{first_at:?} then {done_at:?}");
    assert_eq!(client.get(format!("{base}/health")).send().await.unwrap().status(), 200, "warm by now");
}
