//! Token usage of routed requests, from each response's `usage`, written as `usage.tokens`
//! events with the API key, model, instance and organization. Requests report to a channel; a
//! writer sums them per (organization, key, instance, model) and writes each sum to the outbox
//! every [`FLUSH_EVERY`] in one transaction, so a busy router adds no database write per request.
//! A sum whose write fails is kept and written with the next one: no token is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use qm_domain::{InstanceId, OrganizationId};
use qm_events::Envelope;
use qm_events::payloads::UsageTokens;
use qm_runtime::Shutdown;
use qm_store::Store;
use tokio::sync::mpsc;

pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// What one response used.
#[derive(Clone, Debug)]
pub struct Usage {
    pub organization_id: OrganizationId,
    pub api_key_id: uuid::Uuid,
    pub instance_id: InstanceId,
    pub model: String,
    pub provider: String,
    pub zone: String,
    pub instance_type: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

#[derive(Clone)]
pub struct UsageSink {
    sender: mpsc::UnboundedSender<Usage>,
}

type Key = (OrganizationId, uuid::Uuid, InstanceId, String);

impl UsageSink {
    /// The sink and its writer, to run until shutdown.
    pub fn new(store: Arc<dyn Store>, shutdown: Shutdown) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self { sender }, write(store, receiver, shutdown))
    }

    pub fn record(&self, usage: Usage) {
        if usage.prompt_tokens > 0 || usage.completion_tokens > 0 {
            let _ = self.sender.send(usage);
        }
    }
}

async fn write(store: Arc<dyn Store>, mut receiver: mpsc::UnboundedReceiver<Usage>, shutdown: Shutdown) {
    let mut pending: HashMap<Key, Usage> = HashMap::new();
    loop {
        let stopping = tokio::select! {
            () = shutdown.wait() => true,
            () = tokio::time::sleep(FLUSH_EVERY) => false,
        };
        while let Ok(usage) = receiver.try_recv() {
            let key = (usage.organization_id, usage.api_key_id, usage.instance_id, usage.model.clone());
            match pending.get_mut(&key) {
                Some(sum) => {
                    sum.prompt_tokens = sum.prompt_tokens.saturating_add(usage.prompt_tokens);
                    sum.completion_tokens = sum.completion_tokens.saturating_add(usage.completion_tokens);
                }
                None => {
                    pending.insert(key, usage);
                }
            }
        }
        if !pending.is_empty() {
            match flush(&*store, &pending).await {
                Ok(()) => pending.clear(),
                Err(error) => tracing::warn!(%error, sums = pending.len(), "could not record token usage; retrying"),
            }
        }
        if stopping {
            return;
        }
    }
}

async fn flush(store: &dyn Store, pending: &HashMap<Key, Usage>) -> Result<(), qm_store::StoreError> {
    let limit = qm_events::MAX_TOKENS_PER_REPORT;
    let mut tx = store.begin().await?;
    for usage in pending.values() {
        // A sum over the per-report bound goes as several reports.
        let (mut prompt, mut completion) = (usage.prompt_tokens, usage.completion_tokens);
        while prompt > 0 || completion > 0 {
            let tokens = UsageTokens {
                instance_id: Some(usage.instance_id),
                api_key_id: Some(usage.api_key_id),
                model: usage.model.clone(),
                prompt_tokens: prompt.min(limit),
                completion_tokens: completion.min(limit),
                provider: Some(usage.provider.clone()),
                region: None,
                zone: Some(usage.zone.clone()),
                instance_type: Some(usage.instance_type.clone()),
            };
            prompt -= tokens.prompt_tokens;
            completion -= tokens.completion_tokens;
            tx.enqueue(&Envelope::of(&tokens, crate::NAME, Some(usage.organization_id))).await?;
        }
    }
    tx.commit().await
}
