//! What a consumer holds: [`SubscriptionOptions`], the [`Subscription`] it reads from and the
//! [`Delivery`] it settles.
//!
//! The rules every backend shares live here, once: a message delivered more often than the
//! group allows is dead-lettered before the handler sees it again (so a message that crashes its
//! consumer cannot block the group forever), undecodable payloads are dead-lettered, and
//! messages outside the subscription's type filter are acknowledged and skipped.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use qm_events::{Channel, Envelope};

use crate::naming::is_valid_group_name;
use crate::{BusError, DeadLetter};

/// How a consumer group reads a channel.
#[derive(Clone, Debug)]
pub struct SubscriptionOptions {
    pub channel: Channel,
    /// The consumer group: every member of one group shares the work; every group sees every
    /// message.
    pub group: String,
    /// A delivery not acknowledged within this time is given to a member again.
    pub visibility_timeout: Duration,
    /// After this many failed deliveries a message goes to the group's dead-letter queue.
    pub max_deliveries: u32,
    /// Only these message types reach the handler; others are acknowledged and skipped.
    pub types: Option<Vec<String>>,
}

impl SubscriptionOptions {
    pub fn new(channel: Channel, group: &str) -> Self {
        Self {
            channel,
            group: group.to_owned(),
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 5,
            types: None,
        }
    }

    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = deliveries;
        self
    }

    pub fn types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// # Errors
    /// [`BusError::InvalidSubscription`] for a group name outside `[a-z0-9_-]{1,64}`, a zero
    /// visibility timeout or zero allowed deliveries.
    pub fn validate(&self) -> Result<(), BusError> {
        if !is_valid_group_name(&self.group) {
            return Err(BusError::InvalidSubscription(format!(
                "group `{}` must be 1 to 64 lowercase letters, digits, `_` or `-`",
                self.group
            )));
        }
        if self.visibility_timeout < Duration::from_millis(10) {
            return Err(BusError::InvalidSubscription("visibility timeout must be at least 10 ms".into()));
        }
        if self.max_deliveries == 0 {
            return Err(BusError::InvalidSubscription("max deliveries must be at least 1".into()));
        }
        Ok(())
    }

    fn wants(&self, envelope: &Envelope) -> bool {
        self.types.as_ref().is_none_or(|types| types.contains(&envelope.message_type))
    }
}

/// One message as a backend received it, before the shared rules are applied.
pub(crate) struct RawDelivery {
    pub payload: Vec<u8>,
    /// 1 for the first delivery.
    pub deliveries: u32,
    pub settle: Box<dyn Settle>,
}

/// How a backend receives the next message of a group for one member.
#[async_trait]
pub(crate) trait Receive: Send {
    async fn receive(&mut self) -> Result<RawDelivery, BusError>;
}

/// How a backend settles one delivery.
#[async_trait]
pub(crate) trait Settle: Send + Sync {
    async fn ack(&self) -> Result<(), BusError>;
    /// Makes the message visible again after `delay` (instead of the full visibility timeout).
    async fn retry_after(&self, delay: Duration) -> Result<(), BusError>;
    /// Stores the dead letter durably, then removes the message from the group.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BusError>;
}

/// A member of a consumer group. Dropping it leaves unacknowledged deliveries to be redelivered
/// after their visibility timeout.
pub struct Subscription {
    receiver: Box<dyn Receive>,
    options: SubscriptionOptions,
}

impl Subscription {
    pub(crate) fn new(receiver: Box<dyn Receive>, options: SubscriptionOptions) -> Self {
        Self { receiver, options }
    }

    pub fn options(&self) -> &SubscriptionOptions {
        &self.options
    }

    /// Waits for the next message for this member. Cancel-safe in the at-least-once sense: a
    /// message received by a cancelled call is redelivered after the visibility timeout.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the bus cannot be reached; call again to retry.
    pub async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let raw = self.receiver.receive().await?;
            if raw.deliveries > self.options.max_deliveries {
                let reason = format!(
                    "delivered {} times without being acknowledged (limit {})",
                    raw.deliveries - 1,
                    self.options.max_deliveries
                );
                bury(&self.options.group, raw, reason).await?;
                continue;
            }
            let envelope = match Envelope::from_json(&raw.payload) {
                Ok(envelope) => envelope,
                Err(error) => {
                    bury(&self.options.group, raw, format!("undecodable message: {error}")).await?;
                    continue;
                }
            };
            if !self.options.wants(&envelope) {
                raw.settle.ack().await?;
                continue;
            }
            return Ok(Delivery {
                envelope,
                deliveries: raw.deliveries,
                max_deliveries: self.options.max_deliveries,
                group: self.options.group.clone(),
                payload: raw.payload,
                settle: raw.settle,
            });
        }
    }
}

/// Dead-letters a delivery the handler never saw.
async fn bury(group: &str, raw: RawDelivery, reason: String) -> Result<(), BusError> {
    tracing::warn!(group, deliveries = raw.deliveries, %reason, "message dead-lettered");
    let letter = dead_letter(group, &raw.payload, raw.deliveries, reason);
    raw.settle.dead_letter(&letter).await
}

fn dead_letter(group: &str, payload: &[u8], deliveries: u32, reason: String) -> DeadLetter {
    DeadLetter {
        group: group.to_owned(),
        reason,
        deliveries,
        dead_at: Utc::now(),
        payload: String::from_utf8_lossy(payload).into_owned(),
    }
}

/// What happened to a delivery that was handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// It will be delivered again after the delay.
    Retrying,
    /// It used its last allowed delivery and is now in the dead-letter queue.
    DeadLettered,
}

/// One delivery of one message to one member. Settle it with [`ack`](Self::ack),
/// [`retry`](Self::retry) or [`dead_letter`](Self::dead_letter); a delivery dropped unsettled is
/// redelivered after the visibility timeout.
pub struct Delivery {
    pub envelope: Envelope,
    /// 1 for the first delivery of this message to this group.
    pub deliveries: u32,
    max_deliveries: u32,
    group: String,
    payload: Vec<u8>,
    settle: Box<dyn Settle>,
}

impl Delivery {
    /// Done: the group will not see this message again.
    ///
    /// # Errors
    /// [`BusError::Unavailable`]; the message will then be redelivered, which idempotent
    /// consumers absorb.
    pub async fn ack(self) -> Result<(), BusError> {
        self.settle.ack().await
    }

    /// The handler failed in a way that may pass later: deliver again after `delay`, unless this
    /// was the last allowed delivery, in which case the message is dead-lettered with `reason`.
    ///
    /// # Errors
    /// [`BusError::Unavailable`]; the message is then redelivered after the visibility timeout.
    pub async fn retry(self, delay: Duration, reason: &str) -> Result<RetryOutcome, BusError> {
        if self.deliveries >= self.max_deliveries {
            let reason = format!("failed {} times, last: {reason}", self.deliveries);
            self.dead_letter(&reason).await?;
            Ok(RetryOutcome::DeadLettered)
        } else {
            self.settle.retry_after(delay).await?;
            Ok(RetryOutcome::Retrying)
        }
    }

    /// The message can never succeed (a poison message): move it to the dead-letter queue now.
    ///
    /// # Errors
    /// [`BusError::Unavailable`]; the message is then redelivered after the visibility timeout.
    pub async fn dead_letter(self, reason: &str) -> Result<(), BusError> {
        tracing::warn!(group = %self.group, message_type = %self.envelope.message_type, event_id = %self.envelope.id, %reason, "message dead-lettered");
        let letter = dead_letter(&self.group, &self.payload, self.deliveries, reason.to_owned());
        self.settle.dead_letter(&letter).await
    }
}
