//! The Stratus HTTP API: the server every agent embeds and the typed client the CLI uses.
//!
//! The server knows nothing about gossip or Docker: the agent hands it an implementation
//! of [`NodeApi`] and it turns HTTP requests into calls on it. It must never depend on
//! `node` (the dependency goes the other way) nor on the gossip library.
//!
//! Layout: [`server`] (authentication and routing), [`upload`] (bodies streamed to disk
//! with their SHA-256), [`error`] (the one place an error becomes an HTTP status),
//! [`client`] (typed client).

pub mod client;
pub mod error;
pub mod server;
pub mod upload;

pub use client::{Client, ClientError};
pub use error::ApiError;
pub use server::{Caller, LineStream, LogQuery, NodeApi, serve};
pub use upload::Upload;
