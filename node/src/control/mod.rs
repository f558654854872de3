//! Deciding what runs where: the replicated app catalog (LWW by hybrid logical clock), the
//! scheduler, the pure per-app reconciler and the driver that runs it.
//!
//! [`scheduler`] and [`reconciler`] are pure: they take `now` and data and return actions.
//! [`reconciler_driver`] and [`catalog_sync`] are the thin I/O loops around them.

pub mod candidates;
pub mod catalog;
pub mod catalog_handle;
pub mod catalog_sync;
pub mod hlc;
pub mod reconciler;
pub mod reconciler_driver;
pub mod scheduler;
