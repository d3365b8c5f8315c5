//! Security (issue 11), driven over HTTP the way an attacker would: a tenant's operator, an
//! admin of another organization, a stolen or stale credential, a hostile worker, a cross-site
//! page. Each test asserts the refusal; each failed on the code before these controls.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ADMIN_PASSWORD, Api, Backend};
use futures::StreamExt as _;
use qm_domain::{InstanceId, InstanceState};
use serde_json::{Value, json};

on_both_backends!(
    keys_are_capped_by_their_creator_and_die_with_it,
    twenty_concurrent_deployments_admit_exactly_what_the_cap_allows,
);

fn sqlite<F, Fut>(variables: &'static [(&'static str, &'static str)], scenario: F)
where
    F: FnOnce(Arc<Api>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(common::run(Backend::Sqlite, variables, scenario));
}

// 1. No value crosses into user data unescaped: the model is validated at the edge.
#[test]
fn a_model_that_would_add_a_boot_key_is_refused_with_the_field_named() {
    sqlite(&[], |api| async move {
        let admin = api.admin().await;
        for model in ["m\nQM_ENGINE_COMMAND=touch pwned; sleep 1000", "$(id)", "a b", "x\"y", &"m".repeat(201)] {
            let request = json!({ "model": model, "count": 1, "provider": "local", "zone": "local-1", "instance_type": "local.cpu" });
            let refused = api.post("/deployments", &admin, request).await.expect(422);
            assert_eq!(refused["errors"][0]["field"], "model", "{refused}");
        }
        let listed = api.get("/instances", &admin).await.expect(200);
        assert_eq!(listed["items"].as_array().unwrap().len(), 0, "nothing was created");
        let good = json!({ "model": "meta-llama/Llama-3.1-8B-Instruct", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
        api.post("/deployments", &admin, good).await.expect(202);
    });
}

// 2. No privilege escalation between users.
#[test]
fn only_the_platform_admin_touches_the_platform_admins_account() {
    sqlite(&[], |api| async move {
        let root = api.admin().await;
        let me = api.get("/auth/me", &root).await.expect(200);
        let root_id = me["id"].as_str().unwrap().to_owned();
        // An admin of the platform admin's own organization.
        let deputy = api.member(&root, "deputy", "admin").await;
        for change in [json!({ "password": "taken-over-now" }), json!({ "email": "attacker@example.com" })] {
            api.put(&format!("/users/{root_id}"), &deputy, change).await.expect(403);
        }
        api.delete(&format!("/users/{root_id}"), &deputy).await.expect(403);
        api.login("admin", ADMIN_PASSWORD).await;
        // The platform admin itself still may.
        api.put(&format!("/users/{root_id}"), &root, json!({ "first_name": "Root" })).await.expect(200);
    });
}

async fn keys_are_capped_by_their_creator_and_die_with_it(api: Arc<Api>) {
    let root = api.admin().await;
    let admin_id = api.user(&root, None, "keymaker", "admin").await;
    let keymaker = api.login("keymaker", "password-of-a-user").await;
    let key = api.post("/api_keys", &keymaker, json!({ "name": "ci", "role": "admin" })).await.expect(201);
    let secret = key["secret"].as_str().unwrap().to_owned();
    api.get("/users", &secret).await.expect(200);
    // The creator is demoted: the key does no more than its creator now may.
    api.put(&format!("/users/{admin_id}"), &root, json!({ "role": "viewer" })).await.expect(200);
    api.get("/users", &secret).await.expect(403);
    let deployment =
        json!({ "model": "m", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
    api.post("/deployments", &secret, deployment).await.expect(403);
    api.get("/instances", &secret).await.expect(200);
    // A viewer cannot grant itself more, nor an admin grant above its own role through a key.
    let operator_key = {
        let operator = api.member(&root, "opr", "operator").await;
        api.post("/api_keys", &operator, json!({ "name": "op-key" })).await.expect(201)["secret"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    api.post(
        "/users",
        &operator_key,
        json!({ "username": "sneaky", "email": "s@example.com", "password": "password-1234", "role": "admin" }),
    )
    .await
    .expect(403);
    // The creator is deleted: its keys stop working.
    api.delete(&format!("/users/{admin_id}"), &root).await.expect(204);
    api.get("/instances", &secret).await.expect(401);
    let listed = api.get("/api_keys", &root).await.expect(200);
    let revoked = listed["items"].as_array().unwrap().iter().find(|listed| listed["id"] == key["id"]).unwrap().clone();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
}

#[test]
fn keys_expire() {
    sqlite(&[], |api| async move {
        let root = api.admin().await;
        let past = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
        api.post("/api_keys", &root, json!({ "name": "stale", "expires_at": past })).await.expect(422);
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
        let key = api.post("/api_keys", &root, json!({ "name": "short", "expires_at": soon })).await.expect(201);
        let secret = key["secret"].as_str().unwrap();
        api.get("/instances", secret).await.expect(200);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        api.get("/instances", secret).await.expect(401);
    });
}

// 3. Login cannot be raced.
#[test]
fn fifty_concurrent_wrong_guesses_get_at_most_the_limit_through() {
    sqlite(&[], |api| async move {
        let guesses = (0..50).map(|attempt| {
            let api = api.clone();
            async move {
                let body = json!({ "login": "admin", "password": format!("guess-{attempt}") });
                api.call("POST", "/auth/login", None, Some(body)).await.status
            }
        });
        let statuses = futures::future::join_all(guesses).await;
        let checked = statuses.iter().filter(|status| **status == 401).count();
        let limited = statuses.iter().filter(|status| **status == 429).count();
        assert_eq!(checked + limited, 50, "{statuses:?}");
        assert!(checked <= qm_api::LOGIN_FAILURES_PER_ACCOUNT, "{checked} guesses were checked: {statuses:?}");
        // The right password is refused too while the account is locked.
        let locked =
            api.call("POST", "/auth/login", None, Some(json!({ "login": "admin", "password": ADMIN_PASSWORD })));
        let locked = locked.await;
        assert_eq!(locked.status, 429);
        assert!(locked.header("retry-after").is_some());
    });
}

#[test]
fn username_and_email_are_one_account_and_the_login_field_is_bounded() {
    sqlite(&[], |api| async move {
        let root = api.admin().await;
        api.user(&root, None, "twin", "viewer").await;
        for login in ["twin", "twin@example.com", "TWIN@example.com", "twin", "twin@example.com"] {
            let body = json!({ "login": login, "password": "not-the-password" });
            api.call("POST", "/auth/login", None, Some(body)).await.expect(401);
        }
        let body = json!({ "login": "twin", "password": "password-of-a-user" });
        api.call("POST", "/auth/login", None, Some(body)).await.expect(429);
        let long = json!({ "login": "a".repeat(10_000), "password": "x" });
        let refused = api.call("POST", "/auth/login", None, Some(long)).await.expect(422);
        assert_eq!(refused["errors"][0]["field"], "login");
    });
}

// 4. Budgets cannot be overshot by racing or by failover.
/// What `hourly_micros` costs from now to the end of the month (UTC).
fn rest_of_month(hourly_micros: i128) -> i128 {
    use chrono::Datelike as _;
    let now = chrono::Utc::now();
    let (year, month) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
    let next_month = chrono::NaiveDate::from_ymd_opt(year, month, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
    hourly_micros * i128::from((next_month - now).num_seconds()) / 3600
}

/// A hard-capped budget of `amount` for the caller's organization.
async fn hard_cap(api: &Api, token: &str, amount: i128) {
    let organization = api.get("/auth/me", token).await.expect(200)["organization_id"].as_str().unwrap().to_owned();
    let budget = json!({ "amount_micros": i64::try_from(amount).unwrap(), "hard_cap": true });
    api.put(&format!("/finops/budgets/{organization}"), token, budget).await.expect(200);
}

async fn twenty_concurrent_deployments_admit_exactly_what_the_cap_allows(api: Arc<Api>) {
    let root = api.admin().await;
    // sim.l4 costs 0.70 EUR/h: room for five running to the end of the month, not six.
    hard_cap(&api, &root, rest_of_month(700_000) * 11 / 2).await;
    let attempts = (0..20).map(|_| {
        let (api, root) = (api.clone(), root.clone());
        async move {
            let request =
                json!({ "model": "m", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
            api.post("/deployments", &root, request).await.status
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(statuses.iter().filter(|status| **status == 202).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| **status == 402).count(), 15, "{statuses:?}");
}

#[test]
fn a_failover_list_counts_at_its_most_expensive_placement() {
    sqlite(&[], |api| async move {
        let root = api.admin().await;
        // Room for an L4 (0.70/h) for the rest of the month, not an H100 (2.50/h).
        hard_cap(&api, &root, rest_of_month(700_000) * 3 / 2).await;
        let request = json!({
            "model": "m", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4",
            "failover": [{ "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.h100" }],
        });
        api.post("/deployments", &root, request).await.expect(402);
        let l4_only =
            json!({ "model": "m", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
        api.post("/deployments", &root, l4_only.clone()).await.expect(202);
        // That one, still `requested`, counts: a second does not fit.
        api.post("/deployments", &root, l4_only).await.expect(402);
    });
}

// 5. One tenant cannot flood the fleet commands.
#[test]
fn fleet_commands_are_rate_limited_per_organization() {
    sqlite(&[], |api| async move {
        let root = api.admin().await;
        for _ in 0..qm_api::FLEET_COMMAND_BURST {
            api.call("POST", "/catalog/sync", Some(&root), None).await.expect(202);
        }
        let limited = api.call("POST", "/catalog/sync", Some(&root), None).await;
        assert_eq!(limited.status, 429, "{}", limited.body);
        assert!(limited.header("retry-after").is_some());
        // Another kind, and another organization, are not affected.
        api.call("POST", "/fleet/reconcile", Some(&root), None).await.expect(202);
        let (_, other) = api.organization(&root, "other-tenant").await;
        api.call("POST", "/catalog/sync", Some(&other), None).await.expect(202);
    });
}

// 6. Live streams end when the right to see them ends.
async fn open_stream(api: &Api, token: &str, query: &str) -> reqwest::Response {
    api.client.get(api.url(&format!("/events{query}"))).bearer_auth(token).send().await.unwrap()
}

/// Reads the stream until it ends; `Err` when it is still open after `within`.
async fn ends_within(response: reqwest::Response, within: Duration) -> Result<(), ()> {
    let mut body = response.bytes_stream();
    tokio::time::timeout(within, async { while let Some(Ok(_)) = body.next().await {} }).await.map_err(|_| ())
}

#[test]
fn a_stream_closes_when_its_key_is_revoked_anywhere() {
    sqlite(&[("QM_EVENTS_RECHECK_SECONDS", "1")], |api| async move {
        let root = api.admin().await;
        let key = api.post("/api_keys", &root, json!({ "name": "watcher", "role": "viewer" })).await.expect(201);
        let (id, secret) = (key["id"].as_str().unwrap().to_owned(), key["secret"].as_str().unwrap().to_owned());
        // Revoked through this replica: the stream closes at once.
        let stream = open_stream(&api, &secret, "").await;
        assert_eq!(stream.status(), 200);
        api.delete(&format!("/api_keys/{id}"), &root).await.expect(204);
        ends_within(stream, Duration::from_secs(3)).await.expect("closed on revocation");
        // Revoked behind this replica's back (as another replica would): closed at the next
        // check, once the 5 s credential cache has let go.
        let key = api.post("/api_keys", &root, json!({ "name": "watcher-2", "role": "viewer" })).await.expect(201);
        let (id, secret) = (key["id"].as_str().unwrap().to_owned(), key["secret"].as_str().unwrap().to_owned());
        let stream = open_stream(&api, &secret, "").await;
        let mut tx = api.store.begin().await.unwrap();
        tx.revoke_api_key(id.parse().unwrap()).await.unwrap();
        tx.commit().await.unwrap();
        ends_within(stream, Duration::from_secs(9)).await.expect("closed at the next check");
    });
}

#[test]
fn streams_are_capped_per_principal_and_catch_up_is_bounded() {
    sqlite(&[], |api| async move {
        let root = api.admin().await;
        let mut open = Vec::new();
        for _ in 0..qm_api::STREAMS_PER_PRINCIPAL {
            let stream = open_stream(&api, &root, "").await;
            assert_eq!(stream.status(), 200);
            open.push(stream);
        }
        let refused = open_stream(&api, &root, "").await;
        assert_eq!(refused.status(), 429);
        drop(open);
        // 1,100 state changes, then a stream from the start: at most 1,000 replayed, then told.
        for _ in 0..11 {
            api.deploy(&root, 100).await;
        }
        let reader = api.member(&root, "reader", "viewer").await;
        // Let the replica's feed follower reach the outbox head (it polls; loaded CI is slow).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let stream = open_stream(&api, &reader, "?after=0").await;
        assert_eq!(stream.status(), 200);
        let mut body = stream.bytes_stream();
        let mut text = String::new();
        let skipped = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(Ok(chunk)) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains("event: stream.skipped") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(skipped, "no stream.skipped event");
        let replayed = text.split("event: stream.skipped").next().unwrap().matches("\nevent: ").count();
        assert!(replayed <= qm_api::feed::MAX_CATCH_UP, "{replayed} events replayed");
    });
}

// 7. Worker credentials are short-lived and heartbeats bounded.
fn registration(id: &str, token: &str) -> Value {
    json!({ "instance_id": id, "bootstrap_token": token, "model": "m", "engine_url": "http://evil.example:9999", "agent_version": "0.1.0" })
}

async fn register(api: &Api, id: &str, token: &str) -> String {
    let registered = api.call("POST", "/internal/worker/register", None, Some(registration(id, token))).await;
    registered.expect(200)["worker_token"].as_str().unwrap().to_owned()
}

#[test]
fn worker_tokens_rotate_only_when_current_expire_and_die_with_their_instance() {
    sqlite(&[], |api| async move {
        let root = api.admin().await;
        let ids = api.deploy(&root, 3).await;
        // An expired bootstrap token registers nothing.
        let stale = api.booting(&ids[0], chrono::Duration::seconds(-1)).await;
        api.call("POST", "/internal/worker/register", None, Some(registration(&ids[0], &stale))).await.expect(401);
        // A token in its grace period cannot rotate (a stolen old token cannot mint new ones).
        let bootstrap = api.booting(&ids[1], chrono::Duration::hours(1)).await;
        let first = register(&api, &ids[1], &bootstrap).await;
        let rotated = api.call("POST", "/internal/worker/rotate", Some(&first), None).await.expect(200);
        let second = rotated["worker_token"].as_str().unwrap().to_owned();
        api.call("POST", "/internal/worker/rotate", Some(&first), None).await.expect(401);
        let heartbeat = json!({ "instance_id": ids[1], "status": "ready", "queue_depth": 0, "in_flight": 0 });
        api.call("POST", "/internal/worker/heartbeat", Some(&first), Some(heartbeat.clone())).await.expect(200);
        // The router reaches it at the provider's address and this port, not at evil.example.
        let worker = api.get(&format!("/instances/{}/worker", ids[1]), &root).await.expect(200);
        assert_eq!(worker["engine_port"], 9999);
        // The instance terminates: both tokens die with it.
        let id: InstanceId = ids[1].parse().unwrap();
        let mut tx = api.store.begin().await.unwrap();
        for (from, to) in [
            (InstanceState::Ready, InstanceState::Terminating),
            (InstanceState::Terminating, InstanceState::Terminated),
        ] {
            let transition = qm_store::Transition { instance: id, from, to, reason: None, progress_percent: None };
            tx.transition_instance(&transition).await.unwrap().unwrap();
        }
        tx.commit().await.unwrap();
        for token in [&first, &second] {
            api.call("POST", "/internal/worker/heartbeat", Some(token), Some(heartbeat.clone())).await.expect(401);
        }
    });
}

#[test]
fn heartbeats_and_registrations_are_bounded_and_rate_limited() {
    sqlite(&[], |api| async move {
        let root = api.admin().await;
        let ids = api.deploy(&root, 2).await;
        let bootstrap = api.booting(&ids[0], chrono::Duration::hours(1)).await;
        let token = register(&api, &ids[0], &bootstrap).await;
        let beat = |extra: Value| {
            let mut body = json!({ "instance_id": ids[0], "status": "ready", "queue_depth": 0, "in_flight": 0 });
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            body
        };
        let gpu = json!({ "index": 0, "utilization_percent": 10.0, "memory_used_mb": 1, "memory_total_mb": 2 });
        let hostile = [
            json!({ "usage": { "prompt_tokens": u64::MAX, "completion_tokens": 1 } }),
            json!({ "usage": { "prompt_tokens": 2_000_000_000_u64, "completion_tokens": 0 } }),
            json!({ "gpus": vec![gpu.clone(); 17] }),
            json!({ "gpus": [{ "index": 0, "utilization_percent": 1e300, "memory_used_mb": 1, "memory_total_mb": 2 }] }),
        ];
        for extra in hostile {
            api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(extra))).await.expect(422);
        }
        // A flood from one worker is cut off.
        let mut limited = false;
        for _ in 0..30 {
            let answer = api.call("POST", "/internal/worker/heartbeat", Some(&token), Some(beat(json!({})))).await;
            if answer.status == 429 {
                assert!(answer.header("retry-after").is_some());
                limited = true;
                break;
            }
        }
        assert!(limited, "30 heartbeats in a row were all accepted");
        // Guessing bootstrap tokens is cut off too, before the right one is tried.
        let right = api.booting(&ids[1], chrono::Duration::hours(1)).await;
        let mut statuses = Vec::new();
        for guess in 0..8 {
            let body = registration(&ids[1], &format!("qmb_guess{guess}"));
            statuses.push(api.call("POST", "/internal/worker/register", None, Some(body)).await.status);
        }
        assert!(statuses.contains(&429), "{statuses:?}");
        api.call("POST", "/internal/worker/register", None, Some(registration(&ids[1], &right))).await.expect(429);
        // And a registration carrying hostile text is refused field by field.
        let mut hostile = registration(&ids[1], &right);
        hostile["model"] = json!("m\nQM_X=1");
        hostile["engine_url"] = json!("file:///etc/passwd");
        let refused = api.call("POST", "/internal/worker/register", None, Some(hostile)).await.expect(422);
        let fields: Vec<&str> =
            refused["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["model", "engine_url"]);
    });
}

// 8. Cookie sessions resist cross-site requests.
#[test]
fn a_cross_site_change_riding_on_the_cookie_is_refused() {
    sqlite(&[], |api| async move {
        let login = api
            .client
            .post(api.url("/auth/login"))
            .json(&json!({ "login": "admin", "password": ADMIN_PASSWORD }))
            .send()
            .await
            .unwrap();
        let body: Value = login.json().await.unwrap();
        let token = body["token"].as_str().unwrap().to_owned();
        let cookie = format!("qm_session={token}");
        let host = api.base.trim_start_matches("http://").to_owned();
        let deployment =
            json!({ "model": "m", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
        let send = |headers: Vec<(&'static str, String)>| {
            let mut request = api.client.post(api.url("/deployments")).json(&deployment).header("cookie", &cookie);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(send(vec![("origin", "https://evil.example".into())]).await, 403);
        assert_eq!(send(vec![("sec-fetch-site", "cross-site".into())]).await, 403);
        assert_eq!(send(vec![]).await, 403, "no provenance at all");
        assert_eq!(send(vec![("origin", format!("http://{host}"))]).await, 202);
        assert_eq!(send(vec![("sec-fetch-site", "same-origin".into())]).await, 202);
        assert_eq!(send(vec![("x-qm-csrf", "1".into())]).await, 202);
        // Reading with the cookie, and bearer tokens from anywhere, are unaffected.
        let read = api.client.get(api.url("/instances")).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(read.status(), 200);
        let bearer =
            api.client.post(api.url("/deployments")).bearer_auth(&token).header("origin", "https://evil.example");
        assert_eq!(bearer.json(&deployment).send().await.unwrap().status(), 202);
    });
}

// 9. Nothing internal leaks to tenants.
#[test]
fn a_taken_email_in_another_organization_is_not_revealed() {
    sqlite(&[], |api| async move {
        let root = api.admin().await;
        let (_, tenant_admin) = api.organization(&root, "acme").await;
        api.user(&root, None, "insider", "viewer").await;
        let probe = json!({ "username": "probe", "email": "insider@example.com", "password": "password-1234", "role": "viewer" });
        let refused = api.post("/users", &tenant_admin, probe).await.expect(409);
        let detail = refused["detail"].as_str().unwrap();
        assert!(!detail.contains("`email`") && !detail.contains("insider"), "{refused}");
        assert!(refused["errors"].as_array().is_none_or(Vec::is_empty), "{refused}");
        // Within its own organization the field is named.
        api.user(&tenant_admin, None, "acme-dev", "viewer").await;
        let clash = json!({ "username": "acme-dev", "email": "new@example.com", "password": "password-1234", "role": "viewer" });
        let named = api.post("/users", &tenant_admin, clash).await.expect(409);
        assert_eq!(named["errors"][0]["field"], "username");
    });
}

#[test]
fn metrics_can_require_a_bearer_token() {
    sqlite(&[("QM_METRICS_TOKEN", "scrape-secret")], |api| async move {
        let anonymous = api.client.get(api.url("/metrics")).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        let wrong = api.client.get(api.url("/metrics")).bearer_auth("guess").send().await.unwrap();
        assert_eq!(wrong.status(), 401);
        let scraper = api.client.get(api.url("/metrics")).bearer_auth("scrape-secret").send().await.unwrap();
        assert_eq!(scraper.status(), 200);
        assert!(scraper.text().await.unwrap().contains("qm_"));
    });
}
