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
use crate::auth::Principal;
use crate::problem::{ApiResult, Problem, Query};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event id (what `Last-Event-ID` carries, for clients that cannot set it).
    pub after: Option<i64>,
}

/// A stream of `instance.state_changed` and the other events of the caller's organization.
#[utoipa::path(get, path = "/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "`text/event-stream`: `id` is the position, `event` the type, `data` the envelope",
        content_type = "text/event-stream", body = String)))]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>> {
    let header = headers.get("last-event-id").and_then(|value| value.to_str().ok()).map(str::trim);
    let after = match header {
        Some(text) => Some(text.parse::<i64>().map_err(|_| Problem::bad_request("Last-Event-ID is not an event id"))?),
        None => query.after,
    };
    if after.is_some_and(|after| after < 0) {
        return Err(Problem::invalid("after", "must not be negative"));
    }
    let feed = state.feed.stream(principal.organization_id, after);
    let events = futures::stream::unfold(feed, |mut feed| async move {
        let entry = feed.next().await?;
        let data = String::from_utf8(entry.envelope.to_json()).unwrap_or_default();
        let event = Event::default().id(entry.seq.to_string()).event(entry.envelope.message_type.clone()).data(data);
        Some((Ok(event), feed))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
