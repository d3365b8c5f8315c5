//! A client that goes away in the middle of a stream takes the upstream request with it: the
//! router drops its connection to the engine, which stops generating (vLLM aborts a request
//! whose connection closes). The upstream here streams an event every 50 ms for 10 s and notes
//! when its stream is dropped.

#![allow(clippy::unwrap_used)]

#[path = "../benches/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::response::sse::{Event, Sse};
use futures::StreamExt as _;
use qm_runtime::Shutdown;
use serde_json::json;

/// Sets its flag when the stream holding it is dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_cancels_the_upstream_request() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (dropped, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let upstream = {
        let (dropped, sent) = (dropped.clone(), sent.clone());
        axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                let guard = Dropped(dropped.clone());
                let sent = sent.clone();
                let events = futures::stream::unfold((0_usize, guard), move |(index, guard)| {
                    let sent = sent.clone();
                    async move {
                        if index >= 200 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        sent.fetch_add(1, Ordering::SeqCst);
                        let chunk = json!({ "choices": [{ "index": 0, "delta": { "content": "x " } }] });
                        Some((Ok::<_, Infallible>(Event::default().data(chunk.to_string())), (index + 1, guard)))
                    }
                });
                async move { Sse::new(events) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let directory = std::env::temp_dir().join(format!("qm-router-disconnect-{}", uuid::Uuid::new_v4().simple()));
    let shutdown = Shutdown::new();
    let (router, key) = support::qm_router(&directory, &[worker], &shutdown).await;

    let body = json!({ "model": "m", "stream": true, "messages": [{ "role": "user", "content": "talk for a while" }] });
    let response = reqwest::Client::new()
        .post(format!("{router}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    drop(stream);
    let left = Instant::now();
    while !dropped.load(Ordering::SeqCst) {
        assert!(left.elapsed() < Duration::from_secs(3), "the upstream kept generating for a client that left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_cancel = sent.load(Ordering::SeqCst);
    assert!(at_cancel < 100, "cancelled early: {at_cancel} of 200 events were generated");
    shutdown.trigger();
    let _ = std::fs::remove_dir_all(&directory);
}
