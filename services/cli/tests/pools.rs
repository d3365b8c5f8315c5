//! Pools through `qm dev`, as an operator and a client see them: a pool of two `local` replicas
//! (real agents with mock engines at 20 ms a token) heals after `kill -9` of one agent (the dead
//! one terminated, its billing stopped, a replacement ready); shrinking it to one during 50
//! concurrent streams cuts none of them (the replica drains first); with `min_replicas: 0` it
//! goes to zero when idle, and a chat completion through the router is held while a replica
//! starts, then answered.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_heal_drain_without_cutting_streams_and_come_back_from_zero() {
    let data_dir = temporary_data_dir();
    let (dev, session, router) = Session::start_serving(&data_dir).await;
    let created = session
        .send(
            reqwest::Method::POST,
            "/pools",
            Some(json!({ "name": "chat", "model": "m", "provider": "local", "zone": "local-1", "instance_type": "local.cpu",
                "min_replicas": 2, "max_replicas": 2, "policy": { "unhealthy_grace_s": 1, "drain_deadline_s": 60 } })),
        )
        .await;
    let id = created["id"].as_str().unwrap_or_else(|| panic!("a pool: {created}")).to_owned();
    let path = format!("/pools/{id}");
    let pool = session.until(&path, |pool| replicas_in(pool, "ready").len() == 2, Duration::from_secs(60)).await;
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
    let key = session.send(reqwest::Method::POST, "/api_keys", Some(json!({ "name": "pools" }))).await;
    let key = key["secret"].as_str().expect("secret").to_owned();
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
