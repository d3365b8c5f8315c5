//! Auth, organizations, users and API keys, driven over HTTP on SQLite and PostgreSQL: logins
//! and sessions, brute-force limits, roles, and isolation between organizations.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{ADMIN_PASSWORD, Api};
use serde_json::json;

on_both_backends!(
    login_sets_an_http_only_cookie_and_sessions_can_be_revoked,
    wrong_passwords_get_401_then_429_with_retry_after,
    the_caller_manages_its_own_account,
    organizations_and_users_are_administered_and_isolated,
    a_viewer_gets_403_on_every_mutating_route,
    api_keys_are_shown_once_scoped_and_revocable,
);

async fn login_sets_an_http_only_cookie_and_sessions_can_be_revoked(api: Arc<Api>) {
    let response =
        api.call("POST", "/auth/login", None, Some(json!({ "login": "admin", "password": ADMIN_PASSWORD }))).await;
    let cookie = response.header("set-cookie").expect("cookie").to_owned();
    assert!(
        cookie.starts_with("qm_session=qms_") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let body = response.expect(200);
    let token = body["token"].as_str().unwrap();
    assert_eq!(body["user"]["username"], "admin");
    assert!(body["user"].get("password_hash").is_none(), "never the hash");
    assert!(cookie.contains(token), "the cookie carries the same token");

    // The cookie alone authenticates.
    let session = cookie.split(';').next().unwrap();
    let me = api.client.get(api.url("/auth/me")).header("cookie", session).send().await.unwrap();
    assert_eq!(me.status(), 200);

    // Login by email works too, case-insensitively.
    let by_email = api.login("ADMIN@quartermaster.local", ADMIN_PASSWORD).await;
    api.get("/auth/me", &by_email).await.expect(200);

    // Logout revokes the session: the token is refused afterwards, the other session lives on.
    let logout = api.call("POST", "/auth/logout", Some(token), None).await;
    assert_eq!(logout.status, 204);
    assert!(logout.header("set-cookie").unwrap().contains("Max-Age=0"));
    let refused = api.get("/auth/me", token).await.expect(401);
    assert!(refused["detail"].as_str().unwrap().contains("expired or was revoked"));
    api.get("/auth/me", &by_email).await.expect(200);

    // No token, a garbage token, a wrong scheme: 401.
    api.call("GET", "/instances", None, None).await.expect(401);
    api.get("/instances", "qms_not-a-real-token").await.expect(401);
    api.get("/instances", "something-else").await.expect(401);
    let basic =
        api.client.get(api.url("/instances")).header("authorization", "Basic YWRtaW46eA==").send().await.unwrap();
    assert_eq!(basic.status(), 401);
}

async fn wrong_passwords_get_401_then_429_with_retry_after(api: Arc<Api>) {
    for _ in 0..qm_api::LOGIN_FAILURES_PER_ACCOUNT {
        let body = json!({ "login": "admin", "password": "wrong password" });
        let refused = api.call("POST", "/auth/login", None, Some(body)).await.expect(401);
        assert_eq!(refused["detail"], "wrong login or password");
    }
    let limited =
        api.call("POST", "/auth/login", None, Some(json!({ "login": "admin", "password": ADMIN_PASSWORD }))).await;
    let retry_after: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry_after > 0 && retry_after <= qm_api::LOGIN_WINDOW.as_secs() + 1, "{retry_after}");
    limited.expect(429);
    // An unknown account answers exactly like a wrong password.
    let unknown = json!({ "login": "nobody", "password": "whatever-it-is" });
    assert_eq!(
        api.call("POST", "/auth/login", None, Some(unknown)).await.expect(401)["detail"],
        "wrong login or password"
    );
}

async fn the_caller_manages_its_own_account(api: Arc<Api>) {
    let admin = api.admin().await;
    let viewer = api.member(&admin, "vera", "viewer").await;
    let second_session = api.login("vera", "password-of-a-user").await;
    // Both sessions' credentials (with their account) are cached before the change.
    for session in [&viewer, &second_session] {
        assert_eq!(api.get("/auth/me", session).await.expect(200)["first_name"], "");
    }

    let updated =
        api.put("/auth/me", &viewer, json!({ "first_name": "Vera", "email": "Vera@Example.org" })).await.expect(200);
    assert_eq!(updated["first_name"], "Vera");
    assert_eq!(updated["email"], "vera@example.org");
    assert_eq!(updated["role"], "viewer", "a user cannot change their own role");
    // `/auth/me` answers from the session's cached account: the change shows at once, on both
    // of the user's sessions.
    for session in [&viewer, &second_session] {
        let me = api.get("/auth/me", session).await.expect(200);
        assert_eq!((me["first_name"].as_str(), me["email"].as_str()), (Some("Vera"), Some("vera@example.org")));
    }
    // An admin's change to the account shows as well.
    let id = updated["id"].as_str().unwrap();
    api.put(&format!("/users/{id}"), &admin, json!({ "last_name": "Rubin" })).await.expect(200);
    assert_eq!(api.get("/auth/me", &viewer).await.expect(200)["last_name"], "Rubin");
    api.put("/auth/me", &viewer, json!({ "role": "admin" })).await.expect(422);
    api.put("/auth/me", &viewer, json!({ "email": "not-an-email" })).await.expect(422);

    let wrong = json!({ "current_password": "not-it-at-all", "new_password": "a-new-password" });
    let refused = api.put("/auth/me/password", &viewer, wrong).await.expect(422);
    assert_eq!(refused["errors"][0]["field"], "current_password");
    let short = json!({ "current_password": "password-of-a-user", "new_password": "short" });
    api.put("/auth/me/password", &viewer, short).await.expect(422);
    let change = json!({ "current_password": "password-of-a-user", "new_password": "a-new-password" });
    assert_eq!(api.put("/auth/me/password", &viewer, change).await.status, 204);

    // The session that changed it lives on; the other one is revoked; the new password works.
    api.get("/auth/me", &viewer).await.expect(200);
    api.get("/auth/me", &second_session).await.expect(401);
    api.login("vera", "a-new-password").await;
    api.call("POST", "/auth/login", None, Some(json!({ "login": "vera", "password": "password-of-a-user" })))
        .await
        .expect(401);
}

async fn organizations_and_users_are_administered_and_isolated(api: Arc<Api>) {
    let platform = api.admin().await;
    let default_org = api.get("/auth/me", &platform).await.expect(200)["organization_id"].as_str().unwrap().to_owned();
    let (org_b, admin_b) = api.organization(&platform, "beta").await;

    // The platform admin sees every organization; an organization admin only its own.
    let all = api.get("/organizations", &platform).await.expect(200);
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let own = api.get("/organizations", &admin_b).await.expect(200);
    assert_eq!(own["items"].as_array().unwrap().len(), 1);
    assert_eq!(own["items"][0]["id"], org_b.as_str());
    api.get(&format!("/organizations/{default_org}"), &admin_b).await.expect(404);
    api.post("/organizations", &admin_b, json!({ "name": "x", "slug": "gamma" })).await.expect(403);
    api.post("/organizations", &platform, json!({ "name": "dup", "slug": "beta" })).await.expect(409);
    api.post("/organizations", &platform, json!({ "name": "bad", "slug": "Not A Slug" })).await.expect(422);

    // Organization admins rename their own organization.
    let renamed = api
        .put(&format!("/organizations/{org_b}"), &admin_b, json!({ "name": "Beta Corp", "slug": "beta" }))
        .await
        .expect(200);
    assert_eq!(renamed["name"], "Beta Corp");
    api.put(&format!("/organizations/{default_org}"), &admin_b, json!({ "name": "x", "slug": "default" }))
        .await
        .expect(404);

    // Users: B's admin manages B's users and cannot see A's.
    let bob = api.user(&admin_b, None, "bob", "operator").await;
    let listed = api.get("/users", &admin_b).await.expect(200);
    let names: Vec<_> =
        listed["items"].as_array().unwrap().iter().map(|user| user["username"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"bob") && names.contains(&"beta-admin"));
    let platform_id = api.get("/auth/me", &platform).await.expect(200)["id"].as_str().unwrap().to_owned();
    api.get(&format!("/users/{platform_id}"), &admin_b).await.expect(404);
    api.delete(&format!("/users/{platform_id}"), &admin_b).await.expect(404);
    api.get(&format!("/users?organization_id={default_org}"), &admin_b).await.expect(403);
    api.post("/users", &admin_b, json!({ "username": "eve", "email": "eve@example.com", "password": "password-of-a-user", "role": "admin", "organization_id": default_org })).await.expect(403);

    let changed = api
        .put(&format!("/users/{bob}"), &admin_b, json!({ "role": "viewer", "last_name": "Builder" }))
        .await
        .expect(200);
    assert_eq!((changed["role"].as_str(), changed["last_name"].as_str()), (Some("viewer"), Some("Builder")));
    let admin_b_id = api.get("/auth/me", &admin_b).await.expect(200)["id"].as_str().unwrap().to_owned();
    api.put(&format!("/users/{admin_b_id}"), &admin_b, json!({ "role": "viewer" })).await.expect(409);
    api.delete(&format!("/users/{admin_b_id}"), &admin_b).await.expect(409);
    api.post(
        "/users",
        &admin_b,
        json!({ "username": "bob", "email": "bob2@example.com", "password": "password-of-a-user", "role": "viewer" }),
    )
    .await
    .expect(409);
    api.post(
        "/users",
        &admin_b,
        json!({ "username": "Bad Name", "email": "x@example.com", "password": "password-of-a-user", "role": "viewer" }),
    )
    .await
    .expect(422);
    assert_eq!(api.delete(&format!("/users/{bob}"), &admin_b).await.status, 204);
    api.get(&format!("/users/{bob}"), &admin_b).await.expect(404);

    // An operator is not an admin.
    let operator = api.member(&admin_b, "olga", "operator").await;
    api.get("/users", &operator).await.expect(403);
    // A demotion takes effect on the next request, even for a session just used.
    let olga = api.get("/auth/me", &operator).await.expect(200)["id"].as_str().unwrap().to_owned();
    api.put(&format!("/users/{olga}"), &admin_b, json!({ "role": "viewer" })).await.expect(200);
    api.post("/api_keys", &operator, json!({ "name": "k" })).await.expect(403);

    // Deleting an organization that still runs instances is refused; once they are gone it works.
    let instances = api.deploy(&admin_b, 1).await;
    api.delete(&format!("/organizations/{org_b}"), &admin_b).await.expect(403);
    let refused = api.delete(&format!("/organizations/{org_b}"), &platform).await.expect(409);
    assert!(refused["detail"].as_str().unwrap().contains("1 instance"));
    finish(&api, &instances[0]).await;
    assert_eq!(api.delete(&format!("/organizations/{org_b}"), &platform).await.status, 204);
    api.get("/auth/me", &admin_b).await.expect(401);
    api.delete(&format!("/organizations/{default_org}"), &platform).await.expect(409);
}

/// Moves an instance to `terminated` as the orchestrator would once the provider confirms.
async fn finish(api: &Api, id: &str) {
    use qm_domain::InstanceState;
    let id: qm_domain::InstanceId = id.parse().unwrap();
    let mut tx = api.store.begin().await.unwrap();
    let transition = qm_store::Transition {
        instance: id,
        from: InstanceState::Requested,
        to: InstanceState::Terminated,
        reason: Some("test".into()),
        progress_percent: None,
    };
    tx.transition_instance(&transition).await.unwrap().expect("moved");
    tx.commit().await.unwrap();
}

async fn a_viewer_gets_403_on_every_mutating_route(api: Arc<Api>) {
    let admin = api.admin().await;
    let viewer = api.member(&admin, "victor", "viewer").await;
    let instance = api.deploy(&admin, 1).await.remove(0);
    let key =
        api.post("/api_keys", &admin, json!({ "name": "k" })).await.expect(201)["id"].as_str().unwrap().to_owned();
    let me = api.get("/auth/me", &viewer).await.expect(200);
    let organization = me["organization_id"].as_str().unwrap().to_owned();
    let user = me["id"].as_str().unwrap().to_owned();
    let any = uuid::Uuid::now_v7();
    let deployment =
        json!({ "model": "m", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" });
    let routes = [
        ("POST", "/organizations".to_owned(), json!({ "name": "x", "slug": "xx" })),
        ("PUT", format!("/organizations/{organization}"), json!({ "name": "x", "slug": "xx" })),
        ("DELETE", format!("/organizations/{organization}"), json!(null)),
        (
            "POST",
            "/users".to_owned(),
            json!({ "username": "u", "email": "u@example.com", "password": "password-of-a-user", "role": "viewer" }),
        ),
        ("PUT", format!("/users/{user}"), json!({ "first_name": "x" })),
        ("DELETE", format!("/users/{user}"), json!(null)),
        ("POST", "/api_keys".to_owned(), json!({ "name": "k" })),
        ("DELETE", format!("/api_keys/{key}"), json!(null)),
        ("PUT", "/providers/sim".to_owned(), json!({ "display_name": "x", "active": true })),
        ("PUT", format!("/regions/{any}"), json!({ "provider": "sim", "code": "x", "name": "x", "active": true })),
        ("PUT", format!("/zones/{any}"), json!({ "region_id": any, "code": "x", "name": "x", "active": true })),
        (
            "PUT",
            format!("/instance_types/{any}"),
            json!({ "provider": "sim", "code": "x", "gpu_count": 0, "gpu_memory_gb": 0, "vcpus": 1, "memory_gb": 1, "hourly_price_micros": 1, "currency": "EUR", "active": true }),
        ),
        ("PUT", format!("/instance_types/{any}/zones"), json!({ "zone_ids": [] })),
        ("POST", "/catalog/sync".to_owned(), json!({})),
        ("POST", "/fleet/reconcile".to_owned(), json!({})),
        ("POST", "/deployments".to_owned(), deployment),
        ("DELETE", format!("/instances/{instance}"), json!(null)),
        ("PUT", format!("/instances/{instance}/archive"), json!(null)),
    ];
    for (method, path, body) in routes {
        let body = (!body.is_null()).then_some(body);
        let response = api.call(method, &path, Some(&viewer), body).await;
        assert_eq!(response.status, 403, "{method} {path}: {}", response.body);
    }
    // Nothing changed.
    let detail = api.get(&format!("/instances/{instance}"), &viewer).await.expect(200);
    assert_eq!(detail["state"], "requested");
}

async fn api_keys_are_shown_once_scoped_and_revocable(api: Arc<Api>) {
    let platform = api.admin().await;
    let operator = api.member(&platform, "otto", "operator").await;
    let created = api.post("/api_keys", &operator, json!({ "name": "ci" })).await.expect(201);
    let secret = created["secret"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("qm_") && created["prefix"].as_str().is_some_and(|prefix| secret.starts_with(prefix)));
    assert_eq!(created["role"], "operator");
    assert!(created["last_used_at"].is_null());

    // The key is a bearer token with its role; the listing never shows the secret.
    api.get("/instances", &secret).await.expect(200);
    api.deploy(&secret, 1).await;
    let listed = api.get("/api_keys", &platform).await.expect(200);
    let text = listed.to_string();
    assert!(!text.contains(&secret), "the secret is shown once");
    let listed_key =
        listed["items"].as_array().unwrap().iter().find(|key| key["id"] == key_id.as_str()).unwrap().clone();
    assert!(listed_key["last_used_at"].is_string(), "last use recorded: {listed_key}");

    // A key cannot exceed its creator's role, and a viewer key cannot mutate.
    api.post("/api_keys", &operator, json!({ "name": "x", "role": "admin" })).await.expect(422);
    let viewer_key = api.post("/api_keys", &operator, json!({ "name": "ro", "role": "viewer" })).await.expect(201);
    let viewer_secret = viewer_key["secret"].as_str().unwrap();
    api.get("/instances", viewer_secret).await.expect(200);
    api.post(
        "/deployments",
        viewer_secret,
        json!({ "model": "m", "count": 1, "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.l4" }),
    )
    .await
    .expect(403);

    // Another organization neither sees nor revokes it.
    let (_, admin_b) = api.organization(&platform, "beta").await;
    let foreign = api.get("/api_keys", &admin_b).await.expect(200);
    assert!(foreign["items"].as_array().unwrap().is_empty());
    api.delete(&format!("/api_keys/{key_id}"), &admin_b).await.expect(404);
    api.get("/api_keys/not-a-uuid", &admin_b).await.expect(405);

    // Revoked: refused at once, with 401.
    assert_eq!(api.delete(&format!("/api_keys/{key_id}"), &operator).await.status, 204);
    let refused = api.get("/instances", &secret).await.expect(401);
    assert!(refused["detail"].as_str().unwrap().contains("revoked"));
    let revoked = api.get("/api_keys", &platform).await.expect(200);
    let entry = revoked["items"].as_array().unwrap().iter().find(|key| key["id"] == key_id.as_str()).unwrap().clone();
    assert!(entry["revoked_at"].is_string());
    // Keys do not log out.
    api.call("POST", "/auth/logout", Some(viewer_secret), None).await.expect(403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_gets_401() {
    common::run(common::Backend::Sqlite, &[("QM_SESSION_TTL_SECONDS", "1")], |api| async move {
        let token = api.admin().await;
        api.get("/auth/me", &token).await.expect(200);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let refused = api.get("/auth/me", &token).await.expect(401);
        assert!(refused["detail"].as_str().unwrap().contains("expired"));
    })
    .await;
}

/// One client (by address) fails against many accounts until the per-client limit, then a
/// second client tries. Returns the second client's status.
async fn second_client_after_first_is_locked_out(api: &Api) -> u16 {
    let attempt = |client: &'static str, account: usize| {
        api.client
            .post(api.url("/auth/login"))
            .header("x-forwarded-for", client)
            .json(&json!({ "login": format!("user-{account}"), "password": "wrong-password" }))
            .send()
    };
    for account in 0..qm_api::LOGIN_FAILURES_PER_CLIENT {
        assert_eq!(attempt("203.0.113.7", account).await.unwrap().status(), 401);
    }
    assert_eq!(attempt("203.0.113.7", 1000).await.unwrap().status(), 429, "the client is locked out");
    attempt("198.51.100.4", 1001).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_from_a_trusted_proxy() {
    common::run(common::Backend::Sqlite, &[("QM_TRUSTED_PROXIES", "127.0.0.0/8")], |api| async move {
        assert_eq!(second_client_after_first_is_locked_out(&api).await, 401, "another client has its own budget");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    common::run(common::Backend::Sqlite, &[], |api| async move {
        assert_eq!(
            second_client_after_first_is_locked_out(&api).await,
            429,
            "a spoofed header does not escape the limit"
        );
    })
    .await;
}
