//! The instance lifecycle of DESIGN section 5 as a pure function.
//!
//! ```text
//! requested → provisioning → booting → ready ⇄ unhealthy
//!                  │            │        │
//!                  ▼            ▼        ▼
//!          provisioning_failed  startup_failed   draining → terminating → terminated
//! ```
//!
//! The store applies a transition as a conditional update (`… WHERE state = $expected`), so two
//! writers racing on one instance cannot both win; this module decides which moves are legal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Requested,
    Provisioning,
    Booting,
    Ready,
    Unhealthy,
    Draining,
    Terminating,
    Terminated,
    ProvisioningFailed,
    StartupFailed,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("an instance cannot go from `{from}` to `{to}`")]
    NotAllowed { from: InstanceState, to: InstanceState },
}

impl InstanceState {
    pub const ALL: [InstanceState; 10] = [
        InstanceState::Requested,
        InstanceState::Provisioning,
        InstanceState::Booting,
        InstanceState::Ready,
        InstanceState::Unhealthy,
        InstanceState::Draining,
        InstanceState::Terminating,
        InstanceState::Terminated,
        InstanceState::ProvisioningFailed,
        InstanceState::StartupFailed,
    ];

    pub const fn as_str(&self) -> &'static str {
        match self {
            InstanceState::Requested => "requested",
            InstanceState::Provisioning => "provisioning",
            InstanceState::Booting => "booting",
            InstanceState::Ready => "ready",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Draining => "draining",
            InstanceState::Terminating => "terminating",
            InstanceState::Terminated => "terminated",
            InstanceState::ProvisioningFailed => "provisioning_failed",
            InstanceState::StartupFailed => "startup_failed",
        }
    }

    /// No further transition leaves a terminal state; only these may be archived.
    pub const fn is_terminal(&self) -> bool {
        matches!(self, InstanceState::Terminated | InstanceState::ProvisioningFailed)
    }

    /// The states that end a failed attempt (their action log entries are failures).
    pub const fn is_failure(&self) -> bool {
        matches!(self, InstanceState::ProvisioningFailed | InstanceState::StartupFailed)
    }

    /// States that wait on the provider or the agent and therefore carry a deadline.
    pub const fn is_transitional(&self) -> bool {
        matches!(
            self,
            InstanceState::Requested
                | InstanceState::Provisioning
                | InstanceState::Booting
                | InstanceState::Draining
                | InstanceState::Terminating
        )
    }

    /// Whether the provider may be billing for this instance.
    pub const fn may_exist_at_provider(&self) -> bool {
        !matches!(self, InstanceState::Requested | InstanceState::Terminated | InstanceState::ProvisioningFailed)
    }

    /// Checks a move against the lifecycle.
    ///
    /// Any live state may jump straight to `terminated` when the provider reports the instance
    /// gone (`deleted_by_provider`); everything else follows the diagram.
    ///
    /// # Errors
    /// [`TransitionError::NotAllowed`] for a move the lifecycle does not have.
    pub fn transition(self, to: InstanceState) -> Result<InstanceState, TransitionError> {
        use InstanceState::*;
        let allowed = match (self, to) {
            (from, Terminated) if !from.is_terminal() => true,
            (Requested, Provisioning | ProvisioningFailed | Terminating) => true,
            (Provisioning, Booting | ProvisioningFailed | Terminating) => true,
            (Booting, Ready | StartupFailed | Terminating) => true,
            (Ready, Unhealthy | Draining | Terminating) => true,
            (Unhealthy, Ready | Draining | Terminating) => true,
            (Draining, Terminating) => true,
            (StartupFailed, Terminating) => true,
            _ => false,
        };
        if allowed { Ok(to) } else { Err(TransitionError::NotAllowed { from: self, to }) }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown instance state `{0}`")]
pub struct UnknownState(pub String);

impl FromStr for InstanceState {
    type Err = UnknownState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        InstanceState::ALL.into_iter().find(|state| state.as_str() == text).ok_or_else(|| UnknownState(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::InstanceState::*;
    use super::*;

    #[test]
    fn the_happy_path_is_allowed() {
        let path = [Requested, Provisioning, Booting, Ready, Draining, Terminating, Terminated];
        for pair in path.windows(2) {
            assert_eq!(pair[0].transition(pair[1]), Ok(pair[1]), "{} -> {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn a_ready_instance_can_become_unhealthy_and_recover() {
        assert!(Ready.transition(Unhealthy).is_ok());
        assert!(Unhealthy.transition(Ready).is_ok());
    }

    #[test]
    fn nothing_leaves_a_terminal_state() {
        for terminal in [Terminated, ProvisioningFailed] {
            for to in InstanceState::ALL {
                assert!(terminal.transition(to).is_err(), "{terminal} -> {to}");
            }
        }
    }

    #[test]
    fn an_instance_cannot_skip_booting() {
        assert_eq!(Provisioning.transition(Ready), Err(TransitionError::NotAllowed { from: Provisioning, to: Ready }));
    }

    #[test]
    fn any_live_instance_can_be_found_gone_at_the_provider() {
        for from in InstanceState::ALL.into_iter().filter(|state| !state.is_terminal()) {
            assert!(from.transition(Terminated).is_ok(), "{from} -> terminated");
        }
    }

    #[test]
    fn states_round_trip_through_text() {
        for state in InstanceState::ALL {
            assert_eq!(state.as_str().parse::<InstanceState>(), Ok(state));
        }
    }
}
