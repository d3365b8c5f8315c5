//! moto's EC2 server (a real, independent implementation of the EC2 API), run on a free port for
//! one test and stopped when dropped. `make venv` installs it into `./.venv`; a missing server
//! fails the test naming what to run, it never skips.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `QM_MOTO_SERVER`, or `.venv/bin/moto_server` in the workspace.
fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("QM_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace.join(".venv/bin/moto_server")
}

impl Moto {
    /// # Panics
    /// When moto is not installed or does not come up within 30 s.
    pub async fn start() -> Self {
        let binary = binary();
        assert!(
            binary.exists(),
            "moto_server is missing at {}: run `make venv` (make test does), or set QM_MOTO_SERVER",
            binary.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .unwrap_or_else(|error| panic!("no free port: {error}"));
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        // Owned from here on: a failure below stops the server instead of leaking it.
        let moto = Self { child, url: format!("http://127.0.0.1:{port}") };
        let client = crate::http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client.get(format!("{}/moto-api/", moto.url)).send().await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "moto did not answer on {} within 30 s", moto.url);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    /// What `AWS_ENDPOINT_URL` should be.
    pub fn url(&self) -> &str {
        &self.url
    }
}
