//! `local`: each instance is a real `qm-worker-agent` process on 127.0.0.1, with its own agent
//! and mock-engine ports, booted with the instance's user data. What the provider knows lives in
//! one JSON file per instance under its state directory, so a restarted orchestrator still finds
//! (and can terminate) the processes it started, and reconciliation sees orphans.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use qm_domain::InstanceId;
use serde::{Deserialize, Serialize};

use crate::{CloudProvider, CreateRequest, ErrorKind, ProviderError, ProviderInstance, ProviderOffer, ProviderStatus};

pub const NAME: &str = "local";
pub const ZONE: &str = "local-1";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    provider_id: String,
    instance_id: InstanceId,
    zone: String,
    instance_type: String,
    user_data: String,
    pid: Option<u32>,
    agent_port: Option<u16>,
    created_at: chrono::DateTime<chrono::Utc>,
}

pub struct LocalProvider {
    state_dir: PathBuf,
    agent_binary: PathBuf,
}

fn error(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
    ProviderError::new(NAME, kind, message)
}

fn io(error: std::io::Error) -> ProviderError {
    self::error(ErrorKind::Transient, error.to_string())
}

/// Whether `pid` is a live `qm-worker-agent` (not a recycled pid of something else).
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        String::from_utf8_lossy(&cmdline).contains("qm-worker-agent")
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| stat.contains(") Z "))
    })
}

/// The only variables of the orchestrator's environment an agent process sees.
pub const INHERITED_VARIABLES: &[&str] = &[
    "PATH",
    "RUST_LOG",
    "TZ",
    "LANG",
    // The mock engine's latency model (docs/router.md), so that `qm dev` can serve like a GPU.
    "QM_MOCK_PREFILL_US_PER_TOKEN",
    "QM_MOCK_DECODE_MS_PER_TOKEN",
    "QM_MOCK_CONCURRENCY_SLOWDOWN",
    "QM_MOCK_COLD_START_MS",
    "QM_MOCK_CACHE_BLOCKS",
];

/// Writes a file only its owner can read (it holds a bootstrap token).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

fn free_port() -> Result<u16, ProviderError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

impl LocalProvider {
    /// `agent_binary`: the `qm-worker-agent` to run (by default beside the current executable).
    pub fn new(state_dir: &Path, agent_binary: Option<PathBuf>) -> Self {
        let agent_binary = agent_binary.unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("qm-worker-agent")))
                .unwrap_or_else(|| PathBuf::from("qm-worker-agent"))
        });
        Self { state_dir: state_dir.to_owned(), agent_binary }
    }

    fn path(&self, provider_id: &str) -> Result<PathBuf, ProviderError> {
        let valid =
            provider_id.starts_with("local-") && provider_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if valid {
            Ok(self.state_dir.join(format!("{provider_id}.json")))
        } else {
            Err(error(ErrorKind::NotFound, format!("no instance `{provider_id}`")))
        }
    }

    fn read(&self, provider_id: &str) -> Result<Option<Record>, ProviderError> {
        let path = self.path(provider_id)?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| self::error(ErrorKind::Transient, error.to_string())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io(error)),
        }
    }

    fn write(&self, record: &Record) -> Result<(), ProviderError> {
        std::fs::create_dir_all(&self.state_dir).map_err(io)?;
        let path = self.path(&record.provider_id)?;
        let temporary = path.with_extension("json.tmp");
        write_private(&temporary, &serde_json::to_vec_pretty(record).unwrap_or_default()).map_err(io)?;
        std::fs::rename(&temporary, &path).map_err(io)
    }

    fn describe_record(record: &Record) -> ProviderInstance {
        let running = record.pid.is_some_and(alive);
        let status = match (record.pid, running) {
            (None, _) => ProviderStatus::Pending,
            (Some(_), true) => ProviderStatus::Running,
            (Some(_), false) => ProviderStatus::Stopped,
        };
        ProviderInstance {
            provider_id: record.provider_id.clone(),
            instance_id: Some(record.instance_id),
            zone: record.zone.clone(),
            instance_type: record.instance_type.clone(),
            status,
            address: record.agent_port.filter(|_| running).map(|port| format!("127.0.0.1:{port}")),
            created_at: record.created_at,
        }
    }
}

#[async_trait]
impl CloudProvider for LocalProvider {
    fn name(&self) -> &str {
        NAME
    }

    async fn create(&self, request: &CreateRequest) -> Result<ProviderInstance, ProviderError> {
        let offered = default_offers()
            .iter()
            .any(|offer| offer.zone == request.zone && offer.instance_type == request.instance_type);
        if !offered {
            return Err(error(
                ErrorKind::Invalid,
                format!("instance type `{}` is not offered in zone `{}`", request.instance_type, request.zone),
            ));
        }
        let provider_id = format!("local-{}", request.instance_id.as_uuid().simple());
        if let Some(existing) = self.read(&provider_id)? {
            return Ok(Self::describe_record(&existing));
        }
        let record = Record {
            provider_id,
            instance_id: request.instance_id,
            zone: request.zone.clone(),
            instance_type: request.instance_type.clone(),
            user_data: request.user_data.clone(),
            pid: None,
            agent_port: None,
            created_at: chrono::Utc::now(),
        };
        self.write(&record)?;
        Ok(Self::describe_record(&record))
    }

    async fn start(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        let mut record = self
            .read(provider_id)?
            .ok_or_else(|| error(ErrorKind::NotFound, format!("no instance `{provider_id}`")))?;
        if record.pid.is_some_and(alive) {
            return Ok(Self::describe_record(&record));
        }
        let agent_port = free_port()?;
        let engine_port = free_port()?;
        let mut command = Command::new(&self.agent_binary);
        // A cleared environment: the agent never inherits the orchestrator's secrets (database
        // URL, cloud keys). What it needs is named here, and its boot configuration travels as
        // the parsed JSON document in a 0600 file, never as environment lines.
        command.env_clear();
        for inherited in INHERITED_VARIABLES {
            if let Some(value) = std::env::var_os(inherited) {
                command.env(inherited, value);
            }
        }
        command
            .env("QM_WORKER_AGENT_ADDR", format!("127.0.0.1:{agent_port}"))
            .env("QM_ENGINE", "mock")
            .env("QM_MOCK_ENGINE_ADDR", format!("127.0.0.1:{engine_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(config) = crate::agent::BootConfig::parse(&record.user_data) {
            let path = self.state_dir.join(format!("{}.boot", record.provider_id));
            write_private(&path, config.to_json().as_bytes()).map_err(io)?;
            command.env("QM_AGENT_CONFIG", &path);
        }
        let mut child = command.spawn().map_err(|spawn| {
            error(
                ErrorKind::Invalid,
                format!("cannot run {}: {spawn} (build it with `cargo build`)", self.agent_binary.display()),
            )
        })?;
        let pid = child.id();
        record.pid = Some(pid);
        record.agent_port = Some(agent_port);
        self.write(&record)?;
        // Reap the process when it exits, so that it does not linger as a zombie.
        std::thread::spawn(move || child.wait());
        // Until it has exec'd, the child still looks like its parent.
        for _ in 0..100 {
            if alive(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self::describe_record(&record))
    }

    async fn describe(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        self.read(provider_id)?
            .map(|record| Self::describe_record(&record))
            .ok_or_else(|| error(ErrorKind::NotFound, format!("no instance `{provider_id}`")))
    }

    async fn list(&self) -> Result<Vec<ProviderInstance>, ProviderError> {
        let entries = match std::fs::read_dir(&self.state_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io(error)),
        };
        let mut listed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(provider_id) = name.strip_suffix(".json")
                && let Some(record) = self.read(provider_id)?
            {
                listed.push(Self::describe_record(&record));
            }
        }
        Ok(listed)
    }

    async fn terminate(&self, provider_id: &str) -> Result<(), ProviderError> {
        let Some(record) = self
            .read(provider_id)
            .or_else(|error| if error.kind == ErrorKind::NotFound { Ok(None) } else { Err(error) })?
        else {
            return Ok(());
        };
        if let Some(pid) = record.pid.filter(|pid| alive(*pid)) {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            for _ in 0..100 {
                if !alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if alive(pid) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
        let _ = std::fs::remove_file(self.state_dir.join(format!("{provider_id}.boot")));
        match std::fs::remove_file(self.path(provider_id)?) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io(error)),
        }
    }

    async fn offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        Ok(default_offers())
    }
}

/// The `local` offers of `seeds/catalog.json`.
pub fn default_offers() -> Vec<ProviderOffer> {
    let offer = |instance_type: &str, gpu: Option<(&str, i32)>, price: i64| ProviderOffer {
        region: "local".into(),
        zone: ZONE.into(),
        instance_type: instance_type.into(),
        gpu_model: gpu.map(|(model, _)| model.into()),
        gpu_count: i32::from(gpu.is_some()),
        gpu_memory_gb: gpu.map_or(0, |(_, memory)| memory),
        vcpus: 1,
        memory_gb: 1,
        hourly_price_micros: price,
        currency: "EUR".into(),
        available: true,
    };
    vec![offer("local.cpu", None, 50_000), offer("local.mock-gpu", Some(("MOCK", 16)), 500_000)]
}
