//! The operator's commands (`qm login`, `qm deploy`, `qm ps`, ...): a client of the api over
//! HTTP, as any script would be. Tables for people, `-o json|yaml` for scripts; exit codes 0
//! (done), 1 (the request failed), 2 (usage).

pub mod api;
pub mod config;
pub mod fleet;
pub mod money;
pub mod output;
pub mod people;
pub mod watch;

/// Why a command failed, and its exit code.
#[derive(Debug)]
pub enum Failure {
    /// The command line was wrong (exit 2).
    Usage(String),
    /// The request failed or the API refused it (exit 1): one line naming what was wrong.
    Request(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Request(_) => 1,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(message) | Self::Request(message) => formatter.write_str(message),
        }
    }
}

impl std::error::Error for Failure {}

pub type Outcome<T = ()> = Result<T, Failure>;

/// A path segment the user typed (an id): refused when it could leave its segment.
fn segment(id: &str) -> Outcome<&str> {
    if id.is_empty() || !id.chars().all(|character| character.is_ascii_alphanumeric() || character == '-') {
        return Err(Failure::Usage(format!("`{id}` is not an id")));
    }
    Ok(id)
}

/// What every client command is given: the API, and how to print.
pub struct Context {
    pub api: api::Api,
    pub output: output::Output,
}
