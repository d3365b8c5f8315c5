//! The conformance suite every [`CloudProvider`] runs.
//!
//! [`provider_conformance_suite!`](crate::provider_conformance_suite) expands to one test per
//! case for a fixture, an `async fn() -> impl TestProvider`, which must panic (naming what is
//! missing) when its cloud cannot be reached: the suite never skips. Each case creates instances
//! of its own (fresh instance ids) and terminates them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qm_domain::InstanceId;

use crate::{CloudProvider, CreateRequest, ErrorKind, ProviderStatus};

/// A provider under test and where it can create instances.
#[async_trait]
pub trait TestProvider: Send + Sync {
    fn provider(&self) -> Arc<dyn CloudProvider>;
    /// A zone and an instance type the provider offers.
    fn placement(&self) -> (String, String);
    async fn cleanup(&self);
}

/// Patience for an instance to boot; generous because machines are shared.
const BOOT_WITHIN: Duration = Duration::from_secs(60);

fn request(fixture: &dyn TestProvider) -> CreateRequest {
    let (zone, instance_type) = fixture.placement();
    CreateRequest {
        instance_id: InstanceId::new(),
        zone,
        instance_type,
        user_data: String::new(),
        tags: BTreeMap::new(),
    }
}

pub async fn creation_is_idempotent_on_the_instance_id(fixture: Arc<dyn TestProvider>) {
    let provider = fixture.provider();
    let request = request(&*fixture);
    let first = provider.create(&request).await.expect("create");
    let second = provider.create(&request).await.expect("create again");
    assert_eq!(first.provider_id, second.provider_id, "one instance, not two");
    let listed = provider.list().await.expect("list");
    let mine: Vec<_> = listed.iter().filter(|instance| instance.instance_id == Some(request.instance_id)).collect();
    assert_eq!(mine.len(), 1, "listed once, by its tag: {listed:?}");
    assert_eq!(
        (mine[0].zone.as_str(), mine[0].instance_type.as_str()),
        (request.zone.as_str(), request.instance_type.as_str())
    );
    provider.terminate(&first.provider_id).await.expect("terminate");
}

pub async fn a_started_instance_runs_and_has_an_address(fixture: Arc<dyn TestProvider>) {
    let provider = fixture.provider();
    let created = provider.create(&request(&*fixture)).await.expect("create");
    provider.start(&created.provider_id).await.expect("start");
    let deadline = tokio::time::Instant::now() + BOOT_WITHIN;
    let running = loop {
        let described = provider.describe(&created.provider_id).await.expect("describe");
        if described.status == ProviderStatus::Running {
            break described;
        }
        assert!(tokio::time::Instant::now() < deadline, "not running within {BOOT_WITHIN:?}: {described:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(running.address.is_some(), "a running instance has an address");
    provider.terminate(&created.provider_id).await.expect("terminate");
}

pub async fn termination_is_idempotent_and_removes_it_from_the_listing(fixture: Arc<dyn TestProvider>) {
    let provider = fixture.provider();
    let created = provider.create(&request(&*fixture)).await.expect("create");
    provider.terminate(&created.provider_id).await.expect("terminate");
    provider.terminate(&created.provider_id).await.expect("terminating again is a success");
    let listed = provider.list().await.expect("list");
    assert!(listed.iter().all(|instance| instance.provider_id != created.provider_id), "{listed:?}");
    match provider.describe(&created.provider_id).await {
        Ok(described) => assert_eq!(described.status, ProviderStatus::Terminated),
        Err(error) => assert_eq!(error.kind, ErrorKind::NotFound, "{error}"),
    }
}

pub async fn an_unknown_instance_is_not_found(fixture: Arc<dyn TestProvider>) {
    let provider = fixture.provider();
    let error = provider.describe("does-not-exist").await.expect_err("unknown");
    assert_eq!(error.kind, ErrorKind::NotFound, "{error}");
    provider.terminate("does-not-exist").await.expect("terminating what is gone is a success");
}

pub async fn an_unoffered_placement_is_invalid(fixture: Arc<dyn TestProvider>) {
    let provider = fixture.provider();
    let mut request = request(&*fixture);
    request.instance_type = "no-such-type".into();
    let error = provider.create(&request).await.expect_err("refused");
    assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
    assert!(!error.is_retryable() && !error.calls_for_failover());
}

pub async fn offers_are_priced(fixture: Arc<dyn TestProvider>) {
    let provider = fixture.provider();
    let offers = provider.offers().await.expect("offers");
    assert!(!offers.is_empty());
    let (zone, instance_type) = fixture.placement();
    assert!(
        offers.iter().any(|offer| offer.zone == zone && offer.instance_type == instance_type),
        "the placement is offered"
    );
    for offer in &offers {
        assert!(offer.hourly_price_micros > 0 && offer.currency.len() == 3, "{offer:?}");
        assert_eq!(offer.gpu_count > 0, offer.gpu_model.is_some(), "{offer:?}");
    }
}

/// One test per case for `$fixture`.
#[macro_export]
macro_rules! provider_conformance_suite {
    ($fixture:path) => {
        $crate::provider_conformance_suite!(@cases $fixture,
            creation_is_idempotent_on_the_instance_id,
            a_started_instance_runs_and_has_an_address,
            termination_is_idempotent_and_removes_it_from_the_listing,
            an_unknown_instance_is_not_found,
            an_unoffered_placement_is_invalid,
            offers_are_priced,
        );
    };
    (@cases $fixture:path, $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                use ::futures::FutureExt as _;
                let fixture: ::std::sync::Arc<dyn $crate::conformance::TestProvider> = ::std::sync::Arc::new($fixture().await);
                let outcome = ::std::panic::AssertUnwindSafe($crate::conformance::$case(fixture.clone())).catch_unwind().await;
                fixture.cleanup().await;
                if let Err(panic) = outcome {
                    ::std::panic::resume_unwind(panic);
                }
            }
        )+
    };
}
