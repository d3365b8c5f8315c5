//! The agent side of the worker protocol (`POST /internal/worker/register`,
//! `/internal/worker/heartbeat`), spoken by `qm-worker-agent` on real instances and by the
//! simulated agent of `sim` instances, and the user data that carries its bootstrap token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qm_domain::InstanceId;
use qm_events::worker::{
    GpuInfo, GpuMetrics, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse, TokenUsage,
    WorkerStatus,
};

/// What an instance's boot configuration tells its agent. It travels as JSON inside a
/// `#cloud-config` document ([`BootConfig::render`]) whose values are all YAML-quoted, so no
/// value, whatever it contains, can add a key to either document; the agent reads the JSON file
/// cloud-init writes ([`BootConfig::PATH`], mode 0600) and nothing else of the user data. The
/// engine command is never part of it: it is the operator's setting on the image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    pub api_url: String,
    pub instance_id: String,
    pub bootstrap_token: String,
    pub model: String,
}

/// A YAML double-quoted scalar holding exactly `value`: printable ASCII as is, everything else
/// (line breaks, controls, quotes, non-ASCII) escaped.
pub fn yaml_quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for character in value.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            ' '..='~' => quoted.push(character),
            _ if u32::from(character) <= 0xFFFF => quoted.push_str(&format!("\\u{:04X}", u32::from(character))),
            _ => quoted.push_str(&format!("\\U{:08X}", u32::from(character))),
        }
    }
    quoted.push('"');
    quoted
}

/// Reads back a scalar written by [`yaml_quote`]; `None` for anything else.
fn yaml_unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut value = String::with_capacity(inner.len());
    let mut characters = inner.chars();
    while let Some(character) = characters.next() {
        if character == '"' {
            return None;
        }
        if character != '\\' {
            value.push(character);
            continue;
        }
        let digits = match characters.next()? {
            '"' => {
                value.push('"');
                continue;
            }
            '\\' => {
                value.push('\\');
                continue;
            }
            'u' => 4,
            'U' => 8,
            _ => return None,
        };
        let hex: String = characters.by_ref().take(digits).collect();
        if hex.len() != digits {
            return None;
        }
        value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
    }
    Some(value)
}

impl BootConfig {
    /// Where cloud-init writes the agent's configuration on an instance.
    pub const PATH: &'static str = "/etc/quartermaster/agent.json";

    /// The configuration as the agent reads it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// # Errors
    /// When `text` is not exactly this document (unknown or missing keys included).
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|error| format!("the agent configuration is invalid: {error}"))
    }

    /// The user data handed to an instance: a `#cloud-config` that writes the configuration.
    pub fn render(&self) -> String {
        format!(
            "#cloud-config\n# Quartermaster worker boot configuration. Generated: every value is quoted.\nwrite_files:\n  - path: {}\n    permissions: \"0600\"\n    owner: \"root:root\"\n    content: {}\n",
            yaml_quote(Self::PATH),
            yaml_quote(&self.to_json()),
        )
    }

    /// Reads user data written by [`BootConfig::render`]; `None` for anything else.
    pub fn parse(user_data: &str) -> Option<Self> {
        if !user_data.starts_with("#cloud-config\n") {
            return None;
        }
        let content = user_data.lines().find_map(|line| line.strip_prefix("    content: "))?;
        Self::from_json(&yaml_unquote(content)?).ok()
    }
}

/// What an agent reports in each heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentStatus {
    pub status: WorkerStatus,
    pub queue_depth: u32,
    pub in_flight: u32,
    /// Empty without NVML.
    pub gpus: Vec<GpuMetrics>,
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
        Self { status: WorkerStatus::Ready, queue_depth: 0, in_flight: 0, gpus: Vec::new(), tokens: None }
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
    /// Empty without NVML.
    pub gpus: Vec<GpuInfo>,
}

/// Runs the simulated agent of a `sim` instance until `gone` is set.
pub async fn run(config: BootConfig, boot_delay: Duration, gone: Arc<AtomicBool>) {
    tokio::time::sleep(boot_delay).await;
    let info = AgentInfo {
        engine_url: "http://sim-engine.invalid:8000".into(),
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
    let Ok(instance_id) = config.instance_id.parse::<InstanceId>() else {
        tracing::error!(instance = %config.instance_id, "agent: the boot configuration's instance id is not an id");
        return;
    };
    let registration = RegisterRequest {
        instance_id,
        bootstrap_token: config.bootstrap_token.clone(),
        model: config.model.clone(),
        engine_url: info.engine_url,
        agent_version: info.agent_version,
        gpus: info.gpus,
    };
    let (token, mut interval) = loop {
        if gone.load(Ordering::Relaxed) {
            return;
        }
        let response =
            client.post(format!("{}/internal/worker/register", config.api_url)).json(&registration).send().await;
        match response {
            Ok(response) if response.status().is_success() => {
                let Ok(registered) = response.json::<RegisterResponse>().await else {
                    tracing::warn!(instance = %config.instance_id, "agent: the registration answer is not understood");
                    return;
                };
                break (registered.worker_token, Duration::from_secs(registered.heartbeat_interval_seconds.max(1)));
            }
            // Rate limited (many agents registering at once from one address, as in `qm dev`):
            // wait and try again.
            Ok(response) if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                let seconds = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<u64>().ok())
                    .unwrap_or(1);
                // The limiter counts registrations in flight as attempts, so its Retry-After can
                // be far longer than the wait for a slot: retry within a few seconds, spread out.
                let wait = Duration::from_millis(rand::random_range(500..=seconds.clamp(1, 5) * 1000));
                tokio::time::sleep(wait).await;
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
        let heartbeat = HeartbeatRequest {
            instance_id,
            status: status.status,
            queue_depth: status.queue_depth,
            in_flight: status.in_flight,
            gpus: status.gpus,
            usage: usage.map(|usage| TokenUsage { prompt_tokens: usage.prompt, completion_tokens: usage.completion }),
        };
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
            if let Ok(answer) = response.json::<HeartbeatResponse>().await {
                interval = Duration::from_secs(answer.heartbeat_interval_seconds.max(1));
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
        assert_eq!(
            yaml_unquote(&yaml_quote("a\"b\\c\nd\u{7f}\u{1F600}")).as_deref(),
            Some("a\"b\\c\nd\u{7f}\u{1F600}")
        );
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
