//! Types that cross a process boundary: gossip keys and values, HTTP API bodies.
//!
//! This crate owns the *shape* of what Stratus nodes tell each other and what the API
//! returns. It is plain data with `serde`: it must never depend on tokio, sockets,
//! the gossip library or Docker, so every other crate (and external tools) can use it.
//!
//! Layout:
//! - [`gossip`]: the versioned key schema and the values published under it;
//! - [`node`]: what a node says about itself (identity, load);
//! - [`container`]: one record per container a node runs;
//! - [`blob`]: a blob of the content-addressed store;
//! - [`build`]: builders, built images, build records and the events a build streams;
//! - [`catalog`]: app records and releases, last writer wins by hybrid logical clock;
//! - [`manifest`]: `stratus.toml`, parsed and validated;
//! - [`events`]: what `GET /v1/events` streams: the cluster's changes, as one node saw them;
//! - [`routes`]: what an agent feeds the ingress embedded beside it;
//! - [`tenancy`]: tenants, their tokens and roles, and the token text format;
//! - [`api`]: request and response bodies of the HTTP API.
//!
//! With the `openapi` feature the API bodies derive `utoipa::ToSchema`, for the document
//! the api crate serves; without it the crate is serde and nothing else.

pub mod api;
pub mod blob;
pub mod build;
pub mod catalog;
pub mod container;
pub mod events;
pub mod gossip;
pub mod manifest;
pub mod node;
pub mod routes;
pub mod tenancy;

pub use container::{ContainerHealth, ContainerRecord, ContainerState};
pub use node::{NodeIdentity, NodeLoad};
