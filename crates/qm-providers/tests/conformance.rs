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
