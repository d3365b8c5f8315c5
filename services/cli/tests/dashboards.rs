//! The dashboards against a real Prometheus: `qm dev` does real work (a budget small enough to be
//! crossed, two `local` instances deployed and billed, the agent of one killed and its instance
//! repaired by reconciliation, both terminated), Prometheus (Debian's) scrapes its four services
//! every second, and every panel query of the fleet, provisioning and reconciliation, bus and
//! FinOps dashboards must return data; the repair shows on its panel. A panel whose query returns
//! nothing would show an empty chart forever. (The router's dashboard is evaluated the same way
//! by the router test, which sends it traffic.)

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Dev, Session, local_pid, temporary_data_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_of_every_dashboard_has_data_from_a_stack_that_worked() {
    let data_dir = temporary_data_dir();
    let (dev, urls, _) = Dev::start_with(&data_dir, &[], &[("QM_ADMIN_PASSWORD", "dashboards-password")]);
    let session = Session::login(&urls["api"], "dashboards-password").await;
    let targets: Vec<&str> = ["api", "orchestrator", "finops", "router"]
        .iter()
        .map(|name| urls[*name].trim_start_matches("http://"))
        .collect();
    let prometheus = qm_testkit::prometheus::Prometheus::start(&targets).await;

    // A budget of 20 micro-euros with thresholds at 50 % and 100 %: a few seconds of a
    // 0.05 EUR/h instance cross both.
    let me = session.send(reqwest::Method::GET, "/auth/me", None).await;
    let budget = format!("/finops/budgets/{}", me["organization_id"].as_str().expect("organization"));
    let (status, body) = session
        .exchange(
            reqwest::Method::PUT,
            &budget,
            Some(json!({ "amount_micros": 20, "hard_cap": false, "thresholds": [50, 100] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ids = session.deploy(["local", "local-1", "local.cpu"], 2).await;
    for id in &ids {
        session.state_within(id, |state| state == "ready", Duration::from_secs(60)).await;
    }
    session
        .until(
            &budget,
            |status| status["alerts"].as_array().is_some_and(|alerts| alerts.len() == 2),
            Duration::from_secs(60),
        )
        .await;

    // The machine under one instance dies (its agent killed): reconciliation finds it stopped
    // and sends it to termination, and the repair is counted.
    let pid = local_pid(&data_dir, &ids[1]);
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());
    let (status, body) =
        session.exchange(reqwest::Method::POST, "/fleet/reconcile", Some(json!({ "provider": "local" }))).await;
    assert!(status < 300, "{status} {body}");
    session.state_within(&ids[1], |state| state == "terminated", Duration::from_secs(30)).await;
    let repaired = r#"sum by (provider, kind) (increase(qm_reconcile_repairs_total{kind="stopped"}[1h])) > 0"#;
    let result = prometheus.data(repaired, Duration::from_secs(30)).await;
    assert!(result.is_ok(), "the repair never showed: {result:?}");

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/dashboards");
    let mut dashboards: Vec<String> = std::fs::read_dir(&root)
        .expect("dashboards")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dashboards.sort();
    assert_eq!(dashboards, ["bus.json", "finops.json", "fleet.json", "provisioning.json", "router.json"]);
    for dashboard in dashboards.iter().filter(|name| *name != "router.json") {
        for query in qm_testkit::prometheus::dashboard_queries(&root.join(dashboard)) {
            let result = prometheus.data(&query, Duration::from_secs(30)).await;
            assert!(result.is_ok(), "{dashboard}: `{query}` returns no data: {result:?}");
        }
    }
    let (status, _) = session.exchange(reqwest::Method::DELETE, &format!("/instances/{}", ids[0]), None).await;
    assert_eq!(status, 202);
    session.state_within(&ids[0], |state| state == "terminated", Duration::from_secs(30)).await;
    drop(prometheus);
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
