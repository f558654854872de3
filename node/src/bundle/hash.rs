//! SHA-256 of bundles: a `Write` adapter that hashes a stream as it is stored, and the
//! digest format (64 lowercase hex characters) used as a bundle's name everywhere. The
//! hashing itself is the API crate's [`Sha256Stream`], the one streaming hasher that uploads,
//! downloads and both stores share.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

pub use api::checksum::Checksum;
use api::checksum::Sha256Stream;

use super::BundleError;

/// Length of a digest in hex characters.
pub const DIGEST_HEX_LEN: usize = 64;

/// Passes writes through to `inner`, hashing exactly the bytes `inner` accepted, so the
/// digest of an upload is known the moment its last byte is on disk, without reading it back.
#[derive(Debug)]
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256Stream,
}

impl<W> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            hasher: Sha256Stream::new(),
        }
    }

    /// Bytes written so far: lets a caller enforce an upload size limit as it streams.
    pub fn bytes(&self) -> u64 {
        self.hasher.bytes()
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the inner writer and the checksum of everything written through it. Flush or
    /// sync the inner writer yourself: hashing does not need it, durability does.
    pub fn finish(self) -> (W, Checksum) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        // Only what the inner writer took: a short write must not hash bytes that the
        // caller will send again.
        let taken = buf.get(..written).unwrap_or(buf);
        self.hasher.update(taken);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything `reader` yields.
pub fn sha256_reader(mut reader: impl Read) -> io::Result<Checksum> {
    let mut writer = Sha256Writer::new(io::sink());
    io::copy(&mut reader, &mut writer)?;
    Ok(writer.finish().1)
}

/// The lowercase hex SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let file = File::open(path).map_err(BundleError::io("open", path))?;
    let checksum = sha256_reader(file).map_err(BundleError::io("read", path))?;
    Ok(checksum.digest)
}

/// True for exactly 64 lowercase hex characters. Digests become file names in the blob
/// store, so anything else (upper case, `..`, slashes) must be refused, not normalised.
pub fn is_valid_digest(digest: &str) -> bool {
    digest.len() == DIGEST_HEX_LEN
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of the empty string and of "abc" (FIPS 180-2 test vectors).
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn the_writer_hashes_and_counts_what_passes_through() {
        let mut writer = Sha256Writer::new(Vec::new());
        writer.write_all(b"a").unwrap();
        writer.write_all(b"bc").unwrap();
        assert_eq!(writer.bytes(), 3);
        let (inner, checksum) = writer.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(checksum.digest, ABC);
        assert_eq!(checksum.bytes, 3);
        assert_eq!(Sha256Writer::new(io::sink()).finish().1.digest, EMPTY);
    }

    /// A writer that takes one byte per call, like a socket under pressure.
    struct OneByte(Vec<u8>);

    impl Write for OneByte {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match buf.first() {
                Some(b) => {
                    self.0.push(*b);
                    Ok(1)
                }
                None => Ok(0),
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn short_writes_hash_only_the_bytes_taken() {
        let mut writer = Sha256Writer::new(OneByte(Vec::new()));
        writer.write_all(b"abc").unwrap();
        let (inner, checksum) = writer.finish();
        assert_eq!(inner.0, b"abc");
        assert_eq!(checksum.digest, ABC);
    }

    #[test]
    fn a_file_hashes_like_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), ABC);
        assert!(matches!(
            sha256_file(&dir.path().join("missing")),
            Err(BundleError::Io { action: "open", .. })
        ));
    }

    #[test]
    fn only_64_lowercase_hex_characters_are_digests() {
        assert!(is_valid_digest(ABC));
        for bad in [
            "",
            &ABC[1..],
            &format!("{ABC}0"),
            &ABC.to_uppercase(),
            &format!("../{}", &ABC[3..]),
            &format!("{}g", &ABC[1..]),
        ] {
            assert!(!is_valid_digest(bad), "{bad:?} accepted");
        }
    }
}
