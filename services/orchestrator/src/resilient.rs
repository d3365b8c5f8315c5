//! Every provider call the orchestrator makes (saga, termination, reconciliation, catalog sync)
//! goes through [`Resilient`]: throttling and transient errors are retried with exponential
//! backoff and jitter, behind one circuit breaker per provider. While the circuit is open a call
//! fails at once as transient, so commands wait on the bus instead of hammering a provider that
//! is down; after the cooldown exactly one trial call is let through.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qm_providers::{CloudProvider, CreateRequest, ErrorKind, Leftover, ProviderError, ProviderInstance, ProviderOffer};
use qm_runtime::backoff::Backoff;
use qm_runtime::breaker::CircuitBreaker;

/// Consecutive retryable failures that open a provider's circuit, and for how long.
pub const BREAKER_THRESHOLD: u32 = 10;
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

/// How calls are retried.
#[derive(Clone, Debug)]
pub struct Retry {
    /// Tries per call, the first included.
    pub attempts: u32,
    pub backoff: Backoff,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 5, backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)) }
    }
}

/// A provider whose calls are retried and guarded by its circuit breaker.
pub struct Resilient {
    inner: Arc<dyn CloudProvider>,
    breaker: CircuitBreaker,
    retry: Retry,
}

impl Resilient {
    pub fn new(inner: Arc<dyn CloudProvider>, retry: Retry) -> Self {
        Self { inner, breaker: CircuitBreaker::new(BREAKER_THRESHOLD, BREAKER_COOLDOWN), retry }
    }

    /// Wraps each of `providers`.
    pub fn wrap_all(
        providers: BTreeMap<String, Arc<dyn CloudProvider>>,
        retry: &Retry,
    ) -> BTreeMap<String, Arc<dyn CloudProvider>> {
        providers
            .into_iter()
            .map(|(name, provider)| (name, Arc::new(Self::new(provider, retry.clone())) as Arc<dyn CloudProvider>))
            .collect()
    }

    /// Whether calls are refused now.
    pub fn is_open(&self) -> bool {
        self.breaker.is_open()
    }

    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T, ProviderError>> + Send,
        T: Send,
    {
        let mut attempt = 1;
        loop {
            if let Err(wait) = self.breaker.allow() {
                let message = format!("circuit open after repeated failures; next trial in {} s", wait.as_secs() + 1);
                return Err(ProviderError::new(self.inner.name(), ErrorKind::Transient, message));
            }
            let result = call().await;
            match &result {
                // The provider answered (even with a refusal): it is up.
                Err(error) if error.is_retryable() => self.breaker.record_failure(),
                _ => self.breaker.record_success(),
            }
            match result {
                Err(error) if error.is_retryable() && attempt < self.retry.attempts => {
                    tracing::debug!(%error, attempt, "provider call failed; retrying");
                    tokio::time::sleep(self.retry.backoff.delay(attempt)).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

#[async_trait]
impl CloudProvider for Resilient {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn circuit_open(&self) -> bool {
        self.is_open()
    }

    async fn create(&self, request: &CreateRequest) -> Result<ProviderInstance, ProviderError> {
        self.call(|| self.inner.create(request)).await
    }

    async fn start(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        self.call(|| self.inner.start(provider_id)).await
    }

    async fn describe(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        self.call(|| self.inner.describe(provider_id)).await
    }

    async fn list(&self) -> Result<Vec<ProviderInstance>, ProviderError> {
        self.call(|| self.inner.list()).await
    }

    async fn terminate(&self, provider_id: &str) -> Result<(), ProviderError> {
        self.call(|| self.inner.terminate(provider_id)).await
    }

    async fn offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        self.call(|| self.inner.offers()).await
    }

    async fn leftovers(&self) -> Result<Vec<Leftover>, ProviderError> {
        self.call(|| self.inner.leftovers()).await
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> Result<(), ProviderError> {
        self.call(|| self.inner.remove_leftover(leftover)).await
    }
}
