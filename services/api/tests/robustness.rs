//! Whatever a client sends (malformed JSON, wrong types, unknown fields, huge bodies, invalid
//! ids, negative limits, bad headers), the API answers a problem+json 4xx: never a 5xx, never a
//! panic. Every documented route is tried with every kind of bad input; `Api::raw` asserts the
//! rules on each answer.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::Api;
use serde_json::Value;

on_both_backends!(every_route_survives_bad_input);

/// A path with its parameters filled by `value`.
fn fill(template: &str, value: &str) -> String {
    template.split('/').map(|part| if part.starts_with('{') { value } else { part }).collect::<Vec<_>>().join("/")
}

async fn every_route_survives_bad_input(api: Arc<Api>) {
    let admin = api.admin().await;
    let token = Some(admin.as_str());
    // Some real records, so that valid ids reach the handlers' own validation.
    let instance = api.deploy(&admin, 1).await.remove(0);
    let root: Value = api.client.get(api.url("/api-docs/openapi.json")).send().await.unwrap().json().await.unwrap();
    // Just over the limit: a much larger body is cut off mid-upload, which clients see as a reset.
    let huge = vec![b'x'; qm_runtime::http::MAX_BODY_BYTES + 4096];
    let bodies: [(&str, &[u8]); 8] = [
        ("application/json", b"{\"model\":"),
        ("application/json", b"[]"),
        ("application/json", b"null"),
        ("application/json", b"{\"unknown_field\":1,\"name\":[1,2],\"count\":\"many\",\"limit\":-1}"),
        ("application/json", b"{\"login\":\"\xff\xfe\",\"password\":1e999}"),
        ("application/json", &huge),
        ("text/plain", b"hello"),
        ("application/x-www-form-urlencoded", b"a=b"),
    ];
    let path_values = [
        instance.as_str(),
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
        "%00",
        &"9".repeat(300),
        "..%2F..%2Fetc",
    ];
    let queries = [
        "?limit=-1",
        "?limit=abc",
        "?limit=99999999999999999999",
        "?cursor=%FF%FE",
        "?state=exploded&archived=maybe",
        "?since=yesterday",
        "?provider[]=x&zone=%00",
        "?after=-5",
    ];

    let mut calls = 0;
    for (template, item) in root["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let takes_body = operation.get("requestBody").is_some();
            let method = method.to_uppercase();
            for value in path_values {
                let path = fill(template, value);
                // Streams do not end on good input; logging out would end the session.
                if template == "/events" || template == "/auth/logout" {
                    continue;
                }
                for query in queries {
                    // Some bad queries are still valid where the route takes no query: a 2xx is
                    // fine, a 5xx is not (checked by `raw`). Deletes are only tried on bad ids.
                    if method == "DELETE" && value == instance {
                        continue;
                    }
                    api.raw(&method, &format!("{path}{query}"), token, None).await;
                    calls += 1;
                }
                if takes_body {
                    for body in bodies {
                        let response = api.raw(&method, &path, token, Some(body)).await;
                        assert!(response.status >= 400, "{method} {path} accepted garbage: {}", response.body);
                        calls += 1;
                    }
                }
            }
        }
    }
    assert!(calls > 500, "{calls}");
    // Changing the password with garbage failed; the session is still good.
    api.get("/auth/me", &admin).await.expect(200);

    // The specific answers for the common mistakes.
    let post = |body: (&'static str, &'static [u8])| api.raw("POST", "/deployments", token, Some(body));
    assert_eq!(post(("application/json", b"{\"model\":")).await.status, 400);
    assert_eq!(post(("application/json", b"{\"model\":1,\"count\":1}")).await.status, 422);
    let unknown = post(("application/json", b"{\"model\":\"m\",\"count\":1,\"colour\":\"red\"}")).await;
    assert_eq!(unknown.status, 422);
    assert!(unknown.body["detail"].as_str().unwrap().contains("colour"), "{}", unknown.body);
    assert_eq!(post(("text/plain", b"{}")).await.status, 415);
    let too_big = api.raw("POST", "/deployments", token, Some(("application/json", &huge))).await;
    assert_eq!(too_big.status, 413);
    assert_eq!(api.get("/instances/not-a-uuid", &admin).await.status, 404);
    assert_eq!(api.get("/instances?limit=-1", &admin).await.expect(422)["errors"][0]["field"], "limit");
    assert_eq!(api.get("/instances?limit=abc", &admin).await.status, 400);
    let events =
        api.client.get(api.url("/events")).bearer_auth(&admin).header("last-event-id", "junk-id").send().await.unwrap();
    assert_eq!(events.status(), 400);
    assert_eq!(api.raw("PATCH", "/instances", token, None).await.status, 405);
    assert_eq!(api.raw("GET", "/no/such/route", token, None).await.status, 404);

    // Headers: hostile authorization values are a 401, never a crash.
    for value in
        ["Bearer", "Bearer ", "Bearer \u{7f}", "bearer qm_", "Bearer qms_", &format!("Bearer {}", "a".repeat(10_000))]
    {
        let response = api.client.get(api.url("/instances")).header("authorization", value).send().await;
        if let Ok(response) = response {
            assert!(response.status().is_client_error(), "{value:?}: {}", response.status());
        }
    }
    // After all that, the API still works and nothing was created by the garbage.
    let listed = api.get("/instances", &admin).await.expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}
