//! Who calls: the bearer token turned into a caller, as axum's `jwt` example turns a token
//! into `Claims`. A handler that takes [`User`] is for developers and operators; the
//! node-to-node routers sit behind [`require_peer`]; a route with neither is public, and
//! that is visible in its signature.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::state::ApiState;

/// Who holds a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A developer or operator with the API token.
    User,
    /// Another agent, with the token derived from the cluster key.
    Node,
}

/// Tells who holds a bearer token. Implemented by the agent.
pub trait Authenticate: Send + Sync + 'static {
    fn authenticate(&self, token: &str) -> Option<Caller>;
}

/// A request from a developer or operator (the agents' `--api-token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User(());

/// A request from another agent of this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(());

fn caller_of<S: Authenticate>(parts: &Parts, auth: &S) -> Option<Caller> {
    let token = parts
        .headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    auth.authenticate(token.trim())
}

impl<S: Authenticate> FromRequestParts<ApiState<S>> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState<S>) -> Result<User, ApiError> {
        match caller_of(parts, &*state.service) {
            Some(Caller::User) => Ok(User(())),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

impl<S: Authenticate> FromRequestParts<ApiState<S>> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState<S>) -> Result<Peer, ApiError> {
        match caller_of(parts, &*state.service) {
            Some(Caller::Node) => Ok(Peer(())),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// The node-token layer in front of the node-to-node routers (`/v1/internal`, `/v1/blobs`):
/// anything under them, even a path that does not exist, answers 401 to anyone but a peer.
pub async fn require_peer<S: Authenticate>(
    State(state): State<ApiState<S>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    Peer::from_request_parts(&mut parts, &state).await?;
    Ok(next.run(Request::from_parts(parts, body)).await)
}
