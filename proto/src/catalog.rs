//! The app catalog as it is gossiped and stored: one record per app, last writer wins.
//!
//! There is no central database. Every node holds the whole catalog; a change is a new
//! [`AppRecord`] with a newer [`Stamp`], and every node keeps, for each app, the record
//! with the greatest stamp. Stamps come from a hybrid logical clock, so they order the
//! same way everywhere and never go backwards on one node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::blob::BlobRef;
use crate::build::{BuildSummary, ImageRef};
use crate::manifest::Manifest;

/// A hybrid-logical-clock timestamp with the writer's node id as the final tie-break.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stamp {
    pub wall_ms: u64,
    pub counter: u32,
    pub node_id: String,
}

/// One numbered, immutable release of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Release {
    pub number: u64,
    pub bundle: BlobRef,
    pub manifest: Manifest,
    pub created_at_ms: u64,
    /// The node that accepted the deploy.
    pub created_on: String,
    /// Why the release exists when it is not a plain deploy: "rollback to 3", "restart".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The image built from the bundle; `None`: no build (the manifest's or the node's
    /// default image runs with the bundle mounted at `/app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    /// The app's config vars (`stratus config set`), sealed with a key derived from the
    /// cluster key: only agents of the cluster can read them. Carried over by every later
    /// release until changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<SealedConfig>,
}

/// Config vars at rest and in gossip: an AEAD ciphertext of their JSON map, bound to the
/// app's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SealedConfig {
    /// Fingerprint of the cluster key that sealed it.
    pub key_id: String,
    /// Hex.
    pub nonce: String,
    /// Base64.
    pub ciphertext: String,
}

/// Everything the cluster must agree on about one app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppRecord {
    pub name: String,
    pub stamp: Stamp,
    /// The tenant that owns the app; `None`: the cluster administrator's own app. Set by
    /// the first deploy and carried over by every later write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A destroyed app stays as a tombstone so a node that was away learns it is gone.
    pub deleted: bool,
    /// The release that should run.
    pub release: Option<Release>,
    /// Desired number of replicas.
    pub replicas: u32,
    /// Releases whose rollout failed, with the reason; the app went back to the release
    /// it ran before. Carried over by every later write of the record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<u64, String>,
    /// The last builds, by release number, failed ones included; carried over like
    /// `failed`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub builds: BTreeMap<u64, BuildSummary>,
    /// When the app first claimed each of its `domains` (lowercase): the oldest claim of a
    /// domain wins it over other tenants' apps, on every ingress alike. Kept by every later
    /// write while the domain stays in the manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub domain_claims: BTreeMap<String, Stamp>,
}

impl AppRecord {
    /// Whether `self` replaces `other` under last-writer-wins.
    pub fn supersedes(&self, other: &AppRecord) -> bool {
        self.stamp > other.stamp
    }
}
