//! A singleton job on PostgreSQL: of two replicas, one runs it; when that one dies without
//! releasing anything (its task aborted, as `kill -9` would leave it), the survivor takes the
//! lease over and runs the job within the lease's time to live plus one renewal, although the
//! job's own period is an hour; and a job longer than the lease keeps it while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qm_runtime::Shutdown;
use qm_runtime::singleton::{Lease, Singleton};
use qm_store::testing::TestDatabase;

const LEASE: Lease = Lease { ttl: Duration::from_millis(800), renew: Duration::from_millis(200) };
const HOUR: Duration = Duration::from_secs(3600);

/// A replica running the job (which counts its runs and takes `length`); its task handle.
fn replica(
    store: &Arc<dyn qm_store::Store>,
    runs: &Arc<AtomicUsize>,
    length: Duration,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    let singleton = Singleton::new(store.clone(), "test.singleton", LEASE);
    let runs = runs.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        singleton
            .run(HOUR, Duration::ZERO, shutdown, || {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(length).await;
                }
            })
            .await;
    })
}

async fn until(what: &str, patience: Duration, condition: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < patience, "{what} within {patience:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_takes_a_dead_replicas_job_over_within_the_lease() {
    let database = TestDatabase::create().await;
    let store = qm_store::connect(database.url()).await.expect("store");
    let shutdown = Shutdown::new();
    let (first, second) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // The job lasts three leases: its holder must keep the lease while it runs.
    let length = LEASE.ttl * 3;
    let one = replica(&store, &first, length, &shutdown);
    until("the first replica runs the job", Duration::from_secs(5), || first.load(Ordering::SeqCst) == 1).await;
    let two = replica(&store, &second, length, &shutdown);
    tokio::time::sleep(length + LEASE.ttl).await;
    assert_eq!(second.load(Ordering::SeqCst), 0, "the second replica ran the job beside the first");
    assert_eq!(first.load(Ordering::SeqCst), 1, "an hourly job ran once");

    // The holder dies without a word.
    one.abort();
    let _ = one.await;
    let taken =
        until("the survivor takes the job over", LEASE.ttl + LEASE.renew * 3, || second.load(Ordering::SeqCst) == 1)
            .await;
    assert!(taken <= LEASE.ttl + LEASE.renew * 2, "taken over after {taken:?}");

    shutdown.trigger();
    let _ = two.await;
    database.drop_database().await;
}
