//! A circuit breaker: after `threshold` consecutive failures of a dependency, calls are refused
//! for `cooldown` instead of piling onto it; then exactly one trial call is let through (half
//! open) while every other caller is still refused; the trial's success closes the circuit, its
//! failure opens it again for another cooldown. A trial whose caller never reports (a cancelled
//! future) stops counting as in flight after one more cooldown, so the breaker cannot wedge.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    /// When the half-open trial call was let through, while it has not reported.
    trial_since: Option<Instant>,
}

/// What [`CircuitBreaker::allow`] let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The circuit is closed: any number of calls go ahead.
    Closed,
    /// The one trial call after a cooldown; its outcome decides the circuit.
    Trial,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold: threshold.max(1), cooldown, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may go ahead now; `Err` carries how long until a trial may be let through.
    pub fn allow(&self) -> Result<Admission, Duration> {
        let mut state = self.state();
        let Some(opened_at) = state.opened_at else { return Ok(Admission::Closed) };
        let open_for = opened_at.elapsed();
        if open_for < self.cooldown {
            return Err(self.cooldown - open_for);
        }
        match state.trial_since {
            Some(since) if since.elapsed() < self.cooldown => Err(self.cooldown - since.elapsed()),
            _ => {
                state.trial_since = Some(Instant::now());
                Ok(Admission::Trial)
            }
        }
    }

    pub fn record_success(&self) {
        *self.state() = State::default();
    }

    pub fn record_failure(&self) {
        let mut state = self.state();
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        if state.trial_since.is_some() || state.consecutive_failures >= self.threshold {
            state.opened_at = Some(Instant::now());
            state.trial_since = None;
        }
    }

    /// Whether calls are being refused now (open, or half open with its trial in flight).
    pub fn is_open(&self) -> bool {
        let state = self.state();
        match state.opened_at {
            None => false,
            Some(opened_at) if opened_at.elapsed() < self.cooldown => true,
            Some(_) => state.trial_since.is_some_and(|since| since.elapsed() < self.cooldown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_millis(50);

    fn opened() -> CircuitBreaker {
        let breaker = CircuitBreaker::new(3, COOLDOWN);
        for _ in 0..2 {
            breaker.record_failure();
            assert_eq!(breaker.allow(), Ok(Admission::Closed), "still closed below the threshold");
        }
        breaker.record_failure();
        let wait = breaker.allow().expect_err("open");
        assert!(wait <= COOLDOWN);
        breaker
    }

    #[test]
    fn after_the_cooldown_exactly_one_trial_goes_through_and_its_failure_reopens() {
        let breaker = opened();
        std::thread::sleep(COOLDOWN + Duration::from_millis(10));
        assert_eq!(breaker.allow(), Ok(Admission::Trial));
        for _ in 0..10 {
            assert!(breaker.allow().is_err(), "others wait while the trial is in flight");
        }
        assert!(breaker.is_open());
        breaker.record_failure();
        assert!(breaker.allow().is_err(), "a failed trial opens it again for a cooldown");
    }

    #[test]
    fn a_successful_trial_closes_the_circuit_and_resets_the_count() {
        let breaker = opened();
        std::thread::sleep(COOLDOWN + Duration::from_millis(10));
        assert_eq!(breaker.allow(), Ok(Admission::Trial));
        breaker.record_success();
        assert!(!breaker.is_open());
        breaker.record_failure();
        assert_eq!(breaker.allow(), Ok(Admission::Closed), "a success reset the count");
    }

    #[test]
    fn a_trial_that_never_reports_is_replaced_after_another_cooldown() {
        let breaker = opened();
        std::thread::sleep(COOLDOWN + Duration::from_millis(10));
        assert_eq!(breaker.allow(), Ok(Admission::Trial));
        assert!(breaker.allow().is_err());
        std::thread::sleep(COOLDOWN + Duration::from_millis(10));
        assert_eq!(breaker.allow(), Ok(Admission::Trial), "the abandoned trial no longer blocks");
    }
}
