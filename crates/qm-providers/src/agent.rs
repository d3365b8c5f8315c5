//! The agent side of the worker protocol (`POST /internal/worker/register`,
//! `/internal/worker/heartbeat`), spoken by `qm-worker-agent` on real instances and by the
//! simulated agent of `sim` instances, and the user data that carries its bootstrap token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What an instance's user data tells its agent, as `KEY=value` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    pub api_url: String,
    pub instance_id: String,
    pub bootstrap_token: String,
    pub model: String,
}

impl BootConfig {
    /// The user data handed to an instance.
    pub fn render(&self) -> String {
        format!(
            "QM_API_URL={}\nQM_INSTANCE_ID={}\nQM_BOOTSTRAP_TOKEN={}\nQM_MODEL={}\n",
            self.api_url, self.instance_id, self.bootstrap_token, self.model
        )
    }

    /// Reads user data written by [`BootConfig::render`]; `None` when a value is missing.
    pub fn parse(user_data: &str) -> Option<Self> {
        let value = |key: &str| {
            user_data
                .lines()
                .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
                .map(str::to_owned)
        };
        Some(Self {
            api_url: value("QM_API_URL")?,
            instance_id: value("QM_INSTANCE_ID")?,
            bootstrap_token: value("QM_BOOTSTRAP_TOKEN")?,
            model: value("QM_MODEL").unwrap_or_default(),
        })
    }
}

/// What an agent reports in each heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentStatus {
    /// `starting`, `ready`, `not_ready` or `draining`.
    pub status: &'static str,
    pub queue_depth: u32,
    pub in_flight: u32,
    /// GPU metrics as the heartbeat carries them (empty without NVML).
    pub gpus: Vec<serde_json::Value>,
    /// The engine's cumulative token counters, when it exposes them.
    pub tokens: Option<TokenCounters>,
}

/// Cumulative token counters (vLLM's `vllm:prompt_tokens_total` and
/// `vllm:generation_tokens_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounters {
    pub prompt: u64,
    pub completion: u64,
}

impl TokenCounters {
    /// Tokens served since `reported`; a counter that went down (the engine restarted) counts
    /// from zero.
    pub fn since(self, reported: Self) -> Self {
        let delta = |now: u64, before: u64| if now >= before { now - before } else { now };
        Self { prompt: delta(self.prompt, reported.prompt), completion: delta(self.completion, reported.completion) }
    }
}

impl AgentStatus {
    pub fn ready() -> Self {
        Self { status: "ready", queue_depth: 0, in_flight: 0, gpus: Vec::new(), tokens: None }
    }
}

/// Where an agent's status comes from: always ready for a simulated one, the engine for a real one.
#[async_trait::async_trait]
pub trait StatusSource: Send + Sync {
    async fn status(&self) -> AgentStatus;
}

struct AlwaysReady;

#[async_trait::async_trait]
impl StatusSource for AlwaysReady {
    async fn status(&self) -> AgentStatus {
        AgentStatus::ready()
    }
}

/// Identity an agent registers with.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub engine_url: String,
    pub agent_version: String,
    /// The GPUs as registration carries them (index, name, memory_total_mb); empty without NVML.
    pub gpus: Vec<serde_json::Value>,
}

/// Runs the simulated agent of a `sim` instance until `gone` is set.
pub async fn run(config: BootConfig, boot_delay: Duration, gone: Arc<AtomicBool>) {
    tokio::time::sleep(boot_delay).await;
    let info = AgentInfo {
        engine_url: "sim://engine".into(),
        agent_version: concat!("sim-", env!("CARGO_PKG_VERSION")).into(),
        gpus: Vec::new(),
    };
    speak(config, info, Arc::new(AlwaysReady), gone).await;
}

/// The protocol, until `gone` is set: register (retrying while the api is unreachable), then
/// heartbeat what `source` reports, at the interval the api asks for. Returns early when the api
/// refuses the agent (a wrong, reused or revoked token).
pub async fn speak(config: BootConfig, info: AgentInfo, source: Arc<dyn StatusSource>, gone: Arc<AtomicBool>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(10)).build() else { return };
    let registration = serde_json::json!({
        "instance_id": config.instance_id, "bootstrap_token": config.bootstrap_token, "model": config.model,
        "engine_url": info.engine_url, "agent_version": info.agent_version, "gpus": info.gpus,
    });
    let (token, mut interval) = loop {
        if gone.load(Ordering::Relaxed) {
            return;
        }
        let response =
            client.post(format!("{}/internal/worker/register", config.api_url)).json(&registration).send().await;
        match response {
            Ok(response) if response.status().is_success() => {
                let Ok(body) = response.json::<serde_json::Value>().await else { return };
                let token = body["worker_token"].as_str().unwrap_or_default().to_owned();
                let interval = Duration::from_secs(body["heartbeat_interval_seconds"].as_u64().unwrap_or(5).max(1));
                break (token, interval);
            }
            Ok(response) if response.status().is_client_error() => {
                tracing::warn!(instance = %config.instance_id, status = %response.status(), "agent: registration refused");
                return;
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    tracing::info!(instance = %config.instance_id, "agent: registered");
    // Token counters as last acknowledged by the api: a heartbeat that fails is sent again with
    // the tokens it carried, so none are lost or counted twice.
    let mut reported = TokenCounters::default();
    while !gone.load(Ordering::Relaxed) {
        let status = source.status().await;
        let usage = status.tokens.map(|counters| counters.since(reported));
        let heartbeat = serde_json::json!({
            "instance_id": config.instance_id, "status": status.status, "queue_depth": status.queue_depth,
            "in_flight": status.in_flight, "gpus": status.gpus,
            "usage": usage.map(|usage| serde_json::json!({ "prompt_tokens": usage.prompt, "completion_tokens": usage.completion })),
        });
        let sent = client
            .post(format!("{}/internal/worker/heartbeat", config.api_url))
            .bearer_auth(&token)
            .json(&heartbeat)
            .send()
            .await;
        if let Ok(response) = sent {
            if response.status() == reqwest::StatusCode::UNAUTHORIZED
                || response.status() == reqwest::StatusCode::FORBIDDEN
            {
                tracing::warn!(instance = %config.instance_id, status = %response.status(), "agent: heartbeat refused; stopping");
                return;
            }
            if response.status().is_success()
                && let Some(counters) = status.tokens
            {
                reported = counters;
            }
            if let Ok(body) = response.json::<serde_json::Value>().await
                && let Some(seconds) = body["heartbeat_interval_seconds"].as_u64()
            {
                interval = Duration::from_secs(seconds.max(1));
            }
        }
        // Short naps, so that a stop is noticed promptly.
        let mut slept = Duration::ZERO;
        while slept < interval && !gone.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            slept += Duration::from_millis(100);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_config_round_trips_through_user_data() {
        let config = BootConfig {
            api_url: "http://127.0.0.1:8003".into(),
            instance_id: "01a2-x".into(),
            bootstrap_token: "qmb_abc".into(),
            model: "m".into(),
        };
        assert_eq!(BootConfig::parse(&config.render()), Some(config));
        assert_eq!(BootConfig::parse("QM_API_URL=x\n"), None);
    }

    #[test]
    fn token_deltas_survive_an_engine_restart() {
        let before = TokenCounters { prompt: 100, completion: 40 };
        assert_eq!(
            TokenCounters { prompt: 130, completion: 50 }.since(before),
            TokenCounters { prompt: 30, completion: 10 }
        );
        assert_eq!(
            TokenCounters { prompt: 7, completion: 3 }.since(before),
            TokenCounters { prompt: 7, completion: 3 }
        );
    }
}
