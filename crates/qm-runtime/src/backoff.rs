//! Exponential backoff with full jitter: attempt `n` waits a random time in
//! `[base·2ⁿ⁻¹ / 2, base·2ⁿ⁻¹]`, capped at `max`, so that many clients retrying together spread
//! out instead of hammering a recovering dependency in lockstep.

use std::time::Duration;

use rand::Rng as _;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay before retry number `attempt` (1 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1 << exponent).min(self.max);
        let floor = ceiling / 2;
        let spread = ceiling.saturating_sub(floor);
        floor + spread.mul_f64(rand::rng().random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..100 {
            let first = backoff.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
            let third = backoff.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400), "{third:?}");
            assert!(backoff.delay(30) <= Duration::from_secs(2));
        }
    }
}
