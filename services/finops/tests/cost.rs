//! Costs from intervals on a real store (SQLite, and PostgreSQL for the property cases): for
//! random interval sets the minute series adds up to the summary total to the micro-unit and
//! matches an independent computation, the cumulative series never decreases, forecasts are the
//! burn rate times the horizon; and replayed, duplicated or reordered events change nothing.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use qm_costs as cost;
use qm_domain::{InstanceId, OrganizationId};
use qm_events::{Envelope, MessageType};
use qm_runtime::consumer::Handler;
use qm_store::{CostFilter, NewOrganization, Store, TimeRange};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

struct Fixture {
    store: Arc<dyn Store>,
    sqlite: Option<std::path::PathBuf>,
    postgres: Option<qm_store::testing::TestDatabase>,
    organization: OrganizationId,
}

impl Fixture {
    async fn sqlite() -> Self {
        let path = std::env::temp_dir().join(format!("qm-finops-test-{}.db", uuid::Uuid::new_v4().simple()));
        let store = qm_store::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        Self::with(store, Some(path), None).await
    }

    async fn postgres() -> Self {
        let database = qm_store::testing::TestDatabase::create().await;
        let store = qm_store::connect(database.url()).await.unwrap();
        Self::with(store, None, Some(database)).await
    }

    async fn with(
        store: Arc<dyn Store>,
        sqlite: Option<std::path::PathBuf>,
        postgres: Option<qm_store::testing::TestDatabase>,
    ) -> Self {
        let organization = OrganizationId::new();
        let mut tx = store.begin().await.unwrap();
        tx.insert_organization(&NewOrganization { id: organization, name: "Costs".into(), slug: "costs".into() })
            .await
            .unwrap();
        tx.commit().await.unwrap();
        Self { store, sqlite, postgres, organization }
    }

    /// Applies `events` through the finops handler, each in its own transaction.
    async fn apply(&self, events: &[Envelope]) {
        for event in events {
            let mut tx = self.store.begin().await.unwrap();
            qm_finops::events::CostEvents.handle(event, &mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    }

    async fn cleanup(self) {
        if let Some(path) = self.sqlite {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        if let Some(database) = self.postgres {
            database.drop_database().await;
        }
    }
}

/// One instance's billing: `hourly` micro-units per hour from `start` to `stop` (epoch seconds).
#[derive(Clone, Copy, Debug)]
struct Billed {
    instance: InstanceId,
    hourly: i64,
    start: i64,
    stop: Option<i64>,
}

fn started(organization: OrganizationId, billed: &Billed, provider: &str) -> Envelope {
    let data = json!({
        "instance_id": billed.instance, "provider": provider, "region": "r", "zone": format!("{provider}-1"),
        "instance_type": "t", "model": "m", "currency": "USD", "hourly_price_micros": billed.hourly,
        "reporting_currency": "EUR", "reporting_hourly_price_micros": billed.hourly,
        "started_at": cost::time(billed.start),
    });
    Envelope::new(MessageType::InstanceBillingStarted, "test", Some(organization), data)
}

fn stopped(organization: OrganizationId, instance: InstanceId, at: i64) -> Envelope {
    let data = json!({ "instance_id": instance, "stopped_at": cost::time(at) });
    Envelope::new(MessageType::InstanceBillingStopped, "test", Some(organization), data)
}

fn events(organization: OrganizationId, billed: &[Billed]) -> Vec<Envelope> {
    let mut events = Vec::new();
    for (index, item) in billed.iter().enumerate() {
        let provider = if index % 2 == 0 { "aws" } else { "scaleway" };
        events.push(started(organization, item, provider));
        if let Some(stop) = item.stop {
            events.push(stopped(organization, item.instance, stop));
        }
    }
    events
}

/// `⌊Σ h·overlap / 3600⌋`, computed here without the store.
fn oracle(billed: &[Billed], range: TimeRange) -> i64 {
    let area: i128 = billed
        .iter()
        .map(|item| {
            let end = item.stop.unwrap_or(range.now_s).min(range.now_s).min(range.to_s);
            let start = item.start.max(range.from_s);
            if end > start { i128::from(item.hourly) * i128::from(end - start) } else { 0 }
        })
        .sum();
    i64::try_from(area / 3600).unwrap()
}

async fn random_sets_agree(fixture: Fixture, seeds: std::ops::Range<u64>) {
    let day = 86_400;
    let base = 1_790_000_000 / day * day;
    for seed in seeds {
        // A fresh organization per set keeps the sets apart in one database.
        let organization = OrganizationId::new();
        let mut tx = fixture.store.begin().await.unwrap();
        let slug = format!("set-{seed}");
        tx.insert_organization(&NewOrganization { id: organization, name: slug.clone(), slug }).await.unwrap();
        tx.commit().await.unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let billed: Vec<Billed> = (0..rng.random_range(1..40))
            .map(|_| {
                let start = base + rng.random_range(0..day);
                Billed {
                    instance: InstanceId::new(),
                    hourly: rng.random_range(0..50_000_000),
                    start,
                    stop: rng.random_bool(0.7).then(|| start + rng.random_range(1..day)),
                }
            })
            .collect();
        let mut shuffled = events(organization, &billed);
        shuffled.reverse(); // stops before starts
        fixture.apply(&shuffled).await;

        let from_s = base + rng.random_range(0..day / 2) / 60 * 60;
        let to_s = from_s + rng.random_range(1..day) / 60 * 60 + 60;
        let now_s = base + rng.random_range(0..2 * day);
        let range = TimeRange { from_s, to_s, now_s };
        let filter = CostFilter { organization: Some(organization), ..CostFilter::default() };
        let summary = cost::summary(&*fixture.store, "EUR", range, &filter, 5).await.unwrap();
        let points = cost::series(&*fixture.store, range, 60, &filter).await.unwrap();
        let sum: i64 = points.iter().map(|point| point.cost_micros).sum();
        assert_eq!(summary.total_micros, oracle(&billed, range), "seed {seed}: summary against the oracle");
        assert_eq!(sum, summary.total_micros, "seed {seed}: the minute series adds up to the total");
        assert_eq!(points.last().map(|point| point.cumulative_micros), Some(summary.total_micros));
        assert!(points.windows(2).all(|pair| pair[0].cumulative_micros <= pair[1].cumulative_micros));
        assert!(points.iter().all(|point| point.cost_micros >= 0));
        let hourly_points = cost::series(&*fixture.store, range, 3600, &filter).await.unwrap();
        assert_eq!(hourly_points.iter().map(|point| point.cost_micros).sum::<i64>(), summary.total_micros);
        let by_provider: i64 = summary.by_provider.iter().map(|entry| entry.cost_micros).sum();
        assert!(by_provider <= summary.total_micros && summary.total_micros - by_provider < 2, "seed {seed}");

        let now = cost::time(now_s);
        let forecast = cost::forecast(&*fixture.store, "EUR", now, &filter).await.unwrap();
        let running: i64 = billed
            .iter()
            .filter(|item| item.start <= now_s && item.stop.is_none_or(|stop| stop > now_s))
            .map(|item| item.hourly)
            .sum();
        assert_eq!(forecast.burn_rate_micros_per_hour, running, "seed {seed}");
        for horizon in &forecast.horizons {
            assert_eq!(horizon.projected_micros, cost::project(running, horizon.seconds), "seed {seed}");
        }
    }
    fixture.cleanup().await;
}

#[tokio::test]
async fn random_interval_sets_agree_on_sqlite() {
    random_sets_agree(Fixture::sqlite().await, 0..40).await;
}

#[tokio::test]
async fn random_interval_sets_agree_on_postgres() {
    random_sets_agree(Fixture::postgres().await, 100..115).await;
}

#[tokio::test]
async fn replayed_duplicated_and_reordered_events_change_nothing() {
    let fixture = Fixture::sqlite().await;
    let organization = fixture.organization;
    let billed = [
        Billed { instance: InstanceId::new(), hourly: 2_500_000, start: 10_000, stop: Some(20_000) },
        Billed { instance: InstanceId::new(), hourly: 700_000, start: 12_345, stop: None },
    ];
    let range = TimeRange { from_s: 0, to_s: 40_000, now_s: 30_000 };
    let filter = CostFilter::default();
    fixture.apply(&events(organization, &billed)).await;
    let first = cost::summary(&*fixture.store, "EUR", range, &filter, 10).await.unwrap();
    assert_eq!(first.total_micros, oracle(&billed, range));

    // The same events again, re-sent under new ids (so the consumer's dedup does not hide
    // anything), in reverse order, plus a late duplicate stop and a late second start.
    let mut again: Vec<Envelope> = events(organization, &billed)
        .into_iter()
        .map(|event| Envelope::new(event.known_type().unwrap(), "test", event.org_id, event.data))
        .collect();
    again.reverse();
    again.push(stopped(organization, billed[0].instance, 25_000));
    again.push(started(organization, &Billed { start: 1_000, hourly: 99_000_000, ..billed[1] }, "aws"));
    fixture.apply(&again).await;
    let second = cost::summary(&*fixture.store, "EUR", range, &filter, 10).await.unwrap();
    assert_eq!(second.total_micros, first.total_micros);
    assert_eq!(second.by_instance, first.by_instance);
    assert_eq!(second.by_provider, first.by_provider);

    // Malformed events are refused, never half-applied.
    let broken =
        Envelope::new(MessageType::InstanceBillingStarted, "test", Some(organization), json!({ "instance_id": 7 }));
    let mut tx = fixture.store.begin().await.unwrap();
    assert!(qm_finops::events::CostEvents.handle(&broken, &mut *tx).await.is_err());
    fixture.cleanup().await;
}
