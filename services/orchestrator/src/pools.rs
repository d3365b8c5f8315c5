//! The pool controller (docs/pools.md): every second, on the replica holding the
//! `orchestrator.pools` lease, each pool is brought towards what it should be. It is
//! level-triggered and idempotent: it reads the pool's replicas and acts on the difference, so a
//! missed tick, a crash or a second controller (refused by the lease, and by the store's
//! conditional moves) changes nothing but timing.
//!
//! One tick of a pool:
//! 1. **Size**: the autoscaler ([`qm_domain::scaling`]) takes the load (requests in flight and
//!    queued at the ready replicas' engines, from their heartbeats) and the time since a router
//!    last had a request for the pool, and may change `desired` within `[min, max]`; each change
//!    is an action log entry and a `pool.scaled` event with its inputs. A deleted pool wants 0.
//! 2. **Heal**: a replica `unhealthy` past the policy's grace is terminated (and so replaced).
//! 3. **Grow**: fewer replicas starting, ready or briefly unhealthy than `desired` → new ones,
//!    placed like any provisioning (cheapest placement first, failing over on capacity). After
//!    failed provisioning the pool backs off (5 s doubling to 5 min) and says why in its
//!    conditions.
//! 4. **Shrink**: more than `desired` → replicas still starting are cancelled first, then ready
//!    ones are drained: the one with the fewest requests in flight (then the most expensive)
//!    moves to `draining`, the router sends it nothing new, and it is terminated once its worker
//!    reports nothing in flight (or after the drain deadline). No stream is cut.
//! 5. **Roll**: when the pool's model or engine settings changed (a new revision), replicas of
//!    the old revision that serve nothing yet are terminated; ready ones stay until a new one is
//!    ready, then are drained one for one (one replica of surge, none unavailable).
//! 6. **Status**: counts, conditions and the last decisions are written when they change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use qm_domain::scaling::{Autoscaler, Decision, Signals};
use qm_domain::{DeploymentId, InstanceId, InstanceState};
use qm_events::Envelope;
use qm_events::payloads::{InstanceProvision, PoolScaled};
use qm_runtime::Shutdown;
use qm_store::{ActionStatus, Instance, NewActionLog, NewInstance, Pool, Store};
use serde_json::json;

use crate::saga::{Saga, SagaError};

/// How often each pool is looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// The lease one controller holds, and for how long after its last renewal.
const LEASE: &str = "orchestrator.pools";
const LEASE_TTL: Duration = Duration::from_secs(5);
/// Deleted pools are looked after this long (their replicas drain and terminate meanwhile).
const DELETED_FOR: chrono::Duration = chrono::Duration::hours(1);
/// Decisions kept in a pool's status.
const DECISIONS_KEPT: usize = 10;
/// Replicas created for one pool in one tick at most.
const CREATE_AT_ONCE: usize = 20;
/// Replicas a rolling update runs beyond `desired` (one new before one old is drained).
const SURGE: usize = 1;
/// The first and the longest wait before provisioning again after a failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A pool's replicas read at most per tick (unfinished ones, and those finished lately).
const MAX_REPLICAS_READ: u32 = 2_000;
/// A router's TTFT older than this is not a signal (no recent traffic).
const TTFT_FRESH: chrono::Duration = chrono::Duration::seconds(30);
/// Failed provisioning older than this no longer delays the pool.
const FAILURES_REMEMBERED: chrono::Duration = chrono::Duration::minutes(10);

pub struct PoolController {
    store: Arc<dyn Store>,
    saga: Arc<Saga>,
    scalers: Mutex<HashMap<DeploymentId, Autoscaler>>,
    /// With the rates: hard-capped budgets are checked before each scale-up.
    rates: Option<qm_domain::ExchangeRates>,
    /// This controller's name on the `orchestrator.pools` lease.
    holder: String,
}

/// What keeps a pool from growing this tick.
struct Blocked {
    /// Failed provisioning lately: until when it waits, and why.
    backoff: Option<(DateTime<Utc>, String)>,
    /// The organization's hard-capped budget would be exceeded.
    capped: Option<String>,
}

/// A pool's replicas by what they are doing.
#[derive(Default)]
struct Replicas<'a> {
    starting: Vec<&'a Instance>,
    ready: Vec<&'a Instance>,
    unhealthy: Vec<&'a Instance>,
    draining: Vec<&'a Instance>,
    terminating: usize,
    /// Failed provisioning or start-up in the last [`FAILURES_REMEMBERED`], newest first.
    failed: Vec<&'a Instance>,
}

impl<'a> Replicas<'a> {
    /// From the pool's unfinished replicas and those that finished lately.
    fn of(instances: &'a [Instance]) -> Self {
        let mut replicas = Self::default();
        for instance in instances {
            match instance.state {
                InstanceState::Requested | InstanceState::Provisioning | InstanceState::Booting => {
                    replicas.starting.push(instance);
                }
                InstanceState::Ready => replicas.ready.push(instance),
                InstanceState::Unhealthy => replicas.unhealthy.push(instance),
                InstanceState::Draining => replicas.draining.push(instance),
                InstanceState::Terminating => replicas.terminating += 1,
                InstanceState::ProvisioningFailed | InstanceState::StartupFailed => replicas.failed.push(instance),
                _ => {}
            }
        }
        replicas.failed.sort_by_key(|instance| std::cmp::Reverse(instance.updated_at));
        replicas
    }
}

fn seconds(at: DateTime<Utc>) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let seconds = at.timestamp_millis() as f64 / 1000.0;
    seconds
}

/// The mean of `values`; `None` without any.
fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) =
        values.filter(|value| value.is_finite()).fold((0.0, 0_u32), |(sum, count), value| (sum + value, count + 1));
    (count > 0).then(|| sum / f64::from(count))
}

/// A worker's mean GPU utilisation from its last heartbeat, 0 to 1.
fn gpu_utilization(worker: &qm_store::Worker) -> Option<f64> {
    let gpus = worker.gpu_metrics.as_array()?;
    mean(
        gpus.iter()
            .filter_map(|gpu| gpu["utilization_percent"].as_f64())
            .map(|percent| (percent / 100.0).clamp(0.0, 1.0)),
    )
}

fn count(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

impl PoolController {
    pub fn new(store: Arc<dyn Store>, saga: Arc<Saga>) -> Self {
        Self { store, saga, scalers: Mutex::default(), rates: None, holder: uuid::Uuid::new_v4().to_string() }
    }

    /// Checks the organization's hard-capped budget (in the reporting currency of `rates`)
    /// before each scale-up, as the api does when a pool or deployment is created.
    #[must_use]
    pub fn with_budget_caps(mut self, rates: qm_domain::ExchangeRates) -> Self {
        self.rates = Some(rates);
        self
    }

    /// Why `count` more replicas would break the organization's hard-capped budget, if they would.
    async fn capped(&self, pool: &Pool, count: usize) -> Result<Option<String>, SagaError> {
        let Some(rates) = &self.rates else { return Ok(None) };
        let store = &*self.store;
        let count = i32::try_from(count).unwrap_or(i32::MAX);
        let added = qm_costs::added_hourly(store, rates, pool.organization_id, &pool.placements, count).await?;
        let currency = rates.reporting().to_string();
        let exceeded = qm_costs::check_cap(store, &currency, pool.organization_id, added, qm_store::now()).await?;
        Ok(exceeded.map(|exceeded| {
            format!(
                "cannot grow: the organization's {} budget of {} {currency} is hard-capped and {count} more replica(s) \
                 would bring the month to {} {currency}",
                exceeded.period,
                qm_domain::MicroUnits::new(exceeded.amount_micros),
                qm_domain::MicroUnits::new(exceeded.projected_micros),
            )
        }))
    }

    /// Takes or renews the `orchestrator.pools` lease; `false` while another controller holds it.
    async fn hold(&self) -> Result<bool, SagaError> {
        Ok(self.store.acquire_lease(LEASE, &self.holder, LEASE_TTL).await?)
    }

    /// Looks after every pool once, holding the lease; returns how many it changed. The lease is
    /// renewed before each pool, and the tick stops where it is lost: a slow tick never runs
    /// beside another controller's (two would both fill the same gap).
    ///
    /// # Errors
    /// When the pools cannot be read (a pool that fails is logged and skipped).
    pub async fn tick(&self) -> Result<usize, SagaError> {
        if !self.hold().await? {
            return Ok(0);
        }
        let now = qm_store::now();
        let pools = self.store.pools_to_control(now - DELETED_FOR).await?;
        // Every router's recent answers, summed per pool: the TTFT p90 is the pool's.
        let ttft = self.store.pool_ttft_counts(now - TTFT_FRESH).await?;
        let live: std::collections::HashSet<DeploymentId> = pools.iter().map(|pool| pool.id).collect();
        self.scalers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|id, _| live.contains(id));
        let mut changed = 0;
        for pool in &pools {
            if !self.hold().await? {
                tracing::warn!("the pool controller lost its lease during a tick; another controller goes on");
                break;
            }
            let ttft_p90_s = ttft.get(&pool.id).and_then(qm_domain::ttft::p90_ms).map(|ms| ms / 1000.0);
            match self.control(pool, ttft_p90_s).await {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(error) => tracing::warn!(pool = %pool.id, %error, "pool not controlled this tick"),
            }
        }
        Ok(changed)
    }

    /// One tick of one pool, with the routers' p90 time to first token over their last
    /// windows; `true` when something was done.
    async fn control(&self, pool: &Pool, ttft_p90_s: Option<f64>) -> Result<bool, SagaError> {
        let started = Instant::now();
        let now = qm_store::now();
        let instances = self.store.deployment_instances(pool.id, now - FAILURES_REMEMBERED, MAX_REPLICAS_READ).await?;
        let replicas = Replicas::of(&instances);
        let watched: Vec<InstanceId> =
            replicas.ready.iter().chain(&replicas.draining).map(|instance| instance.id).collect();
        let workers: HashMap<InstanceId, qm_store::Worker> =
            self.store.workers_of(&watched).await?.into_iter().map(|worker| (worker.instance_id, worker)).collect();
        let in_flight = |instance: &Instance| {
            workers.get(&instance.id).map_or(0, |worker| {
                worker.in_flight.unwrap_or(0).max(0).saturating_add(worker.queue_depth.unwrap_or(0).max(0))
            })
        };
        let policy = &pool.policy;
        let (min, max) = (pool.min_replicas.max(0).unsigned_abs(), pool.max_replicas.max(0).unsigned_abs());
        let current = pool.desired.max(0).unsigned_abs();
        let decision = if pool.deleted_at.is_some() {
            (current != 0).then(|| Decision {
                from: current,
                to: 0,
                reason: "pool deleted".into(),
                stable_load: 0.0,
                panic_load: 0.0,
                signals: Signals { ready: count(replicas.ready.len()), desired: current, ..Signals::default() },
            })
        } else {
            let load: i32 = replicas.ready.iter().map(|instance| in_flight(instance)).sum();
            let ready_workers: Vec<&qm_store::Worker> =
                replicas.ready.iter().filter_map(|instance| workers.get(&instance.id)).collect();
            let signals = Signals {
                load: f64::from(load),
                ready: count(replicas.ready.len()),
                desired: current,
                // A new pool counts as asked for when it was created.
                idle_s: Some(
                    (seconds(now) - seconds(pool.requested_at.unwrap_or(pool.created_at).max(pool.created_at)))
                        .max(0.0),
                ),
                ttft_p90_s,
                kv_cache: mean(ready_workers.iter().filter_map(|worker| worker.kv_cache_usage)),
                gpu_utilization: mean(ready_workers.iter().filter_map(|worker| gpu_utilization(worker))),
            };
            let mut scalers = self.scalers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let scaler = scalers.entry(pool.id).or_default();
            scaler.decide(policy, min, max, seconds(now), signals).or_else(|| {
                let bounded = current.clamp(min, max.max(min));
                (bounded != current).then(|| Decision {
                    from: current,
                    to: bounded,
                    reason: "bounds".into(),
                    stable_load: 0.0,
                    panic_load: 0.0,
                    signals,
                })
            })
        };
        let desired = decision.as_ref().map_or(current, |decision| decision.to);
        let mut acted = decision.is_some();

        // Heal: unhealthy past the grace period → terminated, and so replaced below.
        let grace = chrono::Duration::seconds(i64::from(policy.unhealthy_grace_s));
        let (expired, recovering): (Vec<&Instance>, Vec<&Instance>) =
            replicas.unhealthy.iter().partition(|instance| now - instance.state_changed_at >= grace);
        for instance in &expired {
            let reason = format!("unhealthy for more than {} s; replaced", policy.unhealthy_grace_s);
            acted |= self.terminate(instance, &reason, "pool.replaced", started).await?;
        }

        // Roll: replicas of an older revision (model or engine settings) that serve nothing yet
        // go at once; ready ones are drained below, one for each new one that is ready.
        let outdated = |instance: &&Instance| instance.revision != Some(pool.revision);
        let (stale_starting, starting): (Vec<&Instance>, Vec<&Instance>) =
            replicas.starting.iter().copied().partition(outdated);
        let (stale_recovering, recovering): (Vec<&Instance>, Vec<&Instance>) =
            recovering.into_iter().partition(outdated);
        let (stale_ready, ready): (Vec<&Instance>, Vec<&Instance>) = replicas.ready.iter().copied().partition(outdated);
        for instance in stale_starting.iter().chain(&stale_recovering) {
            let reason = format!("replaced by revision {} of the pool", pool.revision);
            acted |= self.terminate(instance, &reason, "pool.replaced", started).await?;
        }

        // Grow or shrink towards `desired`. During a rolling update one replica more than
        // `desired` may run (the surge), and old ones are drained only as new ones are ready, so
        // the ready count never drops below `desired` and no request is refused.
        let desired_count = usize::try_from(desired).unwrap_or(usize::MAX);
        let live = starting.len() + ready.len() + recovering.len();
        let backoff = Self::backoff(&replicas, now);
        let mut capped = None;
        if live < desired_count && backoff.is_none() {
            let room = (desired_count + SURGE).saturating_sub(live + stale_ready.len());
            let missing = (desired_count - live).min(room).min(CREATE_AT_ONCE);
            if missing > 0 {
                capped = self.capped(pool, missing).await?;
                if capped.is_none() {
                    self.create(pool, missing).await?;
                    acted = true;
                }
            }
        } else if live > desired_count {
            let mut excess = live - desired_count;
            // Cancel replicas that serve nothing yet, newest first; then the recovering ones.
            let mut cancel: Vec<&Instance> = starting.clone();
            cancel.sort_by_key(|instance| std::cmp::Reverse(instance.created_at));
            cancel.extend(recovering.iter().copied());
            for instance in cancel.into_iter().take(excess) {
                acted |= self.terminate(instance, "not needed: the pool scaled in", "pool.replaced", started).await?;
                excess -= 1;
            }
            // Drain ready ones: the least busy, then the most expensive.
            for instance in Self::drain_order(ready.clone(), &in_flight).into_iter().take(excess) {
                acted |= self.drain(instance, in_flight(instance), "drained for scale-in", started).await?;
            }
        }
        let surplus = (ready.len() + stale_ready.len()).saturating_sub(desired_count);
        let reason = format!("drained: replaced by revision {} of the pool", pool.revision);
        for instance in Self::drain_order(stale_ready.clone(), &in_flight).into_iter().take(surplus) {
            acted |= self.drain(instance, in_flight(instance), &reason, started).await?;
        }

        // Drained replicas go once their worker reports nothing in flight (a heartbeat after the
        // drain began), or at the deadline.
        let deadline = chrono::Duration::seconds(i64::from(policy.drain_deadline_s));
        for instance in &replicas.draining {
            let drained = workers.get(&instance.id).is_none_or(|worker| {
                worker.last_heartbeat_at.is_some_and(|at| at > instance.state_changed_at)
                    && worker.in_flight.unwrap_or(0) <= 0
            });
            let reason = if drained {
                "drained: nothing in flight"
            } else if now - instance.state_changed_at >= deadline {
                "drain deadline passed"
            } else {
                continue;
            };
            acted |= self.terminate(instance, reason, "pool.replaced", started).await?;
        }

        let outdated = stale_ready.len() + stale_starting.len() + stale_recovering.len();
        let blocked = Blocked { backoff, capped };
        let status = Self::status(pool, &replicas, desired, outdated, blocked, decision.as_ref(), now);
        if status != pool.status || decision.is_some() {
            let mut tx = self.store.begin().await?;
            tx.set_pool_status(pool.id, i32::try_from(desired).unwrap_or(i32::MAX), &status).await?;
            if let Some(decision) = &decision {
                Self::record_decision(&mut *tx, pool, decision).await?;
            }
            tx.commit().await?;
        }
        Ok(acted)
    }

    /// When provisioning failed lately: until when the pool waits, and why.
    fn backoff(replicas: &Replicas<'_>, now: DateTime<Utc>) -> Option<(DateTime<Utc>, String)> {
        let last = replicas.failed.first()?;
        let failures = u32::try_from(replicas.failed.len()).unwrap_or(u32::MAX).min(16);
        let wait = BACKOFF_FIRST.saturating_mul(1 << (failures - 1).min(10)).min(BACKOFF_MAX);
        let until = last.updated_at + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        let reason = last.failure_reason.clone().unwrap_or_else(|| last.state.as_str().to_owned());
        (until > now).then_some((until, reason))
    }

    async fn create(&self, pool: &Pool, count: usize) -> Result<(), SagaError> {
        let Some(primary) = pool.placements.first() else { return Ok(()) };
        let mut tx = self.store.begin().await?;
        for _ in 0..count {
            let instance = tx
                .insert_instance(&NewInstance {
                    id: InstanceId::new(),
                    organization_id: pool.organization_id,
                    deployment_id: Some(pool.id),
                    placement: primary.clone(),
                    model: pool.model.clone(),
                    revision: Some(pool.revision),
                })
                .await?;
            let payload = InstanceProvision {
                instance_id: instance.id,
                deployment_id: Some(pool.id),
                model: pool.model.clone(),
                placements: pool.placements.clone(),
                engine: pool.engine.clone(),
            };
            let command = Envelope::of(&payload, crate::NAME, Some(pool.organization_id));
            tx.enqueue(&command).await?;
            tx.enqueue(&command.caused_by(&instance.state_changed(None, Some("pool replica")), crate::NAME)).await?;
        }
        tx.commit().await?;
        tracing::info!(pool = %pool.id, count, "pool replicas requested");
        Ok(())
    }

    async fn terminate(
        &self,
        instance: &Instance,
        reason: &str,
        action: &str,
        started: Instant,
    ) -> Result<bool, SagaError> {
        let moved = self.saga.terminate_instance(instance, reason, started).await?.is_some();
        if moved {
            self.log(instance, action, json!({ "reason": reason, "from": instance.state })).await?;
        }
        Ok(moved)
    }

    /// The least busy first; at equal load the most expensive.
    fn drain_order<'a>(mut ready: Vec<&'a Instance>, in_flight: &impl Fn(&Instance) -> i32) -> Vec<&'a Instance> {
        ready.sort_by_key(|instance| (in_flight(instance), std::cmp::Reverse(instance.hourly_price_micros)));
        ready
    }

    async fn drain(
        &self,
        instance: &Instance,
        in_flight: i32,
        reason: &str,
        started: Instant,
    ) -> Result<bool, SagaError> {
        let moved =
            self.saga.transition(None, instance, InstanceState::Draining, reason, None, started).await?.is_some();
        if moved {
            self.log(
                instance,
                "pool.drained",
                json!({ "reason": reason, "in_flight": in_flight, "hourly_price_micros": instance.hourly_price_micros }),
            )
            .await?;
        }
        Ok(moved)
    }

    async fn log(&self, instance: &Instance, action: &str, metadata: serde_json::Value) -> Result<(), SagaError> {
        let mut entry = NewActionLog::new(crate::NAME, action, ActionStatus::Succeeded);
        entry.organization_id = Some(instance.organization_id);
        entry.instance_id = Some(instance.id);
        entry.metadata = metadata;
        let mut tx = self.store.begin().await?;
        tx.insert_action_log(&entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_decision(
        tx: &mut dyn qm_store::StoreTx,
        pool: &Pool,
        decision: &Decision,
    ) -> Result<(), SagaError> {
        let mut entry = NewActionLog::new(crate::NAME, "pool.scaled", ActionStatus::Succeeded);
        entry.organization_id = Some(pool.organization_id);
        entry.metadata = json!({ "pool_id": pool.id, "decision": decision });
        tx.insert_action_log(&entry).await?;
        let event = PoolScaled {
            pool_id: pool.id.as_uuid(),
            model: pool.model.clone(),
            from: decision.from,
            to: decision.to,
            reason: decision.reason.clone(),
            stable_load: decision.stable_load,
            panic_load: decision.panic_load,
            ready: decision.signals.ready,
            ttft_p90_s: decision.signals.ttft_p90_s,
            kv_cache: decision.signals.kv_cache,
            gpu_utilization: decision.signals.gpu_utilization,
        };
        tx.enqueue(&Envelope::of(&event, crate::NAME, Some(pool.organization_id))).await?;
        tracing::info!(pool = %pool.id, from = decision.from, to = decision.to, reason = %decision.reason, "pool scaled");
        Ok(())
    }

    /// The status a pool shows: counts, conditions, the cost of its replicas per hour, and its
    /// last decisions (newest first).
    fn status(
        pool: &Pool,
        replicas: &Replicas<'_>,
        desired: u32,
        outdated: usize,
        blocked: Blocked,
        decision: Option<&Decision>,
        now: DateTime<Utc>,
    ) -> serde_json::Value {
        let mut decisions: Vec<serde_json::Value> =
            pool.status.get("decisions").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
        if let Some(decision) = decision {
            decisions.insert(
                0,
                json!({ "at": now, "from": decision.from, "to": decision.to, "reason": decision.reason,
                "stable_load": decision.stable_load, "panic_load": decision.panic_load, "ready": decision.signals.ready,
                "signals": decision.signals }),
            );
            decisions.truncate(DECISIONS_KEPT);
        }
        let mut conditions = Vec::new();
        if let Some(message) = blocked.capped {
            conditions.push(json!({ "type": "budget_capped", "message": message }));
        }
        if let Some((until, reason)) = &blocked.backoff {
            let since = replicas.failed.last().map_or(now, |instance| instance.updated_at);
            conditions.push(json!({ "type": "cannot_place",
                "message": format!("cannot place: {reason} (failing since {since}; next try at {until})") }));
        }
        if outdated > 0 {
            conditions.push(json!({ "type": "updating",
                "message": format!("rolling update to revision {}: {outdated} replica(s) of an older revision left", pool.revision) }));
        }
        if pool.deleted_at.is_some() {
            conditions.push(
                json!({ "type": "deleting", "message": "the pool was deleted; its replicas drain and terminate" }),
            );
        }
        let running = replicas.ready.iter().chain(&replicas.draining).chain(&replicas.unhealthy);
        let hourly: i64 = running.map(|instance| instance.hourly_price_micros).sum();
        json!({
            "desired": desired,
            "revision": pool.revision,
            "outdated": outdated,
            "ready": replicas.ready.len(),
            "starting": replicas.starting.len(),
            "unhealthy": replicas.unhealthy.len(),
            "draining": replicas.draining.len(),
            "terminating": replicas.terminating,
            "hourly_price_micros": hourly,
            "conditions": conditions,
            "decisions": decisions,
        })
    }

    /// Ticks every [`TICK`] while this replica holds the `orchestrator.pools` lease.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        while !shutdown.is_triggered() {
            if let Err(error) = self.tick().await {
                tracing::warn!(%error, "pool controller tick failed; trying again");
            }
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}
