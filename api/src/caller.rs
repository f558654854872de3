//! Who calls: the bearer token turned into a caller, as axum's `jwt` example turns a token
//! into `Claims`. A handler says what it needs in its signature: [`Reader`], [`Deployer`],
//! [`TenantAdmin`] or [`ClusterAdmin`] for developers and operators (each a role that
//! includes the ones before it), while the node-to-node routers sit behind
//! [`require_peer`], which takes signed calls, never a bearer token; a route with none of
//! them is public.

use axum::body::Body;
use axum::extract::{FromRequestParts, OriginalUri, Request, State};
use axum::http::Method;
use axum::http::header::{AUTHORIZATION, HOST};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use proto::tenancy::Role;

use crate::error::ApiError;
use crate::node_auth::{self, CallParts, MacRefusal, NodeAuth};
use crate::state::{ApiState, MAX_JSON_BODY};

/// Who holds a bearer token. Other agents hold none: their calls are signed one by one
/// ([`Peer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A developer or operator.
    User(Principal),
}

/// A developer or operator, as far as the API is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The cluster administrator (the agents' `--api-token`): every tenant, every node.
    Admin,
    /// A token of one tenant, with its role there.
    Tenant(TenantCaller),
}

/// A tenant token's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCaller {
    pub tenant: String,
    pub role: Role,
    pub token_id: String,
    pub token_name: Option<String>,
    pub expires_at_ms: Option<u64>,
}

impl Principal {
    /// The tenant the caller is confined to; `None` for the cluster administrator.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Tenant(caller) => Some(&caller.tenant),
        }
    }

    /// The caller's role within its tenant (the administrator has every role).
    pub fn role(&self) -> Role {
        match self {
            Principal::Admin => Role::Admin,
            Principal::Tenant(caller) => caller.role,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    /// Whether the caller may see and change what belongs to `owner` (`None`: the
    /// administrator's own apps).
    pub fn may_touch(&self, owner: Option<&str>) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Tenant(caller) => owner == Some(caller.tenant.as_str()),
        }
    }

    /// The token's id, for audit records ("admin" for the administrator's token).
    pub fn token_id(&self) -> &str {
        match self {
            Principal::Admin => "admin",
            Principal::Tenant(caller) => &caller.token_id,
        }
    }
}

/// Tells who holds a bearer token. Implemented by the agent.
pub trait Authenticate: Send + Sync + 'static {
    /// `Err` says why the token opens nothing ([`ApiError::Unauthorized`] for a token
    /// that is simply wrong, [`ApiError::TokenRefused`] when there is more to say).
    fn authenticate(&self, token: &str) -> Result<Caller, ApiError>;

    /// The verifier of node calls ([`crate::node_auth`]); `None` refuses every one.
    fn node_auth(&self) -> Option<&NodeAuth>;
}

pub(crate) fn caller_of<S: Authenticate>(parts: &Parts, auth: &S) -> Result<Caller, ApiError> {
    let token = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    auth.authenticate(token.trim())
}

/// The user behind a request that needs at least `needed`, or why not.
fn user_with<S: Authenticate>(
    parts: &Parts,
    state: &ApiState<S>,
    needed: Role,
) -> Result<Principal, ApiError> {
    let Caller::User(principal) = caller_of(parts, &*state.service)?;
    if principal.role() < needed {
        return Err(ApiError::Forbidden {
            needed: needed.as_str(),
            role: principal.role().as_str(),
        });
    }
    Ok(principal)
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub Principal);

        impl<S: Authenticate> FromRequestParts<ApiState<S>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &ApiState<S>,
            ) -> Result<$name, ApiError> {
                user_with(parts, state, $role).map($name)
            }
        }
    };
}

role_extractor!(
    /// Any valid user token: reads of its tenant's apps.
    Reader,
    Role::Read
);
role_extractor!(
    /// A token that may change its tenant's apps (deploy, scale, config, ...).
    Deployer,
    Role::Deploy
);
role_extractor!(
    /// A token that may manage its tenant's tokens.
    TenantAdmin,
    Role::Admin
);

/// The cluster administrator only: tenants, quotas, nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAdmin(pub Principal);

impl<S: Authenticate> FromRequestParts<ApiState<S>> for ClusterAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState<S>,
    ) -> Result<ClusterAdmin, ApiError> {
        let principal = user_with(parts, state, Role::Read)?;
        if !principal.is_admin() {
            return Err(ApiError::Forbidden {
                needed: "cluster admin",
                role: principal.role().as_str(),
            });
        }
        Ok(ClusterAdmin(principal))
    }
}

/// A request from another agent of this cluster: its call carried a valid node MAC
/// ([`crate::node_auth`]). Only [`require_peer`] makes one; no bearer token is a peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(());

impl<S: Authenticate> FromRequestParts<ApiState<S>> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &ApiState<S>) -> Result<Peer, ApiError> {
        parts
            .extensions
            .get::<Peer>()
            .copied()
            .ok_or(ApiError::Unauthorized)
    }
}

/// The node-call layer in front of the node-to-node routers (`/v1/internal`, `/v1/blobs`):
/// anything under them, even a path that does not exist, answers 401 to anyone but a peer
/// whose call is signed ([`crate::node_auth`]), fresh, not a replay, and whose body is the
/// one it signed.
pub async fn require_peer<S: Authenticate>(
    State(state): State<ApiState<S>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let node_auth = state.service.node_auth().ok_or(ApiError::Unauthorized)?;
    let (mut parts, body) = request.into_parts();
    let authorization = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .filter(|value| value.starts_with(node_auth::SCHEME))
        .ok_or(ApiError::Unauthorized)?;
    let content_sha256 = parts
        .headers
        .get(node_auth::CONTENT_SHA256)
        .and_then(|value| value.to_str().ok())
        .ok_or(ApiError::NodeCallRefused(MacRefusal::Malformed))?;
    // Inside a nested router the path has lost its prefix; the MAC covers the whole one.
    let uri = parts
        .extensions
        .get::<OriginalUri>()
        .map(|original| original.0.clone())
        .unwrap_or_else(|| parts.uri.clone());
    let authority = parts
        .headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()))
        .unwrap_or("");
    let call = CallParts {
        method: parts.method.as_str(),
        authority,
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        content_sha256,
    };
    node_auth
        .verify(authorization, &call)
        .map_err(ApiError::NodeCallRefused)?;
    let body = match streamed_digest(&parts.method, uri.path()) {
        // The blob store checks the streamed bytes against the digest in the path before it
        // keeps them; the MAC binds that digest to this call.
        Some(digest) if digest == content_sha256 => body,
        Some(_) => return Err(ApiError::NodeCallRefused(MacRefusal::BodyMismatch)),
        None => {
            let bytes = axum::body::to_bytes(body, MAX_JSON_BODY)
                .await
                .map_err(|err| {
                    let too_large = std::error::Error::source(&err)
                        .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
                    if too_large {
                        ApiError::PayloadTooLarge {
                            limit: MAX_JSON_BODY as u64,
                            hint: "node calls other than blob copies carry small JSON bodies",
                        }
                    } else {
                        ApiError::BadRequest(format!("cannot read the body: {err}"))
                    }
                })?;
            if node_auth::sha256_hex(&bytes) != content_sha256 {
                return Err(ApiError::NodeCallRefused(MacRefusal::BodyMismatch));
            }
            Body::from(bytes)
        }
    };
    parts.extensions.insert(Peer(()));
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// The digest a streamed node-call body must have, named by its path: blob uploads only.
fn streamed_digest<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    if method != Method::PUT {
        return None;
    }
    path.strip_prefix("/v1/blobs/")
        .filter(|digest| !digest.contains('/'))
}
