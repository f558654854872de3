//! What users and peers ask of this node through the API: accepting deploys, changes
//! (scale, rollback, restart) and drains. Each writes catalog records; the control loops
//! act on them.

pub mod changes;
pub mod deploy;
