//! API errors and their HTTP status, decided here and nowhere else.
//!
//! Every error the API answers carries an [`ErrorCode`]; the code alone picks the status.
//! Domain errors of the node (storage, bundles, ...) implement [`ServiceError`] to say
//! which code they are, as quickwit's `ServiceError::error_code()` does, so a storage
//! failure is a 500 with its reason and a missing blob a 404.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use proto::api::ErrorBody;

use crate::node_auth::MacRefusal;

/// What kind of failure an error is: the machine-friendly `error` field of [`ErrorBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
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
    QuotaExceeded,
    /// A resume point (`?since=`) this node no longer has.
    Gone,
    RateLimited,
    Unavailable,
    Timeout,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::UnknownApp | ErrorCode::UnknownBlob => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidBundle | ErrorCode::InvalidManifest | ErrorCode::BuildFailed => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::Conflict | ErrorCode::QuotaExceeded => StatusCode::CONFLICT,
            ErrorCode::Gone => StatusCode::GONE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
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
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Gone => "gone",
            ErrorCode::RateLimited => "rate_limited",
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
    /// A token in the tenant format that opens nothing, and why (revoked, expired...).
    #[error("{0}")]
    TokenRefused(String),
    /// A node call whose signature, time, nonce or body does not hold up.
    #[error("node call refused: {0}")]
    NodeCallRefused(MacRefusal),
    /// More calls than `--api-rate-limit` lets through for this token (or address).
    #[error(
        "too many requests for this token: try again in {} s (the agents' --api-rate-limit)",
        retry_after_secs(*.retry_after)
    )]
    RateLimited { retry_after: std::time::Duration },
    /// A valid token without the role the call needs.
    #[error(
        "this call needs the {needed} role; the token has {role}: use a token with that role (`stratus whoami` shows yours)"
    )]
    Forbidden {
        needed: &'static str,
        role: &'static str,
    },
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
            ApiError::Unauthorized | ApiError::TokenRefused(_) => ErrorCode::Unauthorized,
            // A full replay cache says nothing about the caller: it may try again.
            ApiError::NodeCallRefused(refusal) if refusal.is_busy() => ErrorCode::Unavailable,
            ApiError::NodeCallRefused(_) => ErrorCode::Unauthorized,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Forbidden { .. } => ErrorCode::Forbidden,
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
        let mut response = (status, axum::Json(self.body())).into_response();
        if let ApiError::RateLimited { retry_after } = &self {
            let headers = response.headers_mut();
            headers.insert(
                RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*retry_after)),
            );
            headers.insert(crate::rate_limit::REMAINING, HeaderValue::from(0u32));
        }
        response
    }
}

/// `Retry-After` counts whole seconds: round up, so a client that waits that long is let in.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
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
