//! Names of streams, subjects and keys (DESIGN section 4), under an optional namespace prefix.

use qm_events::Channel;

use crate::BusError;

/// Builds every name a backend uses from one optional prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Naming {
    prefix: Option<String>,
}

impl Naming {
    /// # Errors
    /// [`BusError::InvalidUrl`] when the prefix is not lowercase letters, digits and `_`.
    pub fn new(prefix: Option<&str>) -> Result<Self, BusError> {
        match prefix {
            None | Some("") => Ok(Self { prefix: None }),
            Some(prefix) if is_token(prefix) => Ok(Self { prefix: Some(prefix.to_owned()) }),
            Some(_) => Err(BusError::InvalidUrl(
                "prefix must be lowercase letters, digits and `_`, at most 64 characters".into(),
            )),
        }
    }

    pub(crate) fn from_url(url: &url::Url) -> Result<Self, BusError> {
        let prefix = url.query_pairs().find(|(key, _)| key == "prefix").map(|(_, value)| value.into_owned());
        Self::new(prefix.as_deref())
    }

    fn dotted(&self, rest: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}.{rest}"),
            None => rest.to_owned(),
        }
    }

    fn coloned(&self, rest: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}:{rest}"),
            None => rest.to_owned(),
        }
    }

    /// NATS stream: `QM_CMD`, `QM_EVT` (with a prefix: `PREFIX_QM_CMD`).
    pub fn nats_stream(&self, channel: Channel) -> String {
        self.nats_stream_named(&format!("QM_{}", channel.short_name().to_uppercase()))
    }

    /// NATS stream holding dead letters: `QM_DLQ`.
    pub fn nats_dead_letter_stream(&self) -> String {
        self.nats_stream_named("QM_DLQ")
    }

    fn nats_stream_named(&self, name: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{}_{name}", prefix.to_uppercase()),
            None => name.to_owned(),
        }
    }

    /// NATS subject of one message: `qm.cmd.instance.provision`.
    pub fn nats_subject(&self, channel: Channel, message_type: &str) -> String {
        self.dotted(&format!("qm.{}.{message_type}", channel.short_name()))
    }

    /// Every subject of a channel: `qm.cmd.>`.
    pub fn nats_channel_wildcard(&self, channel: Channel) -> String {
        self.dotted(&format!("qm.{}.>", channel.short_name()))
    }

    /// Subject of a dead letter: `qm.dlq.<group>.<channel>`.
    pub fn nats_dead_letter_subject(&self, group: &str, channel: Channel) -> String {
        self.dotted(&format!("qm.dlq.{group}.{}", channel.short_name()))
    }

    pub fn nats_dead_letter_wildcard(&self, group: Option<&str>) -> String {
        match group {
            Some(group) => self.dotted(&format!("qm.dlq.{group}.>")),
            None => self.dotted("qm.dlq.>"),
        }
    }

    /// Redis stream key: `qm:cmd`, `qm:evt`.
    pub fn redis_stream(&self, channel: Channel) -> String {
        self.coloned(&format!("qm:{}", channel.short_name()))
    }

    /// Redis stream of a group's dead letters: `qm:dlq:<group>`.
    pub fn redis_dead_letter_stream(&self, group: &str) -> String {
        self.coloned(&format!("qm:dlq:{group}"))
    }

    /// Every Redis key this naming can produce starts with this (for clean-up in tests).
    pub fn redis_key_pattern(&self) -> String {
        self.coloned("qm:*")
    }
}

/// Group names become NATS consumer names and subject tokens, so they are kept to a safe set.
pub fn is_valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|character| character.is_ascii_lowercase() || character.is_ascii_digit() || "_-".contains(character))
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|character| character.is_ascii_lowercase() || character.is_ascii_digit() || character == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_follow_the_design() {
        let naming = Naming::default();
        assert_eq!(naming.nats_stream(Channel::Commands), "QM_CMD");
        assert_eq!(naming.nats_stream(Channel::Events), "QM_EVT");
        assert_eq!(naming.nats_subject(Channel::Commands, "instance.provision"), "qm.cmd.instance.provision");
        assert_eq!(naming.redis_stream(Channel::Commands), "qm:cmd");
        assert_eq!(naming.redis_stream(Channel::Events), "qm:evt");
    }

    #[test]
    fn a_prefix_namespaces_every_name() {
        let naming = Naming::new(Some("t1")).expect("valid");
        assert_eq!(naming.nats_stream(Channel::Events), "T1_QM_EVT");
        assert_eq!(naming.nats_subject(Channel::Events, "usage.tokens"), "t1.qm.evt.usage.tokens");
        assert_eq!(naming.redis_stream(Channel::Commands), "t1:qm:cmd");
        assert_eq!(naming.redis_dead_letter_stream("orchestrator"), "t1:qm:dlq:orchestrator");
    }

    #[test]
    fn a_prefix_with_wildcards_is_refused() {
        assert!(Naming::new(Some("a.>")).is_err());
        assert!(Naming::new(Some("A")).is_err());
    }

    #[test]
    fn group_names_exclude_subject_syntax() {
        assert!(is_valid_group_name("orchestrator"));
        assert!(is_valid_group_name("finops-2"));
        assert!(!is_valid_group_name("a.b"));
        assert!(!is_valid_group_name("*"));
        assert!(!is_valid_group_name(""));
    }
}
