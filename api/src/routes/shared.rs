//! What the resource routers share: extractors whose rejections are [`ApiError`]s, the
//! per-route deadline, and the streamed line body.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use futures_util::StreamExt as _;
use tower::ServiceBuilder;

use crate::error::ApiError;
use crate::service::{LineStream, Service};
use crate::state::ApiState;

/// Bounds how long `route` may take to answer; a streamed answer (a followed log, a blob)
/// may go on after that. The limit is per route: uploads get longer than JSON calls.
pub fn deadline<S: Service>(
    route: MethodRouter<ApiState<S>>,
    limit: Duration,
) -> MethodRouter<ApiState<S>> {
    route.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |err: tower::BoxError| {
                timeout_error(err, limit)
            }))
            .timeout(limit),
    )
}

async fn timeout_error(err: tower::BoxError, limit: Duration) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout(limit)
    } else {
        ApiError::Internal(err.to_string())
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s, so a bad body gets the API's JSON
/// error like every other failure.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` with [`ApiError`] rejections.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` with [`ApiError`] rejections.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Streams lines as a chunked `text/plain` body, each sent as soon as it exists.
pub fn lines_response(lines: LineStream) -> Response {
    let chunks = lines.map(|line| Ok::<_, Infallible>(Bytes::from(line + "\n")));
    let mut response = Body::from_stream(chunks).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The media type of newline-delimited JSON answers.
pub const NDJSON: &str = "application/x-ndjson";

/// Whether the client asked for newline-delimited JSON (`Accept: application/x-ndjson`).
pub fn wants_ndjson(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains(NDJSON))
}
