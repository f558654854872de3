//! The rate-limit layer on the user routers: the caller's bucket in [`crate::rate_limit`]
//! is charged, a call over the limit gets 429 before it is audited or served, and every
//! other answer says how many calls are left.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::caller::{Authenticate, Caller, caller_of};
use crate::error::ApiError;
use crate::rate_limit::{REMAINING, RateKey};
use crate::state::ApiState;

/// The layer on the user routers: 429 over the limit, `RateLimit-Remaining` otherwise.
pub async fn limit<S: Authenticate>(
    State(state): State<ApiState<S>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(limiter) = state.limiter.as_deref() else {
        return Ok(next.run(request).await);
    };
    let (parts, body) = request.into_parts();
    let key = match caller_of(&parts, &*state.service) {
        Ok(Caller::User(principal)) => RateKey::Token(principal.token_id().to_string()),
        // A wrong or missing token: the address pays, so guessing tokens is slowed down too.
        Err(_) => RateKey::Address(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |info| info.0.ip()),
        ),
    };
    let remaining = limiter
        .check(&key)
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let mut response = next.run(Request::from_parts(parts, body)).await;
    response
        .headers_mut()
        .insert(REMAINING, HeaderValue::from(remaining));
    Ok(response)
}
