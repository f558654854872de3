//! Where this node keeps bundles: its content-addressed blob store, and with
//! `--store s3://...` the bucket every bundle is kept in (the local copies are then caches),
//! plus the folders uploads land in and releases are unpacked to.

use std::path::{Path, PathBuf};

use super::{BlobStore, S3Store};

pub struct Bundles {
    local: BlobStore,
    s3: Option<S3Store>,
    uploads_dir: PathBuf,
    releases_dir: PathBuf,
}

impl Bundles {
    pub fn new(data_dir: &Path, local: BlobStore, s3: Option<S3Store>) -> Bundles {
        Bundles {
            local,
            s3,
            uploads_dir: data_dir.join("uploads"),
            releases_dir: data_dir.join("releases"),
        }
    }

    /// This node's blob store (a cache when the bundles live in S3).
    pub fn local(&self) -> &BlobStore {
        &self.local
    }

    /// The bucket, when bundles live in S3.
    pub fn s3(&self) -> Option<&S3Store> {
        self.s3.as_ref()
    }

    /// Whether a bundle is surely reachable from here: in S3, or held locally.
    pub fn reachable(&self, sha256: &str) -> bool {
        self.s3.is_some() || self.local.has(sha256)
    }

    /// Where uploads are received before they are checked and stored.
    pub fn uploads_dir(&self) -> &Path {
        &self.uploads_dir
    }

    /// Where releases are unpacked for the replicas that run them.
    pub fn releases_dir(&self) -> &Path {
        &self.releases_dir
    }
}
