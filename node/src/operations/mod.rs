//! What users and peers ask of this node through the API: [`service`] implements the API's
//! service traits and hands each call to the module that does the work: [`deploy`]
//! (accepting deploys, blobs, records), [`build_release`] (a deploy's build, placed and
//! followed), [`changes`] (scale, rollback, restart, drain), [`tenancy`] (tenants and
//! tokens) and [`health`] (the node's checks). [`access`] decides what a caller may see and
//! change. Each writes catalog records; the control loops act on them.

pub mod access;
pub mod audit;
pub mod build_release;
pub mod changes;
pub mod config_vars;
pub mod deploy;
pub mod health;
pub mod quota;
pub mod service;
pub mod tenancy;
