//! Running replicas on this node: the supervisor (start, watch, restart with jittered backoff, stop),
//! the runtime drivers (Docker, plain processes), health probes, replica output and what
//! replicas use.

pub mod admission_control;
pub mod health;
pub mod logs;
pub mod replica;
pub mod restart_backoff;
pub mod runtime;
pub mod supervisor;
pub mod usage;
