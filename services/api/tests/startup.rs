//! The production binary refuses to start, with one clear line and no panic, when its
//! configuration or its database is wrong.

use std::process::{Command, Output};

fn qm_api(variables: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qm-api"));
    for variable in ["QM_DATABASE_URL", "QM_BUS_URL", "QM_ADMIN_PASSWORD", "QM_ADMIN_PASSWORD_FILE", "QM_API_ADDR"] {
        command.env_remove(variable);
    }
    command.envs(variables.iter().copied()).env("RUST_LOG", "off");
    command.output().expect("run qm-api")
}

fn assert_refused(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("qm-api: ") && lines[0].contains(expected), "{stderr}");
}

#[test]
fn an_unreachable_database_is_one_clear_line() {
    let output = qm_api(&[
        ("QM_DATABASE_URL", "postgres://qm:hunter2@nonexistent.invalid:5432/qm"),
        ("QM_BUS_URL", "nats://127.0.0.1:4222"),
    ]);
    assert_refused(&output, "cannot connect to PostgreSQL at nonexistent.invalid:5432/qm");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("hunter2"), "the password never shows");
}

#[test]
fn a_missing_database_url_is_named() {
    assert_refused(&qm_api(&[("QM_BUS_URL", "nats://127.0.0.1:4222")]), "QM_DATABASE_URL is not set");
}

#[test]
fn a_malformed_bus_url_is_named() {
    let output =
        qm_api(&[("QM_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"), ("QM_BUS_URL", "amqp://x")]);
    assert_refused(&output, "QM_BUS_URL is invalid");
}

#[tokio::test]
async fn a_first_start_without_an_admin_password_is_refused() {
    let database = qm_store::testing::TestDatabase::create().await;
    let output = qm_api(&[
        ("QM_DATABASE_URL", database.url()),
        ("QM_BUS_URL", "nats://127.0.0.1:4222"),
        ("QM_API_ADDR", "127.0.0.1:0"),
    ]);
    database.drop_database().await;
    assert_refused(&output, "no admin user exists yet and QM_ADMIN_PASSWORD");
}
