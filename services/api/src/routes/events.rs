//! `GET /events`: the caller's organization's events as Server-Sent Events. Each event's `id`
//! is its outbox position; a client that reconnects with `Last-Event-ID` (or `?after=`) gets
//! what it missed, then the live feed.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;

use crate::AppState;
use crate::auth::{Principal, authenticate, presented_token};
use crate::limits::{Refused, Slot};
use crate::problem::{ApiResult, Problem, Query};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event id (what `Last-Event-ID` carries, for clients that cannot set it).
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// One event of the stream, as `text/event-stream` frames it.
/// (The stream writes it with axum's `Event`; this type documents the frame.)
#[derive(utoipa::ToSchema)]
pub struct StreamEvent {
    /// The event's position in the feed: resume after it with `Last-Event-ID`.
    #[schema(pattern = "^[0-9]+$")]
    pub id: String,
    /// The message type (`instance.state_changed`, ...), or `stream.skipped`.
    pub event: String,
    /// The envelope as JSON (`stream.skipped`: how many events a resume left out).
    pub data: String,
}

/// A stream of `instance.state_changed` and the other events of the caller's organization.
///
/// The stream ends when the right to see it ends: its credential is checked again every
/// `QM_EVENTS_RECHECK_SECONDS` (30 s) and at once when a credential is revoked on this replica
/// (logout, key revocation, user or organization deleted). At most
/// [`crate::STREAMS_PER_PRINCIPAL`] streams per user or key and [`crate::STREAMS_PER_REPLICA`]
/// per replica are open at once (429). A resume replays at most
/// [`crate::feed::MAX_CATCH_UP`] events, then sends a `stream.skipped` event and follows live.
#[utoipa::path(get, path = "/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "Resume after this event id")),
    responses((status = 200, description = "`text/event-stream`: `id` is the position, `event` the type, `data` the envelope",
        content_type = "text/event-stream", body = StreamEvent),
        (status = 429, description = "Too many open streams for this principal or this replica", body = Problem)))]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>> {
    if query.after.is_some_and(|after| after < 0) {
        return Err(Problem::invalid("after", "must not be negative"));
    }
    let header = headers.get("last-event-id").and_then(|value| value.to_str().ok()).map(str::trim);
    let after = match header {
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .filter(|after| *after >= 0)
                .ok_or_else(|| Problem::bad_request("Last-Event-ID is not an event id"))?,
        ),
        None => query.after,
    };
    let owner = principal.user_id.map_or_else(|| format!("{:?}", principal.credential), |user| user.to_string());
    let slot = state.streams.acquire(&owner).map_err(|refused| {
        let detail = match refused {
            Refused::Key => {
                format!("at most {} event streams may be open per user or key", crate::STREAMS_PER_PRINCIPAL)
            }
            Refused::Total => "this replica serves as many event streams as it can; retry shortly".to_owned(),
        };
        Problem::too_many_requests(detail, 5)
    })?;
    let token = presented_token(&headers).unwrap_or_default();
    let watch = Watch {
        feed: state.feed.stream(principal.organization_id, after),
        revocations: state.credentials.revocations(),
        recheck: state.dependencies.settings.events_recheck,
        next_check: tokio::time::Instant::now() + state.dependencies.settings.events_recheck,
        state,
        token,
        _slot: slot,
    };
    let events = futures::stream::unfold(watch, |mut watch| async move {
        let event = watch.next().await?;
        Some((Ok(event), watch))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One open stream: its feed, and what it needs to check that it may go on.
struct Watch {
    feed: crate::feed::Stream,
    state: AppState,
    token: String,
    revocations: tokio::sync::watch::Receiver<u64>,
    recheck: Duration,
    next_check: tokio::time::Instant,
    _slot: Slot,
}

impl Watch {
    /// The next SSE event, or `None` when the stream ends (service stopping, credential gone).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(position) = self.feed.take_skipped() {
                let data = serde_json::json!({ "resumed_after": position, "max_replayed": crate::feed::MAX_CATCH_UP });
                return Some(Event::default().id(position.to_string()).event("stream.skipped").data(data.to_string()));
            }
            tokio::select! {
                entry = self.feed.next() => {
                    let entry = entry?;
                    let data = String::from_utf8(entry.envelope.to_json()).unwrap_or_default();
                    return Some(
                        Event::default().id(entry.seq.to_string()).event(entry.envelope.message_type.clone()).data(data),
                    );
                }
                () = tokio::time::sleep_until(self.next_check) => {
                    self.next_check = tokio::time::Instant::now() + self.recheck;
                    if !self.still_allowed().await {
                        return None;
                    }
                }
                changed = self.revocations.changed() => {
                    if changed.is_err() || !self.still_allowed().await {
                        return None;
                    }
                }
            }
        }
    }

    async fn still_allowed(&self) -> bool {
        match authenticate(&self.state, &self.token).await {
            Ok(_) => true,
            Err(problem) => {
                tracing::info!(detail = %problem.detail, "event stream closed: its credential no longer works");
                false
            }
        }
    }
}
