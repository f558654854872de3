//! App bundles: the zip that `stratus deploy` uploads, from the developer's folder to the
//! folder a container runs in.
//!
//! The path of a bundle:
//! 1. the CLI packs the app folder ([`pack_dir`]), checking `stratus.toml` first so a bad
//!    manifest is caught before anything is uploaded;
//! 2. a node receives the stream, hashing it as it is written ([`Sha256Writer`]);
//! 3. the node checks the zip ([`inspect_and_unpack`] without a destination) and files it
//!    under its digest ([`BlobStore::put_verified`]);
//! 4. when a release starts, the node unpacks it ([`BlobStore::unpack_release`]), checking
//!    the checksum again and every limit again.
//!
//! [`S3Store`] is the alternative to steps 3 and 4's copies between nodes: bundles kept in an
//! S3-protocol bucket (`--store s3://bucket`), hashed again after every transfer.
//!
//! A received bundle is hostile until proven otherwise: paths that climb out of the folder,
//! links, duplicate names, zip bombs and lying headers are each refused with their own
//! [`BundleError`], and a refused bundle leaves nothing on disk.
//!
//! Everything here but [`S3Store`] (async, tokio) is blocking file I/O: async callers run it in
//! `tokio::task::spawn_blocking`. Unix only (file modes are part of a bundle), like the
//! daemon and the CLI.

mod bundles;
mod hash;
mod pack;
mod s3;
mod store;
mod unpack;

use std::io;
use std::path::PathBuf;

use proto::manifest::ManifestErrors;

pub use bundles::Bundles;
pub use hash::{Checksum, Sha256Writer, is_valid_digest, sha256_file, sha256_reader};
pub use pack::{PackSummary, pack_dir};
pub use s3::{DEFAULT_PREFIX, DEFAULT_REGION, S3Config, S3Error, S3Store};
pub use store::BlobStore;
pub use unpack::{
    PathProblem, UnpackLimits, check_entry_name, inspect_and_unpack, inspect_and_unpack_file,
};

/// The name of the ignore file `stratus deploy` reads before `.gitignore`.
pub const IGNORE_FILE: &str = ".stratusignore";

/// Everything that can go wrong with a bundle, from packing to unpacking.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    // Packing.
    #[error("{0} is not a folder: give the app folder to deploy")]
    NotAFolder(PathBuf),
    #[error("cannot walk the app folder: {0}: fix the file or the ignore pattern")]
    Walk(#[source] ignore::Error),
    #[error("file name {0:?} is not UTF-8: rename it or exclude it in .stratusignore")]
    NonUtf8Name(PathBuf),
    #[error("cannot write the bundle: {0}")]
    Write(String),

    // Checking a received zip.
    #[error("the bundle is not a zip archive: upload an app folder with `stratus deploy`")]
    NotAZip,
    #[error("the bundle zip is truncated or corrupt ({reason}): upload it again")]
    Corrupt { reason: String },
    #[error("bundle entry {name:?} {problem}: a bundle holds only relative paths inside the app")]
    UnsafePath { name: String, problem: PathProblem },
    #[error(
        "bundle entry {name:?} is a symbolic link: a bundle holds only regular files and \
         folders; copy the target into the app folder instead"
    )]
    Symlink { name: String },
    #[error(
        "bundle entry {name:?} is not a regular file (mode {mode:o}): a bundle holds only \
         regular files and folders"
    )]
    NotRegularFile { name: String, mode: u32 },
    #[error(
        "the bundle has more than one entry named {name:?}: pack it again with `stratus deploy`"
    )]
    Duplicate { name: String },
    #[error(
        "bundle path {name:?} is both a file and a folder: pack it again with `stratus deploy`"
    )]
    FileFolderConflict { name: String },
    #[error("bundle entry {name:?} {reason}: pack it again with `stratus deploy`")]
    Unsupported { name: String, reason: String },
    #[error("the bundle has more than {limit} entries: exclude files with .stratusignore")]
    TooManyEntries { limit: usize },
    #[error(
        "the bundle unpacks to more than {limit} bytes: exclude large files with .stratusignore"
    )]
    TooLarge { limit: u64 },
    #[error(
        "bundle entry {name:?} expands more than {limit} times its compressed size, like a zip \
         bomb: exclude it with .stratusignore"
    )]
    CompressionRatio { name: String, limit: u64 },
    #[error(
        "no stratus.toml at the root of the app: add one with at least `name` and `cmd` \
         (or a Procfile with a `web:` line)"
    )]
    MissingManifest,
    #[error(transparent)]
    InvalidManifest(#[from] ManifestErrors),
    #[error("cannot unpack into {0}: it already exists; unpack each release into a new folder")]
    DestinationExists(PathBuf),

    // The blob store.
    #[error("{0:?} is not a SHA-256 digest: expected 64 lowercase hex characters")]
    InvalidDigest(String),
    #[error(
        "bundle checksum mismatch: expected sha256 {expected}, got {actual}; the upload was \
         altered or cut short, send it again"
    )]
    DigestMismatch { expected: String, actual: String },
    #[error("bundle {0} is not stored on this node: fetch it from a node that has it")]
    BlobNotFound(String),
    #[error(
        "the stored copy of bundle {digest} was corrupt (its sha256 is now {actual}) and was \
         deleted: fetch it again from another node"
    )]
    CorruptBlob { digest: String, actual: String },
}

impl BundleError {
    /// True when the bundle itself (or the request) is at fault, so an API answers with a
    /// client error and a retry of the same bytes cannot succeed; false for this node's own
    /// trouble (disk, a corrupt stored copy, a missing blob).
    pub fn is_bad_bundle(&self) -> bool {
        match self {
            BundleError::NotAZip
            | BundleError::Corrupt { .. }
            | BundleError::UnsafePath { .. }
            | BundleError::Symlink { .. }
            | BundleError::NotRegularFile { .. }
            | BundleError::Duplicate { .. }
            | BundleError::FileFolderConflict { .. }
            | BundleError::Unsupported { .. }
            | BundleError::TooManyEntries { .. }
            | BundleError::TooLarge { .. }
            | BundleError::CompressionRatio { .. }
            | BundleError::MissingManifest
            | BundleError::InvalidManifest(_)
            | BundleError::InvalidDigest(_)
            | BundleError::DigestMismatch { .. } => true,
            BundleError::Io { .. }
            | BundleError::NotAFolder(_)
            | BundleError::Walk(_)
            | BundleError::NonUtf8Name(_)
            | BundleError::Write(_)
            | BundleError::DestinationExists(_)
            | BundleError::BlobNotFound(_)
            | BundleError::CorruptBlob { .. } => false,
        }
    }

    /// Builds the closure `map_err` needs for an I/O error on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| BundleError::Io {
            action,
            path,
            source,
        }
    }
}
