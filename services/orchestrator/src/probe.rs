//! Active health probes (DESIGN section 5), for instances whose heartbeats do not settle the
//! question: the agent's `/readyz` first, TCP :22 last. An instance's `address` is the agent's
//! `host:port` (the `local` provider) or a bare host, whose agent listens on the default port
//! 8090.

use std::fmt;
use std::time::Duration;

/// The agent's default port (DESIGN section 2).
pub const AGENT_PORT: u16 = 8090;

/// What the probes found, best evidence first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// `/readyz` answered 200.
    Ready,
    /// `/readyz` answered, but not 200; the agent lives and its engine is not ready.
    NotReady(u16),
    /// No agent answered; the host accepts connections on :22.
    HostUp,
    /// Nothing answered.
    Unreachable,
}

impl fmt::Display for Evidence {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready => formatter.write_str("/readyz answered 200"),
            Self::NotReady(status) => write!(formatter, "/readyz answered {status}"),
            Self::HostUp => formatter.write_str("the agent does not answer; the host accepts connections on :22"),
            Self::Unreachable => formatter.write_str("neither the agent nor :22 answers"),
        }
    }
}

/// Where to knock: the agent's `host:port` and the host's SSH port.
#[derive(Debug, PartialEq, Eq)]
struct Targets {
    agent: String,
    ssh: String,
}

fn targets(address: &str) -> Option<Targets> {
    let address = address.trim();
    if address.is_empty() {
        return None;
    }
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        let host = match socket.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        return Some(Targets { agent: socket.to_string(), ssh: format!("{host}:22") });
    }
    let host = match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Ok(std::net::IpAddr::V4(ip)) => ip.to_string(),
        // A host name, with or without a port.
        Err(_) => match address.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => {
                return Some(Targets { agent: address.to_owned(), ssh: format!("{host}:22") });
            }
            _ => address.to_owned(),
        },
    };
    Some(Targets { agent: format!("{host}:{AGENT_PORT}"), ssh: format!("{host}:22") })
}

#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
    timeout: Duration,
}

impl Prober {
    /// Each probe gives up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().timeout(timeout).build().unwrap_or_default();
        Self { client, timeout }
    }

    /// Probes the instance at `address`; `None` without an address.
    pub async fn probe(&self, address: &str) -> Option<Evidence> {
        let targets = targets(address)?;
        match self.client.get(format!("http://{}/readyz", targets.agent)).send().await {
            Ok(response) if response.status().is_success() => return Some(Evidence::Ready),
            Ok(response) => return Some(Evidence::NotReady(response.status().as_u16())),
            Err(_) => {}
        }
        let ssh = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&targets.ssh)).await;
        Some(if matches!(ssh, Ok(Ok(_))) { Evidence::HostUp } else { Evidence::Unreachable })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_the_agent_and_the_ssh_port() {
        let target = |agent: &str, ssh: &str| Some(Targets { agent: agent.into(), ssh: ssh.into() });
        assert_eq!(targets("127.0.0.1:41234"), target("127.0.0.1:41234", "127.0.0.1:22"));
        assert_eq!(targets("10.0.0.7"), target("10.0.0.7:8090", "10.0.0.7:22"));
        assert_eq!(targets("2001:db8::7"), target("[2001:db8::7]:8090", "[2001:db8::7]:22"));
        assert_eq!(targets("[2001:db8::7]:9000"), target("[2001:db8::7]:9000", "[2001:db8::7]:22"));
        assert_eq!(targets("gpu-1.internal"), target("gpu-1.internal:8090", "gpu-1.internal:22"));
        assert_eq!(targets("gpu-1.internal:9000"), target("gpu-1.internal:9000", "gpu-1.internal:22"));
        assert_eq!(targets(" "), None);
    }
}
