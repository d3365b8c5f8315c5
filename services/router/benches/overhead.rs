//! `make bench`: what a hop through the router costs, against the same static upstream in the
//! same run. The upstream answers every chat completion with the same small JSON at once, so
//! everything measured is the hop. Paths: direct (no hop), a bare nginx proxy, vllm-router
//! (`round_robin` and `cache_aware`), SGLang's gateway smg (`round_robin`), and qm-router with
//! its API-key check and per-key limits on. For each: p50 and p99 at one client (the added
//! latency is the difference to direct) and requests per second at 32 and 256 clients.
//! Targets: qm-router's added p50 at most vllm-router `round_robin`'s, and its throughput at 32
//! clients at least half the nginx hop's. LiteLLM's proxy (one worker, no database, the same
//! upstream as an OpenAI-compatible model) is measured too.
//! `make bench-tools` installs nginx (Debian), vllm-router and smg (PyPI, into `./.venv`) and
//! LiteLLM (into `./.venv-bench`).
//! Results also go to `$CARGO_TARGET_DIR/bench/router.json`.

#![allow(clippy::unwrap_used)]

mod support;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use qm_runtime::Shutdown;
use qm_testkit::load::{Measurement, Shape, Target, load};
use serde_json::{Value, json};
use support::{Peer, free_port, qm_router, ready, smg, vllm_router};

const WARM_UP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(4);

/// The static upstream: an OpenAI-shaped answer to every chat completion, and a model list.
async fn upstream() -> SocketAddr {
    let answer = json!({ "id": "chatcmpl-static", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "static answer" }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7 } })
    .to_string();
    let models =
        json!({ "object": "list", "data": [{ "id": "m", "object": "model", "owned_by": "bench" }] }).to_string();
    let router = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                let answer = answer.clone();
                async move { ([("content-type", "application/json")], answer) }
            }),
        )
        .fallback(move || {
            let models = models.clone();
            async move { ([("content-type", "application/json")], models) }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

fn nginx(directory: &Path, upstream: SocketAddr, port: u16) -> Peer {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|path| Path::new(path).exists());
    let binary = binary.expect("nginx is missing: run `make bench-tools` (Debian package nginx)");
    let config = format!(
        "daemon off; worker_processes 2; pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;\n\
           upstream engine {{ server {upstream}; keepalive 256; }}\n\
           server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://engine; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
        dir = directory.display()
    );
    let path = directory.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(binary).arg("-c").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    Peer(child)
}

/// LiteLLM's proxy on `port` with the upstream as model `m`.
fn litellm(directory: &Path, upstream: SocketAddr, port: u16) -> Peer {
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-bench/bin/litellm");
    assert!(binary.exists(), "{} is missing: run `make bench-tools` (PyPI litellm[proxy])", binary.display());
    let config = directory.join("litellm.yaml");
    let text = format!(
        "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n      api_base: http://{upstream}/v1\n      api_key: unused\n"
    );
    std::fs::write(&config, text).unwrap();
    let child = Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--config")
        .arg(&config)
        .current_dir(directory)
        // No master key: a bench on loopback.
        .env("LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY", "true")
        .env("LITELLM_LOG", "ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Peer(child)
}

struct Path3 {
    name: &'static str,
    target: Target,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let directory = std::env::temp_dir().join(format!("qm-router-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    let shutdown = Shutdown::new();
    let upstream = upstream().await;
    let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "How much does the fleet cost today?" }], "max_tokens": 2 });
    let (nginx_port, round_robin_port, cache_aware_port, smg_port) =
        (free_port(), free_port(), free_port(), free_port());
    let _nginx = nginx(&directory, upstream, nginx_port);
    let litellm_port = free_port();
    let _litellm = litellm(&directory, upstream, litellm_port);
    let workers = [format!("http://{upstream}")];
    let _round_robin = vllm_router(&workers, round_robin_port, "round_robin");
    let _cache_aware = vllm_router(&workers, cache_aware_port, "cache_aware");
    let _smg = smg(&workers, smg_port, "round_robin");
    let (qm, key) = qm_router(&directory, &workers, &shutdown).await;
    let chat =
        |base: String, bearer: Option<String>| Target::post(format!("{base}/v1/chat/completions"), bearer, &body);
    let paths = [
        Path3 { name: "direct", target: chat(format!("http://{upstream}"), None) },
        Path3 { name: "nginx", target: chat(format!("http://127.0.0.1:{nginx_port}"), None) },
        Path3 { name: "vllm-router round_robin", target: chat(format!("http://127.0.0.1:{round_robin_port}"), None) },
        Path3 { name: "vllm-router cache_aware", target: chat(format!("http://127.0.0.1:{cache_aware_port}"), None) },
        Path3 { name: "smg round_robin", target: chat(format!("http://127.0.0.1:{smg_port}"), None) },
        Path3 { name: "LiteLLM proxy", target: chat(format!("http://127.0.0.1:{litellm_port}"), None) },
        Path3 { name: "qm-router (key, limits)", target: chat(qm, Some(key)) },
    ];
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).tcp_nodelay(true).build().unwrap();
    for path in &paths {
        ready(&client, path.name, &path.target).await;
    }
    println!("Router overhead: one static upstream, every path in this run ({MEASURE:?} each)");
    let shape = |clients| Shape { clients, pause: Duration::ZERO, warm_up: WARM_UP, measure: MEASURE };
    let mut rows = Vec::new();
    for path in &paths {
        let one = load(&format!("{} c=1", path.name), &client, &path.target, shape(1)).await;
        let many = load(&format!("{} c=32", path.name), &client, &path.target, shape(32)).await;
        let crowd = load(&format!("{} c=256", path.name), &client, &path.target, shape(256)).await;
        rows.push((path.name, one, many, crowd));
    }
    let direct_p50 = rows[0].1.percentile(0.5).as_secs_f64();
    let direct_p99 = rows[0].1.percentile(0.99).as_secs_f64();
    println!("\n| path | added p50 (c=1) | added p99 (c=1) | req/s c=32 | req/s c=256 |\n|---|---|---|---|---|");
    let mut report = Vec::new();
    for (name, one, many, crowd) in &rows {
        let added_p50 = (one.percentile(0.5).as_secs_f64() - direct_p50) * 1000.0;
        let added_p99 = (one.percentile(0.99).as_secs_f64() - direct_p99) * 1000.0;
        println!(
            "| {name} | {added_p50:+.3} ms | {added_p99:+.3} ms | {:.0} | {:.0} |",
            many.throughput(),
            crowd.throughput()
        );
        report.push(json!({ "path": name, "added_p50_ms": added_p50, "added_p99_ms": added_p99,
            "c1": one.report(), "c32": many.report(), "c256": crowd.report() }));
    }
    let find = |name: &str| rows.iter().find(|row| row.0 == name).unwrap();
    let added = |row: &(&str, Measurement, Measurement, Measurement)| row.1.percentile(0.5).as_secs_f64() - direct_p50;
    let (qm_row, round_robin_row, nginx_row) =
        (find("qm-router (key, limits)"), find("vllm-router round_robin"), find("nginx"));
    let judge = |met: bool| if met { "met" } else { "MISSED" };
    println!(
        "qm-router added p50 {:.3} ms vs vllm-router round_robin {:.3} ms (target: at most): {}",
        added(qm_row) * 1000.0,
        added(round_robin_row) * 1000.0,
        judge(added(qm_row) <= added(round_robin_row))
    );
    let share = qm_row.2.throughput() / nginx_row.2.throughput();
    println!(
        "qm-router c=32 throughput x{share:.2} of nginx's, x{:.2} of vllm-router round_robin's (target: at least x0.5 of nginx): {}",
        qm_row.2.throughput() / round_robin_row.2.throughput(),
        judge(share >= 0.5)
    );
    qm_testkit::load::save("router", &Value::from(report));
    shutdown.trigger();
    let _ = std::fs::remove_dir_all(&directory);
}
