//! The conformance suite every [`Store`] backend must pass.
//!
//! [`store_conformance_suite!`](crate::store_conformance_suite) expands to one `#[tokio::test]`
//! per case for a fixture (`async fn() -> impl TestStore`) that gives a fresh, empty, migrated
//! database and removes it afterwards, even when the case fails. A fixture whose server is
//! unreachable must panic naming it: the suite never skips.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qm_domain::{InstanceId, OrganizationId, Role, UserId};
use qm_events::{Envelope, MessageType};
use serde_json::json;

use crate::{ActionStatus, NewActionLog, NewOrganization, NewUser, Organization, Store, StoreError};

#[async_trait]
pub trait TestStore: Send + Sync {
    fn store(&self) -> Arc<dyn Store>;
    async fn cleanup(&self);
}

async fn create_organization(store: &dyn Store, slug: &str) -> Organization {
    let mut tx = store.begin().await.expect("begin");
    let organization = tx
        .insert_organization(&NewOrganization {
            id: OrganizationId::new(),
            name: format!("Org {slug}"),
            slug: slug.into(),
        })
        .await
        .expect("insert organization");
    tx.commit().await.expect("commit");
    organization
}

fn new_user(organization: OrganizationId, username: &str) -> NewUser {
    NewUser {
        id: UserId::new(),
        organization_id: organization,
        username: username.into(),
        email: format!("{username}@Example.org"),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        role: Role::Operator,
        password_hash: "$argon2id$placeholder".into(),
        is_platform_admin: false,
    }
}

fn command(sequence: u32) -> Envelope {
    Envelope::new(MessageType::InstanceProvision, "conformance", None, json!({ "sequence": sequence }))
}

pub async fn an_organization_round_trips(store: Arc<dyn Store>) {
    let created = create_organization(&*store, "acme").await;
    assert_eq!(store.organization(created.id).await.expect("read"), Some(created.clone()));
    assert_eq!(store.organization_by_slug("acme").await.expect("read"), Some(created));
    assert_eq!(store.organization_by_slug("nobody").await.expect("read"), None);
}

pub async fn a_duplicate_slug_is_a_conflict_naming_the_field(store: Arc<dyn Store>) {
    create_organization(&*store, "acme").await;
    let mut tx = store.begin().await.expect("begin");
    let duplicate = tx
        .insert_organization(&NewOrganization { id: OrganizationId::new(), name: "Other".into(), slug: "acme".into() })
        .await;
    assert!(matches!(&duplicate, Err(StoreError::Conflict { field }) if field == "slug"), "{duplicate:?}");
}

pub async fn a_user_is_found_by_username_or_email(store: Arc<dyn Store>) {
    let organization = create_organization(&*store, "acme").await;
    let mut tx = store.begin().await.expect("begin");
    let created = tx.insert_user(&new_user(organization.id, "ada")).await.expect("insert user");
    tx.commit().await.expect("commit");

    assert_eq!(created.email, "ada@example.org", "emails are stored lowercased");
    assert_eq!(store.user(created.id).await.expect("read"), Some(created.clone()));
    assert_eq!(store.user_by_login("ada").await.expect("read"), Some(created.clone()));
    assert_eq!(store.user_by_login("ADA@example.ORG").await.expect("read"), Some(created));
    assert_eq!(store.user_by_login("grace").await.expect("read"), None);
}

pub async fn duplicate_usernames_and_emails_are_conflicts(store: Arc<dyn Store>) {
    let organization = create_organization(&*store, "acme").await;
    let mut tx = store.begin().await.expect("begin");
    tx.insert_user(&new_user(organization.id, "ada")).await.expect("insert user");
    tx.commit().await.expect("commit");

    let mut tx = store.begin().await.expect("begin");
    let same_name =
        tx.insert_user(&NewUser { email: "other@example.org".into(), ..new_user(organization.id, "ada") }).await;
    assert!(matches!(&same_name, Err(StoreError::Conflict { field }) if field == "username"), "{same_name:?}");
    drop(tx);

    let mut tx = store.begin().await.expect("begin");
    let same_email =
        tx.insert_user(&NewUser { email: "ADA@example.org".into(), ..new_user(organization.id, "ada2") }).await;
    assert!(matches!(&same_email, Err(StoreError::Conflict { field }) if field == "email"), "{same_email:?}");
}

pub async fn a_user_of_a_missing_organization_is_refused(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.expect("begin");
    let orphan = tx.insert_user(&new_user(OrganizationId::new(), "ghost")).await;
    assert!(matches!(orphan, Err(StoreError::MissingReference)), "{orphan:?}");
}

pub async fn a_dropped_transaction_leaves_nothing_behind(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.expect("begin");
    let organization = tx
        .insert_organization(&NewOrganization { id: OrganizationId::new(), name: "Gone".into(), slug: "gone".into() })
        .await
        .expect("insert");
    tx.enqueue(&command(1)).await.expect("enqueue");
    drop(tx);

    assert_eq!(store.organization(organization.id).await.expect("read"), None);
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 0, "the message went with the state change");
}

pub async fn outbox_messages_commit_with_their_state_change_and_are_claimed_in_order(store: Arc<dyn Store>) {
    let sent: Vec<Envelope> = (1..=3).map(command).collect();
    let mut tx = store.begin().await.expect("begin");
    tx.insert_organization(&NewOrganization { id: OrganizationId::new(), name: "Acme".into(), slug: "acme".into() })
        .await
        .expect("insert");
    for envelope in &sent {
        tx.enqueue(envelope).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 3);

    let claimed = store.claim_outbox(10, Duration::from_secs(60)).await.expect("claim");
    let claimed_envelopes: Vec<Envelope> = claimed.iter().map(|message| message.envelope.clone()).collect();
    assert_eq!(claimed_envelopes, sent, "oldest first, byte-for-byte the envelopes that were enqueued");
    assert!(claimed.iter().all(|message| message.attempts == 1));
    assert!(
        store.claim_outbox(10, Duration::from_secs(60)).await.expect("claim").is_empty(),
        "claimed messages are leased"
    );

    store.mark_outbox_published(&[sent[0].id]).await.expect("mark");
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 2);
}

pub async fn an_expired_claim_is_claimed_again(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.expect("begin");
    tx.enqueue(&command(1)).await.expect("enqueue");
    tx.commit().await.expect("commit");

    let first = store.claim_outbox(10, Duration::from_millis(100)).await.expect("claim");
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = store.claim_outbox(10, Duration::from_secs(60)).await.expect("claim");
    assert_eq!(second.len(), 1, "a relay that died mid-batch loses nothing");
    assert_eq!(second[0].attempts, 2);
}

pub async fn a_released_message_is_claimable_at_once(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.expect("begin");
    let envelope = command(1);
    tx.enqueue(&envelope).await.expect("enqueue");
    tx.commit().await.expect("commit");

    store.claim_outbox(10, Duration::from_secs(60)).await.expect("claim");
    store.release_outbox(envelope.id, "bus unavailable").await.expect("release");
    let again = store.claim_outbox(10, Duration::from_secs(60)).await.expect("claim");
    assert_eq!(again.iter().map(|message| message.id).collect::<Vec<_>>(), vec![envelope.id]);
}

pub async fn published_messages_are_purged_after_their_retention(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.expect("begin");
    let (published, waiting) = (command(1), command(2));
    tx.enqueue(&published).await.expect("enqueue");
    tx.enqueue(&waiting).await.expect("enqueue");
    tx.commit().await.expect("commit");
    store.mark_outbox_published(&[published.id]).await.expect("mark");

    assert_eq!(store.purge_published_outbox(Duration::from_secs(3600)).await.expect("purge"), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge_published_outbox(Duration::from_millis(1)).await.expect("purge"), 1);
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 1, "unpublished messages are never purged");
}

pub async fn an_event_is_processed_once_per_consumer(store: Arc<dyn Store>) {
    let event = command(1).id;
    let mut tx = store.begin().await.expect("begin");
    assert!(tx.mark_processed("finops", event).await.expect("mark"));
    assert!(!tx.mark_processed("finops", event).await.expect("mark"), "the same consumer again");
    assert!(tx.mark_processed("orchestrator", event).await.expect("mark"), "another consumer");
    tx.commit().await.expect("commit");

    let mut tx = store.begin().await.expect("begin");
    assert!(!tx.mark_processed("finops", event).await.expect("mark"), "remembered after commit");
}

pub async fn a_rolled_back_processing_is_not_remembered(store: Arc<dyn Store>) {
    let event = command(1).id;
    let mut tx = store.begin().await.expect("begin");
    assert!(tx.mark_processed("finops", event).await.expect("mark"));
    drop(tx);
    let mut tx = store.begin().await.expect("begin");
    assert!(tx.mark_processed("finops", event).await.expect("mark"), "a failed handler may run again");
}

pub async fn action_logs_are_listed_newest_first_per_organization(store: Arc<dyn Store>) {
    let acme = create_organization(&*store, "acme").await;
    let other = create_organization(&*store, "other").await;
    let instance = InstanceId::new();
    let mut tx = store.begin().await.expect("begin");
    for (organization, action) in [(acme.id, "first"), (other.id, "elsewhere"), (acme.id, "second")] {
        let mut entry = NewActionLog::new("orchestrator", action, ActionStatus::Succeeded);
        entry.organization_id = Some(organization);
        entry.instance_id = Some(instance);
        entry.duration_ms = Some(42);
        entry.metadata = json!({ "zone": "fr-par-2", "attempt": 1 });
        tx.insert_action_log(&entry).await.expect("insert");
    }
    let mut failed = NewActionLog::new("api", "login", ActionStatus::Failed);
    failed.error = Some("wrong password".into());
    tx.insert_action_log(&failed).await.expect("insert");
    tx.commit().await.expect("commit");

    let logs = store.action_logs(Some(acme.id), 10).await.expect("list");
    let actions: Vec<&str> = logs.iter().map(|log| log.action_type.as_str()).collect();
    assert_eq!(actions, ["second", "first"]);
    assert_eq!(logs[0].metadata, json!({ "zone": "fr-par-2", "attempt": 1 }));
    assert_eq!((logs[0].instance_id, logs[0].duration_ms), (Some(instance), Some(42)));
    assert_eq!(store.action_logs(None, 10).await.expect("list").len(), 4);
    assert_eq!(store.action_logs(None, 1).await.expect("list")[0].error.as_deref(), Some("wrong password"));
}

pub async fn the_store_answers_pings(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
}

/// Expands to one `#[tokio::test]` per conformance case for `$fixture`.
pub async fn a_lease_has_one_holder_until_it_expires(store: Arc<dyn Store>) {
    let short = Duration::from_millis(300);
    assert!(store.acquire_lease("reconcile", "replica-a", short).await.expect("lease"), "a free lease is taken");
    assert!(!store.acquire_lease("reconcile", "replica-b", short).await.expect("lease"), "held by another");
    assert!(store.acquire_lease("reconcile", "replica-a", short).await.expect("lease"), "the holder renews");
    assert!(store.acquire_lease("sweep", "replica-b", short).await.expect("lease"), "leases are independent");
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    assert!(store.acquire_lease("reconcile", "replica-b", short).await.expect("lease"), "an expired lease passes on");
    assert!(!store.acquire_lease("reconcile", "replica-a", short).await.expect("lease"));
}

pub async fn instances_are_counted_by_provider_and_state(store: Arc<dyn Store>) {
    let organization = create_organization(&*store, "counted").await.id;
    let mut tx = store.begin().await.expect("begin");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = InstanceId::new();
        let instance = crate::NewInstance {
            id,
            organization_id: organization,
            deployment_id: None,
            placement: crate::testing::offer("sim", "sim-eu-1", "sim.l4"),
            model: "m".into(),
            revision: None,
        };
        tx.insert_instance(&instance).await.expect("instance");
        ids.push(id);
    }
    let moved = crate::Transition {
        instance: ids[0],
        from: qm_domain::InstanceState::Requested,
        to: qm_domain::InstanceState::Provisioning,
        reason: None,
        progress_percent: None,
    };
    tx.transition_instance(&moved).await.expect("transition").expect("moved");
    tx.commit().await.expect("commit");
    let counts = store.count_instances_by_state().await.expect("counts");
    assert_eq!(
        counts,
        vec![
            ("sim".to_owned(), qm_domain::InstanceState::Provisioning, 1),
            ("sim".to_owned(), qm_domain::InstanceState::Requested, 2)
        ]
    );
}

/// The instance list's page, written straight from the rows, is what serde writes of the
/// instances read the usual way, whatever text the fields hold.
pub async fn instances_written_as_json_are_what_serde_writes(store: Arc<dyn Store>) {
    let organization = create_organization(&*store, "written").await.id;
    let texts = ["sim", "quote \" backslash \\", "control \u{1} \n \t", "ünïcødé 🚀 \u{2028}"];
    let deployment = crate::Deployment {
        id: qm_domain::DeploymentId::new(),
        organization_id: organization,
        created_by: None,
        model: "m".into(),
        count: 2,
        request: json!({}),
        placements: Vec::new(),
        created_at: crate::now(),
    };
    let mut tx = store.begin().await.expect("begin");
    tx.insert_deployment(&deployment).await.expect("deployment");
    for (index, text) in texts.iter().enumerate() {
        let id = InstanceId::new();
        let instance = crate::NewInstance {
            id,
            organization_id: organization,
            deployment_id: (index % 2 == 0).then_some(deployment.id),
            placement: crate::testing::offer(text, &format!("{text}-zone"), &format!("{text}.type")),
            model: (*text).into(),
            revision: (index % 2 == 1).then_some(7),
        };
        tx.insert_instance(&instance).await.expect("instance");
        if index % 2 == 1 {
            let annotation = crate::InstanceAnnotation {
                provider_instance_id: Some(format!("i-{text}")),
                address: Some(format!("{text}:8000")),
                failure_reason: Some((*text).to_owned()),
                deleted_by_provider: Some(true),
                ..crate::InstanceAnnotation::default()
            };
            tx.annotate_instance(id, &annotation).await.expect("annotate").expect("annotated");
        }
    }
    tx.commit().await.expect("commit");
    let filter =
        |limit| crate::InstanceFilter { organization: Some(organization), limit, ..crate::InstanceFilter::default() };
    // All found, more found than shown, none shown, fewer found than the limit.
    for (limit, shown) in [(4, 4), (4, 3), (3, 2), (2, 0), (10, 10)] {
        let instances = store.instances(&filter(limit)).await.expect("instances");
        let mut written = b"[".to_vec();
        let outcome = store.write_instances_json(&filter(limit), shown, &mut written).await.expect("written");
        written.push(b']');
        let expected = &instances[..shown.min(instances.len())];
        assert_eq!(
            String::from_utf8(written).expect("UTF-8"),
            serde_json::to_string(expected).expect("serialize"),
            "limit {limit}, {shown} shown"
        );
        let next = expected.last().map(|instance| instance.id).filter(|_| instances.len() > shown);
        assert_eq!(outcome, next, "limit {limit}, {shown} shown: the next page starts after the last shown");
    }
}

pub async fn a_pool_and_its_replicas_round_trip(store: Arc<dyn Store>) {
    use qm_domain::InstanceState::{Provisioning, ProvisioningFailed, Requested};
    let organization = create_organization(&*store, "pooled").await.id;
    let id = qm_domain::DeploymentId::new();
    let placement = crate::testing::offer("sim", "sim-eu-1", "sim.l4");
    let deployment = crate::Deployment {
        id,
        organization_id: organization,
        created_by: None,
        model: "m".into(),
        count: 1,
        request: json!({}),
        placements: vec![placement.clone()],
        created_at: crate::now(),
    };
    let policy = qm_domain::scaling::ScalingPolicy::default();
    let engine = qm_domain::engine::EngineSettings { args: vec!["--max-model-len".into(), "8192".into()] };
    let pool =
        crate::NewPool { deployment, name: "p".into(), min_replicas: 0, max_replicas: 3, desired: 1, policy, engine };
    let mut tx = store.begin().await.expect("begin");
    tx.insert_pool(&pool).await.expect("pool");
    // Three replicas: one live, one failed, one of no pool.
    let mut ids = Vec::new();
    for deployment_id in [Some(id), Some(id), None] {
        let instance = crate::NewInstance {
            id: InstanceId::new(),
            organization_id: organization,
            deployment_id,
            placement: placement.clone(),
            model: "m".into(),
            revision: deployment_id.map(|_| 1),
        };
        ids.push(tx.insert_instance(&instance).await.expect("instance").id);
    }
    for (from, to) in [(Requested, Provisioning), (Provisioning, ProvisioningFailed)] {
        let moved = crate::Transition { instance: ids[1], from, to, reason: None, progress_percent: None };
        tx.transition_instance(&moved).await.expect("transition").expect("moved");
    }
    tx.commit().await.expect("commit");

    let found = store.pool(id).await.expect("read").expect("the pool");
    assert_eq!((found.min_replicas, found.max_replicas, found.desired, found.status.clone()), (0, 3, 1, json!({})));
    assert_eq!((found.revision, found.engine.args.len()), (1, 2));
    assert_eq!(store.pool_for_model(organization, "m").await.expect("read").map(|pool| pool.id), Some(id));
    let recent = store.deployment_instances(id, crate::now() - chrono::Duration::minutes(1), 10).await.expect("read");
    assert_eq!(recent.iter().map(|instance| instance.id).collect::<Vec<_>>(), vec![ids[1], ids[0]], "newest first");
    assert_eq!(recent[0].revision, Some(1));
    let live = store.deployment_instances(id, crate::now() + chrono::Duration::minutes(1), 10).await.expect("read");
    assert_eq!(live.iter().map(|instance| instance.id).collect::<Vec<_>>(), vec![ids[0]], "finished ones left out");

    let mut tx = store.begin().await.expect("begin");
    let policy = qm_domain::scaling::ScalingPolicy::default();
    let engine = qm_domain::engine::EngineSettings::default();
    // The same placements, then moved (with a new model): bumped once, placements replaced.
    let moved = vec![crate::testing::offer("sim", "sim-us-1", "sim.h100"), found.placements[0].clone()];
    for (model, placements, new_revision) in [("m", None, false), ("m2", Some(moved.as_slice()), true)] {
        let change = crate::PoolChange {
            min_replicas: 1,
            max_replicas: 2,
            policy: &policy,
            model,
            engine: &engine,
            placements,
            new_revision,
        };
        assert!(tx.update_pool(id, &change).await.expect("update"));
    }
    tx.set_pool_status(id, 2, &json!({ "ready": 1 })).await.expect("status");
    tx.note_pool_requests(&[id], crate::now()).await.expect("requests");
    // Two routers' windows: one saw slow answers, the other (writing last) fast ones.
    let (mut slow, mut fast) = ([0; qm_domain::ttft::BUCKETS], [0; qm_domain::ttft::BUCKETS]);
    slow[qm_domain::ttft::bucket_of(std::time::Duration::from_secs(3))] = 50;
    fast[qm_domain::ttft::bucket_of(std::time::Duration::from_millis(10))] = 50;
    tx.note_pool_ttft("router-a", &[(id, slow)], crate::now()).await.expect("ttft");
    tx.note_pool_ttft("router-b", &[(id, fast)], crate::now()).await.expect("ttft");
    tx.note_pool_ttft("router-b", &[(id, fast)], crate::now()).await.expect("ttft, rewritten");
    tx.commit().await.expect("commit");
    let found = store.pool(id).await.expect("read").expect("the pool");
    assert_eq!(found.ttft_p90_ms, qm_domain::ttft::p90_ms(&fast), "the pool shows the last window written");
    assert!(found.ttft_at.is_some());
    let merged = store.pool_ttft_counts(crate::now() - chrono::Duration::minutes(1)).await.expect("counts");
    let p90 = qm_domain::ttft::p90_ms(&merged[&id]).expect("merged");
    assert!(p90 >= 3_000.0, "the merged p90 counts both routers' answers: {p90}");
    assert_eq!(merged[&id].iter().sum::<u32>(), 100, "each router's window once");
    assert!(store.pool_ttft_counts(crate::now() + chrono::Duration::minutes(1)).await.expect("counts").is_empty());
    assert_eq!((found.min_replicas, found.max_replicas, found.desired), (1, 2, 2));
    assert_eq!((found.model.as_str(), found.revision, found.engine.is_default()), ("m2", 2, true), "bumped once");
    assert_eq!(found.placements, moved, "the placements replaced");
    assert!(found.requested_at.is_some());

    let mut tx = store.begin().await.expect("begin");
    assert!(tx.delete_pool(id).await.expect("delete"));
    assert!(!tx.delete_pool(id).await.expect("delete again"), "once");
    tx.commit().await.expect("commit");
    assert!(store.pool_for_model(organization, "m2").await.expect("read").is_none(), "deleted");
    assert!(store.pools(Some(organization), None, 10).await.expect("read").is_empty());
    let controlled = store.pools_to_control(crate::now() - chrono::Duration::hours(1)).await.expect("read");
    assert!(controlled.iter().any(|pool| pool.id == id && pool.desired == 0), "its replicas still to stop");
}

fn billing_start(
    organization: OrganizationId,
    instance: InstanceId,
    hourly: i64,
    started_s: i64,
) -> crate::BillingStart {
    crate::BillingStart {
        instance_id: instance,
        organization_id: organization,
        provider: "sim".into(),
        region: "sim-eu".into(),
        zone: "sim-eu-1".into(),
        instance_type: "sim.l4".into(),
        model: "m".into(),
        currency: "USD".into(),
        hourly_price_micros: hourly,
        reporting_currency: "EUR".into(),
        reporting_hourly_micros: hourly,
        started_s,
    }
}

pub async fn cost_intervals_keep_the_first_start_and_the_earliest_stop_in_any_order(store: Arc<dyn Store>) {
    let organization = create_organization(&*store, "costs").await.id;
    let (early, late) = (InstanceId::new(), InstanceId::new());
    let mut tx = store.begin().await.expect("begin");
    // `late`: the stop arrives before the start, then both again with other values.
    tx.close_interval(late, Some(organization), 7_200).await.expect("stop first");
    tx.open_interval(&billing_start(organization, late, 3_600_000, 0)).await.expect("start");
    tx.open_interval(&billing_start(organization, late, 9_999_999, 100)).await.expect("start again");
    tx.close_interval(late, Some(organization), 9_000).await.expect("a later stop");
    // `early`: 1 EUR/h from 1800 s, still running.
    tx.open_interval(&billing_start(organization, early, 1_000_000, 1_800)).await.expect("start");
    tx.commit().await.expect("commit");

    let interval = store.cost_interval(late).await.expect("read").expect("interval");
    assert_eq!(
        (interval.started_s, interval.stopped_s, interval.reporting_hourly_micros),
        (Some(0), Some(7_200), Some(3_600_000))
    );
    let filter = crate::CostFilter::default();
    // [0, 3600) with now = 5400: late costs 3.6 EUR, early 0.5 EUR.
    let range = crate::TimeRange { from_s: 0, to_s: 3_600, now_s: 5_400 };
    let groups = store.cost_groups(range, &filter).await.expect("groups");
    let total: i64 = groups.iter().map(|group| group.quotient + group.remainder / 3_600).sum();
    assert_eq!(total, 4_100_000);
    let top = store.instance_costs(range, &filter, 1).await.expect("instances");
    assert_eq!(top, vec![crate::InstanceCost { instance_id: late, cost_micros: 3_600_000 }]);
    let changes = store.cost_changes(range, &filter).await.expect("changes");
    assert_eq!(changes, vec![(0, 3_600_000), (1_800, 1_000_000), (3_600, -4_600_000)]);
    // At 8000 s only `early` runs; a range past now is cut at now.
    let running = store.running_rates(8_000, &filter).await.expect("rates");
    assert_eq!(running.iter().map(|rate| rate.hourly_micros).sum::<i64>(), 1_000_000);
    let after = crate::TimeRange { from_s: 5_400, to_s: 100_000, now_s: 5_400 };
    assert!(store.cost_groups(after, &filter).await.expect("groups").is_empty());
    let other = crate::CostFilter { organization: Some(OrganizationId::new()), ..crate::CostFilter::default() };
    assert!(store.cost_groups(range, &other).await.expect("groups").is_empty());
}

pub async fn usage_budgets_alerts_and_rates_round_trip(store: Arc<dyn Store>) {
    let organization = create_organization(&*store, "budgets").await.id;
    let usage = crate::UsageRecord {
        event_id: uuid::Uuid::now_v7(),
        at_s: 1_000,
        organization_id: organization,
        instance_id: Some(InstanceId::new()),
        api_key_id: None,
        model: "m".into(),
        provider: Some("sim".into()),
        region: None,
        zone: Some("sim-eu-1".into()),
        instance_type: Some("sim.l4".into()),
        prompt_tokens: 10,
        completion_tokens: 5,
    };
    let mut tx = store.begin().await.expect("begin");
    assert!(tx.record_usage(&usage).await.expect("usage"));
    assert!(!tx.record_usage(&usage).await.expect("a replay"), "an event is counted once");
    let budget = tx.put_budget(organization, 5_000_000, &[50, 100], true).await.expect("budget");
    let alert = crate::BudgetAlert {
        organization_id: organization,
        period: "2026-11".into(),
        threshold: 50,
        spend_micros: 2_600_000,
        crossed_at: crate::now(),
    };
    assert!(tx.record_budget_alert(&alert).await.expect("alert"));
    assert!(!tx.record_budget_alert(&alert).await.expect("again"), "once per threshold and period");
    tx.put_exchange_rate("USD", 920_000).await.expect("rate");
    tx.put_exchange_rate("USD", 930_000).await.expect("rate edited");
    tx.commit().await.expect("commit");

    let groups = store.usage_groups(0, 2_000, &crate::CostFilter::default()).await.expect("usage");
    assert_eq!(
        groups.iter().map(|group| (group.prompt_tokens, group.completion_tokens)).collect::<Vec<_>>(),
        [(10, 5)]
    );
    assert!(store.usage_groups(1_001, 2_000, &crate::CostFilter::default()).await.expect("usage").is_empty());
    assert_eq!(store.budget(organization).await.expect("budget"), Some(budget.clone()));
    assert_eq!(budget.thresholds, [50, 100]);
    assert_eq!(store.budgets().await.expect("budgets").len(), 1);
    assert_eq!(store.budget_alerts(organization, "2026-11").await.expect("alerts"), vec![alert]);
    assert!(store.budget_alerts(organization, "2026-12").await.expect("alerts").is_empty());
    assert_eq!(
        store.exchange_rates().await.expect("rates").iter().map(|rate| rate.rate_micros).collect::<Vec<_>>(),
        [930_000]
    );
    let mut tx = store.begin().await.expect("begin");
    assert!(tx.delete_budget(organization).await.expect("delete"));
    tx.commit().await.expect("commit");
    assert_eq!(store.budget(organization).await.expect("budget"), None);
}

#[macro_export]
macro_rules! store_conformance_suite {
    ($fixture:path) => {
        $crate::store_conformance_suite!(@cases $fixture,
            an_organization_round_trips,
            a_duplicate_slug_is_a_conflict_naming_the_field,
            a_user_is_found_by_username_or_email,
            duplicate_usernames_and_emails_are_conflicts,
            a_user_of_a_missing_organization_is_refused,
            a_dropped_transaction_leaves_nothing_behind,
            outbox_messages_commit_with_their_state_change_and_are_claimed_in_order,
            an_expired_claim_is_claimed_again,
            a_released_message_is_claimable_at_once,
            published_messages_are_purged_after_their_retention,
            an_event_is_processed_once_per_consumer,
            a_rolled_back_processing_is_not_remembered,
            action_logs_are_listed_newest_first_per_organization,
            the_store_answers_pings,
            a_lease_has_one_holder_until_it_expires,
            cost_intervals_keep_the_first_start_and_the_earliest_stop_in_any_order,
            usage_budgets_alerts_and_rates_round_trip,
            instances_are_counted_by_provider_and_state,
            a_pool_and_its_replicas_round_trip,
            instances_written_as_json_are_what_serde_writes,
        );
    };
    (@cases $fixture:path, $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                use ::futures::FutureExt as _;
                use $crate::conformance::TestStore as _;
                let fixture = $fixture().await;
                let outcome = ::std::panic::AssertUnwindSafe($crate::conformance::$case(fixture.store()))
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
