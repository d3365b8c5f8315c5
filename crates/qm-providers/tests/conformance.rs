//! Every provider runs the same suite; `sim` runs it in memory.

mod sim {
    use std::sync::Arc;

    use async_trait::async_trait;
    use qm_providers::CloudProvider;
    use qm_providers::conformance::TestProvider;
    use qm_providers::sim::{SimCloud, SimConfig};

    struct Sim(Arc<SimCloud>);

    #[async_trait]
    impl TestProvider for Sim {
        fn provider(&self) -> Arc<dyn CloudProvider> {
            self.0.clone()
        }

        fn placement(&self) -> (String, String) {
            ("sim-eu-1".into(), "sim.l4".into())
        }

        async fn cleanup(&self) {
            assert_eq!(self.0.stats().live, 0, "every case terminates what it created");
        }
    }

    async fn fixture() -> Sim {
        Sim(Arc::new(SimCloud::new(SimConfig::default())))
    }

    qm_providers::provider_conformance_suite!(fixture);
}

/// The same cloud behind its HTTP API (`QM_SIM_URL`): the suite through `RemoteSim`.
mod sim_remote {
    use std::sync::Arc;

    use async_trait::async_trait;
    use qm_providers::CloudProvider;
    use qm_providers::conformance::TestProvider;
    use qm_providers::sim::{SimCloud, SimConfig};
    use qm_providers::sim_remote::{RemoteSim, serve};

    struct Remote {
        cloud: Arc<SimCloud>,
        client: Arc<RemoteSim>,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    #[async_trait]
    impl TestProvider for Remote {
        fn provider(&self) -> Arc<dyn CloudProvider> {
            self.client.clone()
        }

        fn placement(&self) -> (String, String) {
            ("sim-eu-1".into(), "sim.l4".into())
        }

        async fn cleanup(&self) {
            assert_eq!(self.cloud.stats().live, 0, "every case terminates what it created");
            self.server.abort();
        }
    }

    async fn fixture() -> Remote {
        let cloud = Arc::new(SimCloud::new(SimConfig::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(serve(cloud.clone(), listener));
        Remote { cloud, client: Arc::new(RemoteSim::new(&base).expect("client")), server }
    }

    qm_providers::provider_conformance_suite!(fixture);
}
