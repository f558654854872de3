//! API errors and their HTTP status, decided here and nowhere else.
//!
//! Every error the API answers carries an [`ErrorCode`]; the code alone picks the status.
//! Domain errors of the node (storage, bundles, ...) implement [`ServiceError`] to say
//! which code they are, as quickwit's `ServiceError::error_code()` does, so a storage
//! failure is a 500 with its reason and a missing blob a 404.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proto::api::ErrorBody;

/// What kind of failure an error is: the machine-friendly `error` field of [`ErrorBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    UnknownApp,
    UnknownBlob,
    BadRequest,
    PayloadTooLarge,
    InvalidBundle,
    InvalidManifest,
    BuildFailed,
    Conflict,
    Unavailable,
    Timeout,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound | ErrorCode::UnknownApp | ErrorCode::UnknownBlob => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidBundle | ErrorCode::InvalidManifest | ErrorCode::BuildFailed => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnknownApp => "unknown_app",
            ErrorCode::UnknownBlob => "unknown_blob",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidBundle => "invalid_bundle",
            ErrorCode::InvalidManifest => "invalid_manifest",
            ErrorCode::BuildFailed => "build_failed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A domain error that knows which [`ErrorCode`] it is.
pub trait ServiceError: std::error::Error {
    fn error_code(&self) -> ErrorCode;
}

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
    #[error("body larger than the limit of {limit} bytes: {hint}")]
    PayloadTooLarge { limit: u64, hint: &'static str },
    #[error("invalid bundle: {0}")]
    InvalidBundle(String),
    #[error("{0}")]
    InvalidManifest(String),
    /// The build or the release command failed: the previous release keeps serving.
    #[error("{0}")]
    BuildFailed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the request took longer than {0:?}: try again, or ask another node")]
    Timeout(std::time::Duration),
    #[error("internal error: {0}")]
    Internal(String),
    /// A domain error, with the code it chose.
    #[error("{detail}")]
    Service { code: ErrorCode, detail: String },
}

/// Hint for an upload over `--max-upload-bytes`.
pub const UPLOAD_LIMIT_HINT: &str =
    "shrink the bundle (.stratusignore) or raise the agent's --max-upload-bytes";

impl ApiError {
    /// A domain error, keeping the code it says it is.
    pub fn from_service<E: ServiceError>(err: E) -> ApiError {
        ApiError::Service {
            code: err.error_code(),
            detail: err.to_string(),
        }
    }

    /// An upload over `limit` bytes.
    pub fn upload_too_large(limit: u64) -> ApiError {
        ApiError::PayloadTooLarge {
            limit,
            hint: UPLOAD_LIMIT_HINT,
        }
    }

    pub fn error_code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::NotFound { .. } => ErrorCode::NotFound,
            ApiError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            ApiError::UnknownApp(_) => ErrorCode::UnknownApp,
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::InvalidBundle(_) => ErrorCode::InvalidBundle,
            ApiError::InvalidManifest(_) => ErrorCode::InvalidManifest,
            ApiError::BuildFailed(_) => ErrorCode::BuildFailed,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Timeout(_) => ErrorCode::Timeout,
            ApiError::Internal(_) => ErrorCode::Internal,
            ApiError::Service { code, .. } => *code,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.error_code().status()
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.error_code().as_str().to_string(),
            detail: self.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "API request failed");
        }
        (status, axum::Json(self.body())).into_response()
    }
}

/// Malformed, wrongly typed or oversized JSON bodies.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge {
                limit: crate::state::MAX_JSON_BODY as u64,
                hint: "JSON bodies of the API are small: check what is being sent",
            };
        }
        ApiError::BadRequest(format!("invalid JSON body: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::BadRequest(format!("invalid query string: {}", rejection.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::BadRequest(format!("invalid path: {}", rejection.body_text()))
    }
}
