//! Being a member of the cluster: gossip membership and its typed view, the sealed UDP
//! transport, seed resolution, load sampling and the per-restart generation.
//!
//! Only [`membership`] imports chitchat; everything else sees [`membership::ClusterView`].

pub mod generation;
pub mod load;
pub mod membership;
pub mod peers;
pub mod seal;
pub mod seeds;
