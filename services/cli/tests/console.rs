//! The web console in a real Chromium (Debian's `chromium`, driven by Playwright's
//! `playwright-core` from npm; `make console-tools` installs both, `make test` runs it first):
//! log in (a wrong password first), deploy one `local` instance from the form with its cost
//! estimated, watch it reach `ready` without a reload and its cost grow, terminate it and watch
//! `terminated`; a viewer sees no deploy or terminate control and gets 403 when it tries; a user
//! of another organization sees none of it, at 390 px wide. axe-core finds no serious or
//! critical violation on any page. Screenshots of each step go to
//! `$CARGO_TARGET_DIR/console-screenshots/`.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{Dev, Session, temporary_data_dir};

const PASSWORD: &str = "console-admin-password";
const USER_PASSWORD: &str = "console-user-password";

fn required(path: PathBuf, what: &str) -> PathBuf {
    assert!(path.exists(), "{what} is missing at {}: run `make console-tools`", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_deploys_watches_and_terminates_in_chromium_and_shows_others_nothing() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tools = root.join(".npm-tools/node_modules");
    let playwright = required(tools.join("playwright-core"), "playwright-core (npm)");
    let axe = required(tools.join("axe-core/axe.min.js"), "axe-core (npm)");
    let chromium = required(PathBuf::from("/usr/bin/chromium"), "chromium (Debian)");
    let data_dir = temporary_data_dir();
    let (dev, urls, _) =
        Dev::start_with(&data_dir, &[], &[("QM_ADMIN_PASSWORD", PASSWORD), ("QM_COOKIE_SECURE", "false")]);
    let session = Session::login(&urls["api"], PASSWORD).await;
    let viewer =
        json!({ "username": "viewer", "email": "viewer@example.com", "password": USER_PASSWORD, "role": "viewer" });
    let (status, body) = session.exchange(reqwest::Method::POST, "/users", Some(viewer)).await;
    assert_eq!(status, 201, "{body}");
    let (status, other) = session
        .exchange(reqwest::Method::POST, "/organizations", Some(json!({ "name": "Other", "slug": "other" })))
        .await;
    assert_eq!(status, 201, "{other}");
    let outsider = json!({ "username": "outsider", "email": "outsider@example.com", "password": USER_PASSWORD,
        "role": "admin", "organization_id": other["id"] });
    let (status, body) = session.exchange(reqwest::Method::POST, "/users", Some(outsider)).await;
    assert_eq!(status, 201, "{body}");

    let pool = json!({ "name": "console-pool", "model": "pooled", "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4",
        "min_replicas": 0, "max_replicas": 1 });
    let (status, body) = session.exchange(reqwest::Method::POST, "/pools", Some(pool)).await;
    assert_eq!(status, 201, "{body}");
    let screenshots =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| root.join("target").display().to_string()))
            .join("console-screenshots");
    std::fs::create_dir_all(&screenshots).expect("screenshots directory");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.cjs");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("API_URL", &urls["api"])
            .env("ADMIN_PASSWORD", PASSWORD)
            .env("USER_PASSWORD", USER_PASSWORD)
            .env("PLAYWRIGHT_CORE", playwright)
            .env("AXE_CORE", axe)
            .env("CHROMIUM", chromium)
            .env("SCREENSHOTS", &screenshots)
            .output()
            .expect("node (install Node.js)")
    })
    .await
    .expect("join");
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser test failed:\n{said}");
    assert!(said.contains("every step passed"), "{said}");
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
