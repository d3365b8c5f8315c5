//! A pool's engine settings: the arguments its inference engine (vLLM's OpenAI-compatible
//! server, `vllm serve <model> <args>`) starts with. They reach an instance as one argument per
//! line of a file that the engine's start script reads into its argument list, never through a
//! shell line, so an argument is only ever an argument.

use serde::{Deserialize, Serialize};

/// Arguments at most.
pub const MAX_ARGS: usize = 64;
/// Characters per argument at most.
pub const MAX_ARG_CHARS: usize = 512;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Arguments after the model, e.g. `["--max-model-len", "8192"]`: at most 64, each 1 to 512
    /// printable ASCII characters.
    #[schema(max_items = 64)]
    pub args: Vec<String>,
}

impl EngineSettings {
    pub fn is_default(&self) -> bool {
        self.args.is_empty()
    }

    /// # Errors
    /// The first argument that is empty, too long, or holds anything but printable ASCII
    /// (a line break would split it in two).
    pub fn validate(&self) -> Result<(), String> {
        if self.args.len() > MAX_ARGS {
            return Err(format!("at most {MAX_ARGS} arguments"));
        }
        for (index, arg) in self.args.iter().enumerate() {
            if arg.is_empty() || arg.len() > MAX_ARG_CHARS {
                return Err(format!("argument {index} must be 1 to {MAX_ARG_CHARS} characters"));
            }
            if !arg.chars().all(|character| matches!(character, ' '..='~')) {
                return Err(format!("argument {index} must be printable ASCII (no line breaks or control characters)"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> EngineSettings {
        EngineSettings { args: args.iter().map(|arg| (*arg).to_owned()).collect() }
    }

    #[test]
    fn arguments_are_printable_bounded_lines() {
        assert!(
            settings(&["--max-model-len", "8192", "--override-generation-config", "{\"temperature\": 0.5}"])
                .validate()
                .is_ok()
        );
        assert!(settings(&[]).validate().is_ok());
        assert!(settings(&[""]).validate().expect_err("refused").contains("argument 0"));
        assert!(settings(&["--a", "x\n--trust-remote-code"]).validate().expect_err("refused").contains("argument 1"));
        assert!(settings(&["\u{7f}"]).validate().is_err());
        assert!(settings(&["é"]).validate().is_err());
        assert!(settings(&[&"x".repeat(MAX_ARG_CHARS + 1)]).validate().is_err());
        assert!(settings(&vec!["-x"; MAX_ARGS + 1]).validate().expect_err("refused").contains("at most"));
    }
}
