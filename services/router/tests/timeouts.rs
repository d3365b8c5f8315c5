//! A worker that is slow to answer or stalls mid-stream does not hold a client for ever: with
//! `QM_ROUTER_FIRST_BYTE_TIMEOUT_SECONDS=1` a worker that starts answering only after 5 s costs
//! the client a 502 after about a second (its only worker failed), and with
//! `QM_ROUTER_STREAM_IDLE_TIMEOUT_SECONDS=1` a stream that stalls after its first event is closed
//! after about a second, the event relayed. Real HTTP upstreams on loopback.

#![allow(clippy::unwrap_used)]

#[path = "../benches/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, Sse};
use qm_runtime::Shutdown;
use serde_json::json;

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

/// A router with 1 s timeouts in front of `worker`.
async fn router(worker: String, shutdown: &Shutdown) -> (String, String) {
    let directory = std::env::temp_dir().join(format!("qm-router-timeouts-{}", uuid::Uuid::new_v4().simple()));
    let replicas = support::Replicas {
        count: 1,
        limits: qm_store::KeyLimits::default(),
        redis: None,
        variables: vec![
            ("QM_ROUTER_FIRST_BYTE_TIMEOUT_SECONDS", "1".to_owned()),
            ("QM_ROUTER_STREAM_IDLE_TIMEOUT_SECONDS", "1".to_owned()),
        ],
    };
    let (mut urls, key) = support::qm_routers(&directory, &[worker], shutdown, &replicas).await;
    (urls.remove(0), key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_and_a_stalled_stream_are_cut_at_their_timeouts() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shutdown = Shutdown::new();
    let client = reqwest::Client::new();
    let chat =
        |stream: bool| json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }], "stream": stream });

    let late = serve(axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({ "choices": [] }))
        }),
    ))
    .await;
    let (url, key) = router(late, &shutdown).await;
    let asked = Instant::now();
    let response =
        client.post(format!("{url}/v1/chat/completions")).bearer_auth(&key).json(&chat(false)).send().await.unwrap();
    let waited = asked.elapsed();
    assert_eq!(response.status(), 502);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["error"]["code"], "upstream_error");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");

    let stalling = serve(axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            let first = futures::stream::once(async {
                Ok::<_, Infallible>(
                    Event::default().data(json!({ "choices": [{ "delta": { "content": "first" } }] }).to_string()),
                )
            });
            let stalled = futures::stream::once(async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, Infallible>(Event::default().data("[DONE]"))
            });
            Sse::new(futures::StreamExt::chain(first, stalled))
        }),
    ))
    .await;
    let (url, key) = router(stalling, &shutdown).await;
    let asked = Instant::now();
    let response =
        client.post(format!("{url}/v1/chat/completions")).bearer_auth(&key).json(&chat(true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap_or_default();
    let waited = asked.elapsed();
    assert!(body.contains("first"), "the event before the stall was relayed: {body}");
    assert!(!body.contains("[DONE]"), "{body}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed at the idle timeout: {waited:?}"
    );
    shutdown.trigger();
}
