//! Per-key rate limits: requests per minute and tokens per minute, as token buckets that hold a
//! minute's worth and refill continuously. A request takes one request; it is admitted while the
//! key's token bucket is not empty, and the tokens of its answer are taken afterwards (the bucket
//! may go below zero, which holds the next requests back until it refills). Refused requests get
//! 429 with `Retry-After`, in OpenAI's shape.
//!
//! The buckets live in this process, or in Redis (`QM_ROUTER_LIMITS_URL`) so that every router
//! replica draws from the same ones: two replicas together admit what one limit allows. Redis
//! does the arithmetic itself (one script call, its own clock), so replicas never race. When
//! Redis cannot be reached the request is admitted and the failure logged and counted: a limiter
//! outage does not take inference down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::openai::ApiError;

/// Which bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Requests,
    Tokens,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
        }
    }
}

/// What a bucket is asked.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Take {
    /// Take `n` if there are `n`.
    Exactly(f64),
    /// Admit if positive; take nothing.
    Positive,
    /// Take `n` whatever is left.
    Debit(f64),
}

/// The level after refilling to now, whether the ask is granted, and the level after it.
fn apply(level: f64, elapsed_s: f64, limit: f64, take: Take) -> (bool, f64) {
    let level = (level + elapsed_s * limit / 60.0).min(limit);
    match take {
        Take::Exactly(n) if level >= n => (true, level - n),
        Take::Exactly(_) => (false, level),
        Take::Positive => (level > 0.0, level),
        Take::Debit(n) => (true, level - n),
    }
}

/// Seconds until a bucket at `level` holds `wanted`.
fn wait_s(level: f64, wanted: f64, limit: f64) -> u64 {
    let seconds = ((wanted - level) * 60.0 / limit).ceil();
    if seconds.is_finite() && seconds >= 1.0 {
        // Whole seconds, bounded to a minute.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = seconds.min(60.0) as u64;
        whole
    } else {
        1
    }
}

/// Refill, take and report in one atomic step on the Redis server (`TIME` is its clock).
const SCRIPT: &str = r"
local limit = tonumber(ARGV[1])
local mode = ARGV[2]
local n = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(state[1]) or limit
local at = tonumber(state[2]) or now
level = math.min(limit, level + math.max(0, now - at) * limit / 60)
local granted = 0
if mode == 'exactly' then
  if level >= n then level = level - n; granted = 1 end
elseif mode == 'positive' then
  if level > 0 then granted = 1 end
else
  level = level - n; granted = 1
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 180)
return {granted, tostring(level)}
";

pub enum Limiter {
    Local(Mutex<HashMap<(uuid::Uuid, Kind), (f64, Instant)>>),
    Redis { connection: redis::aio::ConnectionManager, prefix: String },
}

impl Limiter {
    pub fn local() -> Self {
        Self::Local(Mutex::new(HashMap::new()))
    }

    /// Buckets in Redis at `url`, under `qm:router:limits:`.
    ///
    /// # Errors
    /// When the URL is not a Redis URL.
    pub fn redis(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|error| anyhow::anyhow!("QM_ROUTER_LIMITS_URL: {error}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_millis(500)));
        let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| anyhow::anyhow!("QM_ROUTER_LIMITS_URL: {error}"))?;
        Ok(Self::Redis { connection, prefix: "qm:router:limits:".into() })
    }

    /// `(granted, level after)`.
    async fn ask(&self, key: uuid::Uuid, kind: Kind, limit: i32, take: Take) -> (bool, f64) {
        let limit = f64::from(limit);
        match self {
            Self::Local(buckets) => {
                let mut buckets = buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let now = Instant::now();
                let (level, at) = buckets.get(&(key, kind)).copied().unwrap_or((limit, now));
                let (granted, level) = apply(level, now.duration_since(at).as_secs_f64(), limit, take);
                buckets.insert((key, kind), (level, now));
                (granted, level)
            }
            Self::Redis { connection, prefix } => {
                let (mode, n) = match take {
                    Take::Exactly(n) => ("exactly", n),
                    Take::Positive => ("positive", 0.0),
                    Take::Debit(n) => ("debit", n),
                };
                let mut connection = connection.clone();
                let answer: redis::RedisResult<(i64, String)> = redis::cmd("EVAL")
                    .arg(SCRIPT)
                    .arg(1)
                    .arg(format!("{prefix}{key}:{}", kind.name()))
                    .arg(limit)
                    .arg(mode)
                    .arg(n)
                    .query_async(&mut connection)
                    .await;
                match answer {
                    Ok((granted, level)) => (granted == 1, level.parse().unwrap_or(0.0)),
                    Err(error) => {
                        tracing::warn!(%error, "the rate limiter's Redis failed; admitting");
                        (true, limit)
                    }
                }
            }
        }
    }

    /// Admits a request of `key` under its limits, or says when to come back.
    ///
    /// # Errors
    /// 429 `rate_limit_exceeded` with `Retry-After`.
    pub async fn admit(&self, key: uuid::Uuid, limits: &qm_store::KeyLimits) -> Result<(), ApiError> {
        if let Some(limit) = limits.tokens_per_minute {
            let (granted, level) = self.ask(key, Kind::Tokens, limit, Take::Positive).await;
            if !granted {
                let wait = wait_s(level, 1.0, f64::from(limit));
                return Err(ApiError::rate_limited(format!("tokens per minute ({limit})"), wait));
            }
        }
        if let Some(limit) = limits.requests_per_minute {
            let (granted, level) = self.ask(key, Kind::Requests, limit, Take::Exactly(1.0)).await;
            if !granted {
                let wait = wait_s(level, 1.0, f64::from(limit));
                return Err(ApiError::rate_limited(format!("requests per minute ({limit})"), wait));
            }
        }
        Ok(())
    }

    /// Takes the tokens an answer used from the key's bucket.
    pub async fn spend(&self, key: uuid::Uuid, limits: &qm_store::KeyLimits, tokens: i64) {
        if let Some(limit) = limits.tokens_per_minute
            && tokens > 0
        {
            #[allow(clippy::cast_precision_loss)]
            let tokens = tokens as f64;
            self.ask(key, Kind::Tokens, limit, Take::Debit(tokens)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_over_a_minute_and_say_when_to_return() {
        // 60 a minute: one a second.
        assert_eq!(apply(0.0, 1.0, 60.0, Take::Exactly(1.0)), (true, 0.0));
        assert_eq!(apply(0.0, 0.5, 60.0, Take::Exactly(1.0)), (false, 0.5));
        assert_eq!(apply(50.0, 600.0, 60.0, Take::Positive), (true, 60.0), "never above a minute's worth");
        assert_eq!(apply(10.0, 0.0, 60.0, Take::Debit(25.0)), (true, -15.0));
        assert_eq!(apply(-15.0, 0.0, 60.0, Take::Positive), (false, -15.0));
        assert_eq!(wait_s(0.5, 1.0, 60.0), 1);
        assert_eq!(wait_s(-15.0, 1.0, 60.0), 16);
        assert_eq!(wait_s(-1e9, 1.0, 60.0), 60);
    }
}
