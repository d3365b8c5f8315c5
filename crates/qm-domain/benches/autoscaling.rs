//! `make bench`: the pool autoscaler against a load trace, beside baselines in the same harness.
//!
//! A discrete-time simulation (100 ms steps) of one pool: requests arrive by a seeded Poisson
//! process following the trace (steady, a step up ×5, a burst, back, idle long enough for scale
//! to zero, return); a router sends each to the ready replica with the fewest running (holding
//! it up to 300 s while none is ready, dropping it after); each replica is an engine with the
//! mock engine's latency model (`qm_domain::engine::Latency`: prefill per prompt token, decode
//! per token, every step slowed by the requests running beside it, 16 running at most, the rest
//! queued) and a cold start; a shrinking pool drains a replica (no new requests, removed when
//! empty). The controller ticks every second on what it would see: the engines' in-flight and
//! queued counts as of their last heartbeat (every 5 s), the routers' p90 TTFT over 30 s, the
//! seconds since the last request.
//!
//! Policies, each on the same arrivals: Quartermaster's (`qm_domain::scaling::Autoscaler`, the
//! controller's own code, with a TTFT objective); a concurrency policy with Knative's documented
//! windows (60 s stable, 6 s panic at 200 %, no scale-down delay, zero after a 30 s grace); a
//! QPS policy with SkyServe's documented delays (up after 300 s, down after 1,200 s); static at
//! the maximum. Reported: the share of minutes whose p90 TTFT met the objective, GPU-hours
//! against the hindsight optimum (each minute at the fewest replicas that carry its arrivals at
//! the objective, no cold start: a lower bound), requests dropped, streams cut, scaling actions
//! per hour (and under the steady first segment). Results also go to
//! `$CARGO_TARGET_DIR/bench/autoscaling.json`; the report is `docs/autoscaling.md`.
//! `QM_BENCH_DECISIONS=1` prints each of Quartermaster's decisions with its reason.
//!
//! This replays the controller's decisions and the engines' latency model, not real processes:
//! what is measured is the policy, at a speed that lets a one-hour trace run in seconds.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::collections::VecDeque;
use std::time::Duration;

use qm_domain::engine::Latency;
use qm_domain::scaling::{Autoscaler, ScalingPolicy, Signals};

const DT: f64 = 0.1;
const SLO_S: f64 = 1.0;
const COLD_START_S: f64 = 60.0;
const MAX_REPLICAS: u32 = 20;
/// Requests an engine runs at once; more wait in its queue.
const SLOTS: usize = 16;
const HOLD_S: f64 = 300.0;
const PROMPT_TOKENS: f64 = 512.0;
const OUTPUT_TOKENS: f64 = 128.0;
/// The load per replica the load-based policies are sized for (requests in flight or queued).
const TARGET: f64 = 12.0;
/// (seconds, requests per second): steady, ×5, burst, back, idle, return.
const TRACE: [(f64, f64, &str); 6] = [
    (600.0, 2.0, "steady"),
    (600.0, 10.0, "step x5"),
    (120.0, 25.0, "burst"),
    (300.0, 2.0, "back"),
    (1200.0, 0.0, "idle"),
    (600.0, 2.0, "return"),
];

fn latency() -> Latency {
    Latency {
        prefill_per_token: Duration::from_micros(500),
        decode_per_token: Duration::from_millis(20),
        concurrency_slowdown: 0.03,
        cold_start: Duration::from_secs_f64(COLD_START_S),
        ..Latency::default()
    }
}

/// xorshift64*: the same arrivals for every policy.
struct Random(u64);

impl Random {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1_u64 << 53) as f64
    }
}

/// Arrival times over the trace.
fn arrivals() -> Vec<f64> {
    let mut random = Random(0x9E37_79B9_7F4A_7C15);
    let mut times = Vec::new();
    let mut start = 0.0;
    for (length, rate, _) in TRACE {
        if rate > 0.0 {
            let mut at = start;
            loop {
                at += -random.uniform().ln() / rate;
                if at >= start + length {
                    break;
                }
                times.push(at);
            }
        }
        start += length;
    }
    times
}

struct Request {
    arrived: f64,
    /// Base seconds of prefill left, then tokens left to decode.
    prefill_left: f64,
    tokens_left: f64,
}

struct Replica {
    ready_at: f64,
    draining: bool,
    running: Vec<Request>,
    queued: VecDeque<Request>,
    /// The load its last heartbeat reported.
    reported: usize,
}

impl Replica {
    fn load(&self) -> usize {
        self.running.len() + self.queued.len()
    }
}

#[derive(Clone, Copy)]
enum Policy {
    Quartermaster,
    Knative,
    SkyServe,
    Static,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Self::Quartermaster => "quartermaster (load + TTFT objective)",
            Self::Knative => "concurrency, Knative windows",
            Self::SkyServe => "QPS, SkyServe delays",
            Self::Static => "static at max",
        }
    }

    fn scaling(self) -> ScalingPolicy {
        let base = ScalingPolicy {
            target_per_replica: TARGET,
            stable_window_s: 60,
            panic_window_s: 6,
            max_step_up: MAX_REPLICAS,
            ..ScalingPolicy::default()
        };
        match self {
            Self::Knative => {
                ScalingPolicy { scale_down_delay_s: 0, max_step_down: MAX_REPLICAS, idle_to_zero_s: 90, ..base }
            }
            // Quartermaster's defaults, but stepping straight down to the stabilised size.
            _ => ScalingPolicy {
                scale_down_delay_s: 300,
                max_step_down: MAX_REPLICAS,
                idle_to_zero_s: 600,
                ttft_slo_ms: Some((SLO_S * 1000.0) as u32),
                ..base
            },
        }
    }
}

/// SkyServe's QPS autoscaler: the target from the last 60 s of requests; up once it has asked
/// for more for 300 s, down once it has asked for fewer for 1,200 s.
#[derive(Default)]
struct QpsScaler {
    above_since: Option<f64>,
    below_since: Option<f64>,
}

impl QpsScaler {
    fn decide(&mut self, now: f64, recent_requests: usize, current: u32, qps_per_replica: f64) -> u32 {
        let wanted = ((recent_requests as f64 / 60.0) / qps_per_replica).ceil().min(f64::from(MAX_REPLICAS)) as u32;
        let (above, below) = (wanted > current, wanted < current);
        self.above_since = if above { self.above_since.or(Some(now)) } else { None };
        self.below_since = if below { self.below_since.or(Some(now)) } else { None };
        if self.above_since.is_some_and(|since| now - since >= 300.0) || (current == 0 && wanted > 0) {
            self.above_since = None;
            return wanted;
        }
        if self.below_since.is_some_and(|since| now - since >= 1200.0) {
            self.below_since = None;
            return wanted;
        }
        current
    }
}

#[derive(Default, serde::Serialize)]
struct Outcome {
    policy: &'static str,
    slo_minutes_percent: f64,
    gpu_hours: f64,
    gpu_hours_vs_optimum: f64,
    dropped: usize,
    cut: usize,
    actions_per_hour: f64,
    steady_actions: usize,
    p90_ttft_s_worst_minute: f64,
}

fn percentile(values: &mut [f64], fraction: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * fraction).round() as usize]
}

fn run(policy: Policy, arrivals: &[f64], optimum_gpu_hours: f64) -> Outcome {
    let latency = latency();
    let prefill = latency.prefill_per_token.as_secs_f64() * PROMPT_TOKENS;
    let decode = latency.decode_per_token.as_secs_f64();
    let end: f64 = TRACE.iter().map(|(length, _, _)| length).sum();
    let scaling = policy.scaling();
    let mut scaler = Autoscaler::default();
    let mut qps = QpsScaler::default();
    let start_size = if matches!(policy, Policy::Static) { MAX_REPLICAS } else { 1 };
    let new_replica = |ready_at: f64| Replica {
        ready_at,
        draining: false,
        running: Vec::new(),
        queued: VecDeque::new(),
        reported: 0,
    };
    let mut replicas: Vec<Replica> = (0..start_size).map(|_| new_replica(0.0)).collect();
    let mut desired = start_size;
    let mut held: VecDeque<Request> = VecDeque::new();
    let (mut next, mut last_request) = (0, 0.0_f64);
    let mut ttfts: VecDeque<(f64, f64)> = VecDeque::new();
    let mut minutes: Vec<Vec<f64>> = vec![Vec::new(); (end / 60.0).ceil() as usize];
    let mut outcome = Outcome { policy: policy.name(), ..Outcome::default() };
    let (mut actions, mut replica_seconds) = (0_usize, 0.0);
    let steps = (end / DT).round() as usize;
    for step in 0..steps {
        let now = step as f64 * DT;
        // Arrivals go to the least loaded ready replica, else wait at the router.
        while next < arrivals.len() && arrivals[next] < now + DT {
            held.push_back(Request { arrived: arrivals[next], prefill_left: prefill, tokens_left: OUTPUT_TOKENS });
            last_request = arrivals[next];
            next += 1;
        }
        while let Some(request) = held.front() {
            if now - request.arrived > HOLD_S {
                held.pop_front();
                outcome.dropped += 1;
                continue;
            }
            let target = replicas
                .iter_mut()
                .filter(|replica| !replica.draining && replica.ready_at <= now)
                .min_by_key(|replica| replica.load());
            let Some(replica) = target else { break };
            replica.queued.push_back(held.pop_front().unwrap());
        }
        // Engines: admit from the queue, advance every running request by one slowed step.
        for replica in &mut replicas {
            while replica.running.len() < SLOTS
                && let Some(request) = replica.queued.pop_front()
            {
                replica.running.push(request);
            }
            let factor = latency.factor(replica.running.len().saturating_sub(1) as f64);
            for request in &mut replica.running {
                if request.prefill_left > 0.0 {
                    request.prefill_left -= DT / factor;
                    if request.prefill_left <= 0.0 {
                        let ttft = now + DT - request.arrived;
                        ttfts.push_back((now + DT, ttft));
                        if let Some(minute) = minutes.get_mut(((now + DT) / 60.0) as usize) {
                            minute.push(ttft);
                        }
                    }
                } else {
                    request.tokens_left -= DT / (decode * factor);
                }
            }
            replica.running.retain(|request| request.prefill_left > 0.0 || request.tokens_left > 0.0);
        }
        replicas.retain(|replica| !(replica.draining && replica.load() == 0));
        replica_seconds += replicas.len() as f64 * DT;
        while ttfts.front().is_some_and(|(at, _)| now - at > 30.0) {
            ttfts.pop_front();
        }
        // Heartbeats every 5 s; the controller every second.
        if step % 50 == 0 {
            for replica in &mut replicas {
                replica.reported = replica.load();
            }
        }
        if step % 10 != 0 {
            continue;
        }
        let ready: Vec<&Replica> =
            replicas.iter().filter(|replica| !replica.draining && replica.ready_at <= now).collect();
        let wanted = match policy {
            Policy::Static => MAX_REPLICAS,
            Policy::SkyServe => {
                let recent = arrivals[..next].iter().rev().take_while(|at| now - **at <= 60.0).count();
                qps.decide(now, recent, desired, TARGET / (prefill + decode * OUTPUT_TOKENS) / 1.3)
            }
            Policy::Quartermaster | Policy::Knative => {
                let mut window: Vec<f64> = ttfts.iter().map(|(_, ttft)| *ttft).collect();
                let signals = Signals {
                    // What the controller sees: the engines' own counts (requests the router holds
                    // for an empty pool only wake it, through `idle_s`).
                    load: ready.iter().map(|replica| replica.reported as f64).sum::<f64>(),
                    ready: ready.len() as u32,
                    desired,
                    idle_s: Some(if next == 0 { now } else { now - last_request }),
                    ttft_p90_s: (window.len() >= 5).then(|| percentile(&mut window, 0.9)),
                    ..Signals::default()
                };
                let decision = scaler.decide(&scaling, 0, MAX_REPLICAS, now, signals);
                if std::env::var_os("QM_BENCH_DECISIONS").is_some()
                    && let Some(decision) = &decision
                {
                    eprintln!(
                        "{:>6.0} s {} {} -> {}: {}",
                        now,
                        policy.name(),
                        decision.from,
                        decision.to,
                        decision.reason
                    );
                }
                decision.map_or(desired, |decision| decision.to)
            }
        };
        if wanted != desired {
            actions += 1;
            if now < TRACE[0].0 {
                outcome.steady_actions += 1;
            }
        }
        desired = wanted;
        // Grow with cold starts; shrink by cancelling starting replicas, then draining the least loaded.
        let live = replicas.iter().filter(|replica| !replica.draining).count() as u32;
        if live < desired {
            replicas.extend((live..desired).map(|_| new_replica(now + COLD_START_S)));
        } else if live > desired {
            let mut excess = (live - desired) as usize;
            replicas.retain(|replica| {
                let cancel = excess > 0 && !replica.draining && replica.ready_at > now;
                excess -= usize::from(cancel);
                !cancel
            });
            let mut order: Vec<usize> = (0..replicas.len()).filter(|index| !replicas[*index].draining).collect();
            order.sort_by_key(|index| replicas[*index].load());
            for index in order.into_iter().take(excess) {
                replicas[index].draining = true;
            }
        }
    }
    let mut met = 0;
    let mut counted = 0;
    for minute in &mut minutes {
        if minute.is_empty() {
            continue;
        }
        counted += 1;
        let p90 = percentile(minute, 0.9);
        outcome.p90_ttft_s_worst_minute = outcome.p90_ttft_s_worst_minute.max(p90);
        met += usize::from(p90 <= SLO_S);
    }
    outcome.slo_minutes_percent = (1000.0 * met as f64 / counted.max(1) as f64).round() / 10.0;
    outcome.gpu_hours = (replica_seconds / 3600.0 * 1000.0).round() / 1000.0;
    outcome.gpu_hours_vs_optimum = (outcome.gpu_hours / optimum_gpu_hours * 100.0).round() / 100.0;
    outcome.actions_per_hour = (actions as f64 / (end / 3600.0) * 10.0).round() / 10.0;
    outcome
}

/// Each minute at the fewest replicas that carry its arrivals at the objective (fluid, no
/// cold start, no queueing): a lower bound no policy reaches.
fn optimum_gpu_hours(arrivals: &[f64]) -> f64 {
    let latency = latency();
    let prefill = latency.prefill_per_token.as_secs_f64() * PROMPT_TOKENS;
    let decode = latency.decode_per_token.as_secs_f64() * OUTPUT_TOKENS;
    // The most requests a replica runs with its prefill (its TTFT without queueing) within the objective.
    let per_replica =
        (1..=SLOTS).rev().find(|running| prefill * latency.factor((*running - 1) as f64) <= SLO_S).unwrap_or(1);
    let service = (prefill + decode) * latency.factor((per_replica - 1) as f64);
    let throughput = per_replica as f64 / service;
    let end: f64 = TRACE.iter().map(|(length, _, _)| length).sum();
    let mut minutes = vec![0_usize; (end / 60.0).ceil() as usize];
    for at in arrivals {
        minutes[(at / 60.0) as usize] += 1;
    }
    minutes.iter().map(|count| (*count as f64 / 60.0 / throughput).ceil()).sum::<f64>() / 60.0
}

fn main() {
    let arrivals = arrivals();
    let optimum = optimum_gpu_hours(&arrivals);
    println!(
        "Autoscaling harness: {} requests over {:.0} min (steady 2 rps, x5, burst 25 rps, back, 20 min idle, return); \
         replicas: {} s cold start, 512-token prompts, 128 tokens out, 20 ms a token; TTFT objective {SLO_S} s",
        arrivals.len(),
        TRACE.iter().map(|(length, _, _)| length).sum::<f64>() / 60.0,
        COLD_START_S
    );
    println!("hindsight optimum: {optimum:.3} GPU-hours");
    println!(
        "{:<40} {:>10} {:>10} {:>8} {:>8} {:>5} {:>10} {:>7} {:>12}",
        "policy", "SLO min %", "GPU-h", "x opt", "dropped", "cut", "actions/h", "steady", "worst p90 s"
    );
    let mut outcomes = Vec::new();
    for policy in [Policy::Quartermaster, Policy::Knative, Policy::SkyServe, Policy::Static] {
        let outcome = run(policy, &arrivals, optimum);
        println!(
            "{:<40} {:>10.1} {:>10.3} {:>8.2} {:>8} {:>5} {:>10.1} {:>7} {:>12.2}",
            outcome.policy,
            outcome.slo_minutes_percent,
            outcome.gpu_hours,
            outcome.gpu_hours_vs_optimum,
            outcome.dropped,
            outcome.cut,
            outcome.actions_per_hour,
            outcome.steady_actions,
            outcome.p90_ttft_s_worst_minute
        );
        outcomes.push(outcome);
    }
    let ours = &outcomes[0];
    let knative = &outcomes[1];
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!(
        "targets: SLO minutes >= 99 %: {}; GPU-hours <= 1.15x optimum: {}; 0 dropped: {}; 0 cut: {}; fewer steady actions than the concurrency baseline: {}",
        verdict(ours.slo_minutes_percent >= 99.0),
        verdict(ours.gpu_hours_vs_optimum <= 1.15),
        verdict(ours.dropped == 0),
        verdict(ours.cut == 0),
        verdict(
            ours.steady_actions < knative.steady_actions || (ours.steady_actions == 0 && knative.steady_actions == 0)
        ),
    );
    let directory =
        std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("bench");
    std::fs::create_dir_all(&directory).unwrap();
    let report = serde_json::json!({ "optimum_gpu_hours": optimum, "requests": arrivals.len(), "policies": outcomes });
    std::fs::write(directory.join("autoscaling.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
}
