//! The Stratus daemon: everything `stratus agent` runs on a host, and the CLI around it.
//!
//! This crate owns the node's side of the cluster: joining and gossiping ([`membership`],
//! the only module that uses chitchat), sealing gossip ([`seal`]), finding seeds
//! ([`seeds`]), sampling load ([`load`]), running replicas ([`runtime`]), checking their
//! health ([`health`]) and wiring it all into the agent ([`agent`]).
//! Decisions are pure functions over data (the cluster view, the seal codec, the load
//! change rule); the I/O shells around them stay thin. The library never uses `ingress`: only the
//! binary (`main.rs`) wires the agent's route feed into it.
//!
//! Layout:
//! - [`agent`]: `run(config, shutdown)`, the daemon's main loop;
//! - [`config`]: flags, environment and TOML file;
//! - [`membership`]: chitchat, the sealed UDP transport and the typed [`membership::ClusterView`];
//! - [`seal`]: keyring, AEAD wire codec and fragment reassembly;
//! - [`seeds`]: seed parsing and DNS (A/AAAA/SRV) resolution;
//! - [`load`]: `sysinfo` sampling and when to republish;
//! - [`reconciler`]: the pure per-app reconciler (rollouts, rollback, surplus, grace);
//! - [`placement`]: its driver: placements, stop requests, failure records;
//! - [`changes`]: scale, rollback, restart, drain;
//! - [`runtime`]: the container runtime drivers (Docker, plain processes) and host ports;
//! - [`health`]: HTTP/TCP probes and the healthy/unhealthy state machine;
//! - [`generation`]: the per-restart generation number;
//! - [`cli`]: the `nodes` table.

pub mod agent;
pub mod bundle;
pub mod catalog;
pub mod catalog_sync;
pub mod changes;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod generation;
pub mod health;
pub mod hlc;
pub mod load;
pub mod logging;
pub mod logs;
pub mod membership;
pub mod placement;
pub mod reconciler;
pub mod runtime;
pub mod scheduler;
pub mod seal;
pub mod seeds;
pub mod state;
pub mod supervisor;
