//! The event feed behind `GET /events`.
//!
//! Events are read back from the outbox, where they were committed with the state change that
//! caused them, so every replica serves the same ordered feed and a client resumes from its
//! `Last-Event-ID` (an outbox position) on any replica. One follower per replica polls the
//! outbox head and broadcasts new entries to the open streams; a stream that connects late or
//! falls behind reads what it missed from the database.
//!
//! Outbox positions are handed out when a transaction inserts, not when it commits, so a later
//! position can become visible before an earlier one. The follower therefore stops at a gap and
//! waits for it to fill; a gap older than [`GAP_GRACE`] is a rolled-back transaction and is
//! skipped.

use std::sync::Arc;
use std::time::Duration;

use qm_domain::OrganizationId;
use qm_runtime::Shutdown;
use qm_store::{FeedEntry, Store, StoreError};
use tokio::sync::{broadcast, watch};

/// How long a gap in outbox positions is waited for before it is taken as a rollback.
pub const GAP_GRACE: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const BATCH: u32 = 500;
const CHANNEL_CAPACITY: usize = 1024;
/// The most events one stream replays from the database before it skips to the live feed
/// (and says so): a stream opened at `after=0` cannot make a replica read the whole outbox.
pub const MAX_CATCH_UP: usize = 1_000;

/// What handlers hold: the follower's position and its broadcast.
#[derive(Clone)]
pub struct FeedHandle {
    head: watch::Receiver<i64>,
    events: broadcast::Sender<Arc<FeedEntry>>,
    store: Arc<dyn Store>,
    shutdown: Shutdown,
}

/// The background task that follows the outbox.
pub struct Follower {
    store: Arc<dyn Store>,
    cursor: i64,
    head: watch::Sender<i64>,
    events: broadcast::Sender<Arc<FeedEntry>>,
}

/// Starts at the current head: streams opened from now on see every later event.
///
/// # Errors
/// When the store cannot be read.
pub async fn start(store: Arc<dyn Store>, shutdown: Shutdown) -> Result<(FeedHandle, Follower), StoreError> {
    let cursor = store.feed_head().await?;
    let (head, head_receiver) = watch::channel(cursor);
    let (events, _) = broadcast::channel(CHANNEL_CAPACITY);
    let handle = FeedHandle { head: head_receiver, events: events.clone(), store: store.clone(), shutdown };
    Ok((handle, Follower { store, cursor, head, events }))
}

impl Follower {
    pub async fn run(mut self, shutdown: Shutdown) {
        while !shutdown.is_triggered() {
            let wait = match self.poll().await {
                Ok(full) if full => Duration::ZERO,
                Ok(_) => POLL_INTERVAL,
                Err(error) => {
                    tracing::warn!(%error, "event feed: cannot read the outbox; retrying");
                    POLL_INTERVAL * 10
                }
            };
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reads past the cursor; returns whether a full batch came back (more may be waiting).
    async fn poll(&mut self) -> Result<bool, StoreError> {
        let entries = self.store.feed(self.cursor, None, None, BATCH).await?;
        let full = entries.len() == BATCH as usize;
        for entry in entries {
            let contiguous = entry.seq == self.cursor + 1;
            let settled = (qm_store::now() - entry.created_at).to_std().is_ok_and(|age| age >= GAP_GRACE);
            if !contiguous && !settled {
                return Ok(false);
            }
            self.cursor = entry.seq;
            if entry.is_event {
                // The head moves before the broadcast: a stream opened in between starts after
                // this event rather than before it (it would wait for it forever).
                self.head.send_replace(self.cursor);
                // No receivers is fine: nobody is streaming.
                let _ = self.events.send(Arc::new(entry));
            }
        }
        self.head.send_replace(self.cursor);
        Ok(full)
    }
}

/// One client's stream of its organization's events after `after`.
pub struct Stream {
    handle: FeedHandle,
    organization: OrganizationId,
    cursor: i64,
    /// While catching up: read the database up to here before following the broadcast.
    catch_up_to: Option<i64>,
    live: broadcast::Receiver<Arc<FeedEntry>>,
    pending: std::collections::VecDeque<Arc<FeedEntry>>,
    /// Events replayed from the database so far.
    replayed: usize,
    /// Set when the stream skipped events to stay within [`MAX_CATCH_UP`]: the position it
    /// resumed after.
    skipped_to: Option<i64>,
}

impl FeedHandle {
    /// The follower's position: where a stream without `Last-Event-ID` starts.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// A stream of `organization`'s events after position `after` (the head when `None`).
    pub fn stream(&self, organization: OrganizationId, after: Option<i64>) -> Stream {
        // Subscribe before reading the head, so nothing falls between the two.
        let live = self.events.subscribe();
        let head = self.head();
        let cursor = after.unwrap_or(head);
        Stream {
            handle: self.clone(),
            organization,
            cursor,
            catch_up_to: (cursor < head).then_some(head),
            live,
            pending: std::collections::VecDeque::new(),
            replayed: 0,
            skipped_to: None,
        }
    }
}

impl Stream {
    /// Once, after the stream skipped events it would have replayed: the position it resumed
    /// after (the client reloads what it shows, then follows).
    pub fn take_skipped(&mut self) -> Option<i64> {
        self.skipped_to.take()
    }

    /// The next event, or `None` when the service stops or the database fails (the client
    /// reconnects with its `Last-Event-ID`).
    pub async fn next(&mut self) -> Option<Arc<FeedEntry>> {
        loop {
            if let Some(entry) = self.pending.pop_front() {
                self.cursor = entry.seq;
                return Some(entry);
            }
            if let Some(up_to) = self.catch_up_to {
                if self.replayed >= MAX_CATCH_UP {
                    // Too far behind: resume at the head and let the client know what it missed.
                    self.cursor = self.cursor.max(up_to);
                    self.catch_up_to = None;
                    self.skipped_to = Some(self.cursor);
                    continue;
                }
                match self.handle.store.feed(self.cursor, Some(up_to), Some(self.organization), 200).await {
                    Ok(entries) if entries.is_empty() => self.catch_up_to = None,
                    Ok(entries) => {
                        self.replayed += entries.len();
                        self.pending.extend(entries.into_iter().map(Arc::new));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "event stream: cannot read the outbox; closing the stream");
                        return None;
                    }
                }
                continue;
            }
            let received = tokio::select! {
                () = self.handle.shutdown.wait() => return None,
                received = self.live.recv() => received,
            };
            match received {
                Ok(entry) if entry.seq > self.cursor && entry.organization_id == Some(self.organization) => {
                    self.pending.push_back(entry);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up_to = Some(self.handle.head()),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
