//! Logs that correlate: with `QM_LOG_FORMAT=json`, a deployment sent with a `traceparent` and an
//! `x-request-id` is logged by the api with that request id and trace id; the orchestrator takes
//! the provision command off the bus under that trace and, after the provider call, emits
//! `instance.billing_started` under it, which finops then handles (and logs) under the same trace
//! id: two hops across the bus. The answer echoes the request id.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Dev, Session, temporary_data_dir};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_and_request_id_follow_a_deployment_through_the_bus_into_the_logs() {
    let data_dir = temporary_data_dir();
    let variables = [
        ("QM_ADMIN_PASSWORD", "logs-password"),
        ("QM_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,qm_orchestrator=debug,qm_runtime=debug"),
    ];
    let (dev, urls, _) = Dev::start_with(&data_dir, &[], &variables);
    let session = Session::login(&urls["api"], "logs-password").await;
    let response = session
        .client
        .post(format!("{}/deployments", urls["api"]))
        .bearer_auth(&session.token)
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("x-request-id", "deploy-drill-42")
        .json(&json!({ "model": "m", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" }))
        .send()
        .await
        .expect("deploy");
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "deploy-drill-42", "the request id is echoed");
    let accepted: Value = response.json().await.expect("json");
    let id = accepted["instance_ids"][0].as_str().expect("instance").to_owned();
    session.until(&format!("/instances/{id}"), |instance| instance["state"] == "ready", Duration::from_secs(30)).await;
    // A request without an id gets one.
    let answer = session.client.get(format!("{}/healthz", urls["api"])).send().await.expect("healthz");
    assert_eq!(answer.headers()["x-request-id"].len(), 32);

    let (status, lines) = dev.terminate_with_output(Duration::from_secs(20));
    assert!(status.success());
    let logs: Vec<Value> = lines.iter().filter_map(|line| serde_json::from_str(line).ok()).collect();
    assert!(logs.len() > 3, "JSON log lines: {lines:#?}");
    let traced = |value: &Value| value.to_string().contains(TRACE);
    let api = logs.iter().find(|line| traced(line) && line.to_string().contains("deploy-drill-42"));
    assert!(api.is_some(), "the api logged the request with its id and trace: {lines:#?}");
    let consumer = logs.iter().find(|line| {
        let text = line.to_string();
        traced(line) && text.contains("handle_message") && text.contains("instance.billing_started")
    });
    assert!(
        consumer.is_some(),
        "billing_started (the orchestrator's, after the provider call) carries the trace: {lines:#?}"
    );
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
