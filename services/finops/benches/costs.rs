//! `make bench`: FinOps queries on PostgreSQL with 10,000 instances billed over the last year
//! (each one cost interval, lasting an hour to 60 days, a fifth still running, across two
//! providers, four zones and three organizations). Reports p50 and p99 of the 24-hour summary,
//! the five windows and the 24-hour minute series against a baseline measured in the same run:
//! a database round trip (`ping`), the floor under any query. Target: p99 under 50 ms each.
//! Results also go to `$CARGO_TARGET_DIR/bench/finops.json`.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use qm_costs as cost;
use qm_domain::{InstanceId, OrganizationId};
use qm_store::testing::TestDatabase;
use qm_store::{BillingStart, CostFilter, NewOrganization, Store, TimeRange};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const INSTANCES: usize = 10_000;
const SAMPLES: usize = 200;
const TARGET: Duration = Duration::from_millis(50);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn seed(store: &dyn Store, now_s: i64) {
    let organizations: Vec<OrganizationId> = (0..3).map(|_| OrganizationId::new()).collect();
    let mut tx = store.begin().await.unwrap();
    for (index, id) in organizations.iter().enumerate() {
        let slug = format!("bench-{index}");
        tx.insert_organization(&NewOrganization { id: *id, name: slug.clone(), slug }).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let year = 365 * cost::DAY;
    for chunk in 0..INSTANCES / 1_000 {
        let mut tx = store.begin().await.unwrap();
        for index in 0..1_000 {
            let (provider, zones) = if (chunk + index) % 2 == 0 {
                ("aws", ["us-east-1a", "us-east-1b"])
            } else {
                ("scaleway", ["fr-par-2", "pl-waw-3"])
            };
            let started_s = now_s - rng.random_range(0..year);
            let start = BillingStart {
                instance_id: InstanceId::new(),
                organization_id: organizations[index % 3],
                provider: provider.into(),
                region: "r".into(),
                zone: zones[index % 2].into(),
                instance_type: format!("gpu.{}", index % 5),
                model: format!("model-{}", index % 4),
                currency: "EUR".into(),
                hourly_price_micros: rng.random_range(200_000..40_000_000),
                reporting_currency: "EUR".into(),
                reporting_hourly_micros: rng.random_range(200_000..40_000_000),
                started_s,
            };
            tx.open_interval(&start).await.unwrap();
            if rng.random_bool(0.8) {
                let stopped_s = (started_s + rng.random_range(cost::HOUR..60 * cost::DAY)).min(now_s);
                tx.close_interval(start.instance_id, Some(start.organization_id), stopped_s).await.unwrap();
            }
        }
        tx.commit().await.unwrap();
    }
}

fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * fraction).round() as usize;
    samples[index]
}

async fn measure<F, Fut>(mut query: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..10 {
        query().await;
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        query().await;
        samples.push(started.elapsed());
    }
    (percentile(&mut samples, 0.5), percentile(&mut samples, 0.99))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

async fn run() {
    let database = TestDatabase::create().await;
    let store = qm_store::connect(database.url()).await.unwrap();
    let now_s = qm_store::now().timestamp() / 60 * 60;
    let seeding = Instant::now();
    seed(&*store, now_s).await;
    println!(
        "FinOps benchmark: {INSTANCES} instances over a year on PostgreSQL (seeded in {:.1} s)",
        seeding.elapsed().as_secs_f64()
    );
    let store = &*store;
    let all = CostFilter::default();
    let day = TimeRange { from_s: now_s - cost::DAY, to_s: now_s, now_s };

    let baseline = measure(|| async { store.ping().await.unwrap() }).await;
    let summary = measure(|| async {
        cost::summary(store, "EUR", day, &all, 20).await.unwrap();
    })
    .await;
    let windows = measure(|| async {
        cost::windows(store, "EUR", now_s, &all, 20).await.unwrap();
    })
    .await;
    let series = measure(|| async {
        assert_eq!(cost::series(store, day, 60, &all).await.unwrap().len(), 1_440);
    })
    .await;

    println!("{:<28} {:>9} {:>9} {:>12}", "query", "p50 ms", "p99 ms", "p99/baseline");
    let mut results = Vec::new();
    let mut met = true;
    for (name, (p50, p99)) in [
        ("baseline (ping)", baseline),
        ("summary, 24 h", summary),
        ("windows (5)", windows),
        ("minute series, 24 h", series),
    ] {
        let ratio = p99.as_secs_f64() / baseline.1.as_secs_f64().max(1e-9);
        println!("{name:<28} {:>9.2} {:>9.2} {:>11.1}x", ms(p50), ms(p99), ratio);
        if name != "baseline (ping)" {
            met &= p99 < TARGET;
        }
        results
            .push(serde_json::json!({ "query": name, "p50_ms": ms(p50), "p99_ms": ms(p99), "p99_vs_baseline": ratio }));
    }
    println!("target: p99 under {} ms for each query: {}", TARGET.as_millis(), if met { "met" } else { "MISSED" });
    let directory =
        std::path::Path::new(&std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("bench");
    let _ = std::fs::create_dir_all(&directory);
    let _ = std::fs::write(directory.join("finops.json"), serde_json::to_vec_pretty(&results).unwrap());
    database.drop_database().await;
}
