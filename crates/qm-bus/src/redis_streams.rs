//! Redis Streams backend.
//!
//! Channels are the streams `qm:cmd` and `qm:evt` (capped at about a million entries each);
//! a consumer group is a Redis consumer group created at the start of the stream, so a group that
//! joins late still sees every retained message. Each subscription is a consumer with a unique
//! name. Unacknowledged entries idle for longer than the visibility timeout are claimed by the
//! next member that asks (`XPENDING … IDLE` + `XCLAIM`), which is how a crashed member's work
//! moves on. A retry with a delay is `XCLAIM … IDLE` set so that the entry becomes claimable
//! after the delay. Dead letters go to `qm:dlq:<group>`.
//!
//! A blocking `XREADGROUP` occupies its connection, so each subscription reads on a connection of
//! its own while publishes and acknowledgements share one multiplexed connection.

use std::time::Duration;

use async_trait::async_trait;
use qm_events::Envelope;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamClaimReply, StreamId, StreamPendingCountReply, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client};

use crate::subscription::{RawDelivery, Receive, Settle};
use crate::{BusError, DeadLetter, EventBus, Naming, Subscription, SubscriptionOptions};

/// Approximate cap on each channel's stream (`XADD … MAXLEN ~`).
const STREAM_MAX_LENGTH: u64 = 1_000_000;
const PAYLOAD_FIELD: &str = "payload";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const LONGEST_BLOCK: Duration = Duration::from_secs(1);

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

pub struct RedisBus {
    client: Client,
    connection: ConnectionManager,
    naming: Naming,
}

impl RedisBus {
    /// Prepares a lazily connecting, self-reconnecting client.
    ///
    /// # Errors
    /// [`BusError::InvalidUrl`] when the redis crate cannot parse the URL.
    pub fn connect(url: &url::Url, naming: Naming) -> Result<Self, BusError> {
        let mut server = url.clone();
        server.set_query(None);
        let client = Client::open(server.as_str()).map_err(|error| BusError::InvalidUrl(error.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)?;
        Ok(Self { client, connection, naming })
    }

    /// Deletes every key of this bus's namespace (tests clean up with it).
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when Redis cannot be reached.
    pub async fn delete_keys(&self) -> Result<(), BusError> {
        let mut connection = self.connection.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(self.naming.redis_key_pattern())
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query_async(&mut connection).await.map_err(unavailable)?;
        }
        Ok(())
    }
}

#[async_trait]
impl EventBus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("XADD")
            .arg(self.naming.redis_stream(envelope.channel()))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAX_LENGTH)
            .arg("*")
            .arg(PAYLOAD_FIELD)
            .arg(envelope.to_json())
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn subscribe(&self, options: SubscriptionOptions) -> Result<Subscription, BusError> {
        options.validate()?;
        let stream = self.naming.redis_stream(options.channel);
        let mut connection = self.connection.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(&options.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Ok(()) => {}
            Err(error) if error.code() == Some("BUSYGROUP") => {}
            Err(error) => return Err(unavailable(error)),
        }
        let block = (options.visibility_timeout / 2).clamp(Duration::from_millis(10), LONGEST_BLOCK);
        let receiver = RedisReceiver {
            client: self.client.clone(),
            reader: None,
            shared: self.connection.clone(),
            stream,
            dead_letter_stream: self.naming.redis_dead_letter_stream(&options.group),
            group: options.group.clone(),
            consumer: format!("member-{}", uuid::Uuid::new_v4().simple()),
            visibility_timeout: options.visibility_timeout,
            block,
        };
        Ok(Subscription::new(Box::new(receiver), options))
    }

    async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let mut connection = self.connection.clone();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.naming.redis_dead_letter_stream(group))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(reply
            .ids
            .iter()
            .filter_map(|entry| payload(entry).and_then(|bytes| serde_json::from_slice(&bytes).ok()))
            .collect())
    }

    async fn ping(&self) -> Result<(), BusError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING").query_async(&mut connection).await.map_err(unavailable)?;
        Ok(())
    }
}

fn payload(entry: &StreamId) -> Option<Vec<u8>> {
    entry.get::<Vec<u8>>(PAYLOAD_FIELD)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

struct RedisReceiver {
    client: Client,
    /// The connection blocking reads run on; replaced after an error.
    reader: Option<MultiplexedConnection>,
    shared: ConnectionManager,
    stream: String,
    dead_letter_stream: String,
    group: String,
    consumer: String,
    visibility_timeout: Duration,
    block: Duration,
}

impl RedisReceiver {
    async fn reader(&mut self) -> Result<MultiplexedConnection, BusError> {
        if let Some(reader) = &self.reader {
            return Ok(reader.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.block + COMMAND_TIMEOUT));
        let reader = self.client.get_multiplexed_async_connection_with_config(&config).await.map_err(unavailable)?;
        self.reader = Some(reader.clone());
        Ok(reader)
    }

    fn delivery(&self, entry: &StreamId, deliveries: u32) -> RawDelivery {
        RawDelivery {
            payload: payload(entry).unwrap_or_default(),
            deliveries,
            settle: Box::new(RedisSettle {
                connection: self.shared.clone(),
                stream: self.stream.clone(),
                dead_letter_stream: self.dead_letter_stream.clone(),
                group: self.group.clone(),
                consumer: self.consumer.clone(),
                entry_id: entry.id.clone(),
                visibility_timeout: self.visibility_timeout,
            }),
        }
    }

    /// Takes over one entry whose visibility timeout has passed, if there is one.
    async fn claim_expired(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> redis::RedisResult<Option<RawDelivery>> {
        let idle = millis(self.visibility_timeout);
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("IDLE")
            .arg(idle)
            .arg("-")
            .arg("+")
            .arg(1)
            .query_async(connection)
            .await?;
        let Some(expired) = pending.ids.first() else { return Ok(None) };
        let claimed: StreamClaimReply = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(idle)
            .arg(&expired.id)
            .query_async(connection)
            .await?;
        // Another member may have claimed it first (then nothing comes back), or the entry was
        // trimmed away; either way there is nothing for us to deliver.
        Ok(claimed.ids.first().map(|entry| {
            let deliveries = u32::try_from(expired.times_delivered.saturating_add(1)).unwrap_or(u32::MAX);
            self.delivery(entry, deliveries)
        }))
    }

    async fn read_new(&mut self, connection: &mut MultiplexedConnection) -> redis::RedisResult<Option<RawDelivery>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(millis(self.block))
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(connection)
            .await?;
        let entry = reply.and_then(|reply| reply.keys.into_iter().next()).and_then(|key| key.ids.into_iter().next());
        Ok(entry.map(|entry| self.delivery(&entry, 1)))
    }
}

#[async_trait]
impl Receive for RedisReceiver {
    async fn receive(&mut self) -> Result<RawDelivery, BusError> {
        loop {
            let mut connection = self.reader().await?;
            let attempt = match self.claim_expired(&mut connection).await {
                Ok(Some(delivery)) => Ok(Some(delivery)),
                Ok(None) => self.read_new(&mut connection).await,
                Err(error) => Err(error),
            };
            match attempt {
                Ok(Some(delivery)) => return Ok(delivery),
                Ok(None) => {}
                Err(error) => {
                    self.reader = None;
                    return Err(unavailable(error));
                }
            }
        }
    }
}

struct RedisSettle {
    connection: ConnectionManager,
    stream: String,
    dead_letter_stream: String,
    group: String,
    consumer: String,
    entry_id: String,
    visibility_timeout: Duration,
}

impl RedisSettle {
    async fn acknowledge(&self) -> Result<(), BusError> {
        let mut connection = self.connection.clone();
        let _: u64 = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.entry_id)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl Settle for RedisSettle {
    async fn ack(&self) -> Result<(), BusError> {
        self.acknowledge().await
    }

    async fn retry_after(&self, delay: Duration) -> Result<(), BusError> {
        // Claimable once idle for the visibility timeout: pretend it has been idle for all but
        // `delay` of it. JUSTID keeps the delivery counter unchanged.
        let idle = self.visibility_timeout.saturating_sub(delay);
        let mut connection = self.connection.clone();
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&self.entry_id)
            .arg("IDLE")
            .arg(millis(idle))
            .arg("JUSTID")
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BusError> {
        let payload = serde_json::to_vec(letter).map_err(|error| BusError::Protocol(error.to_string()))?;
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("XADD")
            .arg(&self.dead_letter_stream)
            .arg("*")
            .arg(PAYLOAD_FIELD)
            .arg(payload)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        self.acknowledge().await
    }
}
