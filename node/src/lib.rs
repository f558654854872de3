//! The Stratus daemon: everything `stratus agent` runs on a host, and the CLI around it.
//!
//! This crate owns the node's side of the cluster. Decisions are pure functions over data
//! (the cluster view, the seal codec, the scheduler, the reconciler and its driver's plan);
//! the I/O shells around them stay thin. It must never depend on `ingress`: the agent hands
//! the binary `proto`-typed route feeds, and `main.rs` wires them into the ingress.
//!
//! Layout, one folder per area:
//! - [`agent`]: `run(config, listeners, transport, shutdown)`, the daemon as a library
//!   function, and the supervisor of its loops;
//! - [`config`]: flags, environment and TOML file;
//! - [`cluster`]: membership (chitchat, the only user of it), the sealed UDP transport,
//!   seeds, load sampling and the generation counter;
//! - [`control`]: the catalog and its sync, the hybrid logical clock, the scheduler, the
//!   pure reconciler and its driver;
//! - [`workload`]: the replica supervisor, runtime drivers (Docker, plain processes),
//!   health probes and replica logs;
//! - [`operations`]: what the API asks of the node: deploys, scale, rollback, restart, drain;
//! - [`build`]: deploys from source (in progress): the builder a folder takes and each
//!   builder's recipe, pure;
//! - [`bundle`]: app bundles: packing, hostile-zip checks, the content-addressed store, S3;
//! - [`handles`]: the agent's handles (catalog, bundles, admission, replicas, peers), each
//!   owning its state, given to the loops and services that use them;
//! - [`cli`]: tables and the deploy client of the `stratus` binary;
//! - [`logging`]: the daemon's log output;
//! - `testsuite` (feature `testsuite`): `cluster_for_test(n)`, agents in one process;
//! - `sandbox_dockerd` (feature `testsuite`): a second Docker daemon with its own image
//!   store, bridge and folders, for tests that need a Docker of their own.

pub mod agent;
pub mod build;
pub mod bundle;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod handles;
pub mod logging;
pub mod operations;
#[cfg(feature = "testsuite")]
pub mod sandbox_dockerd;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod workload;
