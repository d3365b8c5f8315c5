//! The fleet and FinOps dashboards against a real Prometheus: `qm dev` does real work (a budget
//! small enough to be crossed, a `local` instance deployed, billed and terminated), Prometheus
//! (Debian's) scrapes its four services every second, and every panel query of both dashboards
//! must return data. A panel whose query returns nothing would show an empty chart forever.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Dev, Session, temporary_data_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_of_the_fleet_and_finops_dashboards_has_data_from_a_stack_that_worked() {
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
    let deployment =
        json!({ "model": "m", "count": 1, "provider": "local", "zone": "local-1", "instance_type": "local.cpu" });
    let (status, accepted) = session.exchange(reqwest::Method::POST, "/deployments", Some(deployment)).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["instance_ids"][0].as_str().expect("instance").to_owned();
    session.until(&format!("/instances/{id}"), |instance| instance["state"] == "ready", Duration::from_secs(60)).await;
    session
        .until(
            &budget,
            |status| status["alerts"].as_array().is_some_and(|alerts| alerts.len() == 2),
            Duration::from_secs(60),
        )
        .await;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/dashboards");
    for dashboard in ["fleet.json", "finops.json"] {
        for query in qm_testkit::prometheus::dashboard_queries(&root.join(dashboard)) {
            let result = prometheus.data(&query, Duration::from_secs(30)).await;
            assert!(result.is_ok(), "{dashboard}: `{query}` returns no data: {result:?}");
        }
    }
    let (status, _) = session.exchange(reqwest::Method::DELETE, &format!("/instances/{id}"), None).await;
    assert_eq!(status, 202);
    session
        .until(&format!("/instances/{id}"), |instance| instance["state"] == "terminated", Duration::from_secs(30))
        .await;
    drop(prometheus);
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
