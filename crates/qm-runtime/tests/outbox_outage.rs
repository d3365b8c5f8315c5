//! The outbox under a bus outage, end to end with real servers: a private `nats-server` (so that
//! stopping it disturbs no other test) and a fresh PostgreSQL database.
//!
//! The bus is stopped, state changes are committed with their messages, the relay fails to
//! publish, the bus comes back, and the consumer's effects show every message exactly once, even
//! when a message is published twice.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qm_bus::SubscriptionOptions;
use qm_events::{Channel, Envelope, MessageType};
use qm_runtime::Shutdown;
use qm_runtime::consumer::{Consumer, Handler, HandlerError};
use qm_runtime::relay::Relay;
use qm_store::testing::TestDatabase;
use qm_store::{ActionStatus, NewActionLog, StoreTx};
use serde_json::json;

/// A nats-server with JetStream on a free port, storing in a directory that outlives restarts.
struct PrivateNats {
    port: u16,
    store_dir: PathBuf,
    process: Option<Child>,
}

fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("QM_NATS_SERVER") {
        return PathBuf::from(path);
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"] {
        if std::path::Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "nats-server is not installed: `apt-get install nats-server` (or set QM_NATS_SERVER); `make test` installs it"
    );
}

impl PrivateNats {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("address").port();
        let store_dir = std::env::temp_dir().join(format!("qm-nats-{}", uuid::Uuid::new_v4().simple()));
        let mut nats = Self { port, store_dir, process: None };
        nats.restart();
        nats
    }

    fn restart(&mut self) {
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            child.kill().expect("kill nats-server");
            child.wait().expect("reap nats-server");
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

/// The consumer's effect: one action log per handled message, carrying the message id.
struct RecordEffect;

#[async_trait]
impl Handler for RecordEffect {
    async fn handle(&self, envelope: &Envelope, tx: &mut dyn StoreTx) -> Result<(), HandlerError> {
        let mut effect = NewActionLog::new("test-consumer", "effect", ActionStatus::Succeeded);
        effect.metadata = json!({ "event_id": envelope.id });
        tx.insert_action_log(&effect).await?;
        Ok(())
    }
}

async fn effects(store: &dyn qm_store::Store) -> Vec<String> {
    store
        .action_logs(None, 1000)
        .await
        .expect("list")
        .into_iter()
        .filter(|log| log.action_type == "effect")
        .map(|log| log.metadata["event_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_written_while_the_bus_is_down_are_delivered_exactly_once_when_it_returns() {
    let database = TestDatabase::create().await;
    let outcome = tokio::spawn(scenario(database.url().to_owned())).await;
    database.drop_database().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn scenario(database_url: String) {
    let mut nats = PrivateNats::start();
    let store = qm_store::connect(&database_url).await.expect("store");
    let bus = qm_bus::connect(&nats.url()).await.expect("bus");
    bus.publish(&Envelope::new(MessageType::CatalogSync, "test", None, json!({}))).await.expect("bus is up at first");

    nats.kill();
    let mut sent = Vec::new();
    for sequence in 0..5 {
        let envelope = Envelope::new(MessageType::InstanceProvision, "api", None, json!({ "sequence": sequence }));
        let mut tx = store.begin().await.expect("begin");
        tx.insert_action_log(&NewActionLog::new("api", "deployment.create", ActionStatus::Succeeded))
            .await
            .expect("state change");
        tx.enqueue(&envelope).await.expect("enqueue");
        tx.commit().await.expect("writes succeed while the bus is down");
        sent.push(envelope);
    }
    let registry = prometheus::Registry::new();
    let relay = Relay::new(store.clone(), bus.clone(), &registry);
    assert!(relay.publish_pending().await.is_err(), "publishing fails while the bus is down");
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 5, "nothing is lost or marked");

    nats.restart();
    let shutdown = Shutdown::new();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let options =
        SubscriptionOptions::new(Channel::Commands, "effects").types([MessageType::InstanceProvision.as_str()]);
    let consumer = Consumer::new(store.clone(), bus.clone(), options, Arc::new(RecordEffect), &registry);
    let consumer_task = tokio::spawn(consumer.run(shutdown.clone()));

    let deadline = Instant::now() + Duration::from_secs(60);
    while effects(&*store).await.len() < sent.len() {
        assert!(Instant::now() < deadline, "messages were not delivered after the bus returned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 0);

    // A relay that crashed between publishing and marking publishes again: the effect must not
    // be applied twice. A marker published after it, handled in stream order by the single
    // member, shows that the duplicate has been dealt with.
    bus.publish(&sent[2]).await.expect("duplicate publish");
    let marker = Envelope::new(MessageType::InstanceProvision, "api", None, json!({ "marker": true }));
    bus.publish(&marker).await.expect("marker");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !effects(&*store).await.contains(&marker.id.to_string()) {
        assert!(Instant::now() < deadline, "the marker was not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut seen = effects(&*store).await;
    seen.sort();
    let mut expected: Vec<String> = sent.iter().chain([&marker]).map(|envelope| envelope.id.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected, "every message's effect exactly once");

    shutdown.trigger();
    relay_task.await.expect("relay stops");
    consumer_task.await.expect("consumer stops");
    nats.kill();
}

/// The consumer's own deduplication, on a bus that does not deduplicate publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_delivered_twice_takes_effect_once() {
    let path = std::env::temp_dir().join(format!("qm-dedupe-{}.db", uuid::Uuid::new_v4().simple()));
    let store = qm_store::connect(&format!("sqlite://{}", path.display())).await.expect("store");
    let bus: Arc<dyn qm_bus::EventBus> = Arc::new(qm_bus::memory::MemoryBus::new());
    let registry = prometheus::Registry::new();
    let consumer = Consumer::new(
        store.clone(),
        bus.clone(),
        SubscriptionOptions::new(Channel::Commands, "effects"),
        Arc::new(RecordEffect),
        &registry,
    );
    let envelope = Envelope::new(MessageType::InstanceProvision, "api", None, json!({}));
    bus.publish(&envelope).await.expect("publish");
    bus.publish(&envelope).await.expect("publish again");

    let mut subscription =
        bus.subscribe(SubscriptionOptions::new(Channel::Commands, "effects")).await.expect("subscribe");
    let first = consumer.process(subscription.next().await.expect("first delivery")).await;
    let second = consumer.process(subscription.next().await.expect("second delivery")).await;
    assert_eq!((first, second), (qm_runtime::consumer::Outcome::Handled, qm_runtime::consumer::Outcome::Duplicate));
    assert_eq!(effects(&*store).await, vec![envelope.id.to_string()]);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
