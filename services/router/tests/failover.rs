//! A worker that goes away and comes back, seen through the router: while it is gone every
//! request is still answered (retried on the other worker before its first byte) and its breaker
//! opens; once it is back, the breaker's single trial succeeds and the worker takes requests
//! again. Two real HTTP upstreams on loopback that require the engine key, the router with an
//! API key on SQLite.

#![allow(clippy::unwrap_used)]

#[path = "../benches/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::response::IntoResponse as _;
use qm_runtime::Shutdown;
use serde_json::json;

/// An OpenAI-shaped upstream on `listener` counting the requests it answers.
fn serve(listener: tokio::net::TcpListener, served: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    let answer = json!({ "id": "x", "object": "chat.completion", "model": "m",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 } });
    let router = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            // The engine key the router must send (`QM_ENGINE_API_KEY`), as vLLM checks it.
            let authorized = headers.get("authorization").and_then(|value| value.to_str().ok())
                == Some(format!("Bearer {}", support::ENGINE_KEY).as_str());
            if authorized {
                served.fetch_add(1, Ordering::Relaxed);
            }
            let answer = answer.clone();
            async move {
                if authorized {
                    axum::Json(answer).into_response()
                } else {
                    axum::http::StatusCode::UNAUTHORIZED.into_response()
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() })
}

async fn bind(address: &str) -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let bound = listener.local_addr().unwrap();
    (listener, bound)
}

fn breakers_open(metrics: &str) -> usize {
    metrics.lines().filter(|line| line.starts_with("qm_router_breaker_open{") && line.ends_with(" 1")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_goes_opens_its_breaker_and_one_that_returns_closes_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (flaky_served, steady_served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (listener, flaky) = bind("127.0.0.1:0").await;
    let flaky_task = serve(listener, flaky_served.clone());
    let (listener, steady) = bind("127.0.0.1:0").await;
    let _steady_task = serve(listener, steady_served.clone());
    let directory = std::env::temp_dir().join(format!("qm-router-failover-{}", uuid::Uuid::new_v4().simple()));
    let shutdown = Shutdown::new();
    let (router, key) =
        support::qm_router(&directory, &[format!("http://{flaky}"), format!("http://{steady}")], &shutdown).await;
    let client = reqwest::Client::new();
    let ask = |index: usize| {
        let (client, router, key) = (client.clone(), router.clone(), key.clone());
        async move {
            // A new session each time: its key is placed afresh, so both workers are asked.
            let body = json!({ "model": "m", "messages": [], "max_tokens": 1, "user": format!("user-{index}") });
            client
                .post(format!("{router}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let metrics = || {
        let (client, router) = (client.clone(), router.clone());
        async move { client.get(format!("{router}/metrics")).send().await.unwrap().text().await.unwrap() }
    };

    // Gone: every request is still answered, and the breaker opens.
    flaky_task.abort();
    let _ = flaky_task.await;
    for index in 0..40 {
        assert_eq!(ask(index).await, 200, "request {index} was lost");
    }
    let opened = Instant::now();
    while breakers_open(&metrics().await) != 1 {
        assert!(opened.elapsed() < Duration::from_secs(5), "the breaker never opened:\n{}", metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back on the same address: after the open period, one trial, then it serves again.
    let (listener, _) = bind(&flaky.to_string()).await;
    let _back = serve(listener, flaky_served.clone());
    let returned = Instant::now();
    let mut index = 1_000;
    while flaky_served.load(Ordering::Relaxed) < 5 {
        assert_eq!(ask(index).await, 200);
        index += 1;
        assert!(returned.elapsed() < Duration::from_secs(15), "the worker never took requests again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = Instant::now();
    while breakers_open(&metrics().await) != 0 {
        assert!(closed.elapsed() < Duration::from_secs(3), "the breaker stayed open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(steady_served.load(Ordering::Relaxed) >= 40, "the steady worker carried the outage");
    shutdown.trigger();
    let _ = std::fs::remove_dir_all(&directory);
}
