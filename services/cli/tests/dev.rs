//! `qm dev` as a user runs it: the real binary, its probes over HTTP, SIGTERM, and a restart on
//! the same data directory.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Dev, Session, http, local_pid, temporary_data_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qm_dev_serves_every_probe_stops_on_sigterm_and_keeps_its_admin() {
    let data_dir = temporary_data_dir();
    let (dev, urls, lines) = Dev::start(&data_dir);
    let client = http();

    for service in ["api", "orchestrator", "finops", "router"] {
        let base = urls.get(service).unwrap_or_else(|| panic!("{service} address printed: {lines:?}"));
        for probe in ["healthz", "readyz"] {
            let response = client.get(format!("{base}/{probe}")).send().await.expect("request");
            assert_eq!(response.status(), 200, "{service} /{probe}");
        }
        let metrics = client.get(format!("{base}/metrics")).send().await.expect("request");
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.expect("body");
        assert!(text.contains(&format!("qm_build_info{{service=\"{service}\"")), "{service}: {text}");
    }
    let generated = lines.iter().position(|line| line.starts_with("Generated the admin password")).expect("announced");
    let printed_password = lines[generated + 1].trim().to_owned();

    let status = dev.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    let saved = std::fs::read_to_string(data_dir.join("admin-password")).expect("password saved");
    assert_eq!(saved.trim(), printed_password);

    let (dev, urls, lines) = Dev::start(&data_dir);
    assert!(!lines.iter().any(|line| line.contains("Generated")), "printed once only: {lines:?}");
    let ready = client.get(format!("{}/readyz", urls["api"])).send().await.expect("request");
    assert_eq!(ready.status(), 200);
    assert!(dev.terminate(Duration::from_secs(10)).success());

    let store = qm_store::connect(&format!("sqlite://{}", data_dir.join("qm.db").display())).await.expect("store");
    let admin = store.user_by_login("admin").await.expect("read").expect("the admin survived the restart");
    assert!(qm_api::password::verify(&printed_password, &admin.password_hash), "the saved password still logs in");
    drop(store);
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// With the orchestrator left out and NATS as the bus, a deployment's provision commands wait
/// in the orchestrator's durable consumer group, survive `qm dev` stopping, and are delivered
/// to the group when a consumer starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_commands_wait_on_the_bus_while_no_orchestrator_runs() {
    let data_dir = temporary_data_dir();
    let prefix = format!("devtest{}", uuid::Uuid::new_v4().simple());
    let bus_url = format!("nats://127.0.0.1:4222?prefix={prefix}");
    let variables = [("QM_BUS_URL", bus_url.as_str()), ("QM_ADMIN_PASSWORD", "dev-test-password")];
    let (dev, urls, lines) = Dev::start_with(&data_dir, &["--without", "orchestrator"], &variables);
    assert!(!urls.contains_key("orchestrator"), "{lines:?}");
    assert!(lines.iter().any(|line| line.starts_with("Loaded the catalog seed")), "{lines:?}");
    let client = http();
    let api = &urls["api"];
    let session = Session::login(api, "dev-test-password").await;
    let token = session.token.as_str();
    let accepted = client
        .post(format!("{api}/deployments"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "model": "m", "count": 2, "provider": "local", "zone": "local-1", "instance_type": "local.cpu" }))
        .send()
        .await
        .expect("deploy");
    assert_eq!(accepted.status(), 202);
    let accepted: serde_json::Value = accepted.json().await.expect("json");
    let mut expected: Vec<String> = accepted["instance_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    // Give the relay a moment to publish, then stop: the commands must outlive the process.
    let outbox_drained = async {
        let store = qm_store::connect(&format!("sqlite://{}", data_dir.join("qm.db").display())).await.expect("store");
        for _ in 0..100 {
            if store.outbox_backlog().await.expect("backlog") == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the relay did not publish the commands");
    };
    outbox_drained.await;
    assert!(dev.terminate(Duration::from_secs(10)).success());

    let bus = qm_bus::connect(&bus_url).await.expect("bus");
    let options = qm_bus::SubscriptionOptions::new(qm_events::Channel::Commands, "orchestrator");
    let mut subscription = bus.subscribe(options).await.expect("subscribe");
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the commands waited on the bus")
            .expect("delivery");
        assert_eq!(delivery.envelope.message_type, "instance.provision");
        received.push(delivery.envelope.data["instance_id"].as_str().expect("id").to_owned());
        delivery.ack().await.expect("ack");
    }
    received.sort();
    expected.sort();
    assert_eq!(received, expected);
    drop(subscription);
    let nats_url = url::Url::parse(&bus_url).expect("url");
    let naming = qm_bus::Naming::new(Some(&prefix)).expect("naming");
    qm_bus::nats::NatsBus::connect(&nats_url, naming).await.expect("nats").delete_streams().await.expect("clean up");
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// On `qm dev`, a deployment on the `sim` provider goes the whole way: the orchestrator creates
/// and starts the instance with a bootstrap token in its user data, the simulated agent
/// registers and heartbeats `ready` over HTTP, and the instance reaches `ready` at 100%; a
/// termination releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sim_deployment_reaches_ready_through_the_worker_protocol_and_terminates() {
    let data_dir = temporary_data_dir();
    let (dev, session) = Session::start(&data_dir).await;
    let ids = session.deploy(["sim", "sim-eu-1", "sim.l4"], 2).await;
    for id in &ids {
        let detail = session.state_within(id, |state| state == "ready", Duration::from_secs(30)).await;
        assert_eq!(detail["progress_percent"], 100);
        let states: Vec<_> =
            detail["history"].as_array().expect("history").iter().map(|change| change["to_state"].clone()).collect();
        assert_eq!(states, ["requested", "provisioning", "booting", "ready"]);
        assert!(detail["provider_instance_id"].is_string());
        // The address comes from the provider's listing in the health sweep (every 5 s).
        let path = format!("/instances/{id}");
        session.until(&path, |detail| detail["address"].is_string(), Duration::from_secs(15)).await;
    }
    session.send(reqwest::Method::DELETE, &format!("/instances/{}", ids[0]), None).await;
    session.state_within(&ids[0], |state| state == "terminated", Duration::from_secs(30)).await;
    let logs = session.send(reqwest::Method::GET, &format!("/action_logs/search?instance_id={}", ids[0]), None).await;
    let types = logs["counts"]["by_type"].as_object().expect("counts").keys().cloned().collect::<Vec<_>>();
    for expected in [
        "instance.provisioning",
        "instance.booting",
        "worker.register",
        "instance.ready",
        "instance.terminate",
        "instance.terminated",
    ] {
        assert!(types.iter().any(|logged| logged == expected), "{expected} missing from {types:?}");
    }
    assert!(dev.terminate(Duration::from_secs(10)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

fn process_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// The `local` provider's record of an instance: its agent process id.
/// On `qm dev` with the `local` provider: a deployment becomes real `qm-worker-agent` processes
/// that register and reach `ready`; `DELETE` stops the process; `kill -9` of an agent is noticed
/// and its instance leaves `ready`; a stray tagged agent is terminated by reconciliation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_instances_are_real_processes_from_ready_to_terminated() {
    let agent = Path::new(env!("CARGO_BIN_EXE_qm")).with_file_name("qm-worker-agent");
    assert!(agent.exists(), "{} is missing: build the workspace (make test does)", agent.display());
    let data_dir = temporary_data_dir();
    let (dev, session) = Session::start(&data_dir).await;
    let ids = session.deploy(["local", "local-1", "local.cpu"], 2).await;
    for id in &ids {
        let detail = session.state_within(id, |state| state == "ready", Duration::from_secs(30)).await;
        assert_eq!(detail["progress_percent"], 100);
        assert!(process_alive(local_pid(&data_dir, id)), "a running agent process");
    }

    // DELETE stops the process.
    let pid = local_pid(&data_dir, &ids[0]);
    session.send(reqwest::Method::DELETE, &format!("/instances/{}", ids[0]), None).await;
    session.state_within(&ids[0], |state| state == "terminated", Duration::from_secs(30)).await;
    assert!(!process_alive(pid), "the process is gone");

    // kill -9 of the other agent: its silence is noticed and the instance leaves `ready`.
    let pid = local_pid(&data_dir, &ids[1]);
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill").success());
    session.state_within(&ids[1], |state| state != "ready", Duration::from_secs(60)).await;

    // A stray agent under Quartermaster's tag that the database never heard of.
    let stray_binary = Some(agent.clone());
    let local = qm_providers::local::LocalProvider::new(&data_dir.join("local"), stray_binary);
    let stray = qm_providers::CreateRequest {
        instance_id: qm_domain::InstanceId::new(),
        zone: "local-1".into(),
        instance_type: "local.cpu".into(),
        user_data: String::new(),
        tags: Default::default(),
    };
    use qm_providers::CloudProvider as _;
    let created = local.create(&stray).await.expect("create");
    let started = local.start(&created.provider_id).await.expect("start");
    assert_eq!(started.status, qm_providers::ProviderStatus::Running);
    session.send(reqwest::Method::POST, "/fleet/reconcile", Some(serde_json::json!({ "provider": "local" }))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while local.list().await.expect("list").iter().any(|instance| instance.provider_id == created.provider_id) {
        assert!(Instant::now() < deadline, "the stray was not terminated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The killed agent's machine is gone for good: reconciliation (the same request) sends the
    // instance it served to termination, which ends its billing.
    session.state_within(&ids[1], |state| state == "terminated", Duration::from_secs(30)).await;

    assert!(dev.terminate(Duration::from_secs(15)).success());
    for instance in local.list().await.expect("list") {
        local.terminate(&instance.provider_id).await.expect("clean up");
    }
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// `qm dev` killed with `kill -9`, its local agents gone with the machine, then restarted on the
/// same data: the first reconciliation pass after start finds the agents stopped and terminates
/// their instances; none is left reported as running, and their cost stops growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_killed_qm_dev_restarts_instances_whose_agents_died_are_not_left_running() {
    let data_dir = temporary_data_dir();
    let (mut dev, session) = Session::start(&data_dir).await;
    let ids = session.deploy(["local", "local-1", "local.mock-gpu"], 2).await;
    for id in &ids {
        session.state_within(id, |state| state == "ready", Duration::from_secs(60)).await;
    }
    let pids: Vec<u64> = ids.iter().map(|id| local_pid(&data_dir, id)).collect();
    dev.child.kill().expect("kill -9 qm dev");
    dev.child.wait().expect("reaped");
    for pid in &pids {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }

    let (dev, session) = Session::start(&data_dir).await;
    let mut costs = Vec::new();
    for id in &ids {
        // Terminated, and (FinOps consumes the event) billing stopped.
        let path = format!("/instances/{id}");
        let stopped =
            |detail: &serde_json::Value| detail["state"] == "terminated" && detail["billing_stopped_at"].is_string();
        let detail = session.until(&path, stopped, Duration::from_secs(60)).await;
        costs.push(detail["cost_to_date_micros"].clone());
    }
    let running = session.send(reqwest::Method::GET, "/instances?state=ready", None).await;
    assert_eq!(running["items"].as_array().map(Vec::len), Some(0), "{running}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (id, cost) in ids.iter().zip(costs) {
        let detail = session.send(reqwest::Method::GET, &format!("/instances/{id}"), None).await;
        assert_eq!(detail["cost_to_date_micros"], cost, "the cost no longer grows");
    }
    assert!(dev.terminate(Duration::from_secs(15)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// FinOps on `qm dev` with a `local` instance (0.50 EUR/h): its cost appears and grows in every
/// endpoint while it runs and freezes once it is terminated; tokens served by its mock engine show
/// up per model with a cost per million tokens; a hard-capped budget refuses a deployment with
/// 402 until it is raised, and its thresholds raise alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_instance_costs_money_while_it_runs_and_its_tokens_have_a_price() {
    let data_dir = temporary_data_dir();
    let (dev, dev_urls, _) = Dev::start_with(&data_dir, &[], &[("QM_ADMIN_PASSWORD", "dev-test-password")]);
    let session = Session::login(&dev_urls["api"], "dev-test-password").await;
    let ids = session.deploy(["local", "local-1", "local.mock-gpu"], 1).await;
    let id = &ids[0];
    session.state_within(id, |state| state == "ready", Duration::from_secs(30)).await;
    let path = format!("/instances/{id}");
    let first =
        session.until(&path, |detail| detail["cost_to_date_micros"].as_i64() > Some(0), Duration::from_secs(20)).await;
    assert_eq!(first["reporting_hourly_price_micros"], 500_000);
    assert_eq!(first["billed_currency"], "EUR");
    assert!(first["billing_started_at"].is_string() && first["billing_stopped_at"].is_null());
    let grown = first["cost_to_date_micros"].as_i64().expect("cost");
    session.until(&path, |detail| detail["cost_to_date_micros"].as_i64() > Some(grown), Duration::from_secs(10)).await;
    let summary = session.send(reqwest::Method::GET, "/finops/dashboard/costs/summary", None).await;
    assert!(summary["total_micros"].as_i64() > Some(0), "{summary}");
    assert_eq!(summary["by_instance"][0]["key"], id.as_str());
    assert_eq!(summary["by_provider"][0]["key"], "local");
    let forecast = session.send(reqwest::Method::GET, "/finops/cost/forecast", None).await;
    assert_eq!(forecast["burn_rate_micros_per_hour"], 500_000);
    // The finops service's gauges (refreshed every 10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = http().get(format!("{}/metrics", dev_urls["finops"])).send().await.expect("metrics");
        let text = metrics.text().await.expect("text");
        if text.contains("qm_finops_burn_rate_micros_per_hour{provider=\"local\"} 500000")
            && text.contains("qm_finops_month_to_date_cost_micros{provider=\"local\"}")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no FinOps gauges: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(forecast["horizons"][1]["projected_micros"], 500_000, "one hour at the burn rate");

    // Tokens from the mock engine reach finops through the heartbeats.
    let worker = session.send(reqwest::Method::GET, &format!("/instances/{id}/worker"), None).await;
    let engine = worker["engine_url"].as_str().expect("engine url").to_owned();
    let ask = |content: &'static str| {
        let chat = serde_json::json!({ "model": "m", "messages": [{ "role": "user", "content": content }] });
        let request = http().post(format!("{engine}/v1/chat/completions")).json(&chat);
        async move {
            let answer: serde_json::Value = request.send().await.expect("chat").json().await.expect("json");
            answer["usage"]["total_tokens"].as_i64().expect("usage")
        }
    };
    let mut served = 0;
    for _ in 0..3 {
        served += ask("how much does this cost").await;
    }
    let usage = session
        .until("/finops/usage/tokens", |usage| usage["total_tokens"].as_i64() > Some(0), Duration::from_secs(30))
        .await;
    assert_eq!(usage["by_model"][0]["key"], "m");
    assert_eq!(usage["by_instance"][0]["key"], id.as_str());
    let per_token = session.send(reqwest::Method::GET, "/finops/cost/per_token", None).await;
    let model = &per_token["by_model"][0];
    assert_eq!(model["key"], "m");
    assert!(model["cost_per_million_tokens_micros"].as_i64() > Some(0), "{per_token}");

    // Answers served in the worker's last seconds, then terminated at once (before its next
    // heartbeat): their tokens still reach finops, carried by the agent's last heartbeat.
    session
        .until("/finops/usage/tokens", |usage| usage["total_tokens"].as_i64() == Some(served), Duration::from_secs(30))
        .await;
    for _ in 0..2 {
        served += ask("the last answer").await;
    }

    // Terminated: billing stops and the cost freezes everywhere.
    session.send(reqwest::Method::DELETE, &path, None).await;
    session.state_within(id, |state| state == "terminated", Duration::from_secs(30)).await;
    session
        .until("/finops/usage/tokens", |usage| usage["total_tokens"].as_i64() == Some(served), Duration::from_secs(20))
        .await;
    let frozen = session.until(&path, |detail| detail["billing_stopped_at"].is_string(), Duration::from_secs(20)).await;
    let window = "/finops/cost/actual/minute?step=minute";
    let series = session.send(reqwest::Method::GET, window, None).await;
    let (from, to) = (series["from"].as_str().expect("from"), series["to"].as_str().expect("to"));
    let range = format!("from={}&to={}", from.replace('+', "%2B"), to.replace('+', "%2B"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = session.send(reqwest::Method::GET, &path, None).await;
    assert_eq!(later["cost_to_date_micros"], frozen["cost_to_date_micros"], "frozen after termination");
    let summary = session.send(reqwest::Method::GET, &format!("/finops/dashboard/costs/summary?{range}"), None).await;
    let series = session.send(reqwest::Method::GET, &format!("{window}&{range}"), None).await;
    let points = series["points"].as_array().expect("points");
    let sum: i64 = points.iter().map(|point| point["cost_micros"].as_i64().expect("cost")).sum();
    assert_eq!(Some(sum), summary["total_micros"].as_i64(), "the minute series adds up to the summary");
    assert_eq!(summary["total_micros"], frozen["cost_to_date_micros"]);
    let cumulative = session.send(reqwest::Method::GET, &format!("/finops/cost/cumulative/minute?{range}"), None).await;
    assert_eq!(
        cumulative["points"]
            .as_array()
            .and_then(|points| points.last())
            .map(|point| point["cumulative_micros"].clone()),
        Some(summary["total_micros"].clone())
    );
    let windows = session.send(reqwest::Method::GET, "/finops/dashboard/costs/window", None).await;
    assert_eq!(windows["windows"][2]["window"], "day");
    assert_eq!(windows["windows"][2]["summary"]["total_micros"], summary["total_micros"]);
    let forecast = session.send(reqwest::Method::GET, "/finops/cost/forecast", None).await;
    assert_eq!(forecast["burn_rate_micros_per_hour"], 0);

    // A hard-capped budget below what was spent refuses the next deployment, then lets it through.
    let me = session.send(reqwest::Method::GET, "/auth/me", None).await;
    let budget_path = format!("/finops/budgets/{}", me["organization_id"].as_str().expect("organization"));
    let capped = serde_json::json!({ "amount_micros": 1, "thresholds": [50, 100], "hard_cap": true });
    let (status, _) = session.exchange(reqwest::Method::PUT, &budget_path, Some(capped)).await;
    assert_eq!(status, 200);
    let deployment = serde_json::json!({ "model": "m", "count": 1, "provider": "local", "zone": "local-1", "instance_type": "local.mock-gpu" });
    let (status, problem) = session.exchange(reqwest::Method::POST, "/deployments", Some(deployment.clone())).await;
    assert_eq!(status, 402, "{problem}");
    assert_eq!(problem["type"], "urn:qm:problem:budget-exceeded");
    assert_eq!(problem["budget"]["amount_micros"], 1);
    assert!(problem["budget"]["projected_micros"].as_i64() > Some(1));
    assert!(problem["detail"].as_str().expect("detail").contains("hard-capped"));
    let alerted = session
        .until(
            &budget_path,
            |budget| budget["alerts"].as_array().is_some_and(|alerts| alerts.len() == 2),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(alerted["alerts"][0]["threshold"], 50);
    // Every metric the dashboards and alert rules query is exported by this running stack.
    let mut exported = String::new();
    for service in ["api", "orchestrator", "finops"] {
        let metrics = http().get(format!("{}/metrics", dev_urls[service])).send().await.expect("metrics");
        exported.push_str(&metrics.text().await.expect("text"));
    }
    for metric in referenced_metrics() {
        let sampled = exported.lines().any(|line| {
            line.strip_prefix(metric.as_str())
                .is_some_and(|rest| rest.starts_with(['{', ' ']) || rest.starts_with("_bucket"))
        });
        assert!(sampled, "{metric}, used by deploy/grafana or deploy/prometheus, is not exported");
    }
    let raised = serde_json::json!({ "amount_micros": 1_000_000_000, "hard_cap": true });
    session.exchange(reqwest::Method::PUT, &budget_path, Some(raised)).await;
    let (status, accepted) = session.exchange(reqwest::Method::POST, "/deployments", Some(deployment)).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["instance_ids"][0].as_str().expect("id").to_owned();
    session.send(reqwest::Method::DELETE, &format!("/instances/{id}"), None).await;
    session.state_within(&id, |state| state == "terminated", Duration::from_secs(30)).await;

    assert!(dev.terminate(Duration::from_secs(15)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// The user data of `provider_id` in moto: the `#cloud-config` that starts the agent and the
/// engine, which `cloud-init schema` accepts, carrying `instance`'s configuration; and the
/// instance requires IMDSv2.
async fn check_aws_user_data(ec2: &aws_sdk_ec2::Client, provider_id: &str, instance: &str, data_dir: &Path) {
    let attribute = ec2
        .describe_instance_attribute()
        .instance_id(provider_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("user data");
    let encoded = attribute.user_data().and_then(|value| value.value()).expect("user data is set");
    let encoded_path = data_dir.join("user-data.b64");
    std::fs::write(&encoded_path, encoded).expect("write");
    let decoded = Command::new("base64").arg("-d").arg(&encoded_path).output().expect("base64");
    let user_data = String::from_utf8(decoded.stdout).expect("utf-8");
    let config = qm_providers::agent::BootConfig::parse(&user_data).expect("Quartermaster's #cloud-config");
    assert_eq!(config.instance_id, instance);
    assert!(user_data.contains("\"/etc/systemd/system/qm-engine.service\""), "a GPU type runs the engine");
    if let Err(said) = qm_testkit::cloud_init::validate(&user_data) {
        panic!("{said}\n{user_data}");
    }
    let described = ec2.describe_instances().instance_ids(provider_id).send().await.expect("describe");
    let metadata = described.reservations()[0].instances()[0].metadata_options().expect("metadata options").clone();
    assert_eq!(metadata.http_tokens(), Some(&aws_sdk_ec2::types::HttpTokensState::Required));
}

/// `qm dev` with the `aws` provider on moto and the `scaleway` provider on the Instance API fake:
/// a deployment on each goes from `POST /deployments` to `booting` (no agent can boot inside the
/// stand-ins) and, deleted, to `terminated` at the provider; catalog sync runs against both; and
/// neither cloud's credentials appear in any log line or action log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_and_scaleway_deployments_run_end_to_end_without_logging_credentials() {
    let aws_secret = format!("aws-secret-{}", uuid::Uuid::new_v4().simple());
    let scw_secret = format!("scw-secret-{}", uuid::Uuid::new_v4().simple());
    let moto = qm_testkit::moto::Moto::start().await;
    let scaleway = qm_testkit::scaleway::FakeScaleway::start(&scw_secret).await;
    let probe = qm_provider_aws::AwsProvider::loader()
        .endpoint_url(moto.url())
        .region(aws_sdk_ec2::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("AKIDE2E", &aws_secret, None, None, "test"))
        .load()
        .await;
    let ec2 = aws_sdk_ec2::Client::new(&probe);
    let image = ec2.describe_images().send().await.expect("images").images()[0].image_id().expect("ami").to_owned();
    let data_dir = temporary_data_dir();
    let variables = [
        ("QM_ADMIN_PASSWORD", "dev-test-password"),
        ("QM_PROVIDERS", "local,aws,scaleway"),
        ("RUST_LOG", "debug,sqlx=warn,hyper=info,hyper_util=info,h2=info"),
        ("AWS_ENDPOINT_URL", moto.url()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDE2E"),
        ("AWS_SECRET_ACCESS_KEY", &aws_secret),
        ("QM_AWS_IMAGE_ID", &image),
        ("SCW_API_URL", &scaleway.url()),
        ("SCW_SECRET_KEY", &scw_secret),
        ("SCW_DEFAULT_PROJECT_ID", "11111111-2222-3333-4444-555555555555"),
        ("QM_SCALEWAY_ZONES", "fr-par-1,fr-par-2"),
    ];
    let (dev, urls, startup) = Dev::start_with(&data_dir, &[], &variables);
    let session = Session::login(&urls["api"], "dev-test-password").await;

    let aws = session.deploy(["aws", "us-east-1a", "g6.xlarge"], 1).await;
    let scw = session.deploy(["scaleway", "fr-par-2", "L4-1-24G"], 1).await;
    for id in [&aws[0], &scw[0]] {
        let detail = session.state_within(id, |state| state == "booting", Duration::from_secs(60)).await;
        assert!(detail["provider_instance_id"].is_string(), "{detail}");
    }
    let aws_id =
        session.send(reqwest::Method::GET, &format!("/instances/{}", aws[0]), None).await["provider_instance_id"]
            .as_str()
            .expect("ec2 id")
            .to_owned();
    assert_eq!(scaleway.servers().len(), 1);
    check_aws_user_data(&ec2, &aws_id, &aws[0], &data_dir).await;
    // No model that could reach user data other than as a quoted value is accepted at all.
    for model in ["m\nruncmd: [reboot]", "m\"", "-m", "m; reboot", "m $(reboot)"] {
        let deployment = serde_json::json!({ "model": model, "count": 1, "provider": "aws", "zone": "us-east-1a", "instance_type": "g6.xlarge" });
        let (status, problem) = session.exchange(reqwest::Method::POST, "/deployments", Some(deployment)).await;
        assert_eq!(status, 422, "{model:?}: {problem}");
    }
    let (status, _) = session.exchange(reqwest::Method::POST, "/catalog/sync", Some(serde_json::json!({}))).await;
    assert_eq!(status, 202);
    for id in [&aws[0], &scw[0]] {
        session.send(reqwest::Method::DELETE, &format!("/instances/{id}"), None).await;
        session.state_within(id, |state| state == "terminated", Duration::from_secs(60)).await;
    }
    assert!(scaleway.servers().is_empty(), "terminated at Scaleway");
    let described = ec2.describe_instances().instance_ids(&aws_id).send().await.expect("describe");
    let state = described.reservations()[0].instances()[0].state().and_then(|state| state.name()).cloned();
    assert!(
        matches!(
            state,
            Some(
                aws_sdk_ec2::types::InstanceStateName::Terminated | aws_sdk_ec2::types::InstanceStateName::ShuttingDown
            )
        ),
        "{state:?}"
    );
    let synced = session
        .until(
            "/instance_types?provider=scaleway&limit=500",
            |page| {
                page["items"].as_array().is_some_and(|items| items.iter().any(|kind| kind["code"] == "H100-SXM-8-80G"))
            },
            Duration::from_secs(30),
        )
        .await;
    assert!(synced["items"].as_array().is_some_and(|items| !items.is_empty()));

    let logs = session.send(reqwest::Method::GET, "/action_logs/search?limit=500", None).await.to_string();
    assert!(logs.contains("instance.booting"));
    let (status, output) = dev.terminate_with_output(Duration::from_secs(15));
    assert!(status.success());
    let lines: Vec<&String> = startup.iter().chain(output.iter()).collect();
    assert!(lines.iter().filter(|line| line.contains("DEBUG")).count() > 10, "debug logs were captured");
    for secret in [&aws_secret, &scw_secret] {
        assert!(!logs.contains(secret.as_str()), "a credential in the action logs");
        let leaked: Vec<_> = lines.iter().filter(|line| line.contains(secret.as_str())).collect();
        assert!(leaked.is_empty(), "a credential in the logs: {leaked:?}");
    }
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// A cloud listed in `QM_PROVIDERS` without its settings stops `qm dev` at start-up, naming what
/// is missing.
#[test]
fn a_listed_cloud_without_its_settings_stops_start_up_naming_them() {
    let data_dir = temporary_data_dir();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("QM_PROVIDERS", "scaleway")], "SCW_SECRET_KEY"),
        (&[("QM_PROVIDERS", "aws")], "QM_AWS_IMAGE_ID"),
        (&[("QM_PROVIDERS", "aws"), ("QM_AWS_IMAGE_ID", "ami-12345678")], "no credentials"),
    ];
    for (variables, named) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_qm"));
        command.args(["dev", "--data-dir"]).arg(&data_dir);
        for variable in ["QM_API_ADDR", "QM_ORCHESTRATOR_ADDR", "QM_FINOPS_ADDR", "QM_ROUTER_ADDR"] {
            command.env(variable, "127.0.0.1:0");
        }
        for variable in
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN", "SCW_SECRET_KEY"]
        {
            command.env_remove(variable);
        }
        command
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
        command.env("QM_ADMIN_PASSWORD", "dev-test-password").envs(variables.iter().copied());
        let output = command.output().expect("run qm dev");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!output.status.success(), "{text}");
        assert!(text.contains(named), "expected `{named}` in: {text}");
    }
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

/// The `qm_*` metric names the Grafana dashboards and the Prometheus alert rules query.
/// Every `qm_` metric the alert rules and the dashboards query, but the router's (its dashboard
/// is checked against live router traffic in `tests/router.rs`).
fn referenced_metrics() -> std::collections::BTreeSet<String> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let rules = std::fs::read_to_string(deploy.join("prometheus/alerts.yml")).expect("alert rules");
    let parsed: serde_json::Value = serde_json::from_str(&rules).expect("the alert rules are JSON (and so YAML)");
    assert!(parsed["groups"][0]["rules"].as_array().is_some_and(|rules| !rules.is_empty()));
    let mut names = support::metric_names(&rules);
    for entry in std::fs::read_dir(deploy.join("grafana/dashboards")).expect("dashboards") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|name| name == "router.json") {
            continue;
        }
        names.extend(support::dashboard_metrics(&path));
    }
    names.retain(|name| !name.starts_with("qm_router_"));
    assert!(names.len() > 8, "{names:?}");
    names
}
