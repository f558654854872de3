//! `/v1/blobs/{sha256}`: copies of bundles, build logs and image blobs between nodes,
//! nested behind the node-call layer (signed calls only).

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::api::{BlobStored, ErrorBody};

use super::shared::{Json, Path, deadline};
use crate::error::ApiError;
use crate::service::Service;
use crate::state::{ApiConfig, ApiState};
use crate::upload::save_body;

pub fn router<S: Service>(config: &ApiConfig) -> Router<ApiState<S>> {
    Router::new().route(
        "/{sha256}",
        deadline(get(fetch::<S>), config.request_timeout).merge(deadline(
            axum::routing::put(store::<S>),
            config.upload_timeout,
        )),
    )
}

/// A verified copy of a bundle (or of an image's config or layer), streamed. `HEAD` answers
/// 200 or 404 without the body: whether this node holds it, so a copy it has is not sent.
#[utoipa::path(get, path = "/v1/blobs/{sha256}", tag = "internal",
    params(("sha256" = String, Path, description = "lowercase hex SHA-256 of the bundle")),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn fetch<S: Service>(
    State(state): State<ApiState<S>>,
    Path(sha256): Path<String>,
) -> Result<Response, ApiError> {
    let path = state.service.blob_path(&sha256).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|err| ApiError::Internal(format!("cannot open {}: {err}", path.display())))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        crate::client::FILE_CHUNK,
    ));
    Ok(([(CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// Stores a copy of a bundle, checked against its SHA-256.
#[utoipa::path(put, path = "/v1/blobs/{sha256}", tag = "internal",
    params(("sha256" = String, Path, description = "lowercase hex SHA-256 of the bundle")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = BlobStored),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 500, body = ErrorBody),
    ),
    security(("node_mac" = [])))]
async fn store<S: Service>(
    State(state): State<ApiState<S>>,
    Path(sha256): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<BlobStored>), ApiError> {
    let upload = save_body(
        body,
        &state.config.upload_dir,
        state.config.max_upload_bytes,
    )
    .await?;
    state.service.put_blob(&sha256, upload).await?;
    Ok((StatusCode::CREATED, Json(BlobStored { sha256 })))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(fetch, store))]
pub struct BlobsApi;
