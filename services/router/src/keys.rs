//! API keys: Quartermaster's own (`qm_…`), looked up by their SHA-256 and cached for at most
//! [`KEY_TTL`], so that a revoked or expired key stops working within that time on every replica
//! while a busy key costs one database read per TTL, not one per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use qm_store::{ApiKey, Store, StoreError};

/// How long a key's answer (live, or not) is trusted: revocation is honoured within this.
pub const KEY_TTL: Duration = Duration::from_secs(4);
/// Entries kept at most; past it the cache starts over (a flood of random keys cannot grow it).
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (Instant, Option<ApiKey>)>>,
}

impl KeyCache {
    /// The live key `token` is, if any.
    ///
    /// # Errors
    /// When the store cannot answer (and no fresh answer is cached).
    pub async fn authenticate(&self, store: &dyn Store, token: &str) -> Result<Option<ApiKey>, StoreError> {
        if !token.starts_with("qm_") || token.len() > 128 {
            return Ok(None);
        }
        let hash = qm_runtime::tokens::hash(token);
        if let Some((at, key)) = self.lock().get(&hash)
            && at.elapsed() < KEY_TTL
        {
            return Ok(key.clone());
        }
        let key = store.live_api_key(&hash, qm_store::now()).await?;
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (Instant::now(), key.clone()));
        Ok(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<ApiKey>)>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
