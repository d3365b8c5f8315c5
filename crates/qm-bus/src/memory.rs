//! The in-process bus: the `qm dev` default and the reference for the conformance suite.
//!
//! Each channel is an append-only log; each consumer group keeps a cursor into it and a table of
//! deliveries awaiting acknowledgement. Time is `tokio::time`, so tests can pause and advance it.
//! Nothing survives the process: `qm dev` relies on the outbox (messages are written to SQLite
//! first) and on reconciliation to pick up work that was in flight when it stopped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use qm_events::{Channel, Envelope};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::subscription::{RawDelivery, Receive, Settle};
use crate::{BusError, DeadLetter, EventBus, Subscription, SubscriptionOptions};

#[derive(Default)]
struct State {
    logs: HashMap<Channel, Vec<Arc<Vec<u8>>>>,
    groups: HashMap<(Channel, String), GroupState>,
    dead_letters: HashMap<String, Vec<DeadLetter>>,
}

#[derive(Default)]
struct GroupState {
    /// Index of the next never-delivered message in the channel's log.
    cursor: usize,
    /// Deliveries not yet acknowledged, by log index.
    in_flight: BTreeMap<usize, InFlight>,
}

struct InFlight {
    deliveries: u32,
    visible_at: Instant,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change that may make a message deliverable.
    changes: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than losing the bus, so a poisoned lock is still used.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes.send_modify(|version| *version = version.wrapping_add(1));
    }
}

/// An in-process [`EventBus`]. Clones share the same logs and groups.
#[derive(Clone)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        let (changes, _) = watch::channel(0);
        Self { shared: Arc::new(Shared { state: Mutex::new(State::default()), changes }) }
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        let payload = Arc::new(envelope.to_json());
        self.shared.lock().logs.entry(envelope.channel()).or_default().push(payload);
        self.shared.changed();
        Ok(())
    }

    async fn subscribe(&self, options: SubscriptionOptions) -> Result<Subscription, BusError> {
        options.validate()?;
        self.shared.lock().groups.entry((options.channel, options.group.clone())).or_default();
        let receiver = MemoryReceiver {
            shared: self.shared.clone(),
            changes: self.shared.changes.subscribe(),
            key: (options.channel, options.group.clone()),
            visibility_timeout: options.visibility_timeout,
        };
        Ok(Subscription::new(Box::new(receiver), options))
    }

    async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let state = self.shared.lock();
        Ok(state
            .dead_letters
            .get(group)
            .map(|letters| letters.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

struct MemoryReceiver {
    shared: Arc<Shared>,
    changes: watch::Receiver<u64>,
    key: (Channel, String),
    visibility_timeout: Duration,
}

enum Poll {
    Ready(RawDelivery),
    WaitUntil(Option<Instant>),
}

impl MemoryReceiver {
    fn poll(&mut self) -> Poll {
        let now = Instant::now();
        let mut state = self.shared.lock();
        // Mark the current version seen while holding the lock: any later change wakes us.
        self.changes.borrow_and_update();
        let State { logs, groups, .. } = &mut *state;
        let log = logs.get(&self.key.0).map(Vec::as_slice).unwrap_or_default();
        let group = groups.entry(self.key.clone()).or_default();

        let expired = group.in_flight.iter_mut().find(|(_, in_flight)| in_flight.visible_at <= now);
        let (index, deliveries) = if let Some((index, in_flight)) = expired {
            in_flight.deliveries += 1;
            in_flight.visible_at = now + self.visibility_timeout;
            (*index, in_flight.deliveries)
        } else if group.cursor < log.len() {
            let index = group.cursor;
            group.cursor += 1;
            group.in_flight.insert(index, InFlight { deliveries: 1, visible_at: now + self.visibility_timeout });
            (index, 1)
        } else {
            return Poll::WaitUntil(group.in_flight.values().map(|in_flight| in_flight.visible_at).min());
        };
        let settle = MemorySettle { shared: self.shared.clone(), key: self.key.clone(), index, deliveries };
        Poll::Ready(RawDelivery { payload: log[index].to_vec(), deliveries, settle: Box::new(settle) })
    }
}

#[async_trait]
impl Receive for MemoryReceiver {
    async fn receive(&mut self) -> Result<RawDelivery, BusError> {
        loop {
            match self.poll() {
                Poll::Ready(delivery) => return Ok(delivery),
                Poll::WaitUntil(deadline) => {
                    let wake_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                    tokio::select! {
                        changed = self.changes.changed() => {
                            if changed.is_err() {
                                return Err(BusError::Unavailable("in-process bus was dropped".into()));
                            }
                        }
                        () = tokio::time::sleep_until(wake_at) => {}
                    }
                }
            }
        }
    }
}

struct MemorySettle {
    shared: Arc<Shared>,
    key: (Channel, String),
    index: usize,
    /// The delivery this handle settles; a later redelivery of the same message is not ours.
    deliveries: u32,
}

impl MemorySettle {
    /// Runs `change` on the in-flight entry if it still belongs to this delivery.
    fn with_own_entry(&self, change: impl FnOnce(&mut GroupState, usize)) {
        let mut state = self.shared.lock();
        if let Some(group) = state.groups.get_mut(&self.key)
            && group.in_flight.get(&self.index).is_some_and(|in_flight| in_flight.deliveries == self.deliveries)
        {
            change(group, self.index);
        }
        drop(state);
        self.shared.changed();
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(&self) -> Result<(), BusError> {
        self.with_own_entry(|group, index| {
            group.in_flight.remove(&index);
        });
        Ok(())
    }

    async fn retry_after(&self, delay: Duration) -> Result<(), BusError> {
        self.with_own_entry(|group, index| {
            if let Some(in_flight) = group.in_flight.get_mut(&index) {
                in_flight.visible_at = Instant::now() + delay;
            }
        });
        Ok(())
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BusError> {
        let mut state = self.shared.lock();
        state.dead_letters.entry(letter.group.clone()).or_default().push(letter.clone());
        if let Some(group) = state.groups.get_mut(&self.key) {
            group.in_flight.remove(&self.index);
        }
        Ok(())
    }
}
