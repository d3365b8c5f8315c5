//! Runs the bus conformance suite against every backend: in-process, NATS JetStream and Redis
//! Streams. NATS and Redis must be running (`QM_TEST_NATS_URL`, `QM_TEST_REDIS_URL`, defaulting
//! to the loopback servers); a missing server fails the suite, it is never skipped.

use std::sync::Arc;

use async_trait::async_trait;
use qm_bus::conformance::TestBus;
use qm_bus::nats::NatsBus;
use qm_bus::redis_streams::RedisBus;
use qm_bus::{EventBus, Naming};

fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Fails with a clear message when nothing listens where the suite expects a server.
fn require_server(url: &url::Url, what: &str, variable: &str) {
    let address = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(0));
    if std::net::TcpStream::connect(&address).is_err() {
        panic!(
            "{what} is not reachable at {address}: start it (see README, \"Services the tests need\") or set {variable}"
        );
    }
}

fn server_url(variable: &str, default: &str) -> url::Url {
    let text = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    url::Url::parse(&text).unwrap_or_else(|error| panic!("{variable}={text} is not a URL: {error}"))
}

mod memory {
    use super::*;
    use qm_bus::memory::MemoryBus;

    struct Memory(Arc<MemoryBus>);

    #[async_trait]
    impl TestBus for Memory {
        fn bus(&self) -> Arc<dyn EventBus> {
            self.0.clone()
        }

        async fn cleanup(&self) {}
    }

    async fn fixture() -> Memory {
        Memory(Arc::new(MemoryBus::new()))
    }

    qm_bus::bus_conformance_suite!(fixture);
}

mod nats {
    use super::*;

    struct Nats(Arc<NatsBus>);

    #[async_trait]
    impl TestBus for Nats {
        fn bus(&self) -> Arc<dyn EventBus> {
            self.0.clone()
        }

        async fn cleanup(&self) {
            self.0.delete_streams().await.expect("delete test streams");
        }
    }

    async fn fixture() -> Nats {
        let url = server_url("QM_TEST_NATS_URL", "nats://127.0.0.1:4222");
        require_server(&url, "NATS (with JetStream)", "QM_TEST_NATS_URL");
        let naming = Naming::new(Some(&unique_prefix())).expect("prefix");
        Nats(Arc::new(NatsBus::connect(&url, naming).await.expect("connect to NATS")))
    }

    qm_bus::bus_conformance_suite!(fixture);
}

mod redis {
    use super::*;

    struct Redis(Arc<RedisBus>);

    #[async_trait]
    impl TestBus for Redis {
        fn bus(&self) -> Arc<dyn EventBus> {
            self.0.clone()
        }

        async fn cleanup(&self) {
            self.0.delete_keys().await.expect("delete test keys");
        }
    }

    async fn fixture() -> Redis {
        let url = server_url("QM_TEST_REDIS_URL", "redis://127.0.0.1:6379");
        require_server(&url, "Redis", "QM_TEST_REDIS_URL");
        let naming = Naming::new(Some(&unique_prefix())).expect("prefix");
        Redis(Arc::new(RedisBus::connect(&url, naming).expect("redis client")))
    }

    qm_bus::bus_conformance_suite!(fixture);
}
