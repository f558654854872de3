//! API errors and their HTTP status, decided here and nowhere else.

use hyper::StatusCode;
use proto::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "missing or wrong bearer token: pass --token or set STRATUS_API_TOKEN to the agent's --api-token"
    )]
    Unauthorized,
    #[error("no route for {method} {path}: see the API reference in the README")]
    NotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("no app named {0:?}: `stratus apps` lists them")]
    UnknownApp(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "upload larger than the limit of {limit} bytes: shrink the bundle (.stratusignore) or raise the agent's --max-upload-bytes"
    )]
    PayloadTooLarge { limit: u64 },
    #[error("invalid bundle: {0}")]
    InvalidBundle(String),
    #[error("{0}")]
    InvalidManifest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } | ApiError::UnknownApp(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InvalidBundle(_) | ApiError::InvalidManifest(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let error = match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UnknownApp(_) => "unknown_app",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::InvalidBundle(_) => "invalid_bundle",
            ApiError::InvalidManifest(_) => "invalid_manifest",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        };
        ErrorBody {
            error: error.to_string(),
            detail: self.to_string(),
        }
    }
}
