//! The Stratus HTTP API: the server every agent embeds and the typed client the CLI uses.
//!
//! The server knows nothing about gossip or Docker: the agent implements the service traits
//! of [`service`] and the routers turn HTTP requests into calls on them. It must never
//! depend on `node` (the dependency goes the other way) nor on the gossip library.
//!
//! Layout:
//! - [`routes`]: one router per resource (`apps`, `nodes`, `blobs`, `internal`) and the
//!   layers around them;
//! - [`caller`]: the bearer token as an extractor ([`User`]) and the node-token layer;
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
pub mod openapi;
pub mod routes;
pub mod server;
pub mod service;
pub mod state;
pub mod upload;

pub use caller::{Authenticate, Caller, Peer, User};
pub use client::{Client, ClientError};
pub use error::{ApiError, ErrorCode, ServiceError};
pub use routes::router;
pub use server::{ServeLimits, serve};
pub use service::{
    AppsService, BlobsService, BuildEvents, InternalService, LineStream, LogQuery, NodesService,
    Service,
};
pub use state::{ApiConfig, ApiState};
pub use upload::Upload;
