//! The conformance suite every [`EventBus`] backend must pass.
//!
//! Each case takes a fresh, empty bus (its own namespace) and checks one promise of the trait.
//! [`bus_conformance_suite!`](crate::bus_conformance_suite) expands to one `#[tokio::test]` per
//! case for a fixture, so a backend runs the whole suite with one line:
//!
//! ```ignore
//! qm_bus::bus_conformance_suite!(fixtures::nats);
//! ```
//!
//! A fixture is an `async fn() -> impl TestBus`; it must panic, naming what is missing, when its
//! server cannot be reached: the suite never skips.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qm_events::{Channel, Envelope, MessageType};
use serde_json::json;

use crate::subscription::RetryOutcome;
use crate::{Delivery, EventBus, Subscription, SubscriptionOptions};

/// A bus in a namespace of its own, and how to remove that namespace afterwards.
#[async_trait]
pub trait TestBus: Send + Sync {
    fn bus(&self) -> Arc<dyn EventBus>;
    async fn cleanup(&self);
}

/// Patience for things that should happen; generous because CI machines are shared.
const EXPECT_WITHIN: Duration = Duration::from_secs(10);

fn command(sequence: u32) -> Envelope {
    Envelope::new(MessageType::InstanceProvision, "conformance", None, json!({ "sequence": sequence }))
}

fn event(kind: MessageType, sequence: u32) -> Envelope {
    Envelope::new(kind, "conformance", None, json!({ "sequence": sequence }))
}

async fn publish_all(bus: &dyn EventBus, envelopes: &[Envelope]) {
    for envelope in envelopes {
        bus.publish(envelope).await.expect("publish");
    }
}

async fn subscribe(bus: &dyn EventBus, options: SubscriptionOptions) -> Subscription {
    bus.subscribe(options).await.expect("subscribe")
}

async fn next_within(subscription: &mut Subscription, patience: Duration) -> Delivery {
    tokio::time::timeout(patience, subscription.next())
        .await
        .unwrap_or_else(|_| panic!("no delivery within {patience:?}"))
        .expect("next delivery")
}

async fn nothing_within(subscription: &mut Subscription, patience: Duration) {
    if let Ok(delivery) = tokio::time::timeout(patience, subscription.next()).await {
        let delivery = delivery.expect("next delivery");
        panic!("unexpected delivery of {} ({} deliveries)", delivery.envelope.message_type, delivery.deliveries);
    }
}

pub async fn a_published_message_reaches_a_subscriber(bus: Arc<dyn EventBus>) {
    let mut commands = subscribe(&*bus, SubscriptionOptions::new(Channel::Commands, "orchestrator")).await;
    let sent_event = event(MessageType::InstanceStateChanged, 1);
    let sent_command = command(1);
    publish_all(&*bus, &[sent_event, sent_command.clone()]).await;

    let delivery = next_within(&mut commands, EXPECT_WITHIN).await;
    assert_eq!(delivery.envelope, sent_command, "the command channel carries commands only");
    assert_eq!(delivery.deliveries, 1);
    delivery.ack().await.expect("ack");
    nothing_within(&mut commands, Duration::from_millis(300)).await;
}

pub async fn a_restarted_group_resumes_where_it_stopped(bus: Arc<dyn EventBus>) {
    let sent: Vec<Envelope> = (1..=3).map(command).collect();
    publish_all(&*bus, &sent).await;

    let mut first_life = subscribe(&*bus, SubscriptionOptions::new(Channel::Commands, "orchestrator")).await;
    let delivery = next_within(&mut first_life, EXPECT_WITHIN).await;
    assert_eq!(delivery.envelope.id, sent[0].id);
    delivery.ack().await.expect("ack");
    drop(first_life);

    let later = command(4);
    bus.publish(&later).await.expect("publish");
    let mut second_life = subscribe(&*bus, SubscriptionOptions::new(Channel::Commands, "orchestrator")).await;
    for expected in [&sent[1], &sent[2], &later] {
        let delivery = next_within(&mut second_life, EXPECT_WITHIN).await;
        assert_eq!(delivery.envelope.id, expected.id, "resumes in order after the last ack");
        assert_eq!(delivery.deliveries, 1, "nothing acknowledged is delivered again");
        delivery.ack().await.expect("ack");
    }
    nothing_within(&mut second_life, Duration::from_millis(300)).await;
}

pub async fn an_unacked_message_is_redelivered_after_the_visibility_timeout(bus: Arc<dyn EventBus>) {
    let options =
        SubscriptionOptions::new(Channel::Commands, "orchestrator").visibility_timeout(Duration::from_secs(2));
    let mut crashing_member = subscribe(&*bus, options.clone()).await;
    let mut other_member = subscribe(&*bus, options).await;
    let sent = command(1);
    bus.publish(&sent).await.expect("publish");

    let first = next_within(&mut crashing_member, EXPECT_WITHIN).await;
    assert_eq!(first.envelope.id, sent.id);
    drop(first);
    drop(crashing_member);
    nothing_within(&mut other_member, Duration::from_millis(500)).await;

    let again = next_within(&mut other_member, EXPECT_WITHIN).await;
    assert_eq!(again.envelope.id, sent.id, "the same message comes back");
    assert_eq!(again.deliveries, 2);
    again.ack().await.expect("ack");
    nothing_within(&mut other_member, Duration::from_millis(300)).await;
}

pub async fn a_retry_comes_back_after_its_delay(bus: Arc<dyn EventBus>) {
    let options =
        SubscriptionOptions::new(Channel::Commands, "orchestrator").visibility_timeout(Duration::from_secs(60));
    let mut member = subscribe(&*bus, options).await;
    bus.publish(&command(1)).await.expect("publish");

    let first = next_within(&mut member, EXPECT_WITHIN).await;
    let outcome = first.retry(Duration::from_millis(200), "provider throttled").await.expect("retry");
    assert_eq!(outcome, RetryOutcome::Retrying);
    let again = next_within(&mut member, EXPECT_WITHIN).await;
    assert_eq!(again.deliveries, 2, "redelivered long before the 60 s visibility timeout");
    again.ack().await.expect("ack");
}

pub async fn a_message_that_keeps_failing_is_dead_lettered_and_the_rest_flow(bus: Arc<dyn EventBus>) {
    let options = SubscriptionOptions::new(Channel::Commands, "orchestrator")
        .visibility_timeout(Duration::from_secs(5))
        .max_deliveries(3);
    let mut member = subscribe(&*bus, options).await;
    let poison = command(666);
    let healthy = command(1);
    publish_all(&*bus, &[poison.clone(), healthy.clone()]).await;

    let mut poison_deliveries = 0;
    let mut healthy_seen = false;
    while !(healthy_seen && poison_deliveries == 3) {
        let delivery = next_within(&mut member, EXPECT_WITHIN).await;
        if delivery.envelope.id == poison.id {
            poison_deliveries += 1;
            let outcome = delivery.retry(Duration::from_millis(50), "boom").await.expect("retry");
            let expected = if poison_deliveries == 3 { RetryOutcome::DeadLettered } else { RetryOutcome::Retrying };
            assert_eq!(outcome, expected, "after delivery {poison_deliveries}");
        } else {
            assert_eq!(delivery.envelope.id, healthy.id);
            healthy_seen = true;
            delivery.ack().await.expect("ack");
        }
    }
    nothing_within(&mut member, Duration::from_millis(500)).await;

    let letters = bus.dead_letters("orchestrator", 10).await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].envelope().map(|envelope| envelope.id), Some(poison.id));
    assert_eq!(letters[0].deliveries, 3);
    assert!(letters[0].reason.contains("boom"), "{}", letters[0].reason);
}

pub async fn a_message_that_crashes_its_consumers_is_dead_lettered(bus: Arc<dyn EventBus>) {
    let options = SubscriptionOptions::new(Channel::Commands, "orchestrator")
        .visibility_timeout(Duration::from_millis(500))
        .max_deliveries(2);
    let crasher = command(13);
    bus.publish(&crasher).await.expect("publish");

    for attempt in 1..=2 {
        // Each "process" takes the message and dies without settling it.
        let mut member = subscribe(&*bus, options.clone()).await;
        let delivery = next_within(&mut member, EXPECT_WITHIN).await;
        assert_eq!((delivery.envelope.id, delivery.deliveries), (crasher.id, attempt));
    }
    let healthy = command(1);
    bus.publish(&healthy).await.expect("publish");
    let mut survivor = subscribe(&*bus, options).await;
    let delivery = next_within(&mut survivor, EXPECT_WITHIN).await;
    assert_eq!(delivery.envelope.id, healthy.id, "the crasher no longer reaches a handler");
    delivery.ack().await.expect("ack");
    nothing_within(&mut survivor, Duration::from_secs(2)).await;

    let letters = bus.dead_letters("orchestrator", 10).await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].envelope().map(|envelope| envelope.id), Some(crasher.id));
    assert!(letters[0].reason.contains("without being acknowledged"), "{}", letters[0].reason);
}

pub async fn members_of_one_group_share_the_work_without_duplicates(bus: Arc<dyn EventBus>) {
    let sent: Vec<Envelope> = (1..=40).map(command).collect();
    publish_all(&*bus, &sent).await;
    let options = SubscriptionOptions::new(Channel::Commands, "orchestrator");
    let mut members = Vec::new();
    for _ in 0..2 {
        let mut member = subscribe(&*bus, options.clone()).await;
        members.push(tokio::spawn(async move {
            let mut received = Vec::new();
            while let Ok(delivery) = tokio::time::timeout(Duration::from_secs(2), member.next()).await {
                let delivery = delivery.expect("next delivery");
                received.push(delivery.envelope.id);
                delivery.ack().await.expect("ack");
            }
            received
        }));
    }
    let mut received = Vec::new();
    for member in members {
        received.extend(member.await.expect("member task"));
    }
    let unique: HashSet<_> = received.iter().collect();
    assert_eq!(received.len(), sent.len(), "every message handled exactly once");
    assert_eq!(unique.len(), sent.len(), "no duplicates");
    assert!(sent.iter().all(|envelope| unique.contains(&envelope.id)));
}

pub async fn every_group_sees_every_event(bus: Arc<dyn EventBus>) {
    let sent: Vec<Envelope> = (1..=5).map(|sequence| event(MessageType::InstanceStateChanged, sequence)).collect();
    publish_all(&*bus, &sent).await;
    for group in ["finops", "api-sse"] {
        let mut member = subscribe(&*bus, SubscriptionOptions::new(Channel::Events, group)).await;
        for expected in &sent {
            let delivery = next_within(&mut member, EXPECT_WITHIN).await;
            assert_eq!(delivery.envelope.id, expected.id, "group {group}");
            delivery.ack().await.expect("ack");
        }
    }
}

pub async fn a_type_filter_skips_other_types(bus: Arc<dyn EventBus>) {
    let options = SubscriptionOptions::new(Channel::Events, "finops").types(["usage.tokens"]);
    let mut member = subscribe(&*bus, options).await;
    let wanted = event(MessageType::UsageTokens, 2);
    publish_all(&*bus, &[event(MessageType::WorkerHeartbeat, 1), wanted.clone()]).await;
    let delivery = next_within(&mut member, EXPECT_WITHIN).await;
    assert_eq!(delivery.envelope.id, wanted.id);
    delivery.ack().await.expect("ack");
}

pub async fn an_invalid_group_name_is_refused(bus: Arc<dyn EventBus>) {
    let refused = bus.subscribe(SubscriptionOptions::new(Channel::Events, "a.b.>")).await;
    assert!(matches!(refused, Err(crate::BusError::InvalidSubscription(_))));
}

/// Expands to one `#[tokio::test]` per conformance case for `$fixture`, an
/// `async fn() -> impl TestBus`. The fixture's namespace is cleaned up even when a case fails.
#[macro_export]
macro_rules! bus_conformance_suite {
    ($fixture:path) => {
        $crate::bus_conformance_suite!(@cases $fixture,
            a_published_message_reaches_a_subscriber,
            a_restarted_group_resumes_where_it_stopped,
            an_unacked_message_is_redelivered_after_the_visibility_timeout,
            a_retry_comes_back_after_its_delay,
            a_message_that_keeps_failing_is_dead_lettered_and_the_rest_flow,
            a_message_that_crashes_its_consumers_is_dead_lettered,
            members_of_one_group_share_the_work_without_duplicates,
            every_group_sees_every_event,
            a_type_filter_skips_other_types,
            an_invalid_group_name_is_refused,
        );
    };
    (@cases $fixture:path, $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                use ::futures::FutureExt as _;
                use $crate::conformance::TestBus as _;
                let fixture = $fixture().await;
                let outcome = ::std::panic::AssertUnwindSafe($crate::conformance::$case(fixture.bus()))
                    .catch_unwind()
                    .await;
                fixture.cleanup().await;
                if let Err(panic) = outcome {
                    ::std::panic::resume_unwind(panic);
                }
            }
        )+
    };
}
