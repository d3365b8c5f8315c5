//! The boot configuration is a structured document: whatever strings it carries, a real YAML
//! parser reads back exactly one file to write, whose JSON holds exactly the four keys with
//! exactly the values given. No value can add a key, a file, a command or an environment line.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use qm_providers::agent::BootConfig;

fn check(config: &BootConfig) {
    let user_data = config.render();
    assert!(user_data.starts_with("#cloud-config\n"));
    let document: serde_yaml::Value = serde_yaml::from_str(&user_data).unwrap();
    let top = document.as_mapping().unwrap();
    assert_eq!(top.len(), 1, "only write_files: {user_data}");
    let files = top.get("write_files").unwrap().as_sequence().unwrap();
    assert_eq!(files.len(), 1, "{user_data}");
    let file = files[0].as_mapping().unwrap();
    let keys: Vec<&str> = file.keys().map(|key| key.as_str().unwrap()).collect();
    assert_eq!(keys, ["path", "permissions", "owner", "content"], "{user_data}");
    assert_eq!(file.get("path").unwrap().as_str(), Some(BootConfig::PATH));
    assert_eq!(file.get("permissions").unwrap().as_str(), Some("0600"));
    let content = file.get("content").unwrap().as_str().unwrap();
    let json: serde_json::Value = serde_json::from_str(content).unwrap();
    let object = json.as_object().unwrap();
    assert_eq!(object.len(), 4, "{content}");
    assert_eq!(object["model"], config.model.as_str());
    assert_eq!(object["api_url"], config.api_url.as_str());
    assert_eq!(object["instance_id"], config.instance_id.as_str());
    assert_eq!(object["bootstrap_token"], config.bootstrap_token.as_str());
    // What the agent and the providers read back is the same.
    assert_eq!(BootConfig::from_json(content).as_ref(), Ok(config));
    assert_eq!(BootConfig::parse(&user_data).as_ref(), Some(config));
    // Nothing that looks like an environment line or a second document.
    assert!(!user_data.lines().any(|line| line.starts_with("QM_") || line == "---"), "{user_data}");
}

#[test]
fn the_reported_attack_adds_no_key() {
    check(&BootConfig {
        api_url: "http://127.0.0.1:8003".into(),
        instance_id: "0193-x".into(),
        bootstrap_token: "qmb_x".into(),
        model: "m\nQM_ENGINE_COMMAND=touch pwned; sleep 1000".into(),
    });
    check(&BootConfig {
        api_url: "x".into(),
        instance_id: "y".into(),
        bootstrap_token: "z".into(),
        model: "\"\n  - path: /root/.ssh/authorized_keys\n    content: key\nruncmd: [reboot]\n#".into(),
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_add_a_key(
        api_url in any::<String>(),
        instance_id in any::<String>(),
        bootstrap_token in "\\PC*",
        model in prop::string::string_regex("(.|\n|\r|\"|'|\\\\|:|-|#|\u{85}|\u{2028}|\u{feff})*").unwrap(),
    ) {
        check(&BootConfig { api_url, instance_id, bootstrap_token, model });
    }
}
