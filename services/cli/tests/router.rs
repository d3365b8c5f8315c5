//! The router through `qm dev`, as a client uses it: two `local` instances (real
//! `qm-worker-agent` processes with their mock engines) behind `QM_ROUTER_ADDR`, an API key from
//! the API, and OpenAI's own Python client, streaming and not. Errors come in OpenAI's shape; a
//! stream's usage is read for accounting and removed when the client did not ask for it; the
//! tokens of every answer appear in `/finops/usage/tokens` under the key, equal to the sum of the
//! answers' `usage`; a worker killed during a burst loses no request; a revoked key is refused
//! within 5 s.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Session, http, local_pid, temporary_data_dir};

async fn post(router: &str, key: &str, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, String) {
    let response = http().post(format!("{router}{path}")).bearer_auth(key).json(&body).send().await.expect("router");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

async fn metrics_of(router: &str) -> String {
    http().get(format!("{router}/metrics")).send().await.expect("metrics").text().await.expect("text")
}

async fn models_of(router: &str, key: &str) -> Value {
    let response = http().get(format!("{router}/v1/models")).bearer_auth(key).send().await.expect("models");
    response.json().await.expect("json")
}

/// The `usage` of a whole answer, or of the stream's events.
fn usage_of(body: &str) -> (i64, i64) {
    let mut found = (0, 0);
    let chunks: Vec<Value> = if body.starts_with("data:") {
        body.lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str(data).ok())
            .collect()
    } else {
        vec![serde_json::from_str(body).expect("json")]
    };
    for chunk in chunks {
        if let Some(usage) = chunk.get("usage").filter(|usage| !usage.is_null()) {
            found = (usage["prompt_tokens"].as_i64().unwrap_or(0), usage["completion_tokens"].as_i64().unwrap_or(0));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_the_fleet_through_the_router_with_keys_usage_and_failover() {
    let data_dir = temporary_data_dir();
    let (dev, session, router) = Session::start_serving(&data_dir).await;
    let ids = session.deploy(["local", "local-1", "local.cpu"], 3).await;
    for id in &ids {
        session.state_within(id, |state| state == "ready", Duration::from_secs(60)).await;
    }
    let created = session.send(reqwest::Method::POST, "/api_keys", Some(json!({ "name": "router-test" }))).await;
    let key = created["secret"].as_str().expect("secret").to_owned();
    let key_id = created["id"].as_str().expect("id").to_owned();

    // Discovery: within a refresh the two workers' model is listed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let models = models_of(&router, &key).await;
        if models["data"].as_array().is_some_and(|data| data.iter().any(|model| model["id"] == "m")) {
            break;
        }
        assert!(Instant::now() < deadline, "the model never showed: {models}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Errors in OpenAI's shape.
    let chat = |model: &str, stream: bool| json!({ "model": model, "messages": [{ "role": "user", "content": "how much does the fleet cost" }], "max_tokens": 5, "stream": stream });
    let (status, _, body) = post(&router, "qm_not-a-key", "/v1/chat/completions", chat("m", false)).await;
    let error: Value = serde_json::from_str(&body).expect("json");
    assert_eq!((status, error["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{body}");
    let (status, _, body) = post(&router, &key, "/v1/chat/completions", chat("no-such-model", false)).await;
    let error: Value = serde_json::from_str(&body).expect("json");
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("model_not_found")), "{body}");
    let (status, _, body) = post(&router, &key, "/v1/chat/completions", json!({ "messages": [] })).await;
    assert_eq!(status, 400, "{body}");

    let mut sent = (0_i64, 0_i64);
    let mut count = |(prompt, completion): (i64, i64)| {
        sent.0 += prompt;
        sent.1 += completion;
    };
    // Whole answers carry usage; a stream keeps it only when asked for.
    let (status, _, body) = post(&router, &key, "/v1/chat/completions", chat("m", false)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(usage_of(&body), (6, 5), "six words in, five out");
    count(usage_of(&body));
    let (status, headers, body) = post(&router, &key, "/v1/chat/completions", chat("m", true)).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers["content-type"].to_str().expect("ascii").starts_with("text/event-stream"));
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(usage_of(&body), (0, 0), "not asked: removed: {body}");
    assert_eq!(body.matches("\"content\":").count(), 5, "every token: {body}");
    count((6, 5));
    let mut asked = chat("m", true);
    asked["stream_options"] = json!({ "include_usage": true });
    let (_, _, body) = post(&router, &key, "/v1/chat/completions", asked).await;
    assert_eq!(usage_of(&body), (6, 5), "asked: kept: {body}");
    count(usage_of(&body));
    let (status, _, body) =
        post(&router, &key, "/v1/completions", json!({ "model": "m", "prompt": "one two three", "max_tokens": 4 }))
            .await;
    assert_eq!(status, 200, "{body}");
    count(usage_of(&body));

    // Embeddings: one vector per input, prompt tokens counted.
    let (status, _, body) =
        post(&router, &key, "/v1/embeddings", json!({ "model": "m", "input": ["one two", "three four five"] })).await;
    assert_eq!(status, 200, "{body}");
    let embedded: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(embedded["data"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(embedded["usage"]["prompt_tokens"], 5, "{body}");
    count((5, 0));

    // OpenAI's Python client, as users run it.
    let script = r#"
import os, sys
from openai import OpenAI
client = OpenAI(base_url=os.environ["ROUTER"] + "/v1", api_key=os.environ["KEY"])
whole = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a b c"}], max_tokens=3)
assert whole.choices[0].message.content, whole
assert whole.usage.prompt_tokens == 3 and whole.usage.completion_tokens == 3, whole.usage
vectors = client.embeddings.create(model="m", input="a b c")
assert len(vectors.data) == 1 and len(vectors.data[0].embedding) == 8 and vectors.usage.prompt_tokens == 3, vectors
pieces = []
for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a b c"}], max_tokens=3, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
assert len(pieces) == 3, pieces
assert [model.id for model in client.models.list()] == ["m"]
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    sys.exit("an unknown model was accepted")
except Exception as error:
    assert "model_not_found" in str(error), error
print("openai client ok")
"#;
    let output = Command::new(".venv/bin/python")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args(["-c", script])
        .env("ROUTER", &router)
        .env("KEY", &key)
        .output()
        .expect("python (make venv installs openai)");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.contains("openai client ok"), "{said}");
    count((3, 3));
    count((3, 0));
    count((3, 3));

    // A burst while one worker is killed: nothing that had not started is lost.
    let victim = local_pid(&data_dir, &ids[0]).to_string();
    let burst: Vec<_> = (0..60)
        .map(|index| {
            let (router, key) = (router.clone(), key.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(index * 10)).await;
                let body = json!({ "model": "m", "messages": [{ "role": "user", "content": format!("burst {index}") }], "max_tokens": 2 });
                post(&router, &key, "/v1/chat/completions", body).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let killed = Command::new("kill").args(["-KILL", &victim]).status().expect("kill");
    assert!(killed.success());
    for request in burst {
        let (status, _, body) = request.await.expect("task");
        assert_eq!(status, 200, "a request was lost: {body}");
        count(usage_of(&body));
    }

    // The router's metrics saw it all: requests by code, streams' token gaps, the retries after
    // the kill, and each worker's in-flight gauge.
    let metrics = metrics_of(&router).await;
    for metric in [
        "qm_router_requests_total{code=\"200\",model=\"m\"}",
        "qm_router_inter_token_seconds_count",
        "qm_router_time_to_first_token_seconds_count",
        "qm_router_in_flight{instance=",
        "qm_router_rejections_total{reason=\"model_not_found\"}",
    ] {
        assert!(metrics.contains(metric), "{metric} missing:\n{metrics}");
    }
    // A model nobody serves is not a label: made-up names cannot grow the metrics.
    assert!(!metrics.contains("no-such-model"), "{metrics}");
    // Every query of the router dashboard returns data from a real Prometheus scraping this
    // router every second, with traffic (whole answers and streams) while it scrapes.
    let dashboard =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/dashboards/router.json");
    let target = router.trim_start_matches("http://").to_owned();
    let prometheus = qm_testkit::prometheus::Prometheus::start(&[target.as_str()]).await;
    for index in 0..12 {
        let mut body = chat("m", index % 2 == 0);
        if index % 2 == 0 {
            body["stream_options"] = json!({ "include_usage": true });
        }
        let (status, _, answer) = post(&router, &key, "/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{answer}");
        count(usage_of(&answer));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for query in qm_testkit::prometheus::dashboard_queries(&dashboard) {
        let result = prometheus.data(&query, Duration::from_secs(15)).await;
        assert!(result.is_ok(), "the router dashboard's `{query}` returns no data: {result:?}");
    }
    drop(prometheus);

    // Every token sent through the router is in FinOps under the key, once.
    let expected = sent;
    session
        .until(
            "/finops/usage/tokens",
            |usage| {
                usage["by_api_key"].as_array().is_some_and(|keys| {
                    keys.iter().any(|entry| {
                        entry["key"] == key_id.as_str()
                            && entry["prompt_tokens"] == expected.0
                            && entry["completion_tokens"] == expected.1
                    })
                })
            },
            Duration::from_secs(20),
        )
        .await;
    // The agents' own engine counters cover the same tokens: they are not counted again.
    let usage = session.send(reqwest::Method::GET, "/finops/usage/tokens", None).await;
    assert_eq!(
        (usage["prompt_tokens"].as_i64(), usage["completion_tokens"].as_i64()),
        (Some(expected.0), Some(expected.1)),
        "{usage}"
    );
    assert!(
        usage["by_api_key"].as_array().is_some_and(|keys| keys.iter().all(|entry| entry["key"] != "direct")),
        "{usage}"
    );
    // What the key's tokens cost: the instances' cost shared among keys by their tokens; the
    // shares (with the idle instances') add up to the total, but for each instance's rounding down.
    let per_token = session.send(reqwest::Method::GET, "/finops/cost/per_token", None).await;
    let by_key = per_token["by_api_key"].as_array().expect("by_api_key").clone();
    let mine = by_key.iter().find(|entry| entry["key"] == key_id.as_str()).expect("the key's cost");
    assert_eq!(mine["tokens"].as_i64(), Some(expected.0 + expected.1), "{per_token}");
    assert!(mine["cost_micros"].as_i64().is_some_and(|cost| cost > 0), "{per_token}");
    let sum = |entries: &Value| {
        entries.as_array().expect("list").iter().filter_map(|e| e["cost_micros"].as_i64()).sum::<i64>()
    };
    let shared = sum(&per_token["by_model"]) - sum(&per_token["by_api_key"]);
    assert!((0..=3).contains(&shared), "{per_token}");

    // A draining worker gets nothing new and its streams finish: a stream of 200 tokens (4 s) is
    // started; the agent serving it is asked to stop (SIGTERM), reports `draining` at once, and
    // the router drops the worker while the stream goes on to its end.
    let long = json!({ "model": "m", "messages": [{ "role": "user", "content": "drain me" }], "max_tokens": 200, "stream": true });
    let stream = tokio::spawn({
        let (router, key) = (router.clone(), key.clone());
        async move { post(&router, &key, "/v1/chat/completions", long).await }
    });
    let started = Instant::now();
    let serving = loop {
        let metrics = metrics_of(&router).await;
        let busy = metrics.lines().find_map(|line| {
            line.strip_prefix("qm_router_in_flight{instance=\"")?.strip_suffix("\"} 1").map(str::to_owned)
        });
        if let Some(instance) = busy {
            break instance;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the stream never showed in flight:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let remaining = ids[1..].iter().find(|id| **id != serving).expect("a third worker").clone();
    let stopped = Command::new("kill").args(["-TERM", &local_pid(&data_dir, &serving).to_string()]).status();
    assert!(stopped.expect("kill").success());
    session.state_within(&serving, |state| state == "draining", Duration::from_secs(15)).await;
    let label = format!("instance=\"{serving}\"");
    while metrics_of(&router).await.contains(&label) {
        assert!(!stream.is_finished(), "the stream ended before its worker left the router");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!stream.is_finished(), "the worker left the router only once its stream was done");
    for _ in 0..5 {
        let (status, _, body) = post(&router, &key, "/v1/chat/completions", chat("m", false)).await;
        assert_eq!(status, 200, "the other worker serves: {body}");
    }
    let (status, _, body) = stream.await.expect("task");
    assert_eq!(status, 200, "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "the drained stream was cut: {body}");
    assert_eq!(body.matches("\"content\":").count(), 200, "every token of the drained stream");

    // Limits: a key of 3 requests a minute gets the 4th refused with `Retry-After`; a key for
    // another model sees none of this one.
    let limited = session
        .send(
            reqwest::Method::POST,
            "/api_keys",
            Some(json!({ "name": "limited", "models": ["m"], "requests_per_minute": 3 })),
        )
        .await;
    assert_eq!(limited["requests_per_minute"], 3, "{limited}");
    let limited = limited["secret"].as_str().expect("secret").to_owned();
    for _ in 0..3 {
        let (status, _, body) = post(&router, &limited, "/v1/chat/completions", chat("m", false)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, headers, body) = post(&router, &limited, "/v1/chat/completions", chat("m", false)).await;
    let error: Value = serde_json::from_str(&body).expect("json");
    assert_eq!((status, error["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")), "{body}");
    let retry: u64 = headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=20).contains(&retry), "{retry}");
    let other = session
        .send(reqwest::Method::POST, "/api_keys", Some(json!({ "name": "other", "models": ["other-model"] })))
        .await;
    let other = other["secret"].as_str().expect("secret").to_owned();
    let (status, _, _) = post(&router, &other, "/v1/chat/completions", chat("m", false)).await;
    assert_eq!(status, 404);
    let models = models_of(&router, &other).await;
    assert_eq!(models["data"], json!([]), "{models}");

    // Revoked: refused within 5 s.
    session.send(reqwest::Method::DELETE, &format!("/api_keys/{key_id}"), None).await;
    let revoked = Instant::now();
    loop {
        let (status, _, _) = post(&router, &key, "/v1/chat/completions", chat("m", false)).await;
        if status == 401 {
            break;
        }
        assert!(revoked.elapsed() < Duration::from_secs(5), "a revoked key still works after 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A hard cap reached stops the organization's traffic with `insufficient_quota`.
    let me = session.send(reqwest::Method::GET, "/auth/me", None).await;
    let budget_path = format!("/finops/budgets/{}", me["organization_id"].as_str().expect("organization"));
    let capped = json!({ "amount_micros": 1, "thresholds": [100], "hard_cap": true });
    let (status, _) = session.exchange(reqwest::Method::PUT, &budget_path, Some(capped)).await;
    assert_eq!(status, 200);
    let fresh = session.send(reqwest::Method::POST, "/api_keys", Some(json!({ "name": "after-cap" }))).await;
    let fresh = fresh["secret"].as_str().expect("secret").to_owned();
    let capped_at = Instant::now();
    loop {
        let (status, _, body) = post(&router, &fresh, "/v1/chat/completions", chat("m", false)).await;
        if status == 429 {
            let error: Value = serde_json::from_str(&body).expect("json");
            assert_eq!(error["error"]["code"], "insufficient_quota", "{body}");
            break;
        }
        assert!(capped_at.elapsed() < Duration::from_secs(10), "the cap never stopped traffic: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An instance that leaves `ready` leaves the router at its state change's event, not at
    // the next full refresh: its gauge is gone within the gauges' one-second update.
    session.send(reqwest::Method::DELETE, &format!("/instances/{remaining}"), None).await;
    let deleted = Instant::now();
    let label = format!("instance=\"{remaining}\"");
    while metrics_of(&router).await.contains(&label) {
        assert!(deleted.elapsed() < Duration::from_millis(1_800), "the router still routes to a terminating instance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
