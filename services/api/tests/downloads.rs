//! `GET /downloads/qm-worker-agent` serves the file `QM_AGENT_BINARY` names, byte for byte, with
//! its SHA-256 (checked here with `sha256sum`) beside it; without the setting both are a 404
//! problem. No credential is needed: instances fetch it before their agent runs.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, Backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_is_served_with_its_checksum() {
    let path = std::env::temp_dir().join(format!("qm-agent-{}", uuid::Uuid::new_v4().simple()));
    let bytes: Vec<u8> = (0..200_000u32).map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let api = Api::start_with(Backend::Sqlite, &[("QM_AGENT_BINARY", path.to_str().unwrap())]).await;
    let response = api.client.get(api.url("/downloads/qm-worker-agent")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let checksum = api.raw("GET", "/downloads/qm-worker-agent.sha256", None, None).await.expect(200);
    let expected = std::process::Command::new("sha256sum").arg(&path).output().unwrap();
    let expected = String::from_utf8(expected.stdout).unwrap();
    let expected = expected.split_whitespace().next().unwrap();
    assert_eq!(checksum, serde_json::json!(format!("{expected}  qm-worker-agent\n")));
    // The file changing on disk changes nothing served: what was checksummed is what is sent.
    std::fs::write(&path, b"replaced").unwrap();
    let again = api.client.get(api.url("/downloads/qm-worker-agent")).send().await.unwrap();
    assert_eq!(again.bytes().await.unwrap().len(), bytes.len());
    api.stop().await;
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_binary_the_download_is_a_404_problem() {
    let api = Api::start(Backend::Sqlite).await;
    for path in ["/downloads/qm-worker-agent", "/downloads/qm-worker-agent.sha256"] {
        let problem = api.raw("GET", path, None, None).await.expect(404);
        assert!(problem["detail"].as_str().unwrap().contains("QM_AGENT_BINARY"), "{problem}");
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_binary_stops_the_api_at_start_up() {
    let directory = std::env::temp_dir().join(format!("qm-download-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    let database = format!("sqlite://{}", directory.join("qm.db").display());
    let settings = qm_config::Settings::from_env(&qm_config::Environment::from_pairs([
        ("QM_DATABASE_URL", database.as_str()),
        ("QM_BUS_URL", "memory://"),
        ("QM_ADMIN_PASSWORD", common::ADMIN_PASSWORD),
        ("QM_AGENT_BINARY", "/nonexistent/qm-worker-agent"),
    ]))
    .unwrap();
    let dependencies = qm_runtime::entrypoint::connect(settings).await.unwrap();
    let address = "127.0.0.1:0".parse().unwrap();
    let error = qm_api::build(dependencies, address, qm_runtime::Shutdown::new()).await.err().unwrap();
    assert!(error.to_string().contains("QM_AGENT_BINARY /nonexistent/qm-worker-agent cannot be read"), "{error}");
    std::fs::remove_dir_all(&directory).unwrap();
}
