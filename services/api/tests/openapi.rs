//! The OpenAPI document: valid OpenAPI 3.x (checked by openapi-spec-validator from `.venv`,
//! which `make venv` installs), served with the Swagger UI from the binary, and true: every
//! documented operation is called here and its answer checked against its documented schema.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;

use common::schema::Document;
use common::{Api, Backend, Response};
use serde_json::{Value, json};

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The patterns of emails and usernames are written out in each request that carries one;
/// each copy must accept exactly what the server's parser accepts.
#[test]
fn documented_email_and_username_patterns_accept_what_the_parsers_accept() {
    let document = serde_json::to_value(qm_api::openapi::document()).unwrap();
    let long = format!("{}@example.org", "a".repeat(250));
    let samples = [
        "a@b.c",
        "Vera@Example.org",
        " v@e.io ",
        "a@b",
        "a@.b",
        "a@b.",
        "a@@b.c",
        "a b@c.d",
        "@b.c",
        "a@b..c",
        "",
        "abc",
        "ab",
        "a_b-c.d",
        "Abc",
        "-ab",
        "ab c",
        "été",
        "0ab",
        &long,
    ];
    type Accepts = fn(&str) -> bool;
    let parsers: [(&str, Accepts); 2] = [
        ("email", |text| qm_domain::Email::parse(text).is_ok()),
        ("username", |text| qm_domain::Username::parse(text).is_ok()),
    ];
    let mut checked = 0;
    for (schema_name, schema) in document["components"]["schemas"].as_object().unwrap() {
        for (field, accepts) in parsers {
            let property = &schema["properties"][field];
            let Some(pattern) = property["pattern"].as_str() else { continue };
            let regex = regex::Regex::new(pattern).unwrap();
            let max = property["maxLength"].as_u64().map_or(usize::MAX, |max| usize::try_from(max).unwrap());
            for sample in samples {
                let documented = regex.is_match(sample) && sample.chars().count() <= max;
                assert_eq!(documented, accepts(sample), "{schema_name}.{field} on {sample:?}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} patterns found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_and_the_ui_is_served_from_the_binary() {
    common::run(Backend::Sqlite, &[], |api| async move {
        let document = api.client.get(api.url("/api-docs/openapi.json")).send().await.unwrap();
        assert_eq!(document.status(), 200);
        let text = document.text().await.unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert!(parsed["openapi"].as_str().unwrap().starts_with("3."));
        let path = std::env::temp_dir().join(format!("qm-openapi-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, &text).unwrap();
        let validator = workspace_root().join(".venv/bin/openapi-spec-validator");
        assert!(validator.exists(), "{} is missing: run `make venv` (make test does)", validator.display());
        let output = std::process::Command::new(&validator).arg(&path).output().unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            output.status.success(),
            "openapi-spec-validator refused the document:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        let ui = api.client.get(api.url("/swagger-ui/")).send().await.unwrap();
        assert_eq!(ui.status(), 200);
        assert!(ui.text().await.unwrap().to_lowercase().contains("swagger"));
        let bundle = api.client.get(api.url("/swagger-ui/swagger-ui-bundle.js")).send().await.unwrap();
        assert_eq!(bundle.status(), 200, "assets come from the binary");
        assert!(bundle.bytes().await.unwrap().len() > 100_000);
    })
    .await;
}

struct Checker<'a> {
    api: &'a Api,
    document: Document<'a>,
    covered: Mutex<BTreeSet<(String, String)>>,
}

impl Checker<'_> {
    /// Calls `path` (an instance of `template`) and checks the answer against the document.
    async fn call(
        &self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let response = self.api.call(method, path, token, body).await;
        self.covered.lock().unwrap().insert((method.to_lowercase(), template.to_owned()));
        let schema = self.document.response_schema(method, template, response.status);
        let operation = &self.document.root["paths"][template][method.to_lowercase()]["responses"];
        assert!(
            operation.get(response.status.to_string()).is_some(),
            "{method} {template} answered {}, which the document does not list",
            response.status
        );
        if let Some(schema) = schema {
            let problems = self.document.check(&response.body, schema);
            assert!(problems.is_empty(), "{method} {path} ({}): {problems:#?}\n{}", response.status, response.body);
        }
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() {
    common::run(Backend::Sqlite, &[], |api| async move {
        let root: Value = api.client.get(api.url("/api-docs/openapi.json")).send().await.unwrap().json().await.unwrap();
        let checker = Checker { api: &api, document: Document { root: &root }, covered: Mutex::new(BTreeSet::new()) };
        let c = &checker;

        let login = c
            .call("POST", "/auth/login", "/auth/login", None, Some(json!({ "login": "admin", "password": common::ADMIN_PASSWORD })))
            .await
            .expect(200);
        let admin = login["token"].as_str().unwrap().to_owned();
        let a = Some(admin.as_str());
        c.call("POST", "/auth/login", "/auth/login", None, Some(json!({ "login": "admin", "password": "wrong-password" }))).await.expect(401);
        c.call("GET", "/auth/me", "/auth/me", a, None).await.expect(200);
        c.call("PUT", "/auth/me", "/auth/me", a, Some(json!({ "first_name": "Ada" }))).await.expect(200);
        // The agent download, not configured here (served bytes: tests/downloads.rs).
        for path in ["/downloads/qm-worker-agent", "/downloads/qm-worker-agent.sha256"] {
            c.call("GET", path, path, None, None).await.expect(404);
        }

        // Organizations and users.
        let organization = c.call("POST", "/organizations", "/organizations", a, Some(json!({ "name": "Beta", "slug": "beta" }))).await.expect(201);
        let org_id = organization["id"].as_str().unwrap();
        c.call("GET", "/organizations", "/organizations", a, None).await.expect(200);
        c.call("GET", "/organizations/{id}", &format!("/organizations/{org_id}"), a, None).await.expect(200);
        c.call("PUT", "/organizations/{id}", &format!("/organizations/{org_id}"), a, Some(json!({ "name": "Beta 2", "slug": "beta" }))).await.expect(200);
        let user = c
            .call("POST", "/users", "/users", a, Some(json!({ "username": "uma", "email": "uma@example.com", "password": "password-of-a-user", "role": "viewer" })))
            .await
            .expect(201);
        let user_id = user["id"].as_str().unwrap();
        c.call("GET", "/users", "/users", a, None).await.expect(200);
        c.call("GET", "/users/{id}", &format!("/users/{user_id}"), a, None).await.expect(200);
        c.call("PUT", "/users/{id}", &format!("/users/{user_id}"), a, Some(json!({ "role": "operator" }))).await.expect(200);
        c.call("POST", "/users", "/users", a, Some(json!({ "username": "uma", "email": "u2@example.com", "password": "password-of-a-user", "role": "viewer" }))).await.expect(409);

        // API keys.
        let key = c.call("POST", "/api_keys", "/api_keys", a, Some(json!({ "name": "ci" }))).await.expect(201);
        c.call("GET", "/api_keys", "/api_keys", a, None).await.expect(200);
        c.call("DELETE", "/api_keys/{id}", &format!("/api_keys/{}", key["id"].as_str().unwrap()), a, None).await;

        // Catalog.
        c.call("GET", "/providers", "/providers", a, None).await.expect(200);
        c.call("GET", "/providers/{name}", "/providers/sim", a, None).await.expect(200);
        c.call("PUT", "/providers/{name}", "/providers/sim", a, Some(json!({ "display_name": "Sim", "active": true }))).await.expect(200);
        let regions = c.call("GET", "/regions", "/regions?provider=sim", a, None).await.expect(200);
        let region = regions["items"][0].clone();
        let region_id = region["id"].as_str().unwrap();
        c.call("GET", "/regions/{id}", &format!("/regions/{region_id}"), a, None).await.expect(200);
        c.call("PUT", "/regions/{id}", &format!("/regions/{region_id}"), a, Some(json!({ "provider": "sim", "code": region["code"], "name": "Sim EU", "active": true }))).await.expect(200);
        let zones = c.call("GET", "/zones", "/zones?provider=sim", a, None).await.expect(200);
        let zone = zones["items"][0].clone();
        let zone_id = zone["id"].as_str().unwrap();
        c.call("GET", "/zones/{id}", &format!("/zones/{zone_id}"), a, None).await.expect(200);
        c.call("PUT", "/zones/{id}", &format!("/zones/{zone_id}"), a, Some(json!({ "region_id": zone["region_id"], "code": zone["code"], "name": "Zone", "active": true }))).await.expect(200);
        c.call("GET", "/zones/{id}/instance_types", &format!("/zones/{zone_id}/instance_types"), a, None).await.expect(200);
        let offers = c.call("GET", "/offers", "/offers?providers=sim&min_gpus=1&max_hourly_price=1.5", a, None).await.expect(200);
        assert!(offers.as_array().is_some_and(|offers| !offers.is_empty() && offers.iter().all(|offer| offer["provider"] == "sim")), "{offers}");
        c.call("GET", "/offers", "/offers?max_hourly_price=cheap", a, None).await.expect(422);
        let types = c.call("GET", "/instance_types", "/instance_types?provider=sim", a, None).await.expect(200);
        let instance_type = types["items"][0].clone();
        let type_id = instance_type["id"].as_str().unwrap();
        c.call("GET", "/instance_types/{id}", &format!("/instance_types/{type_id}"), a, None).await.expect(200);
        let mut replacement = instance_type.clone();
        for field in ["id", "created_at", "updated_at"] {
            replacement.as_object_mut().unwrap().remove(field);
        }
        c.call("PUT", "/instance_types/{id}", &format!("/instance_types/{type_id}"), a, Some(replacement)).await.expect(200);
        let offered = c.call("GET", "/instance_types/{id}/zones", &format!("/instance_types/{type_id}/zones"), a, None).await.expect(200);
        let zone_ids: Vec<_> = offered["items"].as_array().unwrap().iter().map(|zone| zone["id"].clone()).collect();
        c.call("PUT", "/instance_types/{id}/zones", &format!("/instance_types/{type_id}/zones"), a, Some(json!({ "zone_ids": zone_ids }))).await.expect(200);
        c.call("POST", "/catalog/sync", "/catalog/sync", a, Some(json!({}))).await.expect(202);
        c.call("POST", "/fleet/reconcile", "/fleet/reconcile", a, Some(json!({ "provider": "sim" }))).await.expect(202);

        // Deployments and instances.
        let accepted = c
            .call("POST", "/deployments", "/deployments", a, Some(json!({ "model": "m", "count": 2, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" })))
            .await
            .expect(202);
        c.call("POST", "/deployments", "/deployments", a, Some(json!({ "model": "m", "count": 1, "provider": "sim", "zone": "nowhere", "instance_type": "sim.l4" }))).await.expect(422);
        let deployment_id = accepted["deployment_id"].as_str().unwrap();
        c.call("GET", "/deployments", "/deployments", a, None).await.expect(200);
        c.call("GET", "/deployments/{id}", &format!("/deployments/{deployment_id}"), a, None).await.expect(200);
        // Pools.
        let pool = c
            .call("POST", "/pools", "/pools", a, Some(json!({ "model": "m", "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4", "min_replicas": 0, "max_replicas": 2 })))
            .await
            .expect(201);
        let pool_id = pool["id"].as_str().unwrap();
        c.call("POST", "/pools", "/pools", a, Some(json!({ "model": "m", "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4", "min_replicas": 3, "max_replicas": 2 }))).await.expect(409);
        let estimate = c.call("POST", "/deployments", "/deployments?dry_run=true", a, Some(json!({ "model": "m", "count": 2, "provider": "sim" }))).await.expect(200);
        assert_eq!((estimate["dry_run"].as_bool(), estimate["placements"][0]["provider"].as_str()), (Some(true), Some("sim")), "{estimate}");
        c.call("GET", "/pools", "/pools", a, None).await.expect(200);
        c.call("GET", "/pools/{id}", &format!("/pools/{pool_id}"), a, None).await.expect(200);
        c.call("PATCH", "/pools/{id}", &format!("/pools/{pool_id}"), a, Some(json!({ "max_replicas": 3 }))).await.expect(200);
        c.call("PATCH", "/pools/{id}", &format!("/pools/{pool_id}"), a, Some(json!({ "policy": { "max_step_up": 0 } }))).await.expect(422);
        c.call("DELETE", "/pools/{id}", &format!("/pools/{pool_id}"), a, None).await.expect(202);
        c.call("GET", "/pools/{id}", &format!("/pools/{pool_id}"), a, None).await.expect(404);
        let instance = accepted["instance_ids"][0].as_str().unwrap();
        c.call("GET", "/instances", "/instances", a, None).await.expect(200);
        c.call("GET", "/instances/{id}", &format!("/instances/{instance}"), a, None).await.expect(200);
        c.call("DELETE", "/instances/{id}", &format!("/instances/{instance}"), a, None).await.expect(202);
        c.call("PUT", "/instances/{id}/archive", &format!("/instances/{instance}/archive"), a, None).await.expect(409);
        c.call("GET", "/instances/{id}", &format!("/instances/{}", uuid::Uuid::now_v7()), a, None).await.expect(404);

        // The worker protocol, for the second instance (booting, with a bootstrap token).
        let worker_instance = accepted["instance_ids"][1].as_str().unwrap();
        let bootstrap = "qmb_openapi-test-token";
        {
            use qm_domain::InstanceState::{Booting, Provisioning, Requested};
            let id: qm_domain::InstanceId = worker_instance.parse().unwrap();
            let mut tx = api.store.begin().await.unwrap();
            for (from, to) in [(Requested, Provisioning), (Provisioning, Booting)] {
                let transition = qm_store::Transition { instance: id, from, to, reason: None, progress_percent: None };
                tx.transition_instance(&transition).await.unwrap().unwrap();
            }
            tx.issue_bootstrap_token(id, &qm_api::auth::token_hash(bootstrap), qm_store::now() + chrono::Duration::hours(1)).await.unwrap();
            tx.commit().await.unwrap();
        }
        let registration = json!({ "instance_id": worker_instance, "bootstrap_token": bootstrap, "model": "m", "engine_url": "http://127.0.0.1:9", "agent_version": "0.1.0" });
        let token = c
            .call("POST", "/internal/worker/register", "/internal/worker/register", None, Some(registration))
            .await
            .expect(200)["worker_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let wrong = json!({ "instance_id": worker_instance, "bootstrap_token": "qmb_wrong", "model": "m", "engine_url": "http://127.0.0.1:9", "agent_version": "0.1.0" });
        c.call("POST", "/internal/worker/register", "/internal/worker/register", None, Some(wrong)).await.expect(401);
        let worker = api
            .call("POST", "/internal/worker/register", None, None)
            .await;
        assert_eq!(worker.status, 415, "a body is required");
        let beat = json!({ "instance_id": worker_instance, "status": "ready", "queue_depth": 0, "in_flight": 0 });
        c.call("POST", "/internal/worker/heartbeat", "/internal/worker/heartbeat", Some(&token), Some(beat.clone())).await.expect(200);
        let other = json!({ "instance_id": instance, "status": "ready", "queue_depth": 0, "in_flight": 0 });
        c.call("POST", "/internal/worker/heartbeat", "/internal/worker/heartbeat", Some(&token), Some(other)).await.expect(403);
        c.call("POST", "/internal/worker/rotate", "/internal/worker/rotate", Some(&token), None).await.expect(200);
        c.call("GET", "/instances/{id}/worker", &format!("/instances/{worker_instance}/worker"), a, None).await.expect(200);

        // FinOps: no cost has been billed here; the shapes are what is checked.
        for path in [
            "/finops/dashboard/costs/summary",
            "/finops/dashboard/costs/window",
            "/finops/cost/actual/minute",
            "/finops/cost/cumulative/minute",
            "/finops/cost/forecast",
            "/finops/cost/per_token",
            "/finops/usage/tokens",
            "/finops/usage/tokens/window",
            "/finops/exchange_rates",
        ] {
            c.call("GET", path, path, a, None).await.expect(200);
        }
        let year = "/finops/cost/actual/minute?from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z";
        c.call("GET", "/finops/cost/actual/minute", year, a, None).await.expect(422);
        c.call("GET", "/finops/dashboard/costs/summary", "/finops/dashboard/costs/summary?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", a, None).await.expect(422);
        c.call("PUT", "/finops/exchange_rates/{currency}", "/finops/exchange_rates/USD", a, Some(json!({ "rate": "0.93" }))).await.expect(200);
        c.call("PUT", "/finops/exchange_rates/{currency}", "/finops/exchange_rates/usd", a, Some(json!({ "rate": "0.93" }))).await.expect(422);
        let own = c.call("GET", "/auth/me", "/auth/me", a, None).await.expect(200)["organization_id"].as_str().unwrap().to_owned();
        let budget = format!("/finops/budgets/{own}");
        c.call("PUT", "/finops/budgets/{organization_id}", &budget, a, Some(json!({ "amount_micros": 1, "hard_cap": true }))).await.expect(200);
        c.call("PUT", "/finops/budgets/{organization_id}", &budget, a, Some(json!({ "amount_micros": -5 }))).await.expect(422);
        c.call("GET", "/finops/budgets", "/finops/budgets", a, None).await.expect(200);
        c.call("GET", "/finops/budgets/{organization_id}", &budget, a, None).await.expect(200);
        let capped = json!({ "model": "m", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
        let refused = c.call("POST", "/deployments", "/deployments", a, Some(capped)).await.expect(402);
        assert_eq!(refused["budget"]["amount_micros"], 1);
        c.call("DELETE", "/finops/budgets/{organization_id}", &budget, a, None).await.expect(204);
        c.call("GET", "/finops/budgets/{organization_id}", &budget, a, None).await.expect(404);
        c.call("POST", "/instances/{id}/worker/revoke", &format!("/instances/{worker_instance}/worker/revoke"), a, None).await;
        c.call("POST", "/internal/worker/heartbeat", "/internal/worker/heartbeat", Some(&token), Some(beat)).await.expect(401);

        // Action logs.
        c.call("GET", "/action_logs", "/action_logs?limit=5", a, None).await.expect(200);
        c.call("GET", "/action_logs/search", "/action_logs/search?limit=5", a, None).await.expect(200);
        c.call("GET", "/action_types", "/action_types", a, None).await.expect(200);

        // Errors: unauthenticated, forbidden, malformed.
        c.call("GET", "/instances", "/instances", None, None).await.expect(401);
        c.call("GET", "/instances", "/instances?limit=0", a, None).await.expect(422);

        // The event stream (status and content type only: it does not end).
        let stream = api.client.get(api.url("/events")).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(stream.status(), 200);
        assert_eq!(stream.headers()["content-type"], "text/event-stream");
        assert!(root["paths"]["/events"]["get"]["responses"]["200"]["content"]["text/event-stream"].is_object());
        checker.covered.lock().unwrap().insert(("get".into(), "/events".into()));

        // Self-service last: these end the session.
        c.call("PUT", "/auth/me/password", "/auth/me/password", a, Some(json!({ "current_password": common::ADMIN_PASSWORD, "new_password": "another-password" }))).await;
        c.call("DELETE", "/users/{id}", &format!("/users/{user_id}"), a, None).await;
        c.call("DELETE", "/organizations/{id}", &format!("/organizations/{org_id}"), a, None).await;
        c.call("POST", "/auth/logout", "/auth/logout", a, None).await;

        let documented: BTreeSet<(String, String)> = root["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |method| (method.clone(), path.clone())))
            .filter(|(method, _)| ["get", "put", "post", "delete", "patch"].contains(&method.as_str()))
            .collect();
        let covered = checker.covered.lock().unwrap().clone();
        let missed: Vec<_> = documented.difference(&covered).collect();
        assert!(missed.is_empty(), "documented but not exercised here: {missed:?}");
    })
    .await;
}
