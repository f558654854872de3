//! Tenants and their tokens, with no central store: records merged last-writer-wins on
//! every node and spread by gossip like app records ([`proto::tenancy`]).
//!
//! - [`directory`]: the pure part: merge rules, token checks, quota arithmetic;
//! - [`reservations`]: the quota keeper's holds, pure;
//! - [`store`]: the redb file that keeps the directory across restarts;
//! - [`handle`]: the directory as the agent's tasks share it;
//! - [`sync`]: the loop that merges what gossip brings and publishes what this node keeps.

pub mod directory;
pub mod handle;
pub mod reservations;
pub mod store;
pub mod sync;

pub use directory::{Directory, Grant, Refusal};
pub use handle::TenancyHandle;
