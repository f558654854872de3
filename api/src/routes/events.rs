//! `/v1/events`: the cluster's changes as the answering node saw them, as server-sent
//! events (each with its index as `id`, so a browser's `EventSource` resumes by itself
//! through `Last-Event-ID`), or as NDJSON with `Accept: application/x-ndjson`.

use std::convert::Infallible;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt as _;
use proto::api::ErrorBody;
use proto::events::{Event, EventLine};

use super::shared::{NDJSON, Query, deadline, wants_ndjson};
use crate::caller::Reader;
use crate::error::ApiError;
use crate::service::{EventQuery, Service};
use crate::state::{ApiConfig, ApiState};

pub fn router<S: Service>(config: &ApiConfig) -> Router<ApiState<S>> {
    Router::new().route(
        "/v1/events",
        deadline(get(events::<S>), config.request_timeout),
    )
}

/// The events this node keeps that the token may see (a tenant's token: node events and
/// its own apps'), then, unless `follow=false`, each new one as it happens. Silence is
/// broken by a heartbeat (an SSE comment, or `{"heartbeat":INDEX}`) so proxies keep the
/// stream open. A `since` the node no longer keeps is 410 `gone`; a reader that falls a
/// whole buffer behind gets a last `gone` event.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(EventQuery),
    responses(
        (status = 200, content_type = "text/event-stream", body = Event,
            description = "one server-sent event per change: `id` its index, `event` its kind, `data` the event as JSON"),
        (status = 200, content_type = "application/x-ndjson", body = Event,
            description = "asked for with Accept: application/x-ndjson: one JSON object a line"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 410, body = ErrorBody, description = "`since` is no longer kept on this node: read the state, then follow from the index the error names"),
    ),
    security(("token" = [])))]
async fn events<S: Service>(
    State(state): State<ApiState<S>>,
    Reader(caller): Reader,
    headers: HeaderMap,
    Query(mut query): Query<EventQuery>,
) -> Result<Response, ApiError> {
    if query.since.is_none() {
        query.since = last_event_id(&headers)?;
    }
    let lines = state
        .service
        .events(&caller, query, state.config.event_heartbeat)?;
    if wants_ndjson(&headers) {
        let chunks = lines.map(|line| Ok::<_, Infallible>(Bytes::from(ndjson_line(&line))));
        let mut response = Body::from_stream(chunks).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
        return Ok(response);
    }
    Ok(Sse::new(lines.map(|line| Ok::<_, Infallible>(sse_event(&line)))).into_response())
}

/// An `EventSource` reconnecting sends the `id` of the last event it got.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest(
                "Last-Event-ID must be the index of an event (a number)".to_string(),
            )
        })
}

fn ndjson_line(line: &EventLine) -> String {
    let mut text = serde_json::to_string(line).unwrap_or_else(|err| {
        format!(r#"{{"gone":"cannot encode an event ({err}): follow again"}}"#)
    });
    text.push('\n');
    text
}

fn sse_event(line: &EventLine) -> SseEvent {
    match line {
        EventLine::Event(event) => {
            let data = serde_json::to_string(event).unwrap_or_default();
            SseEvent::default()
                .id(event.index.to_string())
                .event(event.change.kind())
                .data(data)
        }
        EventLine::Heartbeat { heartbeat } => {
            SseEvent::default().comment(format!("heartbeat {heartbeat}"))
        }
        EventLine::Gone { gone } => SseEvent::default().event("gone").data(gone.as_str()),
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(events),
    components(schemas(
        Event,
        proto::events::Change,
        proto::events::Topic,
        proto::events::ReplicaRef
    ))
)]
pub struct EventsApi;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_event_id_must_be_an_index() {
        let mut headers = HeaderMap::new();
        assert_eq!(last_event_id(&headers).unwrap(), None);
        headers.insert("last-event-id", HeaderValue::from_static(" 42"));
        assert_eq!(last_event_id(&headers).unwrap(), Some(42));
        headers.insert("last-event-id", HeaderValue::from_static("x"));
        assert!(last_event_id(&headers).is_err());
    }
}
