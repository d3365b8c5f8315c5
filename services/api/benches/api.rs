//! `make bench`: the API under load on PostgreSQL. 64 concurrent clients read
//! `GET /instances` (authenticated, default page) from an organization with 1,000 instances,
//! against a baseline measured in the same run: `GET /healthz` (no auth, no database) with the
//! same 64 clients. The baseline and the pages are measured in turns (five rounds), so that a
//! machine whose speed drifts during the run weighs on all of them alike. Reports p50/p95/p99
//! latency, requests per second, and the ratios to the baseline. Targets, as ratios of p95 to the baseline's: authentication alone (`/auth/me`)
//! within 3x, a 50-row page within 10x; and a 50-row page under 20 ms. Results also go to
//! `$CARGO_TARGET_DIR/bench/api.json`.
//!
//! Then the login flood (security, issue 11): `GET /healthz` p99 from a few probing clients,
//! idle and while 200 clients log in over and over at once, each as its own account from its
//! own address (behind a trusted proxy), so that every attempt passes the limiter and runs a
//! real Argon2 verification; the target is a flooded p99 within 2x the idle p99, because
//! password hashing runs on background-priority threads, not on the async workers.

#![allow(clippy::unwrap_used)]

/// The allocator of the production binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use qm_config::{Environment, Settings};
use qm_domain::{DeploymentId, InstanceId};
use qm_runtime::Shutdown;
use qm_store::testing::TestDatabase;
use qm_store::{Deployment, NewInstance};
use qm_testkit::load::{Measurement, Shape, Target, load, load_in_turns};
use serde_json::json;

const INSTANCES: usize = 1_000;
const CLIENTS: usize = 64;
const WARM_UP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(10);
/// The baseline and the pages are measured in turns, in this many rounds of `MEASURE / ROUNDS`.
const ROUNDS: u32 = 5;
const TARGET_P95: Duration = Duration::from_millis(20);
const FLOOD_LOGINS: usize = 200;
const PROBES: usize = 4;
const PROBE_PAUSE: Duration = Duration::from_millis(5);
const FLOOD_MEASURE: Duration = Duration::from_secs(5);
const FLOOD_TARGET_RATIO: f64 = 2.0;
const AUTH_TARGET_RATIO: f64 = 3.0;
const PAGE_TARGET_RATIO: f64 = 10.0;

const SATURATING: Shape = Shape { clients: CLIENTS, pause: Duration::ZERO, warm_up: WARM_UP, measure: MEASURE };
const PROBING: Shape = Shape { clients: PROBES, pause: PROBE_PAUSE, warm_up: WARM_UP, measure: FLOOD_MEASURE };

/// `FLOOD_LOGINS` clients, each logging in as `flood-<n>` (with the right password, so every
/// attempt runs Argon2 and none is refused by the failure limiter) from its own forwarded
/// address, until `until`; returns the logins completed.
async fn flood_logins(client: &reqwest::Client, base: &str, password: &str, until: Instant) -> usize {
    let tasks: Vec<_> = (0..FLOOD_LOGINS)
        .map(|index| {
            let (client, url, password) = (client.clone(), format!("{base}/auth/login"), password.to_owned());
            let login = format!("flood-{index}");
            let address = format!("10.1.{}.{}", index / 250, index % 250 + 1);
            tokio::spawn(async move {
                let mut completed = 0;
                while Instant::now() < until {
                    let response = client
                        .post(&url)
                        .header("x-forwarded-for", &address)
                        .json(&json!({ "login": login, "password": password }))
                        .send()
                        .await;
                    if response.is_ok_and(|response| response.status().is_success()) {
                        completed += 1;
                    }
                }
                completed
            })
        })
        .collect();
    let mut completed = 0;
    for task in tasks {
        completed += task.await.unwrap();
    }
    completed
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let database = TestDatabase::create().await;
    let password = "bench-admin-password";
    let pairs = [
        ("QM_DATABASE_URL", database.url()),
        ("QM_BUS_URL", "memory://"),
        ("QM_ADMIN_PASSWORD", password),
        ("QM_ENV", "bench"),
        ("QM_TRUSTED_PROXIES", "127.0.0.1"),
        // Twice the cores of the database, which here runs on the bench's two cores
        // (docs/configuration.md); the default (8) is sized for a database of its own.
        ("QM_DATABASE_MAX_CONNECTIONS", "4"),
    ];
    let settings = Settings::from_env(&Environment::from_pairs(pairs)).unwrap();
    let dependencies = qm_runtime::entrypoint::connect(settings).await.unwrap();
    let store = dependencies.store.clone();
    qm_api::seeds::apply(&*store, &qm_api::seeds::parse(qm_api::seeds::CATALOG).unwrap()).await.unwrap();
    let shutdown = Shutdown::new();
    let service = qm_api::build(dependencies, "127.0.0.1:0".parse().unwrap(), shutdown.clone()).await.unwrap();
    let base = format!("http://{}", service.address());
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { service.run_until_stopped(shutdown).await.unwrap() }
    });

    // 1,000 instances in the admin's organization, as a deployment would leave them.
    let admin = store.user_by_login("admin").await.unwrap().unwrap();
    let offer = store.offers().await.unwrap().into_iter().find(|offer| offer.provider == "sim").unwrap();
    let deployment = Deployment {
        id: DeploymentId::new(),
        organization_id: admin.organization_id,
        created_by: Some(admin.id),
        model: "bench-model".into(),
        count: i32::try_from(INSTANCES).unwrap(),
        request: json!({}),
        placements: vec![offer.clone()],
        created_at: qm_store::now(),
    };
    let mut tx = store.begin().await.unwrap();
    tx.insert_deployment(&deployment).await.unwrap();
    for _ in 0..INSTANCES {
        let instance = NewInstance {
            id: InstanceId::new(),
            organization_id: admin.organization_id,
            deployment_id: Some(deployment.id),
            placement: offer.clone(),
            model: "bench-model".into(),
            revision: None,
        };
        tx.insert_instance(&instance).await.unwrap();
    }
    // The flood's accounts, sharing one password hash (verifying costs the same for each).
    let flood_hash = qm_api::password::hash(password).unwrap();
    for index in 0..FLOOD_LOGINS {
        let user = qm_store::NewUser {
            id: qm_domain::UserId::new(),
            organization_id: admin.organization_id,
            username: format!("flood-{index}"),
            email: format!("flood-{index}@bench.invalid"),
            first_name: "Flood".into(),
            last_name: "Bench".into(),
            role: qm_domain::Role::Viewer,
            password_hash: flood_hash.clone(),
            is_platform_admin: false,
        };
        tx.insert_user(&user).await.unwrap();
    }
    tx.commit().await.unwrap();
    database.settle().await;

    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let token = qm_testkit::login(&client, &base, "admin", password).await;
    let page: serde_json::Value =
        client.get(format!("{base}/instances")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 50, "the default page is full");

    println!("API benchmark: {INSTANCES} instances on PostgreSQL, {CLIENTS} concurrent clients, {MEASURE:?} each");
    let targets = [
        ("baseline GET /healthz", Target::get(format!("{base}/healthz"), None)),
        ("GET /auth/me (auth only)", Target::get(format!("{base}/auth/me"), Some(token.clone()))),
        ("GET /instances?limit=1", Target::get(format!("{base}/instances?limit=1"), Some(token.clone()))),
        ("GET /instances (auth, 50/page)", Target::get(format!("{base}/instances"), Some(token.clone()))),
    ];
    let [baseline, authenticated, small_page, listing]: [Measurement; 4] =
        load_in_turns(&client, &targets, SATURATING, ROUNDS).await.try_into().ok().unwrap();
    let baseline_report = baseline.report();
    let authenticated_report = authenticated.report();
    let small_page_report = small_page.report();
    let listing_report = listing.report();
    let p95_to_baseline = |measurement: &Measurement| {
        measurement.percentile(0.95).as_secs_f64() / baseline.percentile(0.95).as_secs_f64()
    };
    let judge = |met: bool| if met { "met" } else { "MISSED" };
    let auth_ratio = p95_to_baseline(&authenticated);
    let p95_ratio = p95_to_baseline(&listing);
    let throughput_ratio = listing.throughput() / baseline.throughput();
    let verdict = judge(listing.percentile(0.95) < TARGET_P95);
    let auth_verdict = judge(auth_ratio <= AUTH_TARGET_RATIO);
    let page_verdict = judge(p95_ratio <= PAGE_TARGET_RATIO);
    println!("/auth/me p95 x{auth_ratio:.2} of baseline (target within {AUTH_TARGET_RATIO}x): {auth_verdict}");
    println!(
        "50-row page p95 x{p95_ratio:.2} of baseline (target within {PAGE_TARGET_RATIO}x): {page_verdict}, throughput x{throughput_ratio:.2}"
    );
    println!("target 50-row page p95 < {} ms: {verdict}", TARGET_P95.as_millis());

    println!(
        "Login flood: {PROBES} clients probing /healthz every {PROBE_PAUSE:?}, idle then during {FLOOD_LOGINS} concurrent logins"
    );
    let idle = load("GET /healthz idle", &client, &Target::get(format!("{base}/healthz"), None), PROBING).await;
    let flood_until = Instant::now() + WARM_UP + FLOOD_MEASURE;
    let health = Target::get(format!("{base}/healthz"), None);
    let (flooded, logins) = tokio::join!(
        load("GET /healthz during flood", &client, &health, PROBING),
        flood_logins(&client, &base, password, flood_until),
    );
    let idle_report = idle.report();
    let flooded_report = flooded.report();
    let flood_ratio = flooded.percentile(0.99).as_secs_f64() / idle.percentile(0.99).as_secs_f64();
    let flood_verdict = if flood_ratio <= FLOOD_TARGET_RATIO { "met" } else { "MISSED" };
    let login_rate = logins as f64 / (WARM_UP + FLOOD_MEASURE).as_secs_f64();
    println!("{logins} logins completed ({login_rate:.1}/s); /healthz p99 during the flood x{flood_ratio:.2} of idle");
    println!("target p99 within {FLOOD_TARGET_RATIO}x idle: {flood_verdict}");

    let report = json!({
        "instances": INSTANCES, "clients": CLIENTS, "seconds": MEASURE.as_secs(),
        "baseline": baseline_report, "list_instances": listing_report,
        "auth_only": authenticated_report, "list_instances_limit_1": small_page_report,
        "p95_ratio_to_baseline": (p95_ratio * 100.0).round() / 100.0,
        "page_target_ratio": PAGE_TARGET_RATIO, "page_target": page_verdict,
        "auth_p95_ratio_to_baseline": (auth_ratio * 100.0).round() / 100.0,
        "auth_target_ratio": AUTH_TARGET_RATIO, "auth_target": auth_verdict,
        "throughput_ratio_to_baseline": (throughput_ratio * 100.0).round() / 100.0,
        "target_p95_ms": TARGET_P95.as_millis(), "target": verdict,
        "login_flood": {
            "concurrent_logins": FLOOD_LOGINS, "logins_completed": logins,
            "logins_per_second": (login_rate * 10.0).round() / 10.0,
            "healthz_idle": idle_report, "healthz_during_flood": flooded_report,
            "p99_ratio_to_idle": (flood_ratio * 100.0).round() / 100.0,
            "target_ratio": FLOOD_TARGET_RATIO, "target": flood_verdict,
        },
    });
    qm_testkit::load::save("api", &report);

    shutdown.trigger();
    let _ = server.await;
    database.drop_database().await;
}
