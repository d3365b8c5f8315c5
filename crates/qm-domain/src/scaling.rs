//! A pool's scaling policy and the pure function that applies it (no IO, no clock: the caller
//! passes the time in seconds, which makes every decision reproducible in tests and in the
//! trace harness).
//!
//! The load is the requests in flight plus those queued at the engines of the pool's ready
//! replicas. Like Knative's autoscaler, the policy averages it over a **stable window** (60 s)
//! and a **panic window** (6 s): the stable average sets the size; when the panic average asks
//! for at least twice the ready replicas, the pool scales up at once and does not scale down
//! until the panic has lasted out a stable window. Scale-up is immediate (after its cooldown,
//! at most `max_step_up` at a time), except while replicas asked for are still starting: then
//! the load must ask for twice the size already asked for (the backlog that grows during a cold
//! start is what the starting replicas will take); scale-down waits until every recommendation of the last
//! `scale_down_delay_s` was lower (stabilisation), one step of at most `max_step_down`. A pool
//! with `min_replicas: 0` goes to zero after `idle_to_zero_s` without any request, and comes
//! back to one when a request arrives for it (the router holds it meanwhile).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How a pool scales. Every field has a default; `0` windows or delays act at once.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingPolicy {
    /// Requests in flight or queued per replica the pool is sized for.
    #[schema(minimum = 0.1, maximum = 10000)]
    pub target_per_replica: f64,
    /// Seconds the load is averaged over to size the pool.
    #[schema(minimum = 1, maximum = 3600)]
    pub stable_window_s: u32,
    /// Seconds of the short average that triggers a panic scale-up.
    #[schema(minimum = 1, maximum = 600)]
    pub panic_window_s: u32,
    /// Seconds every recommendation must have been lower before the pool shrinks.
    #[schema(maximum = 86400)]
    pub scale_down_delay_s: u32,
    /// Seconds between two scale-ups.
    #[schema(maximum = 3600)]
    pub scale_up_cooldown_s: u32,
    /// Replicas added at most in one decision.
    #[schema(minimum = 1, maximum = 100)]
    pub max_step_up: u32,
    /// Replicas removed at most in one decision.
    #[schema(minimum = 1, maximum = 100)]
    pub max_step_down: u32,
    /// With `min_replicas: 0`: seconds without a request before the pool goes to zero.
    #[schema(minimum = 1, maximum = 86400)]
    pub idle_to_zero_s: u32,
    /// Seconds a replica may stay `unhealthy` before it is replaced.
    #[schema(maximum = 3600)]
    pub unhealthy_grace_s: u32,
    /// Seconds a draining replica may keep its requests before it is terminated anyway.
    #[schema(minimum = 1, maximum = 3600)]
    pub drain_deadline_s: u32,
    /// A time-to-first-token objective: while the routers' p90 TTFT is above it, the pool
    /// grows in proportion (at least one replica, at most `max_step_up`) and does not shrink.
    #[schema(minimum = 1, maximum = 600000)]
    pub ttft_slo_ms: Option<u32>,
    /// A KV-cache use (0.05 to 1) per replica the pool is sized for, from the agents.
    #[schema(minimum = 0.05, maximum = 1)]
    pub kv_cache_target: Option<f64>,
    /// A GPU utilisation (0.05 to 1) per replica the pool is sized for, from the agents.
    #[schema(minimum = 0.05, maximum = 1)]
    pub gpu_utilization_target: Option<f64>,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        Self {
            target_per_replica: 8.0,
            stable_window_s: 60,
            panic_window_s: 6,
            scale_down_delay_s: 300,
            scale_up_cooldown_s: 0,
            max_step_up: 10,
            max_step_down: 1,
            idle_to_zero_s: 600,
            unhealthy_grace_s: 10,
            drain_deadline_s: 300,
            ttft_slo_ms: None,
            kv_cache_target: None,
            gpu_utilization_target: None,
        }
    }
}

/// Why a policy is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct PolicyError {
    pub field: &'static str,
    pub message: String,
}

/// The routers' TTFT window (their p90 covers this many seconds).
pub const TTFT_WINDOW_S: f64 = 30.0;

/// The panic threshold: the short window asks for this many times the ready replicas.
pub const PANIC_FACTOR: f64 = 2.0;

impl ScalingPolicy {
    /// Checks the bounds the schema declares.
    ///
    /// # Errors
    /// The first field out of bounds.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let range = |field: &'static str, value: u32, low: u32, high: u32| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(PolicyError { field, message: format!("must be between {low} and {high}") })
            }
        };
        if !(self.target_per_replica.is_finite() && (0.1..=10_000.0).contains(&self.target_per_replica)) {
            return Err(PolicyError { field: "target_per_replica", message: "must be between 0.1 and 10000".into() });
        }
        range("stable_window_s", self.stable_window_s, 1, 3600)?;
        range("panic_window_s", self.panic_window_s, 1, 600)?;
        range("scale_down_delay_s", self.scale_down_delay_s, 0, 86_400)?;
        range("scale_up_cooldown_s", self.scale_up_cooldown_s, 0, 3600)?;
        range("max_step_up", self.max_step_up, 1, 100)?;
        range("max_step_down", self.max_step_down, 1, 100)?;
        range("idle_to_zero_s", self.idle_to_zero_s, 1, 86_400)?;
        range("unhealthy_grace_s", self.unhealthy_grace_s, 0, 3600)?;
        range("drain_deadline_s", self.drain_deadline_s, 1, 3600)?;
        if let Some(slo) = self.ttft_slo_ms {
            range("ttft_slo_ms", slo, 1, 600_000)?;
        }
        for (field, target) in
            [("kv_cache_target", self.kv_cache_target), ("gpu_utilization_target", self.gpu_utilization_target)]
        {
            if target.is_some_and(|target| !(target.is_finite() && (0.05..=1.0).contains(&target))) {
                return Err(PolicyError { field, message: "must be between 0.05 and 1".into() });
            }
        }
        Ok(())
    }
}

/// What the autoscaler sees at one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Signals {
    /// Requests in flight plus queued over the ready replicas.
    pub load: f64,
    pub ready: u32,
    /// The size the pool has now.
    pub desired: u32,
    /// Seconds since the last request for the pool's model (none yet: `None`).
    pub idle_s: Option<f64>,
    /// The routers' p90 time to first token over their last window, in seconds (none without
    /// recent traffic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_p90_s: Option<f64>,
    /// The ready replicas' mean KV-cache use, 0 to 1 (from heartbeats).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_cache: Option<f64>,
    /// The ready replicas' mean GPU utilisation, 0 to 1 (from heartbeats).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_utilization: Option<f64>,
}

impl Signals {
    /// What the latency and saturation signals ask for beyond the load, and why: the largest
    /// of a TTFT over its objective (in proportion, at least one more), and KV-cache use or GPU
    /// utilisation over their targets (in proportion).
    /// Nothing while replicas already asked for are still starting: they are the answer, and
    /// the requests that waited for them say nothing about a full pool.
    ///
    /// The TTFT counts only once the routers' window (`TTFT_WINDOW_S`) has seen nothing but the
    /// current ready replicas (`ttft_settled`): requests that waited for a replica to start say
    /// nothing about the replicas that serve now. It grows the pool at most twofold at once.
    fn pressure(&self, policy: &ScalingPolicy, ttft_settled: bool) -> Option<(u32, String)> {
        if self.ready < self.desired {
            return None;
        }
        let ready = self.ready.max(1);
        let scaled = |ratio: f64| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let wanted = (f64::from(ready) * ratio).ceil().clamp(0.0, f64::from(u32::MAX)) as u32;
            wanted
        };
        let mut asks: Vec<(u32, String)> = Vec::new();
        if let (Some(slo_ms), Some(p90), true) = (policy.ttft_slo_ms, self.ttft_p90_s, ttft_settled) {
            let slo = f64::from(slo_ms) / 1000.0;
            if p90 > slo {
                let wanted = scaled(p90 / slo)
                    .min(ready.saturating_mul(2))
                    .max(ready + 1)
                    .min(ready.saturating_add(policy.max_step_up));
                asks.push((wanted, format!("ttft: p90 {:.0} ms over the {slo_ms} ms objective", p90 * 1000.0)));
            }
        }
        for (name, target, used) in [
            ("kv cache", policy.kv_cache_target, self.kv_cache),
            ("gpu utilisation", policy.gpu_utilization_target, self.gpu_utilization),
        ] {
            if let (Some(target), Some(used)) = (target, used)
                && used > target
            {
                asks.push((
                    scaled(used / target),
                    format!("{name}: {:.0}% over the {:.0}% target", used * 100.0, target * 100.0),
                ));
            }
        }
        asks.into_iter().max_by_key(|(wanted, _)| *wanted)
    }
}

/// A change of size and why.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Decision {
    pub from: u32,
    pub to: u32,
    pub reason: String,
    pub stable_load: f64,
    pub panic_load: f64,
    pub signals: Signals,
}

/// The windows of one pool. Kept in memory by the controller holding the lease; a new holder
/// starts with empty windows (it then decides on fewer samples for a window's length).
#[derive(Debug, Default)]
pub struct Autoscaler {
    samples: VecDeque<(f64, f64)>,
    recommendations: VecDeque<(f64, u32)>,
    last_up_s: Option<f64>,
    panic_since_s: Option<f64>,
    /// The ready count, and since when it has been that.
    ready_since_s: Option<(u32, f64)>,
    /// The first sample: a new autoscaler (a new lease holder) has no history to stabilise on.
    first_s: Option<f64>,
    /// Since when every replica asked for has been ready (`None` while some are starting).
    settled_since_s: Option<f64>,
}

fn average(samples: &VecDeque<(f64, f64)>, since: f64) -> f64 {
    let recent: Vec<f64> = samples.iter().filter(|(at, _)| *at >= since).map(|(_, load)| *load).collect();
    if recent.is_empty() {
        0.0
    } else {
        #[allow(clippy::cast_precision_loss)]
        let count = recent.len() as f64;
        recent.iter().sum::<f64>() / count
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn replicas_for(load: f64, target: f64) -> u32 {
    (load / target).ceil().clamp(0.0, f64::from(u32::MAX)) as u32
}

impl Autoscaler {
    /// Takes one sample at `now_s` and returns the new size when it changes, within
    /// `[min, max]`.
    pub fn decide(
        &mut self,
        policy: &ScalingPolicy,
        min: u32,
        max: u32,
        now_s: f64,
        signals: Signals,
    ) -> Option<Decision> {
        let stable_window = f64::from(policy.stable_window_s);
        let first_s = *self.first_s.get_or_insert(now_s);
        let current = signals.desired;
        let delay = f64::from(policy.scale_down_delay_s);
        // Replicas asked for are still starting: the load on the ready ones is the backlog
        // that waited for them, not what the pool needs.
        let starting = signals.ready < current;
        if starting {
            self.settled_since_s = None;
        } else if self.settled_since_s.is_none() {
            self.settled_since_s = Some(now_s);
        }
        self.samples.push_back((now_s, signals.load.max(0.0)));
        while self.samples.front().is_some_and(|(at, _)| *at < now_s - stable_window) {
            self.samples.pop_front();
        }
        let stable_load = average(&self.samples, now_s - stable_window);
        let panic_load = average(&self.samples, now_s - f64::from(policy.panic_window_s));
        let stable = replicas_for(stable_load, policy.target_per_replica);
        let panic = replicas_for(panic_load, policy.target_per_replica);
        if f64::from(panic) >= PANIC_FACTOR * f64::from(signals.ready.max(1)) && panic > current {
            self.panic_since_s = Some(now_s);
        } else if self.panic_since_s.is_some_and(|since| now_s - since >= stable_window) {
            self.panic_since_s = None;
        }
        let panicking = self.panic_since_s.is_some();
        let idle = signals.idle_s.is_none_or(|idle| idle >= f64::from(policy.idle_to_zero_s));
        // Empty only when it may be, nobody asked for a while and nothing runs; else what the
        // load asks for, at least one.
        let zero = min == 0 && idle && signals.load <= 0.0;
        let mut reason = match (zero, idle, current) {
            (true, _, _) => "idle",
            (false, false, 0) => "request for an empty pool",
            _ => "load",
        }
        .to_owned();
        let mut asked = if panicking { stable.max(panic) } else { stable };
        // Latency and saturation may ask for more than the load does (never for less).
        let ready_since = match self.ready_since_s {
            Some((ready, since)) if ready == signals.ready => since,
            _ => {
                self.ready_since_s = Some((signals.ready, now_s));
                now_s
            }
        };
        let ttft_settled = now_s - ready_since >= TTFT_WINDOW_S;
        if let Some((wanted, why)) =
            signals.pressure(policy, ttft_settled).filter(|(wanted, _)| *wanted > asked && current > 0)
        {
            asked = wanted;
            reason = why;
        }
        let wanted = if zero { 0 } else { asked.max(1) }.clamp(min, max.max(min));
        // What is recommended while replicas are starting, and until the stable window has
        // seen only the ready pool, neither holds the pool up for the scale-down delay once the
        // backlog is gone nor lets it shrink before the window has settled. A policy without a
        // scale-down delay acts at once (Knative's default).
        let settled = delay <= 0.0
            || self.settled_since_s.is_some_and(|since| now_s - since >= stable_window.min(now_s - first_s));
        if settled {
            self.recommendations.push_back((now_s, wanted));
        }
        while self.recommendations.front().is_some_and(|(at, _)| *at < now_s - delay) {
            self.recommendations.pop_front();
        }
        let to = if wanted > current {
            let cooling = self.last_up_s.is_some_and(|at| now_s - at < f64::from(policy.scale_up_cooldown_s));
            if cooling && current > 0 {
                return None;
            }
            // While replicas asked for are still starting, the backlog they will take grows on
            // the ready ones: only a load that would need twice the size already asked for
            // adds more (else every tick of a cold start adds one).
            if starting && reason == "load" && f64::from(wanted) < PANIC_FACTOR * f64::from(current) {
                return None;
            }
            self.last_up_s = Some(now_s);
            if panicking && panic > stable && current > 0 && reason == "load" {
                reason = "panic: the short window's load".to_owned();
            }
            current.saturating_add(policy.max_step_up).min(wanted)
        } else if wanted < current {
            // Not while panicking or unsettled, nor before a whole delay of history was seen (a
            // controller that just took over must not shrink on its first sample).
            if !zero && (panicking || !settled || now_s - first_s < delay) {
                return None;
            }
            // Stabilised: the highest recommendation of the delay must be below the size.
            let highest = self.recommendations.iter().map(|(_, wanted)| *wanted).max().unwrap_or(wanted);
            if highest >= current && !zero {
                return None;
            }
            let floor = if zero { 0 } else { highest };
            current.saturating_sub(policy.max_step_down).max(floor).max(wanted)
        } else {
            return None;
        };
        (to != current).then_some(Decision { from: current, to, reason, stable_load, panic_load, signals })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalingPolicy {
        ScalingPolicy {
            target_per_replica: 4.0,
            stable_window_s: 60,
            panic_window_s: 6,
            scale_down_delay_s: 30,
            idle_to_zero_s: 120,
            ..ScalingPolicy::default()
        }
    }

    /// Runs `seconds` one-second ticks of `load`, applying each decision; returns the size.
    fn run(
        scaler: &mut Autoscaler,
        policy: &ScalingPolicy,
        (min, max): (u32, u32),
        start: f64,
        seconds: u32,
        load: f64,
        size: &mut u32,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for tick in 0..seconds {
            let now = start + f64::from(tick);
            let signals = Signals {
                load,
                ready: *size,
                desired: *size,
                idle_s: Some(if load > 0.0 { 0.0 } else { now - start }),
                ..Signals::default()
            };
            if let Some(decision) = scaler.decide(policy, min, max, now, signals) {
                *size = decision.to;
                decisions.push(decision);
            }
        }
        decisions
    }

    #[test]
    fn a_backlog_growing_during_a_cold_start_adds_replicas_only_when_it_doubles_the_ask() {
        let policy = ScalingPolicy { stable_window_s: 6, ..policy() };
        let mut scaler = Autoscaler::default();
        // Asked for 3, one ready: the two starting ones will take the backlog.
        let mut decide = |now: f64, load: f64| {
            let signals = Signals { load, ready: 1, desired: 3, idle_s: Some(0.0), ..Signals::default() };
            scaler.decide(&policy, 0, 20, now, signals)
        };
        for second in 0..6 {
            assert_eq!(decide(f64::from(second), 16.0), None, "4 replicas' worth while 3 are asked for");
        }
        // The backlog keeps growing: once it asks for twice the 3 asked for, the pool grows.
        let grown = (6..16).find_map(|second| decide(f64::from(second), 40.0)).expect("grown");
        assert!(grown.to >= 6, "only by doubling what was asked for: {grown:?}");
    }

    #[test]
    fn a_cold_start_backlog_does_not_hold_the_pool_up_for_the_delay() {
        let policy = ScalingPolicy { scale_down_delay_s: 300, ..policy() };
        let mut scaler = Autoscaler::default();
        let mut size = 3;
        run(&mut scaler, &policy, (1, 50), 0.0, 400, 12.0, &mut size);
        assert_eq!(size, 3, "12 in flight at 4 a replica");
        // A step: 10 replicas asked for; while they start, the backlog on the 3 ready ones
        // asks for far more than the load will need once they serve.
        let mut decide = |now: f64, load: f64, ready: u32, desired: u32| {
            let signals = Signals { load, ready, desired, idle_s: Some(0.0), ..Signals::default() };
            scaler.decide(&policy, 1, 50, now, signals)
        };
        for second in 400..460 {
            assert!(decide(f64::from(second), 60.0, 3, 10).is_none_or(|decision| decision.to >= 10));
        }
        // All ready, the backlog served: the load needs 5. The pool does not shrink while the
        // stable window still holds the backlog, nor does it wait for the 300 s delay.
        size = 10;
        let mut first_shrink = None;
        for second in 460..700 {
            if let Some(decision) = decide(f64::from(second), 20.0, size, size) {
                if decision.to < decision.from {
                    first_shrink.get_or_insert(second);
                }
                size = decision.to;
            }
        }
        let first_shrink = first_shrink.expect("it shrinks");
        assert!(first_shrink >= 520, "not before a whole stable window of the ready pool (at {first_shrink} s)");
        assert_eq!(size, 5, "sized on what the ready pool serves, well before 460 + 300 s");
    }

    #[test]
    fn steady_load_is_sized_once_and_held() {
        let (policy, mut scaler, mut size) = (policy(), Autoscaler::default(), 1);
        let decisions = run(&mut scaler, &policy, (1, 20), 0.0, 600, 16.0, &mut size);
        assert_eq!(size, 4, "16 in flight at 4 a replica");
        assert!(decisions.len() <= 2, "steady load: few actions: {decisions:?}");
    }

    #[test]
    fn a_burst_panics_up_at_once_and_shrinks_only_after_the_delay() {
        let (policy, mut scaler, mut size) = (policy(), Autoscaler::default(), 2);
        run(&mut scaler, &policy, (1, 50), 0.0, 60, 8.0, &mut size);
        assert_eq!(size, 2);
        let burst = run(&mut scaler, &policy, (1, 50), 60.0, 7, 80.0, &mut size);
        assert_eq!(size, 20, "the panic window reaches the burst's size within its window: {burst:?}");
        assert!(burst[0].reason.starts_with("panic"), "{burst:?}");
        // Back to normal: no shrink while panicking (a stable window) and the delay.
        run(&mut scaler, &policy, (1, 50), 67.0, 30, 8.0, &mut size);
        assert_eq!(size, 20, "no scale-down during the panic");
        run(&mut scaler, &policy, (1, 50), 97.0, 300, 8.0, &mut size);
        assert_eq!(size, 2, "back to the stable size");
    }

    #[test]
    fn an_idle_pool_with_min_zero_goes_to_zero_and_a_request_brings_one() {
        let (policy, mut scaler, mut size) = (policy(), Autoscaler::default(), 1);
        let decisions = run(&mut scaler, &policy, (0, 4), 0.0, 200, 0.0, &mut size);
        assert_eq!(size, 0);
        assert_eq!(decisions.last().map(|decision| decision.reason.as_str()), Some("idle"));
        let signals = Signals { load: 0.0, ready: 0, desired: 0, idle_s: Some(0.5), ..Signals::default() };
        let woken = scaler.decide(&policy, 0, 4, 201.0, signals).expect("a decision");
        assert_eq!((woken.to, woken.reason.as_str()), (1, "request for an empty pool"));
        // min 1 never goes to zero.
        let (mut scaler, mut size) = (Autoscaler::default(), 1);
        run(&mut scaler, &policy, (1, 4), 0.0, 400, 0.0, &mut size);
        assert_eq!(size, 1);
    }

    #[test]
    fn a_ttft_over_its_objective_or_a_full_kv_cache_grows_the_pool_and_holds_it() {
        let policy = ScalingPolicy { ttft_slo_ms: Some(500), kv_cache_target: Some(0.8), ..policy() };
        let mut scaler = Autoscaler::default();
        let slow =
            Signals { load: 4.0, ready: 2, desired: 2, idle_s: Some(0.0), ttft_p90_s: Some(1.5), ..Signals::default() };
        // The routers' window must first cover only the current replicas.
        for second in 0..30 {
            assert_eq!(scaler.decide(&policy, 1, 10, f64::from(second), slow), None, "at {second} s: not settled");
        }
        let decision = scaler.decide(&policy, 1, 10, 30.0, slow).expect("grows");
        assert_eq!(decision.to, 4, "p90 three times the objective: at most twice the replicas at once");
        assert!(decision.reason.starts_with("ttft: p90 1500 ms"), "{decision:?}");
        // Just over, once settled at the new size: one more. Within it: the load decides, later.
        let barely = Signals { ready: 4, desired: 4, ttft_p90_s: Some(0.51), ..slow };
        assert_eq!(scaler.decide(&policy, 1, 10, 31.0, barely), None, "the new replicas' window first");
        assert_eq!(scaler.decide(&policy, 1, 10, 61.0, barely).map(|decision| decision.to), Some(5));
        let fine = Signals { ready: 5, desired: 5, ttft_p90_s: Some(0.2), ..slow };
        assert_eq!(scaler.decide(&policy, 1, 10, 62.0, fine), None, "no shrink before the delay");
        let full = Signals { ready: 5, desired: 5, kv_cache: Some(0.96), ttft_p90_s: None, ..slow };
        let decision = scaler.decide(&policy, 1, 10, 63.0, full).expect("grows");
        assert_eq!((decision.to, decision.reason.starts_with("kv cache")), (6, true), "{decision:?}");
        assert!(ScalingPolicy { kv_cache_target: Some(0.0), ..ScalingPolicy::default() }.validate().is_err());
        assert!(ScalingPolicy { ttft_slo_ms: Some(0), ..ScalingPolicy::default() }.validate().is_err());
    }

    #[test]
    fn a_new_autoscaler_does_not_shrink_before_it_has_seen_a_whole_delay() {
        // A controller that just took the lease over sees 2 ready with a light load.
        let (policy, mut scaler, mut size) = (policy(), Autoscaler::default(), 2);
        let first = run(&mut scaler, &policy, (1, 4), 1_000.0, 29, 1.0, &mut size);
        assert!(first.is_empty(), "no history, no shrink: {first:?}");
        run(&mut scaler, &policy, (1, 4), 1_029.0, 5, 1.0, &mut size);
        assert_eq!(size, 1, "after the delay, the light load shrinks it");
    }

    #[test]
    fn bounds_steps_and_cooldowns_hold() {
        let mut policy = policy();
        policy.max_step_up = 2;
        policy.scale_up_cooldown_s = 10;
        let (mut scaler, mut size) = (Autoscaler::default(), 1);
        let decisions = run(&mut scaler, &policy, (1, 5), 0.0, 15, 400.0, &mut size);
        assert_eq!(
            decisions.iter().map(|decision| decision.to).collect::<Vec<_>>(),
            [3, 5],
            "two steps, 10 s apart, capped at max"
        );
        assert!(ScalingPolicy { max_step_up: 0, ..ScalingPolicy::default() }.validate().is_err());
        assert!(ScalingPolicy { target_per_replica: f64::NAN, ..ScalingPolicy::default() }.validate().is_err());
        assert!(ScalingPolicy::default().validate().is_ok());
    }
}
