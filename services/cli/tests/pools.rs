//! Pools through `qm dev`, as an operator and a client see them: a pool of two `local` replicas
//! (real agents with mock engines at 20 ms a token) heals after `kill -9` of one agent (the dead
//! one terminated, its billing stopped, a replacement ready); shrinking it to one during 50
//! concurrent streams cuts none of them (the replica drains first); with `min_replicas: 0` it
//! goes to zero when idle, and a chat completion through the router is held while a replica
//! starts, then answered; moved to other placements, a pool rolls its replicas there.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Session, http, local_pid, temporary_data_dir};

async fn post(router: &str, key: &str, body: Value) -> (u16, String) {
    let response =
        http().post(format!("{router}/v1/chat/completions")).bearer_auth(key).json(&body).send().await.expect("router");
    (response.status().as_u16(), response.text().await.expect("body"))
}

fn replicas_in(pool: &Value, state: &str) -> Vec<String> {
    pool["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|instance| instance["state"] == state)
        .map(|instance| instance["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Creates a pool from `body` and waits for `ready` ready replicas; its path and the pool.
async fn ready_pool(session: &Session, body: Value, ready: usize) -> (String, Value) {
    let created = session.send(reqwest::Method::POST, "/pools", Some(body)).await;
    let id = created["id"].as_str().unwrap_or_else(|| panic!("a pool: {created}"));
    let path = format!("/pools/{id}");
    let pool = session.until(&path, |pool| replicas_in(pool, "ready").len() == ready, Duration::from_secs(60)).await;
    (path, pool)
}

async fn api_key(session: &Session, name: &str) -> String {
    let key = session.send(reqwest::Method::POST, "/api_keys", Some(json!({ "name": name }))).await;
    key["secret"].as_str().expect("secret").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_heal_drain_without_cutting_streams_and_come_back_from_zero() {
    let data_dir = temporary_data_dir();
    let (dev, session, router) = Session::start_serving(&data_dir).await;
    let body = json!({ "name": "chat", "model": "m", "provider": "local", "zone": "local-1", "instance_type": "local.cpu",
        "min_replicas": 2, "max_replicas": 2, "policy": { "unhealthy_grace_s": 1, "drain_deadline_s": 60 } });
    let (path, pool) = ready_pool(&session, body, 2).await;
    assert_eq!(pool["status"]["desired"], 2, "{pool}");

    // Heal: an agent killed is replaced within 60 s; the dead replica is terminated, billing stopped.
    let dead = replicas_in(&pool, "ready")[0].clone();
    let killed = Command::new("kill").args(["-KILL", &local_pid(&data_dir, &dead).to_string()]).status();
    assert!(killed.expect("kill").success());
    let since = Instant::now();
    session
        .until(
            &path,
            |pool| {
                let ready = replicas_in(pool, "ready");
                ready.len() == 2 && !ready.contains(&dead)
            },
            Duration::from_secs(60),
        )
        .await;
    let healed_in = since.elapsed();
    session
        .until(
            &format!("/instances/{dead}"),
            |instance| instance["state"] == "terminated" && !instance["billing_stopped_at"].is_null(),
            Duration::from_secs(20),
        )
        .await;
    eprintln!("healed in {healed_in:?}");

    // Scale-in during 50 streams: none is cut.
    let key = api_key(&session, "pools").await;
    let streams: Vec<_> = (0..50)
        .map(|index| {
            let (router, key) = (router.clone(), key.clone());
            tokio::spawn(async move {
                let body = json!({ "model": "m", "messages": [{ "role": "user", "content": format!("stream {index}") }],
                    "max_tokens": 150, "stream": true });
                post(&router, &key, body).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, shrunk) =
        session.exchange(reqwest::Method::PATCH, &path, Some(json!({ "min_replicas": 1, "max_replicas": 1 }))).await;
    assert_eq!(status, 200, "{shrunk}");
    for stream in streams {
        let (status, body) = stream.await.expect("task");
        assert_eq!(status, 200, "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "a stream was cut: {body}");
        assert_eq!(body.matches("\"content\":").count(), 150, "every token");
    }
    let one = session
        .until(
            &path,
            |pool| replicas_in(pool, "ready").len() == 1 && pool["status"]["draining"] == 0,
            Duration::from_secs(40),
        )
        .await;
    assert_eq!(one["status"]["decisions"][0]["to"], 1, "the latest decision: {one}");
    let logs = session.send(reqwest::Method::GET, "/action_logs?limit=200", None).await;
    for action in ["pool.create", "pool.update", "pool.scaled", "pool.drained", "pool.replaced"] {
        assert!(logs.to_string().contains(action), "{action} not logged");
    }

    // To zero when idle, and back for a request that the router holds meanwhile.
    let (status, body) = session
        .exchange(
            reqwest::Method::PATCH,
            &path,
            Some(json!({ "min_replicas": 0, "max_replicas": 1,
                "policy": { "idle_to_zero_s": 2, "scale_down_delay_s": 0, "unhealthy_grace_s": 1, "drain_deadline_s": 60 } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    session
        .until(
            &path,
            |pool| {
                pool["status"]["desired"] == 0
                    && ["ready", "draining", "requested", "provisioning", "booting"]
                        .iter()
                        .all(|state| replicas_in(pool, state).is_empty())
            },
            Duration::from_secs(40),
        )
        .await;
    let asked = Instant::now();
    let (status, body) = post(
        &router,
        &key,
        json!({ "model": "m", "messages": [{ "role": "user", "content": "wake up" }], "max_tokens": 3 }),
    )
    .await;
    assert_eq!(status, 200, "held, then answered: {body}");
    eprintln!("answered from zero in {:?}", asked.elapsed());
    let woken = session.send(reqwest::Method::GET, &path, None).await;
    assert!(woken["status"]["decisions"].to_string().contains("request for an empty pool"), "{woken}");

    // A pool is deleted: its replicas go.
    let (status, _) = session.exchange(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let instances = session.send(reqwest::Method::GET, "/instances?limit=100", None).await;
        let live = instances["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|instance| {
                !["terminated", "provisioning_failed", "startup_failed"]
                    .contains(&instance["state"].as_str().unwrap_or(""))
            })
            .count();
        if live == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "replicas left after the pool was deleted: {instances}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// A rolling update (new engine settings) of a pool of three, under steady load from four
/// clients (streamed and not): replicas are replaced one by one and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_under_steady_load_fails_no_request() {
    let data_dir = temporary_data_dir();
    let (dev, session, router) = Session::start_serving(&data_dir).await;
    let body = json!({ "name": "rolling", "model": "m", "provider": "local", "zone": "local-1", "instance_type": "local.cpu",
        "min_replicas": 3, "max_replicas": 3, "engine": { "args": ["--max-model-len", "4096"] },
        "policy": { "drain_deadline_s": 60 } });
    let (path, before) = ready_pool(&session, body, 3).await;
    assert_eq!(before["revision"], 1, "{before}");
    let old = replicas_in(&before, "ready");
    let key = api_key(&session, "rolling").await;

    // Steady load until told to stop: every answer must be a complete 200.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (router, key, stop) = (router.clone(), key.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut served, mut failures) = (0_u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let stream = client % 2 == 0;
                    let body = json!({ "model": "m", "messages": [{ "role": "user", "content": format!("client {client} #{served}") }],
                        "max_tokens": 10, "stream": stream });
                    let (status, text) = post(&router, &key, body).await;
                    let complete = !stream || text.trim_end().ends_with("data: [DONE]");
                    if status == 200 && complete {
                        served += 1;
                    } else {
                        failures.push(format!("{status}: {text}"));
                    }
                }
                (served, failures)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (status, updated) = session
        .exchange(reqwest::Method::PATCH, &path, Some(json!({ "engine": { "args": ["--max-model-len", "8192"] } })))
        .await;
    assert_eq!((status, &updated["revision"]), (200, &json!(2)), "{updated}");
    let since = Instant::now();
    session
        .until(
            &path,
            |pool| {
                let ready = replicas_in(pool, "ready");
                ready.len() == 3
                    && pool["status"]["outdated"] == 0
                    && replicas_in(pool, "draining").is_empty()
                    && pool["instances"]
                        .as_array()
                        .expect("instances")
                        .iter()
                        .filter(|instance| ready.contains(&instance["id"].as_str().unwrap_or("").to_owned()))
                        .all(|instance| instance["revision"] == 2)
            },
            Duration::from_secs(120),
        )
        .await;
    let rolled_in = since.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for client in clients {
        let (count, failures) = client.await.expect("client");
        assert!(failures.is_empty(), "requests failed during the rolling update: {failures:?}");
        served += count;
    }
    assert!(served > 20, "steady load: only {served} requests");
    for replica in &old {
        let instance = session.send(reqwest::Method::GET, &format!("/instances/{replica}"), None).await;
        assert!(["terminating", "terminated"].contains(&instance["state"].as_str().unwrap_or("")), "{instance}");
    }
    let logs = session.send(reqwest::Method::GET, "/action_logs?action_type=pool.drained&limit=50", None).await;
    assert!(logs.to_string().contains("replaced by revision 2"), "{logs}");
    eprintln!("rolled 3 replicas in {rolled_in:?} under load; {served} requests served, none failed");
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// A pool with a TTFT objective grows when the routers' p90 time to first token is above it,
/// though its load alone would not ask for it; the decision says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttft_over_its_objective_grows_the_pool() {
    let data_dir = temporary_data_dir();
    let (dev, session, router) = Session::start_serving(&data_dir).await;
    // Each answer takes about 200 ms (10 tokens at 20 ms); the objective is 50 ms.
    let body = json!({ "name": "slo", "model": "m", "provider": "local", "zone": "local-1", "instance_type": "local.cpu",
        "min_replicas": 1, "max_replicas": 2,
        "policy": { "target_per_replica": 1000, "ttft_slo_ms": 50, "scale_down_delay_s": 600 } });
    let (path, _) = ready_pool(&session, body, 1).await;
    let key = api_key(&session, "slo").await;
    // Steady traffic until the pool grows: the autoscaler waits until the routers' 30 s window
    // covers only the current replica before it trusts the TTFT.
    let started = Instant::now();
    let grown = loop {
        let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "slow" }], "max_tokens": 10 });
        let (status, text) = post(&router, &key, body).await;
        assert_eq!(status, 200, "{text}");
        let pool = session.send(reqwest::Method::GET, &path, None).await;
        if pool["status"]["desired"] == 2 {
            break pool;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "the pool did not grow: {pool}");
    };
    let decision = &grown["status"]["decisions"][0];
    assert!(decision["reason"].as_str().is_some_and(|reason| reason.starts_with("ttft: p90")), "{grown}");
    assert!(decision["signals"]["ttft_p90_s"].as_f64().is_some_and(|p90| p90 > 0.05), "{decision}");
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// A pool moved to other placements after creation (a zone and type elsewhere, then the
/// cheapest offer meeting constraints): a rolling update puts every replica there, the old ones
/// terminated; a placement the catalog does not offer is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_moved_to_other_placements_rolls_its_replicas_there() {
    let data_dir = temporary_data_dir();
    let (dev, session) = Session::start(&data_dir).await;
    let body = json!({ "name": "moving", "model": "m", "provider": "sim", "zone": "sim-eu-1", "instance_type": "sim.cpu",
        "min_replicas": 2, "max_replicas": 2 });
    let (path, before) = ready_pool(&session, body, 2).await;
    let old = replicas_in(&before, "ready");
    let placed_on = |pool: &Value, zone: &str, instance_type: &str| {
        let instances = pool["instances"].as_array().expect("instances");
        let ready: Vec<&Value> = instances.iter().filter(|instance| instance["state"] == "ready").collect();
        ready.len() == 2
            && ready.iter().all(|instance| instance["zone"] == zone && instance["instance_type"] == instance_type)
            && pool["status"]["outdated"] == 0
    };

    let (status, refused) = session
        .exchange(
            reqwest::Method::PATCH,
            &path,
            Some(json!({ "provider": "sim", "zone": "nowhere", "instance_type": "sim.l4" })),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    // Moved with the CLI, as an operator would.
    let id = path.trim_start_matches("/pools/");
    let output = Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(["pools", "update", id, "--provider", "sim", "--zone", "sim-us-1", "--type", "sim.l4", "-o", "json"])
        .env("QM_API_URL", &session.api)
        .env("QM_TOKEN", &session.token)
        .env("QM_CONFIG_DIR", data_dir.join("cli"))
        .output()
        .expect("qm pools update");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let moved: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(moved["revision"], 2, "{moved}");
    assert_eq!(moved["placements"][0]["zone"], "sim-us-1");
    session.until(&path, |pool| placed_on(pool, "sim-us-1", "sim.l4"), Duration::from_secs(60)).await;
    for replica in &old {
        let path = format!("/instances/{replica}");
        session.until(&path, |instance| instance["state"] == "terminated", Duration::from_secs(60)).await;
    }

    // Constraints: the cheapest H100 on sim, wherever the catalog offers it.
    let constraints = json!({ "constraints": { "gpu_model": "H100", "providers": ["sim"] } });
    let (status, moved) = session.exchange(reqwest::Method::PATCH, &path, Some(constraints)).await;
    assert_eq!((status, &moved["revision"]), (200, &json!(3)), "{moved}");
    let zone = moved["placements"][0]["zone"].as_str().expect("zone").to_owned();
    session.until(&path, |pool| placed_on(pool, &zone, "sim.h100"), Duration::from_secs(60)).await;
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
