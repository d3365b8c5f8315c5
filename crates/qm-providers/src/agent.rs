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
    /// The engine's arguments after the model (a pool's engine settings), validated by the api.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_args: Vec<String>,
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

    /// The user data handed to an instance: a `#cloud-config` that writes this configuration
    /// (0600), the agent's settings, the engine's model, static start scripts and systemd units,
    /// then enables the units. Every value is a YAML double-quoted scalar, so no value, whatever
    /// it contains, adds a key; the model reaches the engine as one argument read from a file,
    /// never through a shell line or a unit file.
    pub fn render(&self, plan: &BootPlan) -> String {
        let mut files = vec![
            (Self::PATH.to_owned(), "0600", self.to_json()),
            (AGENT_ENV_PATH.to_owned(), "0644", plan.agent_environment()),
            (format!("{SCRIPT_DIR}/run-agent"), "0755", RUN_AGENT.to_owned()),
            ("/etc/systemd/system/qm-agent.service".to_owned(), "0644", AGENT_UNIT.to_owned()),
        ];
        let mut units = Vec::new();
        if let Some(image) = &plan.engine_image {
            files.push((MODEL_PATH.to_owned(), "0644", format!("{}\n", self.model)));
            let args: String = self.engine_args.iter().map(|arg| format!("{arg}\n")).collect();
            files.push((ENGINE_ARGS_PATH.to_owned(), "0644", args));
            files.push((ENGINE_ENV_PATH.to_owned(), "0600", plan.engine_environment(image)));
            files.push((format!("{SCRIPT_DIR}/run-engine"), "0755", RUN_ENGINE.to_owned()));
            files.push(("/etc/systemd/system/qm-engine.service".to_owned(), "0644", ENGINE_UNIT.to_owned()));
            units.push("qm-engine.service");
        }
        units.push("qm-agent.service");
        let mut document = String::from(
            "#cloud-config\n# Quartermaster worker boot configuration. Generated: every value is quoted.\nwrite_files:\n",
        );
        for (path, permissions, content) in files {
            document.push_str(&format!(
                "  - path: {}\n    permissions: {}\n    owner: \"root:root\"\n    content: {}\n",
                yaml_quote(&path),
                yaml_quote(permissions),
                yaml_quote(&content),
            ));
        }
        document.push_str("runcmd:\n  - [\"systemctl\", \"daemon-reload\"]\n  - [\"systemctl\", \"enable\", \"--now\"");
        for unit in units {
            document.push_str(&format!(", {}", yaml_quote(unit)));
        }
        document.push_str("]\n");
        document
    }

    /// Reads user data written by [`BootConfig::render`]; `None` for anything else.
    pub fn parse(user_data: &str) -> Option<Self> {
        if !user_data.starts_with("#cloud-config\n") {
            return None;
        }
        let path_line = format!("  - path: {}", yaml_quote(Self::PATH));
        let mut lines = user_data.lines().skip_while(|line| *line != path_line);
        let content = lines.find_map(|line| line.strip_prefix("    content: "))?;
        Self::from_json(&yaml_unquote(content)?).ok()
    }
}

const AGENT_ENV_PATH: &str = "/etc/quartermaster/agent.env";
const ENGINE_ENV_PATH: &str = "/etc/quartermaster/engine.env";
const MODEL_PATH: &str = "/etc/quartermaster/model";
const ENGINE_ARGS_PATH: &str = "/etc/quartermaster/engine.args";
const SCRIPT_DIR: &str = "/usr/local/lib/quartermaster";

/// Starts the agent: the download the api serves, checked against its SHA-256 before it runs
/// (and again at each start), or `qm-worker-agent` of the container image.
const RUN_AGENT: &str = r#"#!/bin/sh
# Quartermaster worker agent, as /etc/quartermaster/agent.env says: QM_AGENT_URL and
# QM_AGENT_SHA256 (a download checked before it runs), else the image QM_AGENT_IMAGE.
set -eu
if [ -n "${QM_AGENT_URL:-}" ]; then
  binary=/usr/local/bin/qm-worker-agent
  if ! echo "$QM_AGENT_SHA256  $binary" | sha256sum -c --status - 2>/dev/null; then
    partial=$(mktemp /usr/local/bin/.qm-worker-agent.XXXXXX)
    curl -fsSL --retry 10 --retry-connrefused --max-time 600 -o "$partial" "$QM_AGENT_URL"
    if ! echo "$QM_AGENT_SHA256  $partial" | sha256sum -c --status -; then
      rm -f "$partial"
      echo "qm-worker-agent: the download does not match QM_AGENT_SHA256" >&2
      exit 1
    fi
    chmod 0755 "$partial"
    mv "$partial" "$binary"
  fi
  exec "$binary"
fi
docker rm -f qm-agent >/dev/null 2>&1 || true
if [ -e /dev/nvidia0 ]; then
  exec docker run --rm --name qm-agent --network host --user 0 --gpus all \
    --env-file /etc/quartermaster/agent.env -v /etc/quartermaster:/etc/quartermaster:ro \
    "$QM_AGENT_IMAGE" qm-worker-agent
fi
exec docker run --rm --name qm-agent --network host --user 0 \
  --env-file /etc/quartermaster/agent.env -v /etc/quartermaster:/etc/quartermaster:ro \
  "$QM_AGENT_IMAGE" qm-worker-agent
"#;

/// Starts the engine: the image's OpenAI-compatible server (`vllm serve <model> <args>`) on the
/// GPUs, the arguments read one per line from /etc/quartermaster/engine.args (each stays one
/// argument: no word splitting, no globbing). With `VLLM_API_KEY` it requires that key and is
/// published on every interface (the router reaches it at the provider's address); without, on
/// loopback only (the agent reaches it there).
const RUN_ENGINE: &str = r#"#!/bin/sh
# Quartermaster inference engine: QM_ENGINE_IMAGE serving the model in /etc/quartermaster/model
# with the arguments of /etc/quartermaster/engine.args, one per line.
set -eu
model=$(cat /etc/quartermaster/model)
set -- "$model"
if [ -f /etc/quartermaster/engine.args ]; then
  while IFS= read -r arg || [ -n "$arg" ]; do
    set -- "$@" "$arg"
  done < /etc/quartermaster/engine.args
fi
mkdir -p /var/lib/quartermaster/huggingface
docker rm -f qm-engine >/dev/null 2>&1 || true
if [ -n "${VLLM_API_KEY:-}" ]; then
  exec docker run --rm --name qm-engine --gpus all --ipc=host -p 8000:8000 -e VLLM_API_KEY \
    -v /var/lib/quartermaster/huggingface:/root/.cache/huggingface "$QM_ENGINE_IMAGE" "$@"
fi
exec docker run --rm --name qm-engine --gpus all --ipc=host -p 127.0.0.1:8000:8000 \
  -v /var/lib/quartermaster/huggingface:/root/.cache/huggingface "$QM_ENGINE_IMAGE" "$@"
"#;

const AGENT_UNIT: &str = "[Unit]
Description=Quartermaster worker agent
Wants=network-online.target
After=network-online.target docker.service

[Service]
EnvironmentFile=/etc/quartermaster/agent.env
ExecStart=/usr/local/lib/quartermaster/run-agent
Restart=always
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
";

const ENGINE_UNIT: &str = "[Unit]
Description=Quartermaster inference engine
Wants=network-online.target
After=network-online.target docker.service
Requires=docker.service

[Service]
EnvironmentFile=/etc/quartermaster/engine.env
ExecStart=/usr/local/lib/quartermaster/run-engine
ExecStop=/usr/bin/docker stop qm-engine
Restart=always
RestartSec=10
TimeoutStartSec=0

[Install]
WantedBy=multi-user.target
";

/// Where an instance's agent comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentSource {
    /// `qm-worker-agent` of this container image (`QM_AGENT_IMAGE`).
    Image(String),
    /// A download (the api's `/downloads/qm-worker-agent`) and its SHA-256, hex.
    Download { url: String, sha256: String },
}

/// The operator's part of the boot configuration: the same for every instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan {
    pub agent: AgentSource,
    /// The engine's image on GPU instances; `None` on instances without GPUs, whose agent
    /// serves its built-in mock engine (development and CPU-only fleets).
    pub engine_image: Option<String>,
    /// The key the engine requires (`VLLM_API_KEY`); with it the engine is published on every
    /// interface, without it on loopback only.
    pub engine_api_key: Option<qm_config::Secret>,
}

impl BootPlan {
    /// From the settings: the download when `QM_AGENT_BINARY` is set (its checksum computed
    /// here, the URL under `api_url`), else the image.
    ///
    /// # Errors
    /// When the binary cannot be read, or the URL or an image would not be safe in an env file.
    pub fn from_settings(settings: &qm_config::BootSettings, api_url: Option<&str>) -> Result<Self, String> {
        let agent = match (&settings.agent_binary, api_url) {
            (Some(path), Some(api_url)) => {
                let bytes = std::fs::read(path)
                    .map_err(|error| format!("QM_AGENT_BINARY {} cannot be read: {error}", path.display()))?;
                AgentSource::Download { url: download_url(api_url)?, sha256: sha256_hex(&bytes) }
            }
            (Some(_), None) => return Err("QM_AGENT_BINARY needs QM_API_URL, where instances download it".into()),
            (None, _) => AgentSource::Image(settings.agent_image.clone()),
        };
        Ok(Self {
            agent,
            engine_image: Some(settings.engine_image.clone()),
            engine_api_key: settings.engine_api_key.clone(),
        })
    }

    /// This plan for an instance with or without GPUs.
    pub fn for_gpus(&self, gpus: bool) -> Self {
        Self { engine_image: self.engine_image.clone().filter(|_| gpus), ..self.clone() }
    }

    /// `/etc/quartermaster/engine.env` (0600: it may hold the engine's key).
    fn engine_environment(&self, image: &str) -> String {
        let mut text = format!("QM_ENGINE_IMAGE={}\n", env_safe(image));
        if let Some(key) = &self.engine_api_key {
            text.push_str(&format!("VLLM_API_KEY={}\n", env_safe(key.expose())));
        }
        text
    }

    /// `/etc/quartermaster/agent.env`: static lines and operator settings checked to be safe in
    /// an env file (no whitespace, quotes, backslashes or controls).
    fn agent_environment(&self) -> String {
        let mut lines = vec!["QM_WORKER_AGENT_ADDR=0.0.0.0:8090".to_owned(), "QM_LOG_FORMAT=json".to_owned()];
        if self.engine_image.is_some() {
            lines.push("QM_ENGINE_URL=http://127.0.0.1:8000".to_owned());
        } else {
            lines.push("QM_ENGINE=mock".to_owned());
            lines.push("QM_MOCK_ENGINE_ADDR=127.0.0.1:8000".to_owned());
        }
        match &self.agent {
            AgentSource::Image(image) => lines.push(format!("QM_AGENT_IMAGE={}", env_safe(image))),
            AgentSource::Download { url, sha256 } => {
                lines.push(format!("QM_AGENT_URL={}", env_safe(url)));
                lines.push(format!("QM_AGENT_SHA256={}", env_safe(sha256)));
            }
        }
        lines.iter().map(|line| format!("{line}\n")).collect()
    }
}

impl Default for BootPlan {
    /// The default image and engine.
    fn default() -> Self {
        Self {
            agent: AgentSource::Image(qm_config::defaults::AGENT_IMAGE.to_owned()),
            engine_image: Some(qm_config::defaults::ENGINE_IMAGE.to_owned()),
            engine_api_key: None,
        }
    }
}

/// Drops what could end an env file line or quote a value: settings are checked at start-up,
/// so this only guards against a value that bypassed them.
fn env_safe(value: &str) -> String {
    value.chars().filter(|character| character.is_ascii_graphic() && !"\"'\\`$".contains(*character)).collect()
}

/// Where instances download the agent, under the api's public URL.
///
/// # Errors
/// When `api_url` is not an http(s) URL.
pub fn download_url(api_url: &str) -> Result<String, String> {
    let mut url = reqwest::Url::parse(api_url).map_err(|error| format!("QM_API_URL is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("QM_API_URL must be http or https".into());
    }
    url.set_path(&format!("{}/{AGENT_DOWNLOAD_PATH}", url.path().trim_end_matches('/')));
    Ok(url.to_string())
}

/// The api's path of the agent download (and, with `.sha256`, of its checksum).
pub const AGENT_DOWNLOAD_PATH: &str = "downloads/qm-worker-agent";

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
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
    /// The share of the engine's KV cache in use (0 to 1), when it reports it.
    pub kv_cache_usage: Option<f64>,
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
        Self {
            status: WorkerStatus::Ready,
            queue_depth: 0,
            in_flight: 0,
            gpus: Vec::new(),
            tokens: None,
            kv_cache_usage: None,
        }
    }
}

/// Where an agent's status comes from: always ready for a simulated one, the engine for a real one.
#[async_trait::async_trait]
pub trait StatusSource: Send + Sync {
    async fn status(&self) -> AgentStatus;

    /// Whether the agent was asked to stop (it then reports `draining` at once rather than at
    /// its next heartbeat, so that the router stops sending it requests).
    fn draining(&self) -> bool {
        false
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

/// A simulated engine: always ready, its GPUs (none for a CPU type) as NVML would report them
/// once the engine has loaded its model and waits for requests: vLLM's default share of each
/// GPU's memory (0.9) taken, idle.
struct Simulated(Vec<GpuInfo>);

#[async_trait::async_trait]
impl StatusSource for Simulated {
    async fn status(&self) -> AgentStatus {
        let gpus = self
            .0
            .iter()
            .map(|gpu| GpuMetrics {
                index: gpu.index,
                utilization_percent: 0.0,
                memory_used_mb: gpu.memory_total_mb * 9 / 10,
                memory_total_mb: gpu.memory_total_mb,
                temperature_c: Some(34.0),
                power_w: Some(62.5),
            })
            .collect();
        AgentStatus { gpus, ..AgentStatus::ready() }
    }
}

/// Runs the simulated agent of a `sim` instance until `gone` is set: it registers `gpus` (the
/// instance type's, empty for a CPU type) and reports them in each heartbeat.
pub async fn run(config: BootConfig, boot_delay: Duration, gpus: Vec<GpuInfo>, gone: Arc<AtomicBool>) {
    tokio::time::sleep(boot_delay).await;
    let info = AgentInfo {
        engine_url: "http://sim-engine.invalid:8000".into(),
        agent_version: concat!("sim-", env!("CARGO_PKG_VERSION")).into(),
        gpus: gpus.clone(),
    };
    speak(config, info, Arc::new(Simulated(gpus)), gone).await;
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
        // A drain counts as reported only once a heartbeat carrying it was accepted: until then
        // it is sent again every 200 ms, not after a whole interval (under load the first may
        // fail, and the agent stops soon after its last request ends).
        let reports_drain = status.status == WorkerStatus::Draining;
        let mut drain_reported = false;
        let sent =
            heartbeat(&client, &config.api_url, &token, &heartbeat_of(instance_id, &status, reported)).send().await;
        if let Ok(response) = sent {
            if response.status() == reqwest::StatusCode::UNAUTHORIZED
                || response.status() == reqwest::StatusCode::FORBIDDEN
            {
                tracing::warn!(instance = %config.instance_id, status = %response.status(), "agent: heartbeat refused; stopping");
                return;
            }
            drain_reported = reports_drain && response.status().is_success();
            if response.status().is_success()
                && let Some(counters) = status.tokens
            {
                reported = counters;
            }
            if let Ok(answer) = response.json::<HeartbeatResponse>().await {
                interval = Duration::from_secs(answer.heartbeat_interval_seconds.max(1));
            }
        }
        if reports_drain && !drain_reported {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        // Short naps, so that a stop, or a drain to report, is noticed promptly.
        let mut slept = Duration::ZERO;
        while slept < interval && !gone.load(Ordering::Relaxed) && (drain_reported || !source.draining()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            slept += Duration::from_millis(100);
        }
    }
    // Stopping: the tokens served since the last accepted heartbeat would go with the machine
    // (every answer of a worker's last seconds unaccounted): one last heartbeat carries them.
    let status = source.status().await;
    if status.tokens.is_some_and(|counters| counters != reported) {
        let last = heartbeat_of(instance_id, &status, reported);
        let sent = heartbeat(&client, &config.api_url, &token, &last).timeout(Duration::from_secs(2)).send().await;
        if !sent.is_ok_and(|response| response.status().is_success()) {
            tracing::warn!(instance = %config.instance_id, "agent: the last tokens could not be reported");
        }
    }
}

/// The heartbeat request, ready to send.
fn heartbeat(client: &reqwest::Client, api_url: &str, token: &str, body: &HeartbeatRequest) -> reqwest::RequestBuilder {
    client.post(format!("{api_url}/internal/worker/heartbeat")).bearer_auth(token).json(body)
}

/// What a heartbeat carries: `status`, and the tokens served since `reported`.
fn heartbeat_of(instance_id: InstanceId, status: &AgentStatus, reported: TokenCounters) -> HeartbeatRequest {
    let usage = status.tokens.map(|counters| counters.since(reported));
    HeartbeatRequest {
        instance_id,
        status: status.status,
        queue_depth: status.queue_depth,
        in_flight: status.in_flight,
        kv_cache_usage: status.kv_cache_usage,
        gpus: status.gpus.clone(),
        usage: usage.map(|usage| TokenUsage { prompt_tokens: usage.prompt, completion_tokens: usage.completion }),
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
            engine_args: vec!["--max-model-len".into(), "8192".into()],
        };
        assert_eq!(BootConfig::parse(&config.render(&BootPlan::default())), Some(config));
        assert_eq!(BootConfig::parse("QM_API_URL=x\n"), None);
        assert_eq!(
            yaml_unquote(&yaml_quote("a\"b\\c\nd\u{7f}\u{1F600}")).as_deref(),
            Some("a\"b\\c\nd\u{7f}\u{1F600}")
        );
    }

    #[test]
    fn the_download_plan_carries_the_binary_checksum_under_the_public_url() {
        let path = std::env::temp_dir().join(format!("qm-agent-plan-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, b"abc").expect("write");
        let settings = qm_config::BootSettings {
            agent_image: "unused:1".into(),
            agent_binary: Some(path.clone()),
            engine_image: "vllm/vllm-openai:v0.11.0".into(),
            engine_api_key: Some(qm_config::Secret::new("engine-key-0123456789")),
        };
        let plan = BootPlan::from_settings(&settings, Some("https://qm.example.com/base/")).expect("plan");
        let config = BootConfig {
            api_url: "u".into(),
            instance_id: "i".into(),
            bootstrap_token: "t".into(),
            model: "m".into(),
            engine_args: Vec::new(),
        };
        let rendered = config.render(&plan);
        assert!(rendered.contains("VLLM_API_KEY=engine-key-0123456789"), "the engine requires the key");
        assert!(!config.render(&plan.for_gpus(false)).contains("VLLM_API_KEY"), "no engine, no key");
        // SHA-256("abc"), FIPS 180-2's first example.
        let sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_owned();
        let url = "https://qm.example.com/base/downloads/qm-worker-agent".to_owned();
        assert_eq!(plan.agent, AgentSource::Download { url, sha256 });
        assert!(BootPlan::from_settings(&settings, None).is_err(), "instances need the api's URL");
        let unreadable = qm_config::BootSettings { agent_binary: Some("/nonexistent".into()), ..settings.clone() };
        assert!(BootPlan::from_settings(&unreadable, Some("https://x")).is_err());
        let image = qm_config::BootSettings { agent_binary: None, ..settings };
        assert_eq!(BootPlan::from_settings(&image, None).expect("plan").agent, AgentSource::Image("unused:1".into()));
        std::fs::remove_file(path).expect("remove");
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
