//! Persistence: one [`Store`] trait with an SQLite (embedded default) and a PostgreSQL
//! implementation that behave the same, proven by one [`conformance`] suite.
//!
//! Reads are methods on [`Store`]; every write happens in a [`StoreTx`], so that a state change
//! and the bus messages it causes (the outbox) commit together or not at all.
//!
//! Layout:
//! - [`model`]: the foundation's records (organizations, users, action logs, outbox).
//! - [`access`], [`catalog`], [`fleet`], [`finops`]: one area each, with its records, its read and write
//!   traits (which [`Store`] and [`StoreTx`] include) and its SQL; [`workers`] likewise for the
//!   worker protocol.
//! - [`error`]: [`StoreError`], with unique violations mapped to [`StoreError::Conflict`].
//! - `sql`: the SQL, written once as a macro that expands for each backend.
//! - [`sqlite`], [`postgres`]: connection set-up and migrations per backend.
//! - [`conformance`]: the suite every backend runs.

pub mod access;
pub mod backup;
pub mod catalog;
#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod error;
pub mod finops;
pub mod fleet;
mod json;
pub mod model;
pub mod pools;
pub mod postgres;
mod sql;
pub mod sqlite;
#[cfg(feature = "testsuite")]
pub mod testing;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use qm_domain::{EventId, OrganizationId, UserId};
use qm_events::Envelope;

pub use access::{AccessStore, AccessTx, ApiKey, KeyLimits, NewApiKey, NewSession, Session, UnbilledInstance};
pub use catalog::{
    CatalogStore, CatalogTx, InstanceType, InstanceTypeInput, Offer, Provider, Region, RegionInput, Zone, ZoneInput,
};
pub use error::StoreError;
pub use finops::{
    BillingStart, Budget, BudgetAlert, CostFilter, CostGroup, CostInterval, CostKey, ExchangeRate, FinopsStore,
    FinopsTx, InstanceCost, RateGroup, TimeRange, UsageGroup, UsageRecord,
};
pub use fleet::{
    ActionLogCounts, ActionLogQuery, Deployment, FeedEntry, FleetStore, FleetTx, Instance, InstanceAnnotation,
    InstanceFilter, InstanceRef, NewInstance, RecordedTransition, StateChange, Transition, record_transition,
};
pub use model::{ActionLog, ActionStatus, NewActionLog, NewOrganization, NewUser, Organization, OutboxMessage, User};
pub use pools::{NewPool, Pool, PoolChange, PoolStore, PoolTx};
pub use workers::{Heartbeat, Registration, Worker, WorkerStore, WorkerTx};

/// Which database a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Reads, and the door to writes ([`Store::begin`]).
#[async_trait]
pub trait Store:
    AccessStore + CatalogStore + FinopsStore + FleetStore + PoolStore + WorkerStore + Send + Sync + 'static
{
    fn backend(&self) -> Backend;

    /// Checks that the database answers, for readiness probes.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Starts a transaction; every write goes through one.
    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError>;

    /// Notified each time a transaction that put messages in the outbox commits, so the
    /// relays of this process publish them at once instead of at their next poll.
    fn outbox_committed(&self) -> std::sync::Arc<tokio::sync::Notify>;

    async fn organization(&self, id: OrganizationId) -> Result<Option<Organization>, StoreError>;
    async fn organization_by_slug(&self, slug: &str) -> Result<Option<Organization>, StoreError>;

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Finds a user by username or by email (emails compare case-insensitively).
    async fn user_by_login(&self, login: &str) -> Result<Option<User>, StoreError>;

    /// Newest first; `organization = None` lists platform-wide entries and every organization's.
    async fn action_logs(&self, organization: Option<OrganizationId>, limit: u32)
    -> Result<Vec<ActionLog>, StoreError>;

    /// Claims up to `limit` unpublished outbox messages, oldest first, for `lease`: other relays
    /// skip them until the lease ends, so a relay that dies mid-batch delays but loses nothing.
    async fn claim_outbox(&self, limit: u32, lease: Duration) -> Result<Vec<OutboxMessage>, StoreError>;
    async fn mark_outbox_published(&self, ids: &[EventId]) -> Result<(), StoreError>;
    /// Gives a claimed message back after a failed publish, recording why.
    async fn release_outbox(&self, id: EventId, error: &str) -> Result<(), StoreError>;
    /// Unpublished messages waiting in the outbox.
    async fn outbox_backlog(&self) -> Result<u64, StoreError>;
    /// Deletes published messages older than `age`; returns how many.
    async fn purge_published_outbox(&self, age: Duration) -> Result<u64, StoreError>;
}

/// One transaction. Dropping it without [`commit`](StoreTx::commit) rolls everything back.
#[async_trait]
pub trait StoreTx: AccessTx + CatalogTx + FinopsTx + FleetTx + PoolTx + WorkerTx + Send {
    async fn insert_organization(&mut self, organization: &NewOrganization) -> Result<Organization, StoreError>;
    async fn insert_user(&mut self, user: &NewUser) -> Result<User, StoreError>;
    async fn insert_action_log(&mut self, entry: &NewActionLog) -> Result<ActionLog, StoreError>;
    /// Puts a message in the outbox; it is published after (and only if) the transaction commits.
    async fn enqueue(&mut self, envelope: &Envelope) -> Result<(), StoreError>;
    /// Records that `consumer` handled `event`. Returns `false` when it already had: the caller
    /// then skips its effects, which makes at-least-once delivery effectively-once.
    async fn mark_processed(&mut self, consumer: &str, event: EventId) -> Result<bool, StoreError>;
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// Opens the store named by `url` (`sqlite://path` or `postgres://…`) and applies pending
/// migrations.
///
/// # Errors
/// [`StoreError::InvalidUrl`] for another scheme; [`StoreError::Unavailable`] when the database
/// cannot be reached; [`StoreError::Migration`] when the schema cannot be brought up to date.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    connect_with(url, &StoreOptions::default()).await
}

/// How a process uses its database.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// PostgreSQL: the most connections the pool opens (`QM_DATABASE_MAX_CONNECTIONS`).
    /// SQLite keeps its one writer and its readers.
    pub max_connections: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { max_connections: qm_config::DEFAULT_DATABASE_MAX_CONNECTIONS }
    }
}

/// [`connect`] with `options`.
///
/// # Errors
/// As [`connect`].
pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).unwrap_or_default();
    match scheme {
        "sqlite" => Ok(Arc::new(sqlite::SqliteStore::connect(url).await?)),
        "postgres" | "postgresql" => {
            Ok(Arc::new(postgres::PostgresStore::connect(url, options.max_connections).await?))
        }
        _ => Err(StoreError::InvalidUrl("expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE".into())),
    }
}

/// The current time at the precision both databases keep (microseconds), so that what is
/// written compares equal to what is read back.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

pub use qm_config::redact_url as redact;

/// Serializes a timestamp exactly as chrono's `Serialize` does (RFC 3339, `Z`, the fraction
/// in 0, 3, 6 or 9 digits), in one piece: chrono's own goes through `collect_str`, which
/// escapes each formatted fragment on its own (a tenth of a 50-instance page's serialization).
///
/// # Errors
/// The serializer's.
pub fn timestamp<S: serde::Serializer>(at: &chrono::DateTime<chrono::Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&json::rfc3339(at, &mut [0; json::RFC3339_MAX]))
}

/// `items` in chunks small enough for every database's parameter limit, each with its
/// placeholder list (`$1, $2, ...`) for an `IN (...)`.
pub(crate) fn in_chunks<T>(items: &[T]) -> impl Iterator<Item = (String, &[T])> {
    items.chunks(500).map(|chunk| {
        let placeholders = (0..chunk.len()).map(|index| format!("${}", index + 1)).collect::<Vec<_>>().join(", ");
        (placeholders, chunk)
    })
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};

    #[test]
    fn timestamps_serialize_exactly_as_chrono_does() {
        #[derive(serde::Serialize)]
        struct Fast(#[serde(serialize_with = "super::timestamp")] chrono::DateTime<Utc>);
        fn json(value: &impl serde::Serialize) -> String {
            serde_json::to_string(value).expect("serializable")
        }
        let second = Utc.with_ymd_and_hms(2026, 12, 5, 23, 44, 50).single().expect("a valid time");
        let years = [0, 1, 999, 1970, 9999, 10_000, -1, -10_000];
        let starts = years.map(|year| Utc.with_ymd_and_hms(year, 1, 2, 3, 4, 5).single().expect("a valid time"));
        let far = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).single().expect("a valid time");
        for nanos in [0, 1, 120, 1_000, 123_000, 1_000_000, 120_000_000, 123_456_789, 999_999_999] {
            for start in starts.iter().chain([&second, &far]) {
                let at = *start + chrono::Duration::nanoseconds(nanos);
                assert_eq!(json(&Fast(at)), json(&at), "{at:?}");
            }
        }
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|day| day.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .expect("a leap second")
            .and_utc();
        assert_eq!(json(&Fast(leap)), json(&leap));
    }

    proptest::proptest! {
        #[test]
        fn any_timestamp_serializes_as_chrono_does(micros in -62_135_596_800_000_000i64..253_402_300_800_000_000, nanos in 0u32..1_000) {
            #[derive(serde::Serialize)]
            struct Fast(#[serde(serialize_with = "super::timestamp")] chrono::DateTime<Utc>);
            let at = chrono::DateTime::from_timestamp_micros(micros).expect("in range") + chrono::Duration::nanoseconds(i64::from(nanos));
            proptest::prop_assert_eq!(serde_json::to_string(&Fast(at)).expect("json"), serde_json::to_string(&at).expect("json"));
        }
    }
}
