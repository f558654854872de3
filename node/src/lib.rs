//! The Stratus daemon: everything `stratus agent` runs on a host, and the CLI around it.
//!
//! This crate owns the node's side of the cluster. Decisions are pure functions over data
//! (the cluster view, the seal codec, the scheduler, the reconciler and its driver's plan);
//! the I/O shells around them stay thin. It must never depend on `ingress`: the agent hands
//! the binary `proto`-typed route feeds (`agent::Feeds`), and `main.rs` wires them into the
//! ingress (`embedded_ingress.rs`) and the node-local balancer (`internal_balancer.rs`).
//!
//! Layout, one folder per area:
//! - [`agent`]: `run(config, listeners, transport, shutdown)`, the daemon as a library
//!   function, and the supervisor of its loops;
//! - [`audit_log`]: the mutating API calls this node served, kept here;
//! - [`config`]: flags, environment and TOML file;
//! - [`cluster`]: membership (chitchat, the only user of it), the sealed UDP transport,
//!   seeds, load sampling and the generation counter;
//! - [`control`]: the catalog and its sync, the hybrid logical clock, the scheduler, the
//!   pure reconciler and its driver;
//! - [`dns`]: DNS for apps and nodes, answered from the node's view (`--dns-addr`);
//! - [`events`]: the cluster's events as this node sees them, derived from its view and
//!   catalog, kept for readers that resume;
//! - [`workload`]: the replica supervisor, runtime drivers (Docker, plain processes),
//!   health probes and replica logs;
//! - [`operations`]: what the API asks of the node: deploys, scale, rollback, restart, drain;
//! - [`secrets`]: config vars: their rules and their sealing at rest;
//! - [`tenancy`]: tenants and their tokens, replicated like app records, and quotas;
//! - [`build`]: deploys from source (in progress): the builder a folder takes and each
//!   builder's recipe, pure;
//! - [`bundle`]: app bundles: packing, hostile-zip checks, the content-addressed store, S3;
//! - [`handles`]: the agent's handles (catalog, bundles, admission, replicas, peers), each
//!   owning its state, given to the loops and services that use them;
//! - [`cli`]: tables and the deploy client of the `stratus` binary;
//! - [`logging`]: the daemon's log output;
//! - [`metrics`]: what `/metrics` shows of the agent (Prometheus text format);
//! - `testsuite` (feature `testsuite`): `cluster_for_test(n)`, agents in one process;
//! - `sandbox_dockerd` (feature `testsuite`): a second Docker daemon with its own image
//!   store, bridge and folders, for tests that need a Docker of their own.

pub mod agent;
pub mod audit_log;
pub mod build;
pub mod bundle;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dns;
pub mod events;
pub mod handles;
pub mod logging;
pub mod metrics;
pub mod operations;
#[cfg(feature = "testsuite")]
pub mod sandbox_dockerd;
pub mod secrets;
pub mod tenancy;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod workload;
