//! Rate limits shared through Redis: two limiters on one Redis server (as two router replicas
//! are) together admit exactly what one limit allows, and the token bucket holds requests back
//! once an answer's tokens have spent it. Needs Redis on `QM_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`; `make services` starts it).

#![allow(clippy::unwrap_used)]

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
