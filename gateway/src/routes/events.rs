//! `GET /v1/jobs/{id}/events` (Server-Sent Events) and `/v1/jobs/{id}/ws` (WebSocket): a job's events. Each event's id is its sequence in the events
//! stream, so `Last-Event-ID` resumes exactly after the last event a client saw; a listener that connects late
//! replays everything first, then follows live. The stream ends after the `end` event (the terminal record).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Response;
use fleet_shared::wire::JobEvent;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::error::{ApiError, Path, Problem, Query};
use crate::jobs::follow::job_events;
use crate::state::AppState;
use fleet_shared::ErrorCode;

/// Follow a job: `status`, `output` (stdout/stderr text with sequence numbers), `output_limit`, `artifact`, and
/// finally `end` with the terminal record. Send `Last-Event-ID` to resume.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = Uuid, Path), ("Last-Event-ID" = Option<String>, Header,
        description = "Resume after this event (an `id` of this stream; any other value replays from the start)")),
    responses((status = 200, description = "text/event-stream of JobEvent (JSON)", body = JobEvent,
        content_type = "text/event-stream"),
        (status = 404, body = Problem), (status = 503, body = Problem)))]
pub async fn events(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let stream = job_events(&state, &caller, id, after)
        .await?
        .map(|(seq, event)| Ok(sse(seq, &event)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WsParams {
    /// Resume after this event id.
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// The same events over a WebSocket: one JSON text frame per event, the event with its `id` added; the server
/// closes after `end`. `?after=ID` resumes.
#[utoipa::path(get, path = "/v1/jobs/{id}/ws", tag = "jobs", params(("id" = Uuid, Path), WsParams),
    responses((status = 101, description = "WebSocket of JobEvent JSON frames"),
        (status = 422, description = "Not a WebSocket upgrade request", body = Problem),
        (status = 404, body = Problem), (status = 503, body = Problem)))]
pub async fn websocket(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(params): Query<WsParams>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|r| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{} (connect with a WebSocket client)", r.body_text()),
        )
    })?;
    let after = match params.after {
        Some(after) => Some(u64::try_from(after).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "`after` must be an event id (0 or more)",
            )
        })?),
        None => None,
    };
    let mut events = job_events(&state, &caller, id, after).await?;
    Ok(upgrade.on_upgrade(move |mut socket| async move {
        while let Some((seq, event)) = events.next().await {
            // An event always serializes.
            let mut frame = serde_json::to_value(&event).unwrap_or_default();
            if let (Some(seq), Some(map)) = (seq, frame.as_object_mut()) {
                map.insert("id".into(), seq.into());
            }
            if socket
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
        }
        // The client may be gone already; closing is all that is left to do.
        let _ = socket.send(Message::Close(None)).await;
    }))
}

fn sse(seq: Option<u64>, event: &JobEvent) -> Event {
    let e = Event::default().event(event.kind());
    let e = match seq {
        Some(seq) => e.id(seq.to_string()),
        None => e,
    };
    e.json_data(event)
        .unwrap_or_else(|_| Event::default().event("error").data("unencodable event"))
}
