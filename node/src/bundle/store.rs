//! The node's content-addressed store of bundles: `data_dir/blobs/<first 2 hex>/<digest>`.
//!
//! A blob's name is its SHA-256, so a copy is checked by hashing it again: on the way in
//! ([`BlobStore::put_verified`]) and on the way out ([`BlobStore::open_verified`]), which
//! deletes a copy that no longer matches (bit rot, a truncated write before a crash) so the
//! caller fetches it again from another node instead of running damaged code.
//!
//! Files appear only by rename, so a reader never sees half a blob. The two-character
//! shards keep folders small on file systems that slow down with many entries.
//!
//! Blocking I/O: async callers use `tokio::task::spawn_blocking`.

use std::fs::{self, File, Permissions};
use std::io::{self, Seek};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proto::manifest::Manifest;
use tempfile::NamedTempFile;
use tracing::warn;

use super::hash::{Sha256Writer, sha256_reader};
use super::unpack::{UnpackLimits, inspect_and_unpack_file};
use super::{BundleError, is_valid_digest, sha256_file};

const BLOBS_DIR: &str = "blobs";
/// Uploads in progress live here, on the same file system as the blobs, so storing one is a
/// rename rather than a copy.
const TMP_DIR: &str = "tmp";

/// The local content-addressed bundle store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating it if needed) the store under `data_dir/blobs`.
    pub fn open(data_dir: &Path) -> Result<BlobStore, BundleError> {
        let root = data_dir.join(BLOBS_DIR);
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(BundleError::io("create", &tmp))?;
        Ok(BlobStore { root })
    }

    /// The store's folder, `data_dir/blobs`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new temporary file to receive an upload into, inside the store so
    /// [`BlobStore::put_verified`] can rename it; it is deleted when dropped unless stored.
    pub fn temp_file(&self) -> Result<NamedTempFile, BundleError> {
        let tmp = self.root.join(TMP_DIR);
        tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&tmp)
            .map_err(BundleError::io("create a temporary file in", &tmp))
    }

    /// Where the blob `digest` lives (whether or not it is there). Refuses anything but a
    /// digest, so no caller can build a path out of the store.
    pub fn path(&self, digest: &str) -> Result<PathBuf, BundleError> {
        if !is_valid_digest(digest) {
            return Err(BundleError::InvalidDigest(digest.to_string()));
        }
        Ok(self.root.join(&digest[..2]).join(digest))
    }

    /// Whether a copy is stored. Not verified: [`BlobStore::open_verified`] is.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest)
            .is_ok_and(|path| fs::symlink_metadata(path).is_ok_and(|meta| meta.is_file()))
    }

    /// Stores `tmp_file` as blob `expected` if its SHA-256 is `expected`: hashes it, makes it
    /// read-only, syncs it and renames it into place. On a mismatch nothing is stored and
    /// `tmp_file` is left for its owner to delete. Returns the blob's path.
    pub fn put_verified(&self, tmp_file: &Path, expected: &str) -> Result<PathBuf, BundleError> {
        // A name that is no digest is refused before a byte is read.
        self.path(expected)?;
        let actual = sha256_file(tmp_file)?;
        if actual != expected {
            return Err(BundleError::DigestMismatch {
                expected: expected.to_string(),
                actual,
            });
        }
        self.put_hashed(tmp_file, expected)
    }

    /// [`BlobStore::put_verified`] without hashing the file again, for a caller that hashed
    /// exactly the bytes it wrote into `tmp_file` as it wrote them (a download checked on
    /// the way, a layer split out of an image) and found `digest`: reading 100 MB back
    /// only to hash it again costs a fifth of a second.
    pub fn put_hashed(&self, tmp_file: &Path, digest: &str) -> Result<PathBuf, BundleError> {
        let path = self.path(digest)?;
        let expected = digest;
        let shard = self.root.join(&expected[..2]);
        fs::create_dir_all(&shard).map_err(BundleError::io("create", &shard))?;
        fs::set_permissions(tmp_file, Permissions::from_mode(0o444))
            .map_err(BundleError::io("set permissions of", tmp_file))?;
        // Synced before the rename: after a crash the name must never point at a file whose
        // data did not reach the disk.
        File::open(tmp_file)
            .and_then(|file| file.sync_all())
            .map_err(BundleError::io("sync", tmp_file))?;
        match fs::rename(tmp_file, &path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::CrossesDevices => {
                self.copy_in(tmp_file, &path, expected)?;
                fs::remove_file(tmp_file).map_err(BundleError::io("remove", tmp_file))?;
            }
            Err(err) => return Err(BundleError::io("store", &path)(err)),
        }
        sync_dir(&shard);
        Ok(path)
    }

    /// A file on another file system cannot be renamed in: copy it into the store's
    /// temporary folder, hashing the copy as it is written, then rename that.
    fn copy_in(&self, source: &Path, path: &Path, expected: &str) -> Result<(), BundleError> {
        let mut reader = File::open(source).map_err(BundleError::io("open", source))?;
        let temp = self.temp_file()?;
        let mut writer = Sha256Writer::new(temp.as_file());
        io::copy(&mut reader, &mut writer).map_err(BundleError::io("copy", source))?;
        let (file, checksum) = writer.finish();
        if checksum.digest != expected {
            return Err(BundleError::DigestMismatch {
                expected: expected.to_string(),
                actual: checksum.digest,
            });
        }
        file.set_permissions(Permissions::from_mode(0o444))
            .and_then(|()| file.sync_all())
            .map_err(BundleError::io("sync", temp.path()))?;
        temp.persist(path)
            .map_err(|err| BundleError::io("store", path)(err.error))?;
        Ok(())
    }

    /// Opens blob `digest` after checking that its content still hashes to `digest`. A copy
    /// that does not is deleted and reported as [`BundleError::CorruptBlob`]: fetch it again
    /// from another node. The returned file is positioned at its start.
    pub fn open_verified(&self, digest: &str) -> Result<File, BundleError> {
        let path = self.path(digest)?;
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(BundleError::BlobNotFound(digest.to_string()));
            }
            Err(err) => return Err(BundleError::io("open", &path)(err)),
        };
        let checksum = sha256_reader(&file).map_err(BundleError::io("read", &path))?;
        if checksum.digest != digest {
            warn!(digest, actual = %checksum.digest, "stored bundle is corrupt: deleting it");
            // Only if the name still points at the file just hashed: a good copy may have
            // been stored in the meantime, and it must stay.
            if same_file(&file, &path) {
                fs::remove_file(&path).map_err(BundleError::io("remove", &path))?;
            }
            return Err(BundleError::CorruptBlob {
                digest: digest.to_string(),
                actual: checksum.digest,
            });
        }
        file.rewind().map_err(BundleError::io("read", &path))?;
        Ok(file)
    }

    /// Deletes blob `digest`; returns whether there was one.
    pub fn remove(&self, digest: &str) -> Result<bool, BundleError> {
        let path = self.path(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(BundleError::io("remove", &path)(err)),
        }
    }

    /// Verifies blob `digest`, then checks and unpacks it into `dest` (which must not exist;
    /// its parent must) with `limits`. Returns the bundle's manifest.
    pub fn unpack_release(
        &self,
        digest: &str,
        dest: &Path,
        limits: UnpackLimits,
    ) -> Result<Manifest, BundleError> {
        // The same handle that was hashed is unpacked: what was verified is what runs.
        let file = self.open_verified(digest)?;
        inspect_and_unpack_file(&file, Some(dest), limits)
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Makes a rename in `dir` durable. Best effort: some file systems refuse to sync a folder,
/// and the blob is already complete on disk either way.
fn sync_dir(dir: &Path) {
    if let Err(err) = File::open(dir).and_then(|dir| dir.sync_all()) {
        warn!(dir = %dir.display(), %err, "cannot sync the blob folder");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn blobs_are_sharded_by_their_first_two_hex_characters() {
        let data = tempfile::tempdir().unwrap();
        let store = BlobStore::open(data.path()).unwrap();
        assert_eq!(
            store.path(ABC).unwrap(),
            data.path().join("blobs").join("ba").join(ABC)
        );
        for bad in ["../../etc/passwd", "", &ABC.to_uppercase()] {
            assert!(matches!(
                store.path(bad),
                Err(BundleError::InvalidDigest(_))
            ));
            assert!(!store.has(bad));
        }
    }

    #[test]
    fn a_verified_put_is_read_only_and_can_be_removed() {
        let data = tempfile::tempdir().unwrap();
        let store = BlobStore::open(data.path()).unwrap();
        let mut upload = store.temp_file().unwrap();
        upload.write_all(b"abc").unwrap();
        let (_, tmp_path) = upload.keep().unwrap();
        let path = store.put_verified(&tmp_path, ABC).unwrap();
        assert!(!tmp_path.exists());
        assert!(store.has(ABC));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert!(store.open_verified(ABC).is_ok());
        assert!(store.remove(ABC).unwrap());
        assert!(!store.remove(ABC).unwrap());
        assert!(matches!(
            store.open_verified(ABC),
            Err(BundleError::BlobNotFound(_))
        ));
    }
}
