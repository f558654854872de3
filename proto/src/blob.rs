//! A blob of the content-addressed store: bundles, image archives and build logs.

use serde::{Deserialize, Serialize};

/// A blob in the content-addressed store (a bundle, an image archive, a build log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobRef {
    /// Lowercase hex SHA-256 of the zip.
    pub sha256: String,
    pub size: u64,
}
