//! The API's OpenAPI document is the contract, checked from outside: schemathesis (from
//! `.venv`, which `make venv` installs) runs every check it has, its stateful phase included,
//! with a bounded number of examples, against a real `qm dev`, and finds no failure.
//! `tests/schemathesis.toml` holds the run's settings and, operation by operation, the few
//! answers a schema cannot express (each with its reason).

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{Session, temporary_data_dir};

fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_against_qm_dev() {
    let schemathesis = workspace_root().join(".venv/bin/schemathesis");
    assert!(schemathesis.exists(), "{} is missing: run `make venv` (make test does)", schemathesis.display());
    let data_dir = temporary_data_dir();
    let (dev, session) = Session::start(&data_dir).await;

    // Run in the data directory: schemathesis keeps a cache where it runs, and it goes with it.
    let output = Command::new(&schemathesis)
        .current_dir(&data_dir)
        .arg("--config-file")
        .arg(workspace_root().join("tests/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/api-docs/openapi.json", session.api))
        // As the platform administrator, so that every operation is reached; the two that
        // would end the run's own session are left out (their tests are in services/api).
        .args(["--exclude-path", "/auth/logout", "--exclude-path", "/auth/me/password"])
        .env("QM_SCHEMATHESIS_TOKEN", &session.token)
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "the run reported nothing:\n{stdout}");
    assert!(dev.terminate(std::time::Duration::from_secs(10)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
