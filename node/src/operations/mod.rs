//! What users and peers ask of this node through the API: [`service`] implements the API's
//! service traits and hands each call to the module that does the work: [`deploy`]
//! (accepting deploys, blobs, records), [`build_release`] (a deploy's build, placed and
//! followed), [`changes`] (scale, rollback, restart, drain) and
//! [`health`] (the node's checks). Each writes catalog records; the control loops act on
//! them.

pub mod build_release;
pub mod changes;
pub mod deploy;
pub mod health;
pub mod service;
