//! Where `qm login` keeps its token: `credentials.json` in the user's configuration directory
//! (`$QM_CONFIG_DIR`, else `$XDG_CONFIG_HOME/qm`, else `~/.config/qm`), the directory 0700 and
//! the file 0600, written whole and renamed into place. `QM_API_URL` and `QM_TOKEN` override it.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Failure, Outcome};

/// Where `qm dev` serves the api by default (DESIGN section 3).
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8003";

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Credentials {
    pub api_url: String,
    pub token: String,
    /// Who logged in (`admin`), or `api key`.
    pub login: String,
}

pub fn directory() -> Option<PathBuf> {
    if let Some(directory) = std::env::var_os("QM_CONFIG_DIR").filter(|value| !value.is_empty()) {
        return Some(PathBuf::from(directory));
    }
    if let Some(base) = std::env::var_os("XDG_CONFIG_HOME").filter(|value| !value.is_empty()) {
        return Some(PathBuf::from(base).join("qm"));
    }
    std::env::var_os("HOME")
        .filter(|value| !value.is_empty())
        .map(|home| PathBuf::from(home).join(".config").join("qm"))
}

fn file() -> Outcome<PathBuf> {
    directory()
        .map(|directory| directory.join("credentials.json"))
        .ok_or_else(|| Failure::Request("no configuration directory: set HOME or QM_CONFIG_DIR".into()))
}

/// The stored credentials; `None` when there are none (or they cannot be read as such).
pub fn load() -> Option<Credentials> {
    let text = std::fs::read_to_string(file().ok()?).ok()?;
    serde_json::from_str(&text).ok()
}

/// Stores `credentials`, readable by the user alone.
pub fn save(credentials: &Credentials) -> Outcome<PathBuf> {
    let path = file()?;
    let failed = |error: std::io::Error| Failure::Request(format!("cannot write {}: {error}", path.display()));
    let directory = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&directory).map_err(failed)?;
    std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    let partial = directory.join(format!(".credentials.{}.json", std::process::id()));
    let mut written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(failed)?;
    let text = serde_json::to_string_pretty(credentials).unwrap_or_default();
    written.write_all(text.as_bytes()).map_err(failed)?;
    written.sync_all().map_err(failed)?;
    std::fs::rename(&partial, &path).map_err(failed)?;
    Ok(path)
}

/// Forgets the stored credentials; `false` when there were none.
pub fn remove() -> Outcome<bool> {
    let path = file()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(Failure::Request(format!("cannot remove {}: {error}", path.display()))),
    }
}
