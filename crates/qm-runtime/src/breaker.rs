//! A circuit breaker: after `threshold` consecutive failures of a dependency, calls are refused
//! for `cooldown` instead of piling onto it; then one trial call is let through, which closes
//! the circuit on success or opens it again on failure.

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
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold: threshold.max(1), cooldown, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may go ahead now; `Err` carries how long until the next trial.
    pub fn allow(&self) -> Result<(), Duration> {
        let state = self.state();
        match state.opened_at {
            Some(opened_at) if opened_at.elapsed() < self.cooldown => Err(self.cooldown - opened_at.elapsed()),
            _ => Ok(()),
        }
    }

    pub fn record_success(&self) {
        *self.state() = State::default();
    }

    pub fn record_failure(&self) {
        let mut state = self.state();
        state.consecutive_failures += 1;
        if state.consecutive_failures >= self.threshold {
            state.opened_at = Some(Instant::now());
        }
    }

    pub fn is_open(&self) -> bool {
        self.allow().is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_after_the_threshold_and_lets_a_trial_through_after_the_cooldown() {
        let breaker = CircuitBreaker::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            breaker.record_failure();
            assert!(breaker.allow().is_ok(), "still closed below the threshold");
        }
        breaker.record_failure();
        let wait = breaker.allow().expect_err("open");
        assert!(wait <= Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.allow().is_ok(), "a trial after the cooldown");
        breaker.record_failure();
        assert!(breaker.is_open(), "a failed trial opens it again");
        std::thread::sleep(Duration::from_millis(60));
        breaker.record_success();
        assert!(!breaker.is_open());
        breaker.record_failure();
        assert!(breaker.allow().is_ok(), "a success reset the count");
    }
}
