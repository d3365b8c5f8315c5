//! The boot configuration is a structured document: whatever strings it carries, a real YAML
//! parser reads back exactly the files and commands Quartermaster writes, the agent's JSON holds
//! exactly the four keys with exactly the values given, and the values appear nowhere else (every
//! other file is the same whatever the values). No value can add a key, a file, a command or an
//! environment line. Rendered documents pass cloud-init's own schema validator, and the start
//! scripts parse as shell.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use proptest::prelude::*;
use qm_providers::agent::{AgentSource, BootConfig, BootPlan};

const AGENT_FILES: [&str; 4] = [
    BootConfig::PATH,
    "/etc/quartermaster/agent.env",
    "/usr/local/lib/quartermaster/run-agent",
    "/etc/systemd/system/qm-agent.service",
];
const ENGINE_FILES: [&str; 4] = [
    "/etc/quartermaster/model",
    "/etc/quartermaster/engine.env",
    "/usr/local/lib/quartermaster/run-engine",
    "/etc/systemd/system/qm-engine.service",
];

fn plans() -> Vec<BootPlan> {
    let download = BootPlan {
        agent: AgentSource::Download {
            url: "https://qm.example.com/downloads/qm-worker-agent".into(),
            sha256: "ab".repeat(32),
        },
        ..BootPlan::default()
    };
    let keyed =
        BootPlan { engine_api_key: Some(qm_config::Secret::new("engine-key-0123456789")), ..BootPlan::default() };
    vec![BootPlan::default(), BootPlan::default().for_gpus(false), download.clone(), download.for_gpus(false), keyed]
}

/// The files the document writes, by path: (permissions, content).
fn files(user_data: &str) -> Vec<(String, String, String)> {
    let document: serde_yaml::Value = serde_yaml::from_str(user_data).unwrap();
    let top = document.as_mapping().unwrap();
    let keys: Vec<&str> = top.keys().map(|key| key.as_str().unwrap()).collect();
    assert_eq!(keys, ["write_files", "runcmd"], "{user_data}");
    top.get("write_files")
        .unwrap()
        .as_sequence()
        .unwrap()
        .iter()
        .map(|file| {
            let file = file.as_mapping().unwrap();
            let keys: Vec<&str> = file.keys().map(|key| key.as_str().unwrap()).collect();
            assert_eq!(keys, ["path", "permissions", "owner", "content"], "{user_data}");
            assert_eq!(file.get("owner").unwrap().as_str(), Some("root:root"));
            let text = |key: &str| file.get(key).unwrap().as_str().unwrap().to_owned();
            (text("path"), text("permissions"), text("content"))
        })
        .collect()
}

fn check(config: &BootConfig, plan: &BootPlan) {
    let user_data = config.render(plan);
    assert!(user_data.starts_with("#cloud-config\n"));
    let written = files(&user_data);
    let paths: Vec<&str> = written.iter().map(|(path, _, _)| path.as_str()).collect();
    let engine = plan.engine_image.is_some();
    let mut expected = AGENT_FILES.to_vec();
    if engine {
        expected.extend(ENGINE_FILES);
    }
    assert_eq!(paths, expected, "{user_data}");
    let (_, permissions, content) = &written[0];
    assert_eq!(permissions, "0600", "the agent's configuration (its token) is root's alone");
    let json: serde_json::Value = serde_json::from_str(content).unwrap();
    let object = json.as_object().unwrap();
    assert_eq!(object.len(), 4, "{content}");
    assert_eq!(object["model"], config.model.as_str());
    assert_eq!(object["api_url"], config.api_url.as_str());
    assert_eq!(object["instance_id"], config.instance_id.as_str());
    assert_eq!(object["bootstrap_token"], config.bootstrap_token.as_str());
    assert_eq!(BootConfig::from_json(content).as_ref(), Ok(config));
    assert_eq!(BootConfig::parse(&user_data).as_ref(), Some(config));
    if engine {
        assert_eq!(written[4].2, format!("{}\n", config.model), "the model, alone in its file");
    }
    // Every other file is the same whatever the values: they reach nothing else.
    let other =
        BootConfig { api_url: "u".into(), instance_id: "i".into(), bootstrap_token: "t".into(), model: "m".into() };
    let reference = files(&other.render(plan));
    for (index, (path, permissions, content)) in written.iter().enumerate() {
        if path == BootConfig::PATH || path == "/etc/quartermaster/model" {
            continue;
        }
        assert_eq!((permissions, content), (&reference[index].1, &reference[index].2), "{path}");
    }
    let document: serde_yaml::Value = serde_yaml::from_str(&user_data).unwrap();
    let runcmd: Vec<Vec<String>> = serde_yaml::from_value(document["runcmd"].clone()).unwrap();
    let mut enable = vec!["systemctl", "enable", "--now"];
    if engine {
        enable.push("qm-engine.service");
    }
    enable.push("qm-agent.service");
    assert_eq!(runcmd, [vec!["systemctl", "daemon-reload"], enable]);
    assert!(!user_data.lines().any(|line| line.starts_with("QM_") || line == "---"), "{user_data}");
}

#[test]
fn the_reported_attacks_add_no_key() {
    for plan in plans() {
        check(
            &BootConfig {
                api_url: "http://127.0.0.1:8003".into(),
                instance_id: "0193-x".into(),
                bootstrap_token: "qmb_x".into(),
                model: "m\nQM_ENGINE_COMMAND=touch pwned; sleep 1000".into(),
            },
            &plan,
        );
        check(
            &BootConfig {
                api_url: "x".into(),
                instance_id: "y".into(),
                bootstrap_token: "z".into(),
                model: "\"\n  - path: /root/.ssh/authorized_keys\n    content: key\nruncmd: [reboot]\n#".into(),
            },
            &plan,
        );
    }
}

/// Rendered documents, for every kind of plan, pass `cloud-init schema`; the scripts they
/// write parse as POSIX shell.
#[test]
fn cloud_init_accepts_every_rendered_document() {
    let directory = std::env::temp_dir().join(format!("qm-cloud-init-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&directory).unwrap();
    let config = BootConfig {
        api_url: "https://qm.example.com".into(),
        instance_id: "0193a5b2-0000-7000-8000-000000000001".into(),
        bootstrap_token: "qmb_example".into(),
        model: "meta-llama/Llama-3.1-8B-Instruct".into(),
    };
    for (index, plan) in plans().iter().enumerate() {
        if let Err(said) = qm_testkit::cloud_init::validate(&config.render(plan)) {
            panic!("plan {index}: {said}");
        }
        for (file, _, content) in files(&config.render(plan)) {
            if file.contains("/run-") {
                let script = directory.join("script.sh");
                std::fs::write(&script, content).unwrap();
                let parsed = Command::new("sh").arg("-n").arg(&script).output().unwrap();
                assert!(parsed.status.success(), "{file}: {}", String::from_utf8_lossy(&parsed.stderr));
            }
        }
    }
    // The validator does refuse a broken document (so the check above can fail).
    assert!(qm_testkit::cloud_init::validate("#cloud-config\nwrite_files:\n  - path: 5\nruncmd: 7\n").is_err());
    std::fs::remove_dir_all(&directory).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_add_a_key(
        api_url in any::<String>(),
        instance_id in any::<String>(),
        bootstrap_token in "\\PC*",
        model in prop::string::string_regex("(.|\n|\r|\"|'|\\\\|:|-|#|\u{85}|\u{2028}|\u{feff})*").unwrap(),
        gpus in any::<bool>(),
    ) {
        check(&BootConfig { api_url, instance_id, bootstrap_token, model }, &BootPlan::default().for_gpus(gpus));
    }
}
