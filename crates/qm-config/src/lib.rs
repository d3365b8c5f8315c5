//! Configuration from the environment (DESIGN section 7).
//!
//! Every secret may come from `NAME` or from the file named by `NAME_FILE` (Kubernetes and
//! Docker secrets). Errors name the variable and what is wrong with it, never its value.
//!
//! Layout:
//! - [`Secret`]: a string that prints as `***`.
//! - [`Environment`]: reading variables and `_FILE` variants from a source (the process
//!   environment, or a map in tests).
//! - [`Settings`]: everything the services share, for production ([`Settings::from_env`]) and for
//!   the embedded `qm dev` ([`Settings::embedded`]).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use qm_domain::{Currency, ExchangeRates};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name} is not set: {hint}")]
    Missing { name: String, hint: String },
    #[error("{name} is invalid: {reason}")]
    Invalid { name: String, reason: String },
    #[error("{name}_FILE names {path}, which cannot be read: {reason}")]
    UnreadableFile { name: String, path: String, reason: String },
}

/// A secret value: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("***")
    }
}

/// The URL with any password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Setting a password only fails for URLs that cannot have one, which this one has.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable url>".to_owned(),
    }
}

/// Where variables come from.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    overrides: Option<HashMap<String, String>>,
}

impl Environment {
    /// The process environment.
    pub fn process() -> Self {
        Self { overrides: None }
    }

    /// A fixed set of variables (tests).
    pub fn from_pairs<I: IntoIterator<Item = (K, V)>, K: Into<String>, V: Into<String>>(pairs: I) -> Self {
        Self { overrides: Some(pairs.into_iter().map(|(key, value)| (key.into(), value.into())).collect()) }
    }

    /// A variable, with empty values treated as unset.
    pub fn get(&self, name: &str) -> Option<String> {
        let value = match &self.overrides {
            Some(map) => map.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        value.filter(|value| !value.trim().is_empty())
    }

    /// A secret from `NAME`, or else from the file named by `NAME_FILE` (trailing newline
    /// removed).
    ///
    /// # Errors
    /// [`ConfigError::UnreadableFile`] when `NAME_FILE` is set but unreadable or empty.
    pub fn secret(&self, name: &str) -> Result<Option<Secret>, ConfigError> {
        if let Some(value) = self.get(name) {
            return Ok(Some(Secret(value)));
        }
        let Some(path) = self.get(&format!("{name}_FILE")) else { return Ok(None) };
        let unreadable =
            |reason: String| ConfigError::UnreadableFile { name: name.to_owned(), path: path.clone(), reason };
        let contents = std::fs::read_to_string(Path::new(&path)).map_err(|error| unreadable(error.to_string()))?;
        let value = contents.trim_end_matches(['\n', '\r']).to_owned();
        if value.is_empty() {
            return Err(unreadable("the file is empty".into()));
        }
        Ok(Some(Secret(value)))
    }

    /// # Errors
    /// [`ConfigError::Invalid`] when the variable is set but is not `HOST:PORT`.
    pub fn socket_addr(&self, name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let text = self.get(name).unwrap_or_else(|| default.to_owned());
        text.parse().map_err(|_| ConfigError::Invalid {
            name: name.to_owned(),
            reason: format!("`{text}` is not an address such as 127.0.0.1:8003 or 0.0.0.0:8003"),
        })
    }
}

/// Default listen addresses (DESIGN section 1).
pub mod defaults {
    pub const API_ADDR: &str = "127.0.0.1:8003";
    pub const ORCHESTRATOR_ADDR: &str = "127.0.0.1:8001";
    pub const FINOPS_ADDR: &str = "127.0.0.1:8002";
    pub const ROUTER_ADDR: &str = "127.0.0.1:8080";
    pub const WORKER_AGENT_ADDR: &str = "127.0.0.1:8090";
    pub const DEV_PROVIDERS: &str = "local,sim";
    /// The image every Quartermaster binary ships in (`deploy/docker/Dockerfile`), at this
    /// version.
    pub const AGENT_IMAGE: &str = concat!("ghcr.io/quartermaster/quartermaster:", env!("CARGO_PKG_VERSION"));
    /// vLLM's OpenAI-compatible server, pinned.
    pub const ENGINE_IMAGE: &str = "vllm/vllm-openai:v0.11.0";
}

/// Everything the services share.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `QM_ENV`: `dev`, `staging`, `prod`, ... (labels telemetry; default `dev`).
    pub environment: String,
    /// `QM_DATABASE_URL`: `sqlite://…` or `postgres://…`.
    pub database_url: Secret,
    /// `QM_DATABASE_MAX_CONNECTIONS` (PostgreSQL only, 1 to 1,000; default
    /// [`DEFAULT_DATABASE_MAX_CONNECTIONS`]): the most connections one process holds.
    pub database_max_connections: u32,
    /// `QM_BUS_URL`: `memory://`, `nats://…` or `redis://…`.
    pub bus_url: Secret,
    /// `QM_ADMIN_PASSWORD` (or `_FILE`): the bootstrap admin's password.
    pub admin_password: Option<Secret>,
    pub api_addr: SocketAddr,
    /// `QM_API_URL`: where agents (and the CLI) reach the api, e.g. `https://qm.example.com`.
    /// `qm dev` sets it to the address it bound.
    pub api_url: Option<String>,
    pub orchestrator_addr: SocketAddr,
    pub finops_addr: SocketAddr,
    pub router_addr: SocketAddr,
    /// `QM_PROVIDERS`: enabled cloud providers.
    pub providers: Vec<String>,
    /// `QM_REPORTING_CURRENCY` (default EUR).
    pub reporting_currency: Currency,
    /// `QM_FX_RATES` (`USD=0.92,GBP=1.17`): other currencies in the reporting currency.
    pub exchange_rates: ExchangeRates,
    /// `QM_SESSION_TTL_SECONDS` (default 12 hours): how long a login session lasts.
    pub session_ttl: Duration,
    /// `QM_TRUSTED_PROXIES` (comma list of addresses or CIDR blocks): peers whose
    /// `X-Forwarded-For` is believed. Empty by default: the TCP peer is the client.
    pub trusted_proxies: Vec<IpBlock>,
    /// `QM_COOKIE_SECURE` (default `true` outside `QM_ENV=dev`): marks the session cookie
    /// `Secure`, so browsers send it over HTTPS only.
    pub cookie_secure: bool,
    /// `QM_LOCAL_STATE_DIR`: where the `local` provider records its processes (default
    /// `./.qm/local`; `qm dev`: `<data-dir>/local`).
    pub local_state_dir: PathBuf,
    /// `QM_COMMAND_VISIBILITY_TIMEOUT_SECONDS` (default 900): how long the orchestrator may hold
    /// a command before another member gets it again.
    pub command_visibility_timeout: Duration,
    /// `QM_METRICS_TOKEN` (or `_FILE`): when set, every service's `/metrics` answers only
    /// requests bearing `Authorization: Bearer <token>` (Prometheus' `authorization` setting).
    pub metrics_token: Option<Secret>,
    /// `QM_EVENTS_RECHECK_SECONDS` (default 30, at most 60): how often an open `/events`
    /// stream checks that its credential still works.
    pub events_recheck: Duration,
    /// `QM_ROUTER_LIMITS_URL` (or `_FILE`): where router replicas share their rate limits
    /// (`redis://…`); in-process when unset.
    pub router_limits_url: Option<Secret>,
    /// `QM_ROUTER_FIRST_BYTE_TIMEOUT_SECONDS` (default 120): how long the router waits for a
    /// worker's answer to start (a whole answer, when not streamed) before trying another.
    pub router_first_byte_timeout: Duration,
    /// `QM_ROUTER_STREAM_IDLE_TIMEOUT_SECONDS` (default 120): a stream with no event for this
    /// long is closed.
    pub router_stream_idle_timeout: Duration,
    /// `QM_INSTALLATION` (see [`installation`]): which Quartermaster owns a cloud resource.
    pub installation: String,
    /// How instances boot on the clouds (`QM_AGENT_IMAGE`, `QM_AGENT_BINARY`,
    /// `QM_ENGINE_IMAGE`).
    pub boot: BootSettings,
}

/// The default `QM_DATABASE_MAX_CONNECTIONS`: a few per core of a small database server.
/// More connections than the server has cores to run them only take turns on those cores, and
/// the turns cost (decision 121).
pub const DEFAULT_DATABASE_MAX_CONNECTIONS: u32 = 8;

/// The default `QM_INSTALLATION`.
pub const DEFAULT_INSTALLATION: &str = "default";

/// `QM_INSTALLATION`: this Quartermaster's id among those sharing a cloud account (say
/// `staging` and `prod` in one AWS account or Scaleway organization). Every cloud resource it
/// creates carries it, and reconciliation and sweeps act only on resources that carry it. 1 to
/// 32 characters of `a-z`, `0-9` and inner `-`, so that it fits in a tag and a resource name.
/// Default [`DEFAULT_INSTALLATION`].
///
/// # Errors
/// When the value does not have that form.
pub fn installation(environment: &Environment) -> Result<String, ConfigError> {
    let Some(text) = environment.get("QM_INSTALLATION") else { return Ok(DEFAULT_INSTALLATION.to_owned()) };
    let valid = (1..=32).contains(&text.len())
        && text.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        Ok(text)
    } else {
        Err(ConfigError::Invalid {
            name: "QM_INSTALLATION".into(),
            reason: format!("`{text}` must be 1 to 32 characters of a-z, 0-9 and inner `-`"),
        })
    }
}

/// How cloud instances get their agent and engine (the `#cloud-config` the orchestrator
/// renders, `docs/providers.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSettings {
    /// `QM_AGENT_IMAGE`: the container image whose `qm-worker-agent` runs on instances
    /// (default [`defaults::AGENT_IMAGE`]). Used unless `QM_AGENT_BINARY` is set.
    pub agent_image: String,
    /// `QM_AGENT_BINARY`: a `qm-worker-agent` executable (for the instances' system) that the
    /// api serves at `/downloads/qm-worker-agent` with its SHA-256; when set, instances download
    /// it from `QM_API_URL` and check it against the checksum in their user data instead of
    /// pulling the image.
    pub agent_binary: Option<PathBuf>,
    /// `QM_ENGINE_IMAGE`: the inference engine's image on GPU instances (default
    /// [`defaults::ENGINE_IMAGE`], vLLM's OpenAI-compatible server).
    pub engine_image: String,
    /// `QM_ENGINE_API_KEY` (or `_FILE`): the key engines on cloud instances require
    /// (`VLLM_API_KEY`) and the router sends. With it the engine is published on every
    /// interface of its instance (the router reaches it at the provider's address); without
    /// it, on loopback only. 16 to 128 of `A-Za-z0-9._-`.
    pub engine_api_key: Option<Secret>,
}

impl BootSettings {
    /// # Errors
    /// A malformed image reference, by name.
    pub fn from_environment(environment: &Environment) -> Result<Self, ConfigError> {
        let image = |name: &str, default: &str| {
            let text = environment.get(name).unwrap_or_else(|| default.to_owned());
            image_reference(&text)
                .map(|()| text)
                .map_err(|reason| ConfigError::Invalid { name: name.to_owned(), reason })
        };
        Ok(Self {
            agent_image: image("QM_AGENT_IMAGE", defaults::AGENT_IMAGE)?,
            agent_binary: environment.get("QM_AGENT_BINARY").map(PathBuf::from),
            engine_image: image("QM_ENGINE_IMAGE", defaults::ENGINE_IMAGE)?,
            engine_api_key: match environment.secret("QM_ENGINE_API_KEY")? {
                Some(key) if !engine_key_valid(key.expose()) => {
                    return Err(ConfigError::Invalid {
                        name: "QM_ENGINE_API_KEY".into(),
                        reason: "must be 16 to 128 of A-Za-z0-9._-".into(),
                    });
                }
                key => key,
            },
        })
    }
}

fn engine_key_valid(key: &str) -> bool {
    (16..=128).contains(&key.len()) && key.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
}

/// A container image reference as `docker run` takes it (`registry/name:tag` or `@sha256:…`):
/// 1 to 255 characters of letters, digits and `._/:@-`, not starting with `-`. Nothing else
/// can reach a unit file or a shell through it.
///
/// # Errors
/// The reason it is refused.
pub fn image_reference(text: &str) -> Result<(), String> {
    let valid = (1..=255).contains(&text.len())
        && !text.starts_with('-')
        && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._/:@-".contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(format!("`{text}` is not a container image reference such as vllm/vllm-openai:v0.11.0"))
    }
}

/// An address block such as `10.0.0.0/8` or a single address (`192.0.2.7`, `::1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpBlock {
    network: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// # Errors
    /// A reason when the text is not an address or `address/prefix`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = text.trim().split_once('/').map_or((text.trim(), None), |(a, p)| (a, Some(p)));
        let network: IpAddr = address.parse().map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= width)
                .ok_or_else(|| format!("`{text}` has an invalid prefix length"))?,
        };
        Ok(Self { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// The providers Quartermaster can drive.
pub const KNOWN_PROVIDERS: [&str; 4] = ["local", "sim", "aws", "scaleway"];

impl Settings {
    /// Settings for a production binary: the database and the bus must be named explicitly.
    ///
    /// # Errors
    /// The first missing or malformed variable, by name.
    pub fn from_env(environment: &Environment) -> Result<Self, ConfigError> {
        let database_url = environment.secret("QM_DATABASE_URL")?.ok_or_else(|| ConfigError::Missing {
            name: "QM_DATABASE_URL".into(),
            hint: "set it to postgres://USER@HOST:5432/DATABASE (or sqlite://PATH)".into(),
        })?;
        let bus_url = environment.secret("QM_BUS_URL")?.ok_or_else(|| ConfigError::Missing {
            name: "QM_BUS_URL".into(),
            hint: "set it to nats://HOST:4222, redis://HOST:6379 or memory:// (single process only)".into(),
        })?;
        Self::build(environment, database_url, bus_url, "", Path::new("./.qm/local"))
    }

    /// Settings for `qm dev`: SQLite in `data_dir`, the in-process bus, `local,sim` providers,
    /// each overridable by its variable.
    ///
    /// # Errors
    /// The first malformed variable, by name.
    pub fn embedded(environment: &Environment, data_dir: &Path) -> Result<Self, ConfigError> {
        let default_database = format!("sqlite://{}", data_dir.join("qm.db").display());
        let database_url = environment.secret("QM_DATABASE_URL")?.unwrap_or(Secret(default_database));
        let bus_url = environment.secret("QM_BUS_URL")?.unwrap_or(Secret("memory://".into()));
        Self::build(environment, database_url, bus_url, defaults::DEV_PROVIDERS, &data_dir.join("local"))
    }

    fn build(
        environment: &Environment,
        database_url: Secret,
        bus_url: Secret,
        default_providers: &str,
        default_local_state_dir: &Path,
    ) -> Result<Self, ConfigError> {
        check_scheme("QM_DATABASE_URL", database_url.expose(), &["sqlite", "postgres", "postgresql"])?;
        check_scheme("QM_BUS_URL", bus_url.expose(), &["memory", "nats", "tls", "redis", "rediss"])?;
        let providers =
            parse_providers(&environment.get("QM_PROVIDERS").unwrap_or_else(|| default_providers.to_owned()))?;
        let currency_text = environment.get("QM_REPORTING_CURRENCY").unwrap_or_else(|| "EUR".into());
        let reporting_currency = Currency::parse(&currency_text).map_err(|error| ConfigError::Invalid {
            name: "QM_REPORTING_CURRENCY".into(),
            reason: error.to_string(),
        })?;
        let invalid = |name: &str| {
            let name = name.to_owned();
            move |reason: String| ConfigError::Invalid { name: name.clone(), reason }
        };
        let exchange_rates = ExchangeRates::parse(
            reporting_currency,
            &environment.get("QM_FX_RATES").unwrap_or_else(|| ExchangeRates::DEFAULT.to_owned()),
        )
        .map_err(|error| invalid("QM_FX_RATES")(error.to_string()))?;
        let seconds = |name: &str, default: Duration| match environment.get(name) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|seconds| *seconds > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| invalid(name)(format!("`{text}` is not a positive number"))),
        };
        let database_max_connections = match environment.get("QM_DATABASE_MAX_CONNECTIONS") {
            None => DEFAULT_DATABASE_MAX_CONNECTIONS,
            Some(text) => {
                text.trim().parse::<u32>().ok().filter(|count| (1..=1000).contains(count)).ok_or_else(|| {
                    invalid("QM_DATABASE_MAX_CONNECTIONS")(format!("`{text}` is not between 1 and 1000"))
                })?
            }
        };
        let session_ttl = seconds("QM_SESSION_TTL_SECONDS", Duration::from_secs(12 * 3600))?;
        let command_visibility_timeout =
            seconds("QM_COMMAND_VISIBILITY_TIMEOUT_SECONDS", Duration::from_secs(15 * 60))?;
        let events_recheck = seconds("QM_EVENTS_RECHECK_SECONDS", Duration::from_secs(30))?;
        let router_first_byte_timeout = seconds("QM_ROUTER_FIRST_BYTE_TIMEOUT_SECONDS", Duration::from_secs(120))?;
        let router_stream_idle_timeout = seconds("QM_ROUTER_STREAM_IDLE_TIMEOUT_SECONDS", Duration::from_secs(120))?;
        if events_recheck > Duration::from_secs(60) {
            return Err(invalid("QM_EVENTS_RECHECK_SECONDS")("must be at most 60".into()));
        }
        let trusted_proxies = environment
            .get("QM_TRUSTED_PROXIES")
            .unwrap_or_default()
            .split(',')
            .filter(|block| !block.trim().is_empty())
            .map(IpBlock::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid("QM_TRUSTED_PROXIES"))?;
        let api_url = environment.get("QM_API_URL").map(|url| url.trim_end_matches('/').to_owned());
        if let Some(url) = &api_url {
            check_scheme("QM_API_URL", url, &["http", "https"])?;
        }
        let name = environment.get("QM_ENV").unwrap_or_else(|| "dev".into());
        let cookie_secure = match environment.get("QM_COOKIE_SECURE").as_deref().map(str::trim) {
            None => name != "dev",
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(other) => return Err(invalid("QM_COOKIE_SECURE")(format!("`{other}` is not true or false"))),
        };
        Ok(Self {
            environment: name,
            database_url,
            database_max_connections,
            bus_url,
            admin_password: environment.secret("QM_ADMIN_PASSWORD")?,
            api_addr: environment.socket_addr("QM_API_ADDR", defaults::API_ADDR)?,
            api_url,
            orchestrator_addr: environment.socket_addr("QM_ORCHESTRATOR_ADDR", defaults::ORCHESTRATOR_ADDR)?,
            finops_addr: environment.socket_addr("QM_FINOPS_ADDR", defaults::FINOPS_ADDR)?,
            router_addr: environment.socket_addr("QM_ROUTER_ADDR", defaults::ROUTER_ADDR)?,
            providers,
            reporting_currency,
            exchange_rates,
            session_ttl,
            trusted_proxies,
            cookie_secure,
            local_state_dir: environment
                .get("QM_LOCAL_STATE_DIR")
                .map_or_else(|| default_local_state_dir.to_owned(), PathBuf::from),
            command_visibility_timeout,
            metrics_token: environment.secret("QM_METRICS_TOKEN")?,
            events_recheck,
            router_limits_url: match environment.secret("QM_ROUTER_LIMITS_URL")? {
                Some(url) => {
                    check_scheme("QM_ROUTER_LIMITS_URL", url.expose(), &["redis", "rediss"])?;
                    Some(url)
                }
                None => None,
            },
            router_first_byte_timeout,
            router_stream_idle_timeout,
            installation: installation(environment)?,
            boot: BootSettings::from_environment(environment)?,
        })
    }
}

fn check_scheme(name: &str, value: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    let parsed = url::Url::parse(value)
        .map_err(|error| ConfigError::Invalid { name: name.to_owned(), reason: format!("not a URL ({error})") })?;
    if allowed.contains(&parsed.scheme()) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            name: name.to_owned(),
            reason: format!("scheme `{}` is not one of {}", parsed.scheme(), allowed.join(", ")),
        })
    }
}

fn parse_providers(text: &str) -> Result<Vec<String>, ConfigError> {
    let providers: Vec<String> =
        text.split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_owned).collect();
    match providers.iter().find(|name| !KNOWN_PROVIDERS.contains(&name.as_str())) {
        Some(unknown) => Err(ConfigError::Invalid {
            name: "QM_PROVIDERS".into(),
            reason: format!("unknown provider `{unknown}` (known: {})", KNOWN_PROVIDERS.join(", ")),
        }),
        None => Ok(providers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_blocks_match_addresses_inside_them_only() {
        let block = IpBlock::parse("10.1.0.0/16").expect("block");
        assert!(block.contains("10.1.200.3".parse().expect("ip")));
        assert!(!block.contains("10.2.0.1".parse().expect("ip")));
        assert!(block.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let single = IpBlock::parse("::1").expect("block");
        assert!(single.contains("::1".parse().expect("ip")));
        assert!(!single.contains("::2".parse().expect("ip")));
        assert!(IpBlock::parse("10.0.0.0/33").is_err());
        assert!(IpBlock::parse("proxy.local").is_err());
        assert!(IpBlock::parse("0.0.0.0/0").expect("all").contains("8.8.8.8".parse().expect("ip")));
    }

    fn production(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_env(&Environment::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn a_production_binary_needs_a_database_url() {
        let error = production(&[("QM_BUS_URL", "nats://127.0.0.1:4222")]).expect_err("refused");
        assert!(matches!(&error, ConfigError::Missing { name, .. } if name == "QM_DATABASE_URL"), "{error}");
    }

    #[test]
    fn a_malformed_bus_url_is_named() {
        let error =
            production(&[("QM_DATABASE_URL", "postgres://db/qm"), ("QM_BUS_URL", "kafka://x")]).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "QM_BUS_URL is invalid: scheme `kafka` is not one of memory, nats, tls, redis, rediss"
        );
    }

    #[test]
    fn the_database_connection_bound_is_read_and_checked() {
        let base = [("QM_DATABASE_URL", "postgres://db/qm"), ("QM_BUS_URL", "memory://")];
        let settings = production(&base).expect("defaults");
        assert_eq!(settings.database_max_connections, DEFAULT_DATABASE_MAX_CONNECTIONS);
        let settings = production(&[base[0], base[1], ("QM_DATABASE_MAX_CONNECTIONS", " 32 ")]).expect("set");
        assert_eq!(settings.database_max_connections, 32);
        for bad in ["0", "1001", "-1", "eight"] {
            let error = production(&[base[0], base[1], ("QM_DATABASE_MAX_CONNECTIONS", bad)]).expect_err("refused");
            assert!(error.to_string().starts_with("QM_DATABASE_MAX_CONNECTIONS is invalid"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_bad_listen_address_is_named() {
        let error = production(&[
            ("QM_DATABASE_URL", "postgres://db/qm"),
            ("QM_BUS_URL", "memory://"),
            ("QM_API_ADDR", "localhost"),
        ])
        .expect_err("refused");
        assert!(error.to_string().starts_with("QM_API_ADDR is invalid"), "{error}");
    }

    #[test]
    fn an_unknown_provider_is_refused() {
        let error = production(&[
            ("QM_DATABASE_URL", "postgres://db/qm"),
            ("QM_BUS_URL", "memory://"),
            ("QM_PROVIDERS", "aws,gcp"),
        ])
        .expect_err("refused");
        assert!(error.to_string().contains("unknown provider `gcp`"), "{error}");
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let path = std::env::temp_dir().join(format!("qm-config-test-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").expect("write");
        let environment = Environment::from_pairs([("QM_ADMIN_PASSWORD_FILE", path.display().to_string())]);
        let secret = environment.secret("QM_ADMIN_PASSWORD").expect("readable").expect("set");
        assert_eq!(secret.expose(), "s3cret");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        std::fs::remove_file(&path).expect("remove");
    }

    #[test]
    fn an_unreadable_secret_file_is_an_error_not_an_absence() {
        let environment = Environment::from_pairs([("QM_ADMIN_PASSWORD_FILE", "/nonexistent/secret")]);
        assert!(matches!(environment.secret("QM_ADMIN_PASSWORD"), Err(ConfigError::UnreadableFile { .. })));
    }

    #[test]
    fn embedded_settings_default_to_sqlite_memory_bus_and_local_providers() {
        let settings = Settings::embedded(&Environment::from_pairs::<[(&str, &str); 0], _, _>([]), Path::new("/data"))
            .expect("valid");
        assert_eq!(settings.database_url.expose(), "sqlite:///data/qm.db");
        assert_eq!(settings.bus_url.expose(), "memory://");
        assert_eq!(settings.providers, ["local", "sim"]);
        assert_eq!(settings.api_addr.port(), 8003);
        assert_eq!(settings.reporting_currency, Currency::EUR);
        assert_eq!(settings.installation, DEFAULT_INSTALLATION);
        assert_eq!(settings.boot.engine_image, defaults::ENGINE_IMAGE);
    }

    #[test]
    fn installation_ids_and_images_are_checked() {
        let installation_of = |text: &str| installation(&Environment::from_pairs([("QM_INSTALLATION", text)]));
        assert_eq!(installation_of("prod-eu-1").as_deref().ok(), Some("prod-eu-1"));
        for bad in ["Prod", "-a", "a-", "a b", "a=b", &"a".repeat(33)] {
            assert!(installation_of(bad).is_err(), "{bad:?}");
        }
        assert!(image_reference("vllm/vllm-openai:v0.11.0").is_ok());
        assert!(image_reference("registry.example.com:5000/qm/agent@sha256:abc").is_ok());
        for bad in ["", "-v /:/host", "a b", "img\nExecStart=x", "img;reboot", "img$x"] {
            assert!(image_reference(bad).is_err(), "{bad:?}");
        }
        let key_of = |key: &str| BootSettings::from_environment(&Environment::from_pairs([("QM_ENGINE_API_KEY", key)]));
        assert!(key_of("engine-key-0123456789").is_ok_and(|boot| boot.engine_api_key.is_some()));
        for bad in ["short", "engine key with spaces", "key\nVLLM=x-0123456789", &"k".repeat(129)] {
            assert!(key_of(bad).is_err(), "{bad:?}");
        }
    }
}
