//! `make bench`: backup and restore time (the RTO's main part) for 10,000 instances with a year
//! of cost history (their state histories, cost intervals, and a token-usage record a minute for
//! a year: 525,600 rows), on PostgreSQL. `qm backup` and `qm restore` (the release binary) are
//! timed beside `pg_dump` and `pg_restore` alone, run the same way in the same run (the baseline:
//! what `qm` adds is the checksum, the manifest and its checks). Then `qm migrate` on the
//! restored database (what a service does first when it starts). Target: restore and start
//! within an hour (the RTO); results also go to `$CARGO_TARGET_DIR/bench/backup.json`.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use qm_store::testing::TestDatabase;

const INSTANCES: u32 = 10_000;
const TARGET_RTO: Duration = Duration::from_secs(3600);

fn psql(url: &str, sql: &str) {
    let status = Command::new("psql")
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .envs(qm_cli::backup::pg_environment(url).unwrap())
        .status()
        .expect("psql (PostgreSQL's client tools)");
    assert!(status.success(), "{sql}");
}

fn timed(what: &str, mut command: Command) -> Duration {
    let started = Instant::now();
    let output = command.output().unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed()
}

fn qm(args: &[&str], url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qm"));
    command.args(args).env("QM_DATABASE_URL", url);
    command
}

fn pg(tool: &str, args: &[&str], url: &str) -> Command {
    let mut command = Command::new(tool);
    command.args(args).envs(qm_cli::backup::pg_environment(url).unwrap());
    command
}

fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 100.0).round() / 100.0
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let source = runtime.block_on(TestDatabase::create());
    let store = runtime.block_on(qm_store::connect(source.url())).unwrap();
    let organization = qm_domain::OrganizationId::new();
    runtime.block_on(async {
        let mut tx = store.begin().await.unwrap();
        let new = qm_store::NewOrganization { id: organization, name: "Bench".into(), slug: "bench".into() };
        tx.insert_organization(&new).await.unwrap();
        tx.commit().await.unwrap();
    });
    drop(store);
    let url = source.url().to_owned();
    let started = Instant::now();
    psql(
        &url,
        &format!(
            "INSERT INTO instances (id, organization_id, provider, zone_id, zone, instance_type_id, instance_type, model, state, \
         state_changed_at, hourly_price_micros, currency, created_at, updated_at) \
         SELECT gen_random_uuid(), '{organization}', 'sim', gen_random_uuid(), 'sim-eu-1', gen_random_uuid(), 'sim.l4', 'm', \
         'terminated', now(), 700000, 'EUR', now() - (g * interval '52 minutes'), now() FROM generate_series(1, {INSTANCES}) g"
        ),
    );
    psql(
        &url,
        "INSERT INTO instance_state_history (id, instance_id, from_state, to_state, reason, occurred_at) \
         SELECT gen_random_uuid(), id, s.from_state, s.to_state, NULL, created_at FROM instances, \
         (VALUES (NULL, 'requested'), ('requested', 'provisioning'), ('provisioning', 'booting'), ('booting', 'ready'), \
         ('ready', 'terminating'), ('terminating', 'terminated')) AS s (from_state, to_state)",
    );
    psql(
        &url,
        "INSERT INTO cost_intervals (instance_id, organization_id, provider, region, zone, instance_type, model, currency, \
         hourly_price_micros, reporting_currency, reporting_hourly_micros, started_s, stopped_s, updated_at) \
         SELECT id, organization_id, 'sim', 'sim-eu', 'sim-eu-1', 'sim.l4', 'm', 'EUR', 700000, 'EUR', 700000, \
         extract(epoch FROM created_at)::bigint, extract(epoch FROM created_at)::bigint + 86400, now() FROM instances",
    );
    psql(
        &url,
        &format!(
            "INSERT INTO token_usage (event_id, at_s, organization_id, model, provider, region, zone, instance_type, prompt_tokens, \
         completion_tokens) SELECT gen_random_uuid(), extract(epoch FROM now())::bigint - g * 60, '{organization}', 'm', 'sim', \
         'sim-eu', 'sim-eu-1', 'sim.l4', 500, 100 FROM generate_series(1, 525600) g"
        ),
    );
    println!(
        "Backup benchmark: PostgreSQL with {INSTANCES} instances, {} state changes, {INSTANCES} cost intervals, 525,600 token records (built in {:.1} s)",
        INSTANCES * 6,
        started.elapsed().as_secs_f64()
    );

    let directory = std::env::temp_dir().join(format!("qm-bench-backup-{}", uuid::Uuid::new_v4().simple()));
    let baseline_file = directory.with_extension("baseline.dump");
    let base_dump = timed(
        "pg_dump",
        pg(
            "pg_dump",
            &["--format=custom", "--no-owner", "--no-privileges", "--file", baseline_file.to_str().unwrap()],
            &url,
        ),
    );
    let backup = timed("qm backup", qm(&["backup", "--to", directory.to_str().unwrap()], &url));
    let bytes = std::fs::metadata(directory.join("qm.dump")).unwrap().len();

    let baseline_target = runtime.block_on(TestDatabase::create());
    let base_restore = timed(
        "pg_restore",
        pg(
            "pg_restore",
            &[
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                "--dbname",
                &baseline_target_name(baseline_target.url()),
                baseline_file.to_str().unwrap(),
            ],
            baseline_target.url(),
        ),
    );
    let target = runtime.block_on(TestDatabase::create());
    let restore = timed("qm restore", qm(&["restore", "--from", directory.to_str().unwrap()], target.url()));
    let start = timed("qm migrate", qm(&["migrate"], target.url()));
    let rto = restore + start;

    let ratio =
        |ours: Duration, baseline: Duration| (ours.as_secs_f64() / baseline.as_secs_f64() * 100.0).round() / 100.0;
    println!("pg_dump (baseline)    {:>7.2} s", seconds(base_dump));
    println!(
        "qm backup             {:>7.2} s  x{:.2}  ({:.1} MB)",
        seconds(backup),
        ratio(backup, base_dump),
        bytes as f64 / 1e6
    );
    println!("pg_restore (baseline) {:>7.2} s", seconds(base_restore));
    println!("qm restore            {:>7.2} s  x{:.2}", seconds(restore), ratio(restore, base_restore));
    println!("qm migrate (start)    {:>7.2} s", seconds(start));
    let verdict = if rto < TARGET_RTO { "met" } else { "MISSED" };
    println!("RTO (restore + start) {:>7.2} s; target under {} s: {verdict}", seconds(rto), TARGET_RTO.as_secs());
    let report = serde_json::json!({
        "instances": INSTANCES, "token_records": 525_600, "dump_bytes": bytes,
        "pg_dump_s": seconds(base_dump), "qm_backup_s": seconds(backup), "backup_ratio": ratio(backup, base_dump),
        "pg_restore_s": seconds(base_restore), "qm_restore_s": seconds(restore), "restore_ratio": ratio(restore, base_restore),
        "start_s": seconds(start), "rto_s": seconds(rto), "target_rto_s": TARGET_RTO.as_secs(), "target": verdict,
    });
    let bench =
        std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("bench");
    std::fs::create_dir_all(&bench).unwrap();
    std::fs::write(bench.join("backup.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&directory);
    let _ = std::fs::remove_file(&baseline_file);
    runtime.block_on(async {
        source.drop_database().await;
        baseline_target.drop_database().await;
        target.drop_database().await;
    });
}

/// The database name in a test database's URL.
fn baseline_target_name(url: &str) -> String {
    url.rsplit('/').next().unwrap_or_default().to_owned()
}
