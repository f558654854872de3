//! The Stratus HTTP API: the server every agent embeds and the typed client the CLI uses.
//!
//! The server knows nothing about gossip or Docker: the agent implements the service traits
//! of [`service`] and the routers turn HTTP requests into calls on them. It must never
//! depend on `node` (the dependency goes the other way) nor on the gossip library.
//!
//! Layout:
//! - [`routes`]: one router per resource (`apps`, `nodes`, `blobs`, `internal`, ...), the
//!   dashboard's embedded page (`routes::dashboard`, files in `assets/dashboard/`) and the
//!   layers around them;
//! - [`caller`]: the bearer token as a [`Principal`], the role extractors ([`Reader`],
//!   [`Deployer`], [`TenantAdmin`], [`ClusterAdmin`]) and the node-call layer;
//! - [`node_auth`]: node-to-node calls signed one by one (HMAC, timestamp, nonce), the
//!   pure verifier and its replay cache;
//! - [`rate_limit`]: requests per token (or address) per second, and the layer that keeps it;
//! - [`tls`]: certificates and keys in PEM, the server's rustls config;
//! - [`service`]: what the agent provides, one trait per router;
//! - [`state`]: what every handler gets (the services, the limits);
//! - [`error`]: the one place an error becomes an HTTP status;
//! - [`openapi`]: the OpenAPI document, derived from the handlers;
//! - [`server`]: connections (header timeout, connection cap, graceful shutdown);
//! - [`upload`]: bodies streamed to disk with their SHA-256;
//! - [`checksum`]: the streaming SHA-256 that uploads, downloads and the node's stores share;
//! - [`client`]: the typed client.

pub mod caller;
pub mod checksum;
pub mod client;
pub mod error;
pub mod node_auth;
pub mod openapi;
pub mod rate_limit;
pub mod routes;
pub mod server;
pub mod service;
pub mod state;
pub mod tls;
pub mod upload;

pub use caller::{
    Authenticate, Caller, ClusterAdmin, Deployer, Peer, Principal, Reader, TenantAdmin,
    TenantCaller,
};
pub use client::{Client, ClientError};
pub use error::{ApiError, ErrorCode, ServiceError};
pub use node_auth::{MacKey, MacRefusal, NodeAuth, NodeSigner};
pub use rate_limit::RateLimit;
pub use routes::router;
pub use server::{ServeLimits, serve};
pub use service::{
    AppsService, AuditQuery, AuditService, AuditedCall, BlobsService, BuildEvents, EventQuery,
    EventStream, EventsService, InternalService, LineStream, LogQuery, MetricsService,
    NodesService, Service, TenancyService,
};
pub use state::{ApiConfig, ApiState};
pub use upload::Upload;
