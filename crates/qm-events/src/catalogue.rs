//! Every message type Quartermaster sends, and whether it is a command or an event.
//!
//! Commands are work for exactly one consumer group (the orchestrator); events fan out to every
//! group that subscribes. The bus maps channels to NATS streams `QM_CMD`/`QM_EVT` (subjects
//! `qm.cmd.<type>`/`qm.evt.<type>`) and to Redis streams `qm:cmd`/`qm:evt`.

use serde::{Deserialize, Serialize};

/// Which stream a message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Commands,
    Events,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Commands, Channel::Events];

    /// The short name used in subjects and keys: `cmd` or `evt`.
    pub const fn short_name(&self) -> &'static str {
        match self {
            Channel::Commands => "cmd",
            Channel::Events => "evt",
        }
    }

    pub fn parse(text: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|channel| channel.short_name() == text)
    }
}

/// A known message type. Unknown types are still carried (as plain strings in the envelope) so
/// that an old consumer can dead-letter a newer message instead of crashing on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    InstanceProvision,
    InstanceTerminate,
    CatalogSync,
    FleetReconcile,
    PoolScale,
    InstanceStateChanged,
    InstanceBillingStarted,
    InstanceBillingStopped,
    WorkerRegistered,
    WorkerHeartbeat,
    UsageTokens,
    BudgetThresholdCrossed,
    PoolScaled,
}

impl MessageType {
    pub const ALL: [MessageType; 13] = [
        MessageType::InstanceProvision,
        MessageType::InstanceTerminate,
        MessageType::CatalogSync,
        MessageType::FleetReconcile,
        MessageType::PoolScale,
        MessageType::InstanceStateChanged,
        MessageType::InstanceBillingStarted,
        MessageType::InstanceBillingStopped,
        MessageType::WorkerRegistered,
        MessageType::WorkerHeartbeat,
        MessageType::UsageTokens,
        MessageType::BudgetThresholdCrossed,
        MessageType::PoolScaled,
    ];

    pub const fn as_str(&self) -> &'static str {
        match self {
            MessageType::InstanceProvision => "instance.provision",
            MessageType::InstanceTerminate => "instance.terminate",
            MessageType::CatalogSync => "catalog.sync",
            MessageType::FleetReconcile => "fleet.reconcile",
            MessageType::PoolScale => "pool.scale",
            MessageType::InstanceStateChanged => "instance.state_changed",
            MessageType::InstanceBillingStarted => "instance.billing_started",
            MessageType::InstanceBillingStopped => "instance.billing_stopped",
            MessageType::WorkerRegistered => "worker.registered",
            MessageType::WorkerHeartbeat => "worker.heartbeat",
            MessageType::UsageTokens => "usage.tokens",
            MessageType::BudgetThresholdCrossed => "budget.threshold_crossed",
            MessageType::PoolScaled => "pool.scaled",
        }
    }

    pub const fn channel(&self) -> Channel {
        match self {
            MessageType::InstanceProvision
            | MessageType::InstanceTerminate
            | MessageType::CatalogSync
            | MessageType::FleetReconcile
            | MessageType::PoolScale => Channel::Commands,
            _ => Channel::Events,
        }
    }

    pub fn parse(text: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// Checks that a type name is safe as the last tokens of a NATS subject: lowercase ASCII words
/// of letters, digits and `_`, separated by single dots.
pub fn is_valid_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|character| character.is_ascii_lowercase() || character.is_ascii_digit() || character == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_go_to_the_command_channel() {
        assert_eq!(MessageType::InstanceProvision.channel(), Channel::Commands);
        assert_eq!(MessageType::PoolScale.channel(), Channel::Commands);
        assert_eq!(MessageType::UsageTokens.channel(), Channel::Events);
    }

    #[test]
    fn every_catalogued_type_is_a_valid_subject_suffix() {
        for kind in MessageType::ALL {
            assert!(is_valid_type_name(kind.as_str()), "{}", kind.as_str());
            assert_eq!(MessageType::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn wildcards_and_empty_tokens_are_not_type_names() {
        assert!(!is_valid_type_name("instance.*"));
        assert!(!is_valid_type_name("instance..x"));
        assert!(!is_valid_type_name("instance.>"));
        assert!(!is_valid_type_name("Instance.Provision"));
    }
}
