//! cloud-init's own schema validator (Debian package `cloud-init`, installed by
//! `make services`), run on user data as an instance would receive it.

/// `Ok` when `cloud-init schema` accepts `user_data`; its complaint otherwise.
///
/// # Panics
/// When `cloud-init` is not installed (the tests must not pass without it).
pub fn validate(user_data: &str) -> Result<(), String> {
    let path = std::env::temp_dir().join(format!("qm-user-data-{}.yaml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, user_data).unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
    let output = std::process::Command::new("cloud-init").args(["schema", "--config-file"]).arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let output = output.unwrap_or_else(|error| {
        panic!("cloud-init is missing ({error}): `make services` installs it (Debian package cloud-init)")
    });
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() && said.contains("Valid cloud-config") { Ok(()) } else { Err(said) }
}
