//! NATS JetStream backend.
//!
//! Streams `QM_CMD` (subjects `qm.cmd.>`) and `QM_EVT` (`qm.evt.>`) keep messages for seven days
//! on disk; `QM_DLQ` (`qm.dlq.<group>.<channel>`) keeps dead letters for thirty. A consumer group
//! is a durable pull consumer named after the group with explicit acknowledgement and
//! `ack_wait` = the visibility timeout. Every publish carries `Nats-Msg-Id` = the envelope id, so
//! a message the outbox relay publishes twice (after a crash between publish and mark) is stored
//! once. Members pull one message at a time, so nothing sits in a member's buffer where a
//! restarted or slower member could not reach it.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use futures::StreamExt;
use qm_events::{Channel, Envelope};
use tokio::sync::OnceCell;

use crate::subscription::{RawDelivery, Receive, Settle};
use crate::{BusError, DeadLetter, EventBus, Naming, Subscription, SubscriptionOptions};

const MESSAGE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long one pull waits on the server before asking again.
const PULL_EXPIRY: Duration = Duration::from_secs(1);

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    naming: Naming,
    streams: OnceCell<()>,
}

impl NatsBus {
    /// Starts connecting in the background; the streams are created on first use.
    ///
    /// # Errors
    /// [`BusError::InvalidUrl`] when the URL has no host.
    pub async fn connect(url: &url::Url, naming: Naming) -> Result<Self, BusError> {
        let host = url.host_str().ok_or_else(|| BusError::InvalidUrl("a nats:// URL needs a host".into()))?;
        let mut server = url.clone();
        server.set_query(None);
        let port = url.port().unwrap_or(4222);
        let mut options = async_nats::ConnectOptions::new()
            .name("quartermaster")
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect();
        if !url.username().is_empty() {
            let password = url.password().unwrap_or_default();
            options = options.user_and_password(url.username().to_owned(), password.to_owned());
        }
        let address = format!("{}://{host}:{port}", if url.scheme() == "tls" { "tls" } else { "nats" });
        let client = options.connect(address).await.map_err(unavailable)?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(Duration::from_secs(5));
        Ok(Self { client, jetstream, naming, streams: OnceCell::new() })
    }

    async fn ensure_streams(&self) -> Result<(), BusError> {
        self.streams
            .get_or_try_init(|| async {
                for channel in Channel::ALL {
                    self.create_stream(
                        self.naming.nats_stream(channel),
                        self.naming.nats_channel_wildcard(channel),
                        MESSAGE_RETENTION,
                    )
                    .await?;
                }
                self.create_stream(
                    self.naming.nats_dead_letter_stream(),
                    self.naming.nats_dead_letter_wildcard(None),
                    DEAD_LETTER_RETENTION,
                )
                .await
            })
            .await
            .copied()
    }

    async fn create_stream(&self, name: String, subjects: String, max_age: Duration) -> Result<(), BusError> {
        self.jetstream
            .get_or_create_stream(stream::Config {
                name,
                subjects: vec![subjects],
                max_age,
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Deletes every stream of this bus's namespace (tests clean up with it).
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when NATS cannot be reached.
    pub async fn delete_streams(&self) -> Result<(), BusError> {
        let names = Channel::ALL
            .into_iter()
            .map(|channel| self.naming.nats_stream(channel))
            .chain([self.naming.nats_dead_letter_stream()]);
        for name in names {
            match self.jetstream.delete_stream(&name).await {
                Ok(_) => {}
                Err(error) if error.to_string().contains("not found") => {}
                Err(error) => return Err(unavailable(error)),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EventBus for NatsBus {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        self.ensure_streams().await?;
        let subject = self.naming.nats_subject(envelope.channel(), &envelope.message_type);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
        self.jetstream
            .publish_with_headers(subject, headers, envelope.to_json().into())
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn subscribe(&self, options: SubscriptionOptions) -> Result<Subscription, BusError> {
        options.validate()?;
        self.ensure_streams().await?;
        let stream = self.jetstream.get_stream(self.naming.nats_stream(options.channel)).await.map_err(unavailable)?;
        let consumer = stream
            .get_or_create_consumer(
                &options.group,
                consumer::pull::Config {
                    durable_name: Some(options.group.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: options.visibility_timeout,
                    // The shared subscription rules dead-letter; the server never drops.
                    max_deliver: -1,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)?;
        let receiver = NatsReceiver {
            consumer,
            jetstream: self.jetstream.clone(),
            dead_letter_subject: self.naming.nats_dead_letter_subject(&options.group, options.channel),
        };
        Ok(Subscription::new(Box::new(receiver), options))
    }

    async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        self.ensure_streams().await?;
        let stream = self.jetstream.get_stream(self.naming.nats_dead_letter_stream()).await.map_err(unavailable)?;
        let reader = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: self.naming.nats_dead_letter_wildcard(Some(group)),
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(10),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let pending = reader.cached_info().num_pending;
        let wanted = limit.min(usize::try_from(pending).unwrap_or(usize::MAX));
        if wanted == 0 {
            return Ok(Vec::new());
        }
        let mut batch = reader
            .fetch()
            .max_messages(wanted)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(unavailable)?;
        let mut letters = Vec::with_capacity(wanted);
        while let Some(message) = batch.next().await {
            let message = message.map_err(unavailable)?;
            match serde_json::from_slice::<DeadLetter>(&message.payload) {
                Ok(letter) => letters.push(letter),
                Err(error) => tracing::warn!(%error, "skipping unreadable dead letter"),
            }
        }
        Ok(letters)
    }

    async fn ping(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(BusError::Unavailable(format!("NATS connection is {state}"))),
        }
    }
}

struct NatsReceiver {
    consumer: consumer::PullConsumer,
    jetstream: jetstream::Context,
    dead_letter_subject: String,
}

#[async_trait]
impl Receive for NatsReceiver {
    async fn receive(&mut self) -> Result<RawDelivery, BusError> {
        loop {
            let mut batch =
                self.consumer.fetch().max_messages(1).expires(PULL_EXPIRY).messages().await.map_err(unavailable)?;
            let Some(message) = batch.next().await else { continue };
            let message = message.map_err(unavailable)?;
            let deliveries = message.info().map(|info| info.delivered).unwrap_or(1);
            return Ok(RawDelivery {
                payload: message.payload.to_vec(),
                deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
                settle: Box::new(NatsSettle {
                    message,
                    jetstream: self.jetstream.clone(),
                    dead_letter_subject: self.dead_letter_subject.clone(),
                }),
            });
        }
    }
}

struct NatsSettle {
    message: jetstream::Message,
    jetstream: jetstream::Context,
    dead_letter_subject: String,
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(&self) -> Result<(), BusError> {
        // Double ack: returns once the server has recorded it, so an acknowledged message is
        // never redelivered because the ack was lost on the way.
        self.message.double_ack().await.map_err(unavailable)
    }

    async fn retry_after(&self, delay: Duration) -> Result<(), BusError> {
        self.message.ack_with(AckKind::Nak(Some(delay))).await.map_err(unavailable)
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BusError> {
        let payload = serde_json::to_vec(letter).map_err(|error| BusError::Protocol(error.to_string()))?;
        self.jetstream
            .publish(self.dead_letter_subject.clone(), payload.into())
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        self.message.ack_with(AckKind::Term).await.map_err(unavailable)
    }
}
