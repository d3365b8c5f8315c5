//! A pool's engine settings: the arguments its inference engine (vLLM's OpenAI-compatible
//! server, `vllm serve <model> <args>`) starts with. They reach an instance as one argument per
//! line of a file that the engine's start script reads into its argument list, never through a
//! shell line, so an argument is only ever an argument.

use std::time::Duration;

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
    #[schema(schema_with = args_schema)]
    pub args: Vec<String>,
}

/// The schema of `args`, with the bounds of each argument (utoipa cannot attach them to the
/// items of a `Vec<String>` field).
fn args_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let item = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_ARG_CHARS))
        .pattern(Some("^[ -~]+$"));
    ArrayBuilder::new().items(item).max_items(Some(MAX_ARGS)).build()
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

/// How long an engine takes, as the mock engine behaves (`qm-worker-agent`'s `QM_MOCK_*`) and as
/// the autoscaling harness models a replica. Zero everywhere by default (answers at once).
#[derive(Clone, Debug, PartialEq)]
pub struct Latency {
    /// Per prompt token not found in the prefix cache.
    pub prefill_per_token: Duration,
    /// Per generated token.
    pub decode_per_token: Duration,
    /// Each other running request slows every step by this fraction (0.05: 10 others, 1.5x).
    pub concurrency_slowdown: f64,
    /// Until the engine answers `/health` after start (loading weights).
    pub cold_start: Duration,
    /// Prefix-cache capacity, in blocks of 16 tokens.
    pub cache_blocks: usize,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            prefill_per_token: Duration::ZERO,
            decode_per_token: Duration::ZERO,
            concurrency_slowdown: 0.0,
            cold_start: Duration::ZERO,
            cache_blocks: 4096,
        }
    }
}

impl Latency {
    /// `base` stretched by `others` requests running beside it.
    pub fn slowed(&self, base: Duration, others: f64) -> Duration {
        base.mul_f64(self.factor(others))
    }

    /// How much slower each step is with `others` requests running beside it.
    pub fn factor(&self, others: f64) -> f64 {
        1.0 + self.concurrency_slowdown * others.max(0.0)
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
