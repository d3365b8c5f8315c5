//! The `qm` binary as an operator uses it, against `qm dev`: login (a wrong password first),
//! offers, a dry run that creates nothing, deploy `--wait` on `local` to ready (plain progress
//! lines when not on a terminal), ps as a table and as JSON, cost after a few seconds, down
//! `--wait` to terminated, an unknown zone, usage errors; exit codes 0, 1 and 2; the token
//! stored 0600 and printed nowhere. Then what an admin and a script do: API keys stored by
//! `login --api-key` or given as QM_TOKEN / QM_API_URL, offers and deployments by GPU and
//! price, `events -f`, `down --deployment`, users and organizations.

mod support;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Dev, temporary_data_dir};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `qm` with `args`, its configuration in `config`, `stdin` as its input, stdout and
/// stderr piped (not a terminal).
fn qm(config: &std::path::Path, args: &[&str], stdin: &str) -> Run {
    qm_with(config, args, stdin, &[])
}

/// [`qm`] with `variables` (QM_API_URL, QM_TOKEN) set; otherwise they are unset.
fn qm_with(config: &std::path::Path, args: &[&str], stdin: &str, variables: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qm"));
    command
        .args(args)
        .env("QM_CONFIG_DIR", config)
        .env_remove("QM_TOKEN")
        .env_remove("QM_API_URL")
        .env_remove("NO_COLOR")
        .envs(variables.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run qm");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let output = child.wait_with_output().expect("qm output");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains('\u{1b}') && !run.stderr.contains('\u{1b}'),
        "control codes without a terminal: {args:?}"
    );
    run
}

/// Starts a `qm` that keeps running (`ps -w`, `events -f`): the process, and its stdout's lines.
fn follow(config: &std::path::Path, args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(args)
        .env("QM_CONFIG_DIR", config)
        .env_remove("QM_TOKEN")
        .env_remove("QM_API_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qm");
    let stdout = child.stdout.take().expect("stdout");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, seen)
}

/// Runs `qm` on a real terminal (a pseudo-terminal that util-linux's `script` opens), with
/// `NO_COLOR` set or not: what the terminal showed.
fn on_terminal(config: &std::path::Path, args: &[&str], no_colour: bool) -> String {
    let line = std::iter::once(env!("CARGO_BIN_EXE_qm"))
        .chain(args.iter().copied())
        .map(|word| format!("'{word}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = Command::new("script");
    command.args(["--quiet", "--return", "--command", &line, "/dev/null"]);
    command.env("QM_CONFIG_DIR", config).env_remove("QM_TOKEN").env_remove("QM_API_URL").env_remove("NO_COLOR");
    if no_colour {
        command.env("NO_COLOR", "1");
    }
    let output = command.stdin(Stdio::null()).output().expect("util-linux `script` runs qm on a pseudo-terminal");
    assert!(output.status.success(), "qm {args:?} on a terminal: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ok(config: &std::path::Path, args: &[&str]) -> Run {
    let run = qm(config, args, "");
    assert_eq!(run.code, 0, "qm {args:?}: {}{}", run.stdout, run.stderr);
    run
}

/// One clear line on stderr, exit `code`.
fn fails(config: &std::path::Path, args: &[&str], stdin: &str, code: i32, naming: &str) -> String {
    let run = qm(config, args, stdin);
    assert_eq!(run.code, code, "qm {args:?}: {}{}", run.stdout, run.stderr);
    let line = run.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    assert!(line.contains(naming), "`{line}` should name {naming}");
    run.stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_deploys_watches_pays_and_tears_down_with_qm() {
    let data_dir = temporary_data_dir();
    let (dev, urls, _) = Dev::start_with(&data_dir, &[], &[("QM_ADMIN_PASSWORD", "cli-test-password")]);
    let api = urls["api"].as_str();
    let config = data_dir.join("config");
    let mut printed = Vec::new();

    // Logged out: a clear refusal.
    printed.push(fails(&config, &["--api-url", api, "ps"], "", 1, "qm login"));
    printed.push(fails(&config, &["login", api, "--password-stdin"], "wrong\n", 1, "HTTP 401"));
    let login = qm(&config, &["login", api, "--password-stdin"], "cli-test-password\n");
    assert_eq!(login.code, 0, "{}", login.stderr);
    let file = config.join("credentials.json");
    assert_eq!(std::fs::metadata(&file).expect("credentials").permissions().mode() & 0o777, 0o600);
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let token = stored["token"].as_str().expect("token").to_owned();
    printed.push(login.stdout + &login.stderr);
    let me = ok(&config, &["whoami"]);
    assert!(me.stdout.contains("admin"), "{}", me.stdout);

    // Offers, cheapest first.
    let offers = ok(&config, &["offers", "--provider", "local"]);
    assert!(offers.stdout.starts_with("PROVIDER") && offers.stdout.contains("local.cpu"), "{}", offers.stdout);
    let json: serde_json::Value = serde_json::from_str(&ok(&config, &["offers", "-o", "json"]).stdout).expect("json");
    let prices: Vec<i64> = json
        .as_array()
        .expect("offers")
        .iter()
        .filter_map(|offer| offer["reporting_hourly_price_micros"].as_i64())
        .collect();
    assert!(prices.len() > 3 && prices.windows(2).all(|pair| pair[0] <= pair[1]), "cheapest first: {prices:?}");

    // A dry run creates nothing; an unknown zone is one line; usage errors exit 2.
    let dry = ok(&config, &["deploy", "m", "--provider", "local", "--dry-run"]);
    assert!(dry.stdout.contains("local.cpu") && dry.stdout.contains("per month"), "{}", dry.stdout);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&config, &["ps", "-a", "-o", "json"]).stdout).expect("json");
    assert_eq!(listed, serde_json::json!([]), "a dry run created something");
    printed.push(fails(
        &config,
        &["deploy", "m", "--provider", "local", "--zone", "nowhere", "--type", "local.cpu"],
        "",
        1,
        "unknown zone `nowhere`",
    ));
    let verbose = fails(
        &config,
        &["--verbose", "deploy", "m", "--provider", "local", "--zone", "nowhere", "--type", "local.cpu"],
        "",
        1,
        "[request id ",
    );
    printed.push(verbose);
    assert_eq!(qm(&config, &["deploy"], "").code, 2);
    printed.push(fails(&config, &["deploy", "m", "--zone", "local-1"], "", 2, "--type"));

    // Deploy and wait: plain progress lines through a pipe.
    let deployed = ok(&config, &["deploy", "m", "--provider", "local", "--wait", "--timeout", "120"]);
    assert!(deployed.stdout.contains("1 instance(s) ready"), "{}", deployed.stdout);
    assert!(deployed.stderr.lines().any(|line| line.ends_with("ready (100%)")), "progress lines: {}", deployed.stderr);
    printed.push(deployed.stdout.clone() + &deployed.stderr);
    let table = ok(&config, &["ps"]);
    assert!(table.stdout.lines().next().is_some_and(|header| header.starts_with("ID") && header.contains("STATE")));
    assert!(table.stdout.contains("ready") && table.stdout.contains("ago"), "{}", table.stdout);
    let instances: serde_json::Value = serde_json::from_str(&ok(&config, &["ps", "-o", "json"]).stdout).expect("json");
    let instance = &instances.as_array().expect("instances")[0];
    assert_eq!(instance["state"], "ready");
    let id = instance["id"].as_str().expect("id").to_owned();
    assert!(instance["state_changed_at"].as_str().is_some_and(|at| at.contains('T')), "RFC 3339 in JSON");
    // `instances` is `ps`; a state filter keeps only that state.
    let filtered: serde_json::Value =
        serde_json::from_str(&ok(&config, &["instances", "--state", "ready", "-o", "json"]).stdout).expect("json");
    assert_eq!(filtered.as_array().map(Vec::len), Some(1), "{filtered}");
    let none: serde_json::Value =
        serde_json::from_str(&ok(&config, &["instances", "--state", "terminated", "-o", "json"]).stdout).expect("json");
    assert_eq!(none, serde_json::json!([]));
    let shown = ok(&config, &["instance", &id]);
    assert!(shown.stdout.contains("history:") && shown.stdout.contains("booting"), "{}", shown.stdout);

    // Cost after it has run a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cost: serde_json::Value = serde_json::from_str(&ok(&config, &["cost", "-o", "json"]).stdout).expect("json");
    assert!(cost["summary"]["total_micros"].as_i64().is_some_and(|total| total > 0), "{cost}");
    let cost = ok(&config, &["cost", "--by", "model", "--forecast"]);
    assert!(cost.stdout.contains("this month:") && cost.stdout.contains("burn rate:"), "{}", cost.stdout);
    // The last 24 h per hour: only the hour now running (and the one before, if the test
    // crossed the hour) cost anything, so the tallest block is at the end and the rest lowest.
    let day = cost.stdout.lines().find(|line| line.starts_with("last 24 h:")).expect("a last-24-h line");
    let blocks: Vec<char> = day.chars().filter(|c| ('\u{2581}'..='\u{2588}').contains(c)).collect();
    assert!(blocks.len() >= 24 && blocks[blocks.len() - 2..].contains(&'█'), "{day}");
    assert!(blocks[..blocks.len() - 2].iter().all(|block| *block == '▁'), "{day}");

    // Every breakdown names what ran.
    for (by, key) in [("provider", "local"), ("model", "m"), ("type", "local.cpu"), ("zone", "local-1")] {
        let broken_down = ok(&config, &["cost", "--by", by]);
        assert!(
            broken_down.stdout.lines().any(|line| line.trim_start().starts_with(key)),
            "--by {by}: {}",
            broken_down.stdout
        );
    }
    let by_org = ok(&config, &["cost", "--by", "org"]);
    assert!(
        by_org.stdout.lines().filter(|line| line.starts_with("  ")).count() == 1,
        "one organization: {}",
        by_org.stdout
    );

    // On a terminal the states are coloured, unless NO_COLOR is set.
    let coloured = on_terminal(&config, &["ps"], false);
    assert!(coloured.contains("\u{1b}[32mready\u{1b}[0m"), "a ready state in green: {coloured:?}");
    let plain = on_terminal(&config, &["ps"], true);
    assert!(plain.contains("ready") && !plain.contains('\u{1b}'), "NO_COLOR: {plain:?}");

    // Down, waiting until terminated.
    let down = ok(&config, &["down", &id, "--wait", "--timeout", "60"]);
    assert!(down.stdout.contains("terminated"), "{}", down.stdout);
    let instances: serde_json::Value =
        serde_json::from_str(&ok(&config, &["ps", "-a", "-o", "json"]).stdout).expect("json");
    assert_eq!(instances[0]["state"], "terminated");
    let logs = ok(&config, &["logs", "--action", "deployment.create", "-o", "yaml"]);
    assert!(logs.stdout.contains("action_type: deployment.create"), "{}", logs.stdout);

    // `ps -w` keeps the listing on screen, redrawn as the feed reports moves.
    let (mut watching, seen) = follow(&config, &["ps", "-w"]);
    let watched = ok(&config, &["deploy", "w", "--provider", "local", "-o", "json"]);
    let watched: serde_json::Value = serde_json::from_str(&watched.stdout).expect("json");
    let watched_id = watched["instance_ids"][0].as_str().expect("id").to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let line =
            seen.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).expect("ps -w redraws");
        if line.starts_with(&watched_id) && line.contains(" ready ") {
            break;
        }
    }
    watching.kill().expect("stop ps -w");
    let _ = watching.wait();
    ok(&config, &["down", &watched_id, "--wait", "--timeout", "60"]);

    // Budgets, keys, the feed and pools, as an operator types them.
    let budget = ok(&config, &["budget", "set", "250.50", "--hard-cap", "--thresholds", "50,90"]);
    assert!(budget.stdout.contains("250.50 EUR (hard cap)"), "{}", budget.stdout);
    let budget: serde_json::Value =
        serde_json::from_str(&ok(&config, &["budget", "get", "-o", "json"]).stdout).expect("json");
    assert_eq!(
        (budget["amount_micros"].as_i64(), budget["thresholds"].clone()),
        (Some(250_500_000), serde_json::json!([50, 90]))
    );
    let key: serde_json::Value =
        serde_json::from_str(&ok(&config, &["keys", "create", "ci", "-o", "json"]).stdout).expect("json");
    let key_id = key["id"].as_str().expect("key id").to_owned();
    assert!(ok(&config, &["keys", "ls"]).stdout.contains(&key_id));
    assert!(ok(&config, &["keys", "revoke", &key_id]).stdout.contains("revoked"));
    printed.push(fails(&config, &["keys", "revoke", "../../etc"], "", 2, "is not an id"));
    let events = ok(&config, &["events"]);
    assert!(events.stdout.contains("instance.state_changed"), "{}", events.stdout);
    assert!(ok(&config, &["pools", "ls"]).stdout.starts_with("ID"));

    for output in &printed {
        assert!(!output.contains(&token), "the token was printed: {output}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let completions = ok(&config, &["completions", shell]);
        assert!(completions.stdout.contains("qm") && completions.stdout.contains("deploy"), "{shell}");
    }
    assert!(ok(&config, &["man"]).stdout.contains(".TH qm"));
    assert!(ok(&config, &["logout"]).stdout.contains("logged out"));
    assert!(!file.exists());
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_manages_people_and_scripts_log_in_with_keys_and_overrides() {
    let data_dir = temporary_data_dir();
    let (dev, urls, _) = Dev::start_with(&data_dir, &[], &[("QM_ADMIN_PASSWORD", "cli-test-password")]);
    let api = urls["api"].as_str();
    let admin = data_dir.join("admin");
    let login = qm(&admin, &["login", api, "--password-stdin"], "cli-test-password\n");
    assert_eq!(login.code, 0, "{}", login.stderr);
    let mut printed = Vec::new();

    // A script's key: stored by `login --api-key` (checked before it is stored), or given as
    // QM_TOKEN with QM_API_URL and no stored credentials at all.
    let key: serde_json::Value =
        serde_json::from_str(&ok(&admin, &["keys", "create", "script", "-o", "json"]).stdout).expect("json");
    let secret = key["secret"].as_str().expect("secret").to_owned();
    let script = data_dir.join("script");
    printed.push(fails(&script, &["login", api, "--api-key", "qm_not-a-key"], "", 1, "HTTP 401"));
    assert!(!script.join("credentials.json").exists(), "a refused key was stored");
    let stored = ok(&script, &["login", api, "--api-key", &secret]);
    printed.push(stored.stdout.clone() + &stored.stderr);
    let listed: serde_json::Value = serde_json::from_str(&ok(&script, &["ps", "-o", "json"]).stdout).expect("json");
    assert_eq!(listed, serde_json::json!([]));
    let bare = data_dir.join("bare");
    let environment = [("QM_API_URL", api), ("QM_TOKEN", secret.as_str())];
    let run = qm_with(&bare, &["offers", "--provider", "sim", "-o", "json"], "", &environment);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!bare.join("credentials.json").exists());
    // QM_TOKEN wins over the stored token, QM_API_URL over the stored URL.
    let run = qm_with(&admin, &["whoami"], "", &[("QM_TOKEN", "qm_wrong")]);
    assert_eq!((run.code, run.stderr.trim().lines().count()), (1, 1), "{}", run.stderr);
    assert!(run.stderr.contains("HTTP 401"), "{}", run.stderr);
    let run = qm_with(&admin, &["whoami"], "", &[("QM_API_URL", "http://127.0.0.1:9")]);
    assert_eq!((run.code, run.stderr.trim().lines().count()), (1, 1), "{}", run.stderr);
    assert!(run.stderr.contains("127.0.0.1:9"), "the failing api is named: {}", run.stderr);

    // Offers with GPU, memory and price constraints.
    let l4: serde_json::Value =
        serde_json::from_str(&ok(&admin, &["offers", "--gpu", "L4", "--max-price", "1", "-o", "json"]).stdout)
            .expect("json");
    let l4 = l4.as_array().expect("offers");
    assert!(l4.iter().any(|offer| offer["instance_type"] == "sim.l4"), "{l4:?}");
    assert!(
        l4.iter().all(|offer| offer["gpu_model"] == "L4"
            && offer["reporting_hourly_price_micros"].as_i64().is_some_and(|price| price <= 1_000_000)),
        "{l4:?}"
    );
    let none = ok(&admin, &["offers", "--gpu", "L4", "--min-gpu-memory", "48", "-o", "json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&none.stdout).expect("json"), serde_json::json!([]));
    printed.push(fails(&admin, &["offers", "--max-price", "cheap"], "", 1, "max_hourly_price"));

    // The feed followed while a constrained deployment of two boots; then the deployment is
    // taken down as a whole.
    let (mut following, feed) = follow(&admin, &["events", "-f", "-o", "json"]);
    let deployed = ok(
        &admin,
        &[
            "deploy",
            "m",
            "--gpu",
            "L4",
            "--max-price",
            "1",
            "--provider",
            "sim",
            "--count",
            "2",
            "--wait",
            "--timeout",
            "120",
            "-o",
            "json",
        ],
    );
    let deployed: serde_json::Value = serde_json::from_str(&deployed.stdout).expect("json");
    let deployment = deployed["deployment_id"].as_str().expect("deployment").to_owned();
    let ids: Vec<String> = deployed["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|instance| instance["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{deployed}");
    let mut ready = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ready.len() < 2 {
        let line = feed.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).expect("events -f");
        let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON envelope a line");
        if event["type"] == "instance.state_changed" && event["data"]["to"] == "ready" {
            ready.insert(event["data"]["instance_id"].as_str().expect("id").to_owned());
        }
    }
    assert_eq!(ready, ids.iter().cloned().collect());
    // An L4 instance's page shows its GPU as the agent's heartbeats report it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shown = ok(&admin, &["instance", &ids[0]]);
        let gpus = shown.stdout.lines().find(|line| line.starts_with("gpus")).unwrap_or_default().to_owned();
        if gpus.contains("#0 NVIDIA L4 (simulated) 0% util, 22118/24576 MB") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no GPU metrics: {}", shown.stdout);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let down = ok(&admin, &["down", "--deployment", &deployment, "--wait", "--timeout", "60"]);
    assert!(down.stdout.contains("2 instance(s) terminated"), "{}", down.stdout);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut terminated = std::collections::HashSet::new();
    while terminated.len() < 2 {
        let line = feed.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).expect("events -f");
        let event: serde_json::Value = serde_json::from_str(&line).expect("json");
        if event["type"] == "instance.state_changed" && event["data"]["to"] == "terminated" {
            terminated.insert(event["data"]["instance_id"].as_str().expect("id").to_owned());
        }
    }
    following.kill().expect("stop events -f");
    let _ = following.wait();
    let all: serde_json::Value = serde_json::from_str(&ok(&admin, &["ps", "-a", "-o", "json"]).stdout).expect("json");
    assert!(all.as_array().expect("instances").iter().all(|instance| instance["state"] == "terminated"), "{all}");

    // Users: an operator created (password on stdin), who logs in and cannot manage users;
    // removed, their session ends.
    let created = qm(
        &admin,
        &["users", "create", "ops", "--email", "ops@example.com", "--role", "operator", "-o", "json"],
        "operator-password-1\n",
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    let user: serde_json::Value = serde_json::from_str(&created.stdout).expect("json");
    let user_id = user["id"].as_str().expect("user id").to_owned();
    let people = ok(&admin, &["users", "ls"]);
    assert!(people.stdout.starts_with("ID") && people.stdout.contains("ops@example.com"), "{}", people.stdout);
    printed.push(fails(&admin, &["users", "create", "weak", "--email", "weak@example.com"], "short\n", 1, "password"));
    let operator = data_dir.join("operator");
    let login = qm(&operator, &["login", api, "--user", "ops", "--password-stdin"], "operator-password-1\n");
    assert_eq!(login.code, 0, "{}", login.stderr);
    assert!(ok(&operator, &["whoami"]).stdout.contains("operator"));
    printed.push(fails(&operator, &["users", "ls"], "", 1, "HTTP 403"));
    printed.push(fails(&operator, &["orgs", "create", "Other", "--slug", "other"], "", 1, "HTTP 403"));
    assert!(ok(&admin, &["users", "rm", &user_id]).stdout.contains("removed"));
    printed.push(fails(&operator, &["whoami"], "", 1, "HTTP 401"));

    // Organizations, for the platform admin.
    let org = ok(&admin, &["orgs", "create", "Acme Labs", "--slug", "acme"]);
    assert!(org.stdout.contains("organization acme created"), "{}", org.stdout);
    let orgs: serde_json::Value =
        serde_json::from_str(&ok(&admin, &["orgs", "ls", "-o", "json"]).stdout).expect("json");
    assert!(orgs.as_array().expect("orgs").iter().any(|org| org["slug"] == "acme" && org["name"] == "Acme Labs"));
    printed.push(fails(&admin, &["orgs", "create", "Bad", "--slug", "Not A Slug!"], "", 1, "slug"));
    printed.push(fails(&admin, &["orgs", "create", "Again", "--slug", "acme"], "", 1, "HTTP 409"));

    for output in &printed {
        assert!(!output.contains(&secret), "the key was printed: {output}");
    }
    assert!(dev.terminate(Duration::from_secs(20)).success());
    std::fs::remove_dir_all(&data_dir).expect("clean up");
}
