//! The worker protocol over HTTP on SQLite and PostgreSQL: registration with the one-time
//! bootstrap token, heartbeats that drive booting → ready ⇄ unhealthy, token rotation with a
//! grace period, revocation, a registration repeated before the first heartbeat (its answer
//! lost: a new token replaces the unseen one), and the refusals (wrong, reused or revoked token: 401, logged;
//! another instance's id: 403).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::Api;
use serde_json::{Value, json};

on_both_backends!(
    an_agent_registers_heartbeats_and_is_refused_when_it_should_be,
    a_token_issued_again_keeps_the_first_valid_until_a_worker_registers
);

/// Moves an instance to `booting` and issues its bootstrap token; returns the token.
async fn booting_with_token(api: &Api, id: &str) -> String {
    api.booting(id, chrono::Duration::hours(1)).await
}

fn registration(id: &str, token: &str) -> Value {
    json!({
        "instance_id": id, "bootstrap_token": token, "model": "test-model", "engine_url": "http://127.0.0.1:9",
        "agent_version": "0.1.0", "gpus": [{ "index": 0, "name": "NVIDIA L4", "memory_total_mb": 23034 }],
    })
}

fn beat(id: &str, status: &str) -> Value {
    json!({
        "instance_id": id, "status": status, "queue_depth": 0, "in_flight": 1,
        "gpus": [{ "index": 0, "utilization_percent": 37.5, "memory_used_mb": 12000, "memory_total_mb": 23034, "temperature_c": 51.0, "power_w": 72.3 }],
    })
}

async fn an_agent_registers_heartbeats_and_is_refused_when_it_should_be(api: Arc<Api>) {
    let admin = api.admin().await;
    let ids = api.deploy(&admin, 2).await;
    let (first, second) = (ids[0].clone(), ids[1].clone());
    let bootstrap = booting_with_token(&api, &first).await;
    let other_bootstrap = booting_with_token(&api, &second).await;

    // Wrong token: 401, and logged.
    api.call("POST", "/internal/worker/register", None, Some(registration(&first, "qmb_wrong"))).await.expect(401);
    // Right token: a worker token, progress 80.
    let registered =
        api.call("POST", "/internal/worker/register", None, Some(registration(&first, &bootstrap))).await.expect(200);
    let token = registered["worker_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("qmw_"));
    assert_eq!(api.get(&format!("/instances/{first}"), &admin).await.expect(200)["progress_percent"], 80);
    // Repeated before any heartbeat (its answer lost with an api replica): a new token, and the
    // unseen one no longer works.
    let again =
        api.call("POST", "/internal/worker/register", None, Some(registration(&first, &bootstrap))).await.expect(200);
    let lost = token;
    let token = again["worker_token"].as_str().unwrap().to_owned();
    assert_ne!(token, lost);
    api.call("POST", "/internal/worker/heartbeat", Some(&lost), Some(beat(&first, "starting"))).await.expect(401);
    api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(&first, "starting"))).await.expect(200);
    // Reused once the worker has spoken: 401.
    api.call("POST", "/internal/worker/register", None, Some(registration(&first, &bootstrap))).await.expect(401);
    let logs =
        api.get(&format!("/action_logs?instance_id={first}&action_type=worker.register"), &admin).await.expect(200);
    let statuses: Vec<_> =
        logs["items"].as_array().unwrap().iter().map(|entry| entry["status"].as_str().unwrap().to_owned()).collect();
    assert_eq!(statuses, ["failed", "succeeded", "succeeded", "failed"], "every attempt is logged, newest first");

    // A heartbeat for another instance's id with this token: 403, logged.
    api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(&second, "ready"))).await.expect(403);
    assert_eq!(api.get(&format!("/instances/{second}"), &admin).await.expect(200)["state"], "booting", "untouched");
    // A session token or API key is not a worker token.
    api.call("POST", "/internal/worker/heartbeat", Some(&admin), Some(beat(&first, "ready"))).await.expect(401);

    // Ready: booting → ready at 100%; not ready: unhealthy; ready again: ready.
    let answer =
        api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(&first, "starting"))).await.expect(200);
    assert_eq!(answer["instance_state"], "booting");
    let answer =
        api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(&first, "ready"))).await.expect(200);
    assert_eq!(answer["instance_state"], "ready");
    let detail = api.get(&format!("/instances/{first}"), &admin).await.expect(200);
    assert_eq!(detail["progress_percent"], 100);
    let states: Vec<_> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| change["to_state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["requested", "provisioning", "booting", "ready"]);
    assert_eq!(
        api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(&first, "not_ready"))).await.expect(200)
            ["instance_state"],
        "unhealthy"
    );
    assert_eq!(
        api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(&first, "ready"))).await.expect(200)["instance_state"],
        "ready"
    );

    // Rotation: the new token works, the old one too during the grace period.
    let rotated = api.call("POST", "/internal/worker/rotate", Some(&token), None).await.expect(200);
    let new_token = rotated["worker_token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token);
    api.call("POST", "/internal/worker/heartbeat", Some(&new_token), Some(beat(&first, "ready"))).await.expect(200);
    api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(&first, "ready"))).await.expect(200);

    // Revocation: both refused; and the bootstrap token cannot be used to come back.
    let viewer = api.member(&admin, "val", "viewer").await;
    api.call("POST", &format!("/instances/{first}/worker/revoke"), Some(&viewer), None).await.expect(403);
    let (_, other_org) = api.organization(&admin, "other").await;
    api.call("POST", &format!("/instances/{first}/worker/revoke"), Some(&other_org), None).await.expect(404);
    assert_eq!(api.call("POST", &format!("/instances/{first}/worker/revoke"), Some(&admin), None).await.status, 204);
    api.call("POST", "/internal/worker/heartbeat", Some(&new_token), Some(beat(&first, "ready"))).await.expect(401);
    api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(&first, "ready"))).await.expect(401);
    api.call("POST", "/internal/worker/register", None, Some(registration(&first, &bootstrap))).await.expect(401);

    // The second instance's agent is unaffected.
    api.call("POST", "/internal/worker/register", None, Some(registration(&second, &other_bootstrap)))
        .await
        .expect(200);
    // An unknown instance is refused like a wrong token.
    let unknown = uuid::Uuid::now_v7().to_string();
    api.call("POST", "/internal/worker/register", None, Some(registration(&unknown, "qmb_x"))).await.expect(401);
}

/// A provisioning saga run twice (its first orchestrator died after the provider's create)
/// issues a second bootstrap token while the provider's instance carries the first: the first
/// still registers it; once a worker registered, a token issued again changes nothing.
async fn a_token_issued_again_keeps_the_first_valid_until_a_worker_registers(api: Arc<Api>) {
    let admin = api.admin().await;
    let id = api.deploy(&admin, 1).await.remove(0);
    let first = booting_with_token(&api, &id).await;
    let issue = |token: &'static str| {
        let api = api.clone();
        let id: qm_domain::InstanceId = id.parse().unwrap();
        async move {
            let mut tx = api.store.begin().await.unwrap();
            let expires = qm_store::now() + chrono::Duration::hours(1);
            tx.issue_bootstrap_token(id, &qm_api::auth::token_hash(token), expires).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    issue("qmb_second-run").await;
    let registered =
        api.call("POST", "/internal/worker/register", None, Some(registration(&id, &first))).await.expect(200);
    let token = registered["worker_token"].as_str().unwrap().to_owned();
    api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(&id, "ready"))).await.expect(200);
    issue("qmb_third-run").await;
    api.call("POST", "/internal/worker/register", None, Some(registration(&id, "qmb_third-run"))).await.expect(401);
    api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(&id, "ready"))).await.expect(200);
}
