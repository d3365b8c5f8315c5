//! Who a caller is: roles within an organization, usernames and email addresses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A role within one organization. Ordered by privilege: `Viewer < Operator < Admin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything in its organization, changes nothing.
    Viewer,
    /// Runs the fleet: deployments, instances, syncs, reconciliation.
    Operator,
    /// Everything an operator does, plus users, API keys, budgets and settings.
    Admin,
}

impl Role {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether this role includes everything `required` may do.
    pub fn allows(&self, required: Role) -> bool {
        *self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown role `{0}` (expected admin, operator or viewer)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "a username is 3 to 64 characters of lowercase letters, digits, `.`, `_` or `-`, starting with a letter or digit"
    )]
    InvalidUsername,
    #[error("an email address needs one `@` with text on both sides and at most 254 characters")]
    InvalidEmail,
    #[error(
        "a model id is 1 to 200 characters of letters, digits and `.`, `_`, `:`, `/`, `@`, `+`, `-`, starting with a letter or digit"
    )]
    InvalidModel,
}

/// A model identifier as engines and registries name them (`meta-llama/Llama-3.1-8B-Instruct`,
/// `qwen2.5:7b`, `org/model@rev`). It reaches instances (their boot configuration, the engine's
/// command line), so only characters that mean nothing to a shell, an env file or YAML pass.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ModelId(String);

impl ModelId {
    pub const MAX_LENGTH: usize = 200;

    /// # Errors
    /// [`IdentityError::InvalidModel`] when the text breaks the rules above.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let valid_length = (1..=Self::MAX_LENGTH).contains(&text.len());
        let valid_start = text.chars().next().is_some_and(|first| first.is_ascii_alphanumeric());
        let valid_chars =
            text.chars().all(|character| character.is_ascii_alphanumeric() || "._:/@+-".contains(character));
        if valid_length && valid_start && valid_chars {
            Ok(Self(text.to_owned()))
        } else {
            Err(IdentityError::InvalidModel)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A login name: lowercase ASCII, 3–64 characters, so that it is unambiguous in URLs and logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    /// # Errors
    /// [`IdentityError::InvalidUsername`] when the text breaks the rules above.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let valid_length = (3..=64).contains(&text.len());
        let valid_start = text.chars().next().is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit());
        let valid_chars = text
            .chars()
            .all(|character| character.is_ascii_lowercase() || character.is_ascii_digit() || "._-".contains(character));
        if valid_length && valid_start && valid_chars {
            Ok(Self(text.to_owned()))
        } else {
            Err(IdentityError::InvalidUsername)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// An email address, stored lowercased. Only the shape is checked; ownership is not verified.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// # Errors
    /// [`IdentityError::InvalidEmail`] when there is not exactly one `@`, with text before it
    /// and dot-separated labels after it, or the address is longer than 254 characters.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let trimmed = text.trim();
        let mut parts = trimmed.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(IdentityError::InvalidEmail);
        };
        let well_formed = !local.is_empty()
            && domain.contains('.')
            && domain.split('.').all(|label| !label.is_empty())
            && trimmed.chars().count() <= 254
            && !trimmed.chars().any(char::is_whitespace);
        if well_formed { Ok(Self(trimmed.to_lowercase())) } else { Err(IdentityError::InvalidEmail) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_may_do_what_an_operator_may() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator));
    }

    #[test]
    fn roles_round_trip_through_text() {
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn a_username_with_uppercase_or_spaces_is_rejected() {
        assert!(Username::parse("Admin").is_err());
        assert!(Username::parse("a b").is_err());
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse("-dash").is_err());
        assert!(Username::parse("ops.team_1").is_ok());
    }

    #[test]
    fn a_model_id_admits_registry_names_and_nothing_a_shell_or_env_file_reads() {
        for good in ["meta-llama/Llama-3.1-8B-Instruct", "qwen2.5:7b", "org/model@v1+cu121", "m"] {
            assert!(ModelId::parse(good).is_ok(), "{good}");
        }
        for bad in
            ["", "m\nQM_ENGINE_COMMAND=x", "a b", "$(id)", "a;b", "a`b`", "-rf", "\"q\"", "a'b", &"x".repeat(201)]
        {
            assert!(ModelId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_email_is_lowercased_and_needs_a_domain() {
        assert_eq!(Email::parse("Ada@Example.org").map(|email| email.to_string()), Ok("ada@example.org".to_owned()));
        assert!(Email::parse("ada@localhost").is_err());
        assert!(Email::parse("@example.org").is_err());
        assert!(Email::parse("a@b@example.org").is_err());
    }
}
