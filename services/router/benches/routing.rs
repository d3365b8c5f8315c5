//! `make bench`: what the router does with real work, on `qm-worker-agent` processes serving
//! their mock engine with its latency model (prefill per uncached prompt token with a prefix
//! cache, decode per token, slowdown with concurrency).
//!
//! 1. **Streams**: 2,000 concurrent streaming requests through qm-router to 4 workers; every
//!    stream must arrive whole and in order (compared with the same request answered whole);
//!    reports the bench process's memory per stream (client and router together).
//! 2. **Routing quality**: 16 tenants, each reusing a long system prompt, asked by 32 clients
//!    for 12 s, through vllm-router (`round_robin`, `cache_aware`), smg (`cache_aware`) and
//!    qm-router, each in front of 4 fresh workers whose prefix caches hold about 4 tenants'
//!    prompts each: mean and p90 time to first token, the workers' prefix-cache hit rate, and
//!    the max/min requests served per worker. Targets: qm-router's p90 TTFT at most the best of
//!    the others', and max/min at most 1.5.
//!
//! Needs `qm-worker-agent` built in release (`make bench` builds it) and `make bench-tools`.
//! Results also go to `$CARGO_TARGET_DIR/bench/routing.json`.

#![allow(clippy::unwrap_used)]

mod support;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use qm_runtime::Shutdown;
use serde_json::{Value, json};
use support::{Peer, free_port, qm_router, ready, smg, vllm_router};

const WORKERS: usize = 4;
const STREAMS: usize = 2_000;
const TENANTS: usize = 16;
const SYSTEM_WORDS: usize = 960;
const CLIENTS: usize = 32;
const QUALITY_RUN: Duration = Duration::from_secs(12);

fn agent_binary() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = PathBuf::from(target).join("release/qm-worker-agent");
    assert!(
        path.exists(),
        "{} is missing: `cargo build --release -p qm-worker-agent` (make bench does)",
        path.display()
    );
    path
}

/// `WORKERS` agents serving the mock engine with `latency` (`QM_MOCK_*` values); their
/// engines' base URLs.
fn workers(latency: &[(&str, &str)]) -> (Vec<Peer>, Vec<String>) {
    let mut peers = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..WORKERS {
        let engine = free_port();
        let child = Command::new(agent_binary())
            .env_clear()
            .env("QM_WORKER_AGENT_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("QM_ENGINE", "mock")
            .env("QM_MOCK_ENGINE_ADDR", format!("127.0.0.1:{engine}"))
            .env("QM_MODEL", "m")
            .env("RUST_LOG", "error")
            .envs(latency.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        peers.push(Peer(child));
        urls.push(format!("http://127.0.0.1:{engine}"));
    }
    (peers, urls)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The content of a streamed answer, piece by piece, or why it is broken.
async fn read_stream(response: reqwest::Response) -> Result<Vec<String>, String> {
    let mut buffer = String::new();
    let mut pieces = Vec::new();
    let mut done = false;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk.map_err(|error| error.to_string())?));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|line| line.strip_prefix("data: ")) else { continue };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let chunk: Value = serde_json::from_str(data).map_err(|error| error.to_string())?;
            if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                pieces.push(piece.to_owned());
            }
        }
    }
    if done { Ok(pieces) } else { Err("no [DONE]".into()) }
}

async fn streams(client: &reqwest::Client, shutdown: &Shutdown, directory: &std::path::Path) -> Value {
    let (_agents, urls) = workers(&[("QM_MOCK_DECODE_MS_PER_TOKEN", "10")]);
    let (router, key) = qm_router(directory, &urls, shutdown).await;
    let url = format!("{router}/v1/chat/completions");
    let request = |index: usize, stream: bool| {
        json!({ "model": "m", "max_tokens": 40, "stream": stream,
            "messages": [{ "role": "user", "content": format!("stream number {index} {}", "word ".repeat(index % 7)) }] })
    };
    let probe = support::chat_target(&url, &key, &request(0, false));
    ready(client, "qm-router", &probe).await;
    let before = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..STREAMS)
        .map(|index| {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            let (streamed, whole) = (request(index, true), request(index, false));
            tokio::spawn(async move {
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&streamed)
                    .send()
                    .await
                    .map_err(|error| error.to_string())?;
                let pieces = read_stream(response).await?;
                let answer: Value = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&whole)
                    .send()
                    .await
                    .map_err(|error| error.to_string())?
                    .json()
                    .await
                    .map_err(|error| error.to_string())?;
                let expected = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
                let got = pieces.concat();
                if got.trim_end() == expected {
                    Ok(())
                } else {
                    Err(format!("stream {index}: {got:?} != {expected:?}"))
                }
            })
        })
        .collect();
    let mut broken = Vec::new();
    for task in tasks {
        if let Err(error) = task.await.unwrap() {
            broken.push(error);
        }
    }
    let elapsed = started.elapsed();
    sampling.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let per_stream = (peak.saturating_sub(before)) as f64 / STREAMS as f64;
    println!(
        "Streams: {STREAMS} concurrent through qm-router in {:.1} s: {} lost or out of order; bench process RSS +{} KiB at peak, {per_stream:.1} KiB per stream (client and router)",
        elapsed.as_secs_f64(),
        broken.len(),
        peak.saturating_sub(before)
    );
    for error in broken.iter().take(3) {
        println!("  {error}");
    }
    json!({ "streams": STREAMS, "broken": broken.len(), "seconds": elapsed.as_secs_f64(), "kib_per_stream": per_stream })
}

/// One routing-quality run through `base`; the workers' metrics are read at the end.
async fn quality(name: &str, client: &reqwest::Client, url: &str, key: Option<&str>, engines: &[String]) -> Value {
    let tenants: Vec<String> = (0..TENANTS)
        .map(|tenant| (0..SYSTEM_WORDS).map(|word| format!("t{tenant}w{word}")).collect::<Vec<_>>().join(" "))
        .collect();
    let tenants = std::sync::Arc::new(tenants);
    let stop_at = Instant::now() + QUALITY_RUN;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let (client, url, key, tenants) = (client.clone(), url.to_owned(), key.map(str::to_owned), tenants.clone());
            tokio::spawn(async move {
                let mut ttfts = Vec::new();
                let mut errors = 0;
                let mut round = index;
                // Each request asks for a tenant drawn uniformly (a fixed-seed LCG per client, so
                // every router sees the same sequence).
                let mut seed = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                while Instant::now() < stop_at {
                    round += CLIENTS;
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    #[allow(clippy::cast_possible_truncation)]
                    let tenant = ((seed >> 33) % TENANTS as u64) as usize;
                    let body = json!({ "model": "m", "max_tokens": 8, "stream": true, "messages": [
                        { "role": "system", "content": tenants[tenant] },
                        { "role": "user", "content": format!("question {round} about the fleet and its cost") }] });
                    let sent = Instant::now();
                    let mut request = client.post(&url).json(&body);
                    if let Some(key) = &key {
                        request = request.bearer_auth(key);
                    }
                    let Ok(response) = request.send().await else {
                        errors += 1;
                        continue;
                    };
                    let mut body = response.bytes_stream();
                    let mut first = None;
                    let mut ok = false;
                    while let Some(Ok(chunk)) = body.next().await {
                        if first.is_none() && chunk.windows(7).any(|window| window == b"content") {
                            first = Some(sent.elapsed());
                        }
                        if chunk.windows(6).any(|window| window == b"[DONE]") {
                            ok = true;
                        }
                    }
                    match (ok, first) {
                        (true, Some(ttft)) => ttfts.push(ttft),
                        _ => errors += 1,
                    }
                }
                (ttfts, errors)
            })
        })
        .collect();
    let mut ttfts = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut some, failed) = task.await.unwrap();
        ttfts.append(&mut some);
        errors += failed;
    }
    ttfts.sort_unstable();
    let (mut hits, mut queries, mut served) = (0.0, 0.0, Vec::new());
    for engine in engines {
        let metrics = client.get(format!("{engine}/metrics")).send().await.unwrap().text().await.unwrap();
        let read = |name: &str| -> f64 {
            metrics
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        };
        hits += read("vllm:prefix_cache_hits_total");
        queries += read("vllm:prefix_cache_queries_total");
        served.push(read("vllm:request_success_total"));
    }
    let mean = ttfts.iter().map(Duration::as_secs_f64).sum::<f64>() / ttfts.len().max(1) as f64 * 1000.0;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let p90 = ttfts
        .get(((ttfts.len() as f64 - 1.0) * 0.9).round() as usize)
        .map_or(f64::NAN, |ttft| ttft.as_secs_f64() * 1000.0);
    let most = served.iter().copied().fold(0.0, f64::max);
    let least = served.iter().copied().fold(f64::INFINITY, f64::min);
    let spread = if least > 0.0 { most / least } else { f64::INFINITY };
    let hit_rate = if queries > 0.0 { hits / queries } else { 0.0 };
    println!(
        "| {name} | {mean:.1} ms | {p90:.1} ms | {:.1} % | {spread:.2} | {} | {errors} |",
        hit_rate * 100.0,
        ttfts.len()
    );
    json!({ "router": name, "ttft_mean_ms": mean, "ttft_p90_ms": p90, "prefix_cache_hit_rate": hit_rate,
        "served_max_over_min": spread, "requests": ttfts.len(), "errors": errors, "served_per_worker": served })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let directory = std::env::temp_dir().join(format!("qm-routing-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    let shutdown = Shutdown::new();
    let client = reqwest::Client::builder().pool_max_idle_per_host(4096).tcp_nodelay(true).build().unwrap();
    let streamed = streams(&client, &shutdown, &directory.join("streams")).await;

    // Prefill 100 us per uncached token (a 1,000-token prompt: 100 ms), decode 4 ms per token,
    // 2 % slower per running request, 256 cached blocks (4,096 tokens: about 4 tenants' prompts).
    let latency = [
        ("QM_MOCK_PREFILL_US_PER_TOKEN", "100"),
        ("QM_MOCK_DECODE_MS_PER_TOKEN", "4"),
        ("QM_MOCK_CONCURRENCY_SLOWDOWN", "0.02"),
        ("QM_MOCK_CACHE_BLOCKS", "256"),
    ];
    println!(
        "\nRouting quality: {TENANTS} tenants with {SYSTEM_WORDS}-token system prompts, {CLIENTS} clients, {QUALITY_RUN:?} per router, {WORKERS} fresh workers each\n"
    );
    println!(
        "| router | TTFT mean | TTFT p90 | prefix-cache hits | max/min served | requests | errors |\n|---|---|---|---|---|---|---|"
    );
    let mut results = Vec::new();
    for (name, kind) in [
        ("vllm-router round_robin", "vllm:round_robin"),
        ("vllm-router cache_aware", "vllm:cache_aware"),
        ("smg cache_aware", "smg:cache_aware"),
        ("qm-router", "qm"),
    ] {
        let (_agents, engines) = workers(&latency);
        let port = free_port();
        let (_peer, url, key) = match kind.split_once(':') {
            Some(("vllm", policy)) => {
                (Some(vllm_router(&engines, port, policy)), format!("http://127.0.0.1:{port}"), None)
            }
            Some(("smg", policy)) => (Some(smg(&engines, port, policy)), format!("http://127.0.0.1:{port}"), None),
            _ => {
                let (url, key) = qm_router(&directory.join(kind), &engines, &shutdown).await;
                (None, url, Some(key))
            }
        };
        let chat = format!("{url}/v1/chat/completions");
        let probe = json!({ "model": "m", "max_tokens": 1, "messages": [{ "role": "user", "content": "warm" }] });
        ready(&client, name, &support::chat_target(&chat, key.as_deref().unwrap_or_default(), &probe)).await;
        results.push(quality(name, &client, &chat, key.as_deref(), &engines).await);
    }
    let p90 = |result: &Value| result["ttft_p90_ms"].as_f64().unwrap_or(f64::INFINITY);
    let ours = results.last().unwrap();
    let best_other = results[..results.len() - 1].iter().map(p90).fold(f64::INFINITY, f64::min);
    let judge = |met: bool| if met { "met" } else { "MISSED" };
    println!(
        "qm-router TTFT p90 {:.1} ms vs the best other {best_other:.1} ms (target: at most): {}",
        p90(ours),
        judge(p90(ours) <= best_other)
    );
    let spread = ours["served_max_over_min"].as_f64().unwrap_or(f64::INFINITY);
    println!("qm-router max/min served per worker {spread:.2} (target: at most 1.5): {}", judge(spread <= 1.5));
    qm_testkit::load::save("routing", &json!({ "streams": streamed, "routing_quality": results }));
    shutdown.trigger();
    let _ = std::fs::remove_dir_all(&directory);
}
