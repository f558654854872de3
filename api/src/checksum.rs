//! SHA-256 of a stream, a chunk at a time: the one streaming hasher of the code base. The
//! API's upload and download hash through it, and so do the node's blob store and S3 store
//! (node's `bundle::Sha256Writer` is this behind `io::Write`). It lives here because the
//! node depends on this crate and never the other way, and `proto` stays plain data.

use sha2::{Digest, Sha256};

/// The digest of a stream and how many bytes it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// Lowercase hex SHA-256 (64 characters): a bundle's name everywhere.
    pub digest: String,
    pub bytes: u64,
}

/// Feed it the chunks of a stream in order with [`Sha256Stream::update`], then take the
/// [`Checksum`] with [`Sha256Stream::finish`].
#[derive(Debug, Clone, Default)]
pub struct Sha256Stream {
    hasher: Sha256,
    bytes: u64,
}

impl Sha256Stream {
    pub fn new() -> Self {
        Sha256Stream::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
    }

    /// Bytes hashed so far: lets a caller enforce a size limit as it streams.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(self) -> Checksum {
        Checksum {
            digest: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of the empty string and of "abc" (FIPS 180-2 test vectors).
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn chunks_hash_like_the_whole_and_are_counted() {
        let mut stream = Sha256Stream::new();
        stream.update(b"a");
        stream.update(b"");
        stream.update(b"bc");
        assert_eq!(stream.bytes(), 3);
        assert_eq!(
            stream.finish(),
            Checksum {
                digest: ABC.into(),
                bytes: 3
            }
        );
        assert_eq!(Sha256Stream::new().finish().digest, EMPTY);
    }
}
