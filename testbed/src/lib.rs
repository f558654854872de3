//! Test and measurement tools for Stratus clusters.
//!
//! - [`harness`]: starts real `stratus agent` processes on distinct loopback addresses,
//!   kills (-9), stops (SIGTERM) and restarts them, and waits for conditions on what each
//!   node reports through its API;
//! - [`cgroups`]: a cgroup v2 per agent, which the harness starts agents in and partitions
//!   match unbound sockets by;
//! - [`sim`]: an in-process cluster of up to thousands of nodes on chitchat's in-memory
//!   transport and tokio's paused clock, driving the same membership code as the agent;
//! - [`chaos`]: continuous load through an ingress, nftables partitions, host and agent
//!   loss, and the cluster every chaos scenario starts from;
//! - [`compose`]: Docker Compose, for the tests that run `docker-compose.yml`;
//! - [`scenario`]: scenarios as lists of steps on real agents (the in-process cluster's
//!   vocabulary, `node::testsuite::Step`) and on the chaos stage ([`scenario::ChaosStep`]);
//! - [`bench`]: the figures printed by `testbed bench ...` ([`bench_failover`]: kill -9 of a
//!   host → traffic off it, replacements healthy);
//! - [`bench_ingress`]: `testbed bench ingress`, the ingress against nginx and HAProxy;
//! - [`bench_build`]: `testbed bench build`, deploys from source on agents with a Docker
//!   daemon each (cold build, code-only redeploy, image spread against save | load);
//! - [`bench_dns`]: `testbed bench dns`, the agents' DNS server (queries/s, freshness);
//! - [`bench_internal`]: `testbed bench internal`, an app-to-app call through the
//!   node-local balancer against a direct one.
//!
//! It depends on everything and nothing depends on it.

pub mod bench;
pub mod bench_build;
pub mod bench_dns;
pub mod bench_failover;
pub mod bench_ingress;
pub mod bench_internal;
pub mod bench_pingora;
pub mod cgroups;
pub mod chaos;
pub mod compose;
pub mod harness;
pub mod scenario;
pub mod sim;
