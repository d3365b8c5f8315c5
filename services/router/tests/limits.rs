//! Rate limits shared through Redis: two limiters on one Redis server, and two router replicas
//! serving HTTP, together admit exactly what one limit allows, and the token bucket holds
//! requests back once an answer's tokens have spent it. Needs Redis on `QM_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`; `make services` starts it).

#![allow(clippy::unwrap_used)]

#[path = "../benches/support/mod.rs"]
mod support;

use qm_router::limits::Limiter;
use qm_store::KeyLimits;

fn redis_url() -> String {
    std::env::var("QM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn two_replicas_admit_together_what_one_limit_allows() {
    let (first, second) = (Limiter::redis(&redis_url()).unwrap(), Limiter::redis(&redis_url()).unwrap());
    let key = uuid::Uuid::new_v4();
    let limits = KeyLimits { requests_per_minute: Some(10), ..KeyLimits::default() };
    let mut admitted = 0;
    let mut refused = None;
    for round in 0..20 {
        let replica = if round % 2 == 0 { &first } else { &second };
        match replica.admit(key, &limits).await {
            Ok(()) => admitted += 1,
            Err(error) => refused = Some(error),
        }
    }
    // A minute's worth is 10; the refill during the test is a fraction of one request.
    assert_eq!(admitted, 10, "10 a minute, whichever replica is asked");
    let refused = refused.unwrap();
    assert_eq!((refused.status.as_u16(), refused.code), (429, "rate_limit_exceeded"));
    assert!(refused.retry_after.is_some_and(|seconds| (1..=6).contains(&seconds)), "{refused:?}");
}

#[tokio::test]
async fn spent_tokens_hold_the_next_requests_back_on_every_replica() {
    let (first, second) = (Limiter::redis(&redis_url()).unwrap(), Limiter::redis(&redis_url()).unwrap());
    let key = uuid::Uuid::new_v4();
    let limits = KeyLimits { tokens_per_minute: Some(600), ..KeyLimits::default() };
    first.admit(key, &limits).await.unwrap();
    first.spend(key, &limits, 900).await;
    let refused = second.admit(key, &limits).await.unwrap_err();
    assert_eq!(refused.code, "rate_limit_exceeded");
    // 300 below zero at 10 a second: back in about 30 s.
    assert!(refused.retry_after.is_some_and(|seconds| (29..=31).contains(&seconds)), "{refused:?}");
}

#[tokio::test]
async fn in_process_buckets_hold_the_same_limits() {
    let limiter = Limiter::local();
    let key = uuid::Uuid::new_v4();
    let limits = KeyLimits { requests_per_minute: Some(3), ..KeyLimits::default() };
    for _ in 0..3 {
        limiter.admit(key, &limits).await.unwrap();
    }
    assert_eq!(limiter.admit(key, &limits).await.unwrap_err().code, "rate_limit_exceeded");
    // Another key has its own bucket.
    limiter.admit(uuid::Uuid::new_v4(), &limits).await.unwrap();
}

/// Two router replicas (each its own database pool and limiter) behind one key of 10 requests a
/// minute, sharing their buckets through Redis: 20 requests alternating between them, 10
/// admitted in all, the rest 429 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_router_replicas_together_admit_one_limit() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let answer = serde_json::json!({ "id": "x", "object": "chat.completion", "model": "m",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 } });
    let upstream = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(move || async move { axum::Json(answer) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let directory = std::env::temp_dir().join(format!("qm-router-replicas-{}", uuid::Uuid::new_v4().simple()));
    let shutdown = qm_runtime::Shutdown::new();
    let replicas = support::Replicas {
        count: 2,
        limits: KeyLimits { requests_per_minute: Some(10), ..KeyLimits::default() },
        redis: Some(redis_url()),
        variables: Vec::new(),
    };
    let (routers, key) = support::qm_routers(&directory, &[worker], &shutdown, &replicas).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for round in 0..20 {
        let body = serde_json::json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] });
        let response = client
            .post(format!("{}/v1/chat/completions", routers[round % 2]))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|status| **status == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| **status == 429).count(), 10, "{statuses:?}");
    shutdown.trigger();
    let _ = std::fs::remove_dir_all(&directory);
}
