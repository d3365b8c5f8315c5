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
const ENGINE_FILES: [&str; 5] = [
    "/etc/quartermaster/model",
    "/etc/quartermaster/engine.args",
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
    assert_eq!(object.len(), 4 + usize::from(!config.engine_args.is_empty()), "{content}");
    assert_eq!(object["model"], config.model.as_str());
    assert_eq!(object["api_url"], config.api_url.as_str());
    assert_eq!(object["instance_id"], config.instance_id.as_str());
    assert_eq!(object["bootstrap_token"], config.bootstrap_token.as_str());
    assert_eq!(BootConfig::from_json(content).as_ref(), Ok(config));
    assert_eq!(BootConfig::parse(&user_data).as_ref(), Some(config));
    if engine {
        assert_eq!(written[4].2, format!("{}\n", config.model), "the model, alone in its file");
        let args: String = config.engine_args.iter().map(|arg| format!("{arg}\n")).collect();
        assert_eq!(written[5].2, args, "the engine's arguments, one per line, alone in their file");
    }
    // Every other file is the same whatever the values: they reach nothing else.
    let other = BootConfig {
        api_url: "u".into(),
        instance_id: "i".into(),
        bootstrap_token: "t".into(),
        model: "m".into(),
        engine_args: Vec::new(),
    };
    let reference = files(&other.render(plan));
    for (index, (path, permissions, content)) in written.iter().enumerate() {
        if [BootConfig::PATH, "/etc/quartermaster/model", "/etc/quartermaster/engine.args"].contains(&path.as_str()) {
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
                engine_args: vec!["--a\nQM_ENGINE_COMMAND=touch pwned".into()],
            },
            &plan,
        );
        check(
            &BootConfig {
                api_url: "x".into(),
                instance_id: "y".into(),
                bootstrap_token: "z".into(),
                model: "\"\n  - path: /root/.ssh/authorized_keys\n    content: key\nruncmd: [reboot]\n#".into(),
                engine_args: vec!["\"\nruncmd: [reboot]\n#".into()],
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
        engine_args: vec!["--max-model-len".into(), "8192".into()],
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

/// The engine's start script passes the model and each line of `engine.args` as one argument
/// each: spaces, quotes, `$(…)` and globs stay inside their argument. Run with its paths moved
/// to a temporary directory and a `docker` that writes down its arguments.
#[test]
fn the_engine_script_passes_each_argument_as_one() {
    let directory = std::env::temp_dir().join(format!("qm-run-engine-{}", uuid::Uuid::new_v4().simple()));
    let (etc, bin) = (directory.join("etc"), directory.join("bin"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let engine_args = vec![
        "--max-model-len".to_owned(),
        "8192".to_owned(),
        "--override-generation-config".to_owned(),
        "{\"temperature\": 0.5} $(touch pwned) *".to_owned(),
    ];
    let config = BootConfig {
        api_url: "u".into(),
        instance_id: "i".into(),
        bootstrap_token: "t".into(),
        model: "org/model x".into(),
        engine_args: engine_args.clone(),
    };
    let written = files(&config.render(&BootPlan::default()));
    let moved = |text: &str| {
        text.replace("/etc/quartermaster", &etc.display().to_string())
            .replace("/var/lib/quartermaster", &directory.display().to_string())
    };
    for (path, _, content) in &written {
        if let Some(name) = path.strip_prefix("/etc/quartermaster/") {
            std::fs::write(etc.join(name), content).unwrap();
        }
    }
    let script = written.iter().find(|(path, _, _)| path.ends_with("/run-engine")).unwrap();
    std::fs::write(directory.join("run-engine"), moved(&script.2)).unwrap();
    let log = directory.join("docker.log");
    std::fs::write(
        bin.join("docker"),
        format!(
            "#!/bin/sh\n[ \"$1\" = run ] || exit 0\nfor arg in \"$@\"; do printf '%s\\n' \"$arg\"; done > {}\n",
            log.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(bin.join("docker")).status().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let ran = Command::new("sh")
        .arg(directory.join("run-engine"))
        .current_dir(&directory)
        .env("PATH", path)
        .env("QM_ENGINE_IMAGE", "vllm/vllm-openai:test")
        .env_remove("VLLM_API_KEY")
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let argv: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_owned).collect();
    let image = argv.iter().position(|arg| arg == "vllm/vllm-openai:test").expect("the image");
    let mut expected = vec!["org/model x".to_owned()];
    expected.extend(engine_args);
    assert_eq!(argv[image + 1..], expected[..]);
    assert!(!directory.join("pwned").exists(), "nothing ran from an argument");
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
        engine_args in prop::collection::vec("(.|\n|\"|:|-|#)*", 0..3),
        gpus in any::<bool>(),
    ) {
        check(&BootConfig { api_url, instance_id, bootstrap_token, model, engine_args }, &BootPlan::default().for_gpus(gpus));
    }
}
