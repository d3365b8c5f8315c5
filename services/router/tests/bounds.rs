//! What a client or a worker can push through the router is bounded, and sessions stick: a
//! request body over 8 MiB is refused with OpenAI's `request_too_large` before any worker is
//! asked, while a 2 MiB prompt (past the 1 MiB other services take) is served; a worker answering more than 64 MiB gets the client a 502 rather than the router's
//! memory; requests of one session (`x-session-id`, or the `user` field) all reach one worker.
//! Two real HTTP upstreams on loopback, the router with an API key on SQLite.

#![allow(clippy::unwrap_used)]

#[path = "../benches/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::response::IntoResponse as _;
use qm_runtime::Shutdown;
use serde_json::{Value, json};

/// An upstream counting what it answers; a request whose last message says `huge` gets 65 MiB.
async fn upstream(served: Arc<AtomicUsize>) -> String {
    let router = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: axum::Json<Value>| {
            served.fetch_add(1, Ordering::SeqCst);
            async move {
                if body.0.to_string().contains("huge") {
                    let content = "x".repeat(65 << 20);
                    return axum::Json(json!({ "choices": [{ "message": { "content": content } }] })).into_response();
                }
                axum::Json(json!({ "id": "x", "object": "chat.completion", "model": "m",
                    "choices": [{ "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }],
                    "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 } }))
                .into_response()
            }
        }),
    );
    // Engines take long prompts (axum's own 2 MB default would refuse them).
    let router = router.layer(axum::extract::DefaultBodyLimit::disable());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_answers_are_bounded_and_sessions_stick_to_a_worker() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let counters = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let workers = [upstream(counters[0].clone()).await, upstream(counters[1].clone()).await];
    let directory = std::env::temp_dir().join(format!("qm-router-bounds-{}", uuid::Uuid::new_v4().simple()));
    let shutdown = Shutdown::new();
    let (router, key) = support::qm_router(&directory, &workers, &shutdown).await;
    let client = reqwest::Client::new();
    let served = || counters.iter().map(|counter| counter.load(Ordering::SeqCst)).collect::<Vec<_>>();
    let chat = |content: &str| json!({ "model": "m", "messages": [{ "role": "user", "content": content }] });

    // Over 8 MiB: refused, and no worker asked.
    let oversized = chat(&"y".repeat(9 << 20));
    let response =
        client.post(format!("{router}/v1/chat/completions")).bearer_auth(&key).json(&oversized).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "request_too_large", "{error}");
    assert_eq!(served(), [0, 0], "no worker saw it");

    // A long prompt (2 MiB, over the other services' 1 MiB bound) is served.
    let long = chat(&"z ".repeat(1 << 20));
    let response =
        client.post(format!("{router}/v1/chat/completions")).bearer_auth(&key).json(&long).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // A worker answering over 64 MiB: 502 in OpenAI's shape.
    let response = client
        .post(format!("{router}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat("huge"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "upstream_error", "{error}");

    // Sessions: by header, then by `user`; each sticks to one worker while prompts differ.
    for (header, user) in [(Some("session-a"), None), (None, Some("user-b"))] {
        let before = served();
        for index in 0..20 {
            let mut body = chat(&format!("question {index}"));
            if let Some(user) = user {
                body["user"] = json!(user);
            }
            let mut request = client.post(format!("{router}/v1/chat/completions")).bearer_auth(&key).json(&body);
            if let Some(header) = header {
                request = request.header("x-session-id", header);
            }
            assert_eq!(request.send().await.unwrap().status(), 200);
        }
        let after = served();
        let moved: Vec<usize> = after.iter().zip(&before).map(|(after, before)| after - before).collect();
        assert!(moved.contains(&20) && moved.contains(&0), "one worker took the whole session: {moved:?}");
    }
    // Without a session, different prompts spread over both workers.
    let before = served();
    for index in 0..40 {
        let body = chat(&format!("a different prompt {index}"));
        client.post(format!("{router}/v1/chat/completions")).bearer_auth(&key).json(&body).send().await.unwrap();
    }
    let after = served();
    assert!(after.iter().zip(&before).all(|(after, before)| after > before), "both workers served: {after:?}");
    shutdown.trigger();
    let _ = std::fs::remove_dir_all(&directory);
}
