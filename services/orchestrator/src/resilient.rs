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

/// Consecutive calls that failed (retryable, after their retries) that open a provider's
/// circuit, and for how long.
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

    /// One provider call, retried, in a `provider_call` span (a child of the saga, the
    /// reconciler or the catalog sync that made it, so a trace reaches the cloud's API).
    async fn call<T, F, Fut>(&self, operation: &'static str, call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T, ProviderError>> + Send,
        T: Send,
    {
        let span = tracing::info_span!("provider_call", provider = self.inner.name(), operation);
        tracing::Instrument::instrument(self.retried(call), span).await
    }

    /// The breaker admits the call once, before its first attempt, and hears its outcome once,
    /// after its retries: a call that failed once and then succeeded is a success. Counting each
    /// attempt instead opened the circuit whenever a provider failed every first try of many
    /// concurrent calls (its retries would all have succeeded), and then its single trials kept
    /// landing on first tries: a fleet's terminations crawled at one per cooldown.
    async fn retried<T, F, Fut>(&self, mut call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T, ProviderError>> + Send,
        T: Send,
    {
        if let Err(wait) = self.breaker.allow() {
            let message = format!("circuit open after repeated failures; next trial in {} s", wait.as_secs() + 1);
            return Err(ProviderError::new(self.inner.name(), ErrorKind::Transient, message));
        }
        let mut attempt = 1;
        let result = loop {
            match call().await {
                Err(error) if error.is_retryable() && attempt < self.retry.attempts => {
                    tracing::debug!(%error, attempt, "provider call failed; retrying");
                    tokio::time::sleep(self.retry.backoff.delay(attempt)).await;
                    attempt += 1;
                }
                result => break result,
            }
        };
        match &result {
            Err(error) if error.is_retryable() => self.breaker.record_failure(),
            // The provider answered (even with a refusal): it is up.
            _ => self.breaker.record_success(),
        }
        result
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
        self.call("create", || self.inner.create(request)).await
    }

    async fn start(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        self.call("start", || self.inner.start(provider_id)).await
    }

    async fn describe(&self, provider_id: &str) -> Result<ProviderInstance, ProviderError> {
        self.call("describe", || self.inner.describe(provider_id)).await
    }

    async fn list(&self) -> Result<Vec<ProviderInstance>, ProviderError> {
        self.call("list", || self.inner.list()).await
    }

    async fn terminate(&self, provider_id: &str) -> Result<(), ProviderError> {
        self.call("terminate", || self.inner.terminate(provider_id)).await
    }

    async fn offers(&self) -> Result<Vec<ProviderOffer>, ProviderError> {
        self.call("offers", || self.inner.offers()).await
    }

    async fn leftovers(&self) -> Result<Vec<Leftover>, ProviderError> {
        self.call("leftovers", || self.inner.leftovers()).await
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> Result<(), ProviderError> {
        self.call("remove_leftover", || self.inner.remove_leftover(leftover)).await
    }
}
