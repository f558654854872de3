//! The Stratus ingress: routes public HTTP traffic to healthy app replicas.
//!
//! This crate owns the ingress's *decisions*: which app a request is for, which replica
//! serves it, when a replica is ejected and readmitted, and whether a failed request is
//! tried again. It is sans-I/O: every input takes `now` (tokio's `Instant`, never read
//! here) and, where chance is involved, an RNG; outputs are plain data, queued events and
//! next deadlines. Nothing here sleeps, spawns, awaits or opens a socket. The Pingora proxy
//! that serves traffic is a thin driver on top: it reads the clock, feeds route updates,
//! calls [`Balancer::pick`] and the outcome hooks, and acts on the answers. It lives in
//! [`proxy`] (the `ProxyHttp` hooks and the swappable [`RouteState`]) and [`server`] (the
//! Pingora servers, one per proxy thread, each on an OS thread of its own): the only modules that do I/O, with
//! [`tls::SniResolver::load`], which reads certificate files once at start.
//!
//! It is fed route updates from outside and must never depend on `node` or the gossip
//! library (chitchat): the binary turns gossip into [`RouteApp`]s and
//! [`proto::ContainerRecord`]s and hands them over.
//!
//! Layout:
//! - [`routes`]: the route table (Host and path prefix → app → routable backends) and the
//!   diff between two tables; the public ingress's and the node-local balancer's
//!   (`APP.internal`) come from the same feed;
//! - [`callers`]: who a client address is, for the balancer that keeps each tenant's
//!   containers to their own apps;
//! - [`ewma`]: a peak-sensitive latency EWMA that takes the time as an argument;
//! - [`balancer`]: per-app backend choice (power of two choices by load × latency, or
//!   round-robin), with per-backend state kept across route updates;
//! - [`breaker`]: per-backend passive outlier detection (Closed → Open → HalfOpen);
//! - [`retry`]: the retry decision and the proxy's timeouts;
//! - [`error`]: the crate's error type;
//! - [`metrics`]: the Prometheus metrics of one ingress, in a registry of its route state;
//! - [`tls`]: certificate files and the SNI choice between them;
//! - [`proxy`]: the Pingora `ProxyHttp` driver and the route state it reads;
//! - [`server`]: [`build`], [`build_bound`] and [`run`], the Pingora servers around the proxy (one per
//!   thread with plain and TLS listeners, the admin listener on the first), and their
//!   stop handle.

pub mod balancer;
pub mod breaker;
pub mod callers;
pub mod error;
pub mod ewma;
pub mod metrics;
pub mod proxy;
pub mod retry;
pub mod routes;
pub mod server;
pub mod tls;

pub use balancer::{Balancer, BalancerConfig, BreakerEvent, Outcome, Strategy};
pub use breaker::{Breaker, BreakerConfig, BreakerState, Transition};
pub use callers::{Caller, Callers};
pub use error::Error;
pub use ewma::{Ewma, EwmaConfig};
pub use metrics::Metrics;
pub use proxy::{Proxy, ProxyConfig, RouteState};
pub use retry::{RetryDecision, Timeouts};
pub use routes::{Backend, BackendId, Lookup, RouteApp, RouteTable, diff};
pub use server::{
    BoundListeners, Ingress, IngressHandle, Listeners, Stop, TlsListener, build, build_bound,
    build_reusing, run,
};
pub use tls::CertSpec;
