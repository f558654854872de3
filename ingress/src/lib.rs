//! The Stratus ingress: turns the cluster's gossiped container records into routes.
//!
//! It owns routing decisions only and is fed route updates from outside; it must never
//! depend on `node` or the gossip library (the binary wires gossip into it). For now it
//! holds the pure route table; the Pingora proxy that serves it is built on top of this.

pub mod routes;

pub use routes::{Backend, RouteTable};
