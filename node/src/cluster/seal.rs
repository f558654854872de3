//! Sealing of gossip datagrams: the cluster keyring, the wire codec and fragment
//! reassembly. Pure code: no sockets, time comes in as an argument.
//!
//! Every datagram on the wire is
//!
//! ```text
//! version:u8 | key_id:[u8;4] | nonce:[u8;24] | msg_id:u64 | frag_idx:u8 | frag_count:u8 | ciphertext+tag
//! ```
//!
//! The whole header is the AEAD's associated data, so a forged or altered header fails to
//! open just like a forged body. `key_id` (the first bytes of SHA-256 of the key) picks the
//! key from the keyring without trial decryption, which is what makes key rotation cheap.
//!
//! The key node-to-node API calls are signed with (`api::node_auth`) is derived from the same
//! key with HKDF-SHA256 ([`HKDF_SALT`], [`NODE_MAC_INFO`]), so nothing on the wire reveals
//! the gossip key; each key of the keyring has its own, named by the key's fingerprint.
//!
//! Why fragments: chitchat fills a datagram up to the 65,507-byte UDP limit (it sizes its
//! deltas against that constant), so adding 55 bytes of header and tag can overflow it.
//! Such a message is split into at most [`MAX_FRAGMENTS`] sealed fragments; each one is
//! authenticated on its own, so nothing unauthenticated is ever buffered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::time::Instant;

/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
const WIRE_VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
pub const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN + 8 + 1 + 1;
/// Bytes a sealed datagram adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
pub const MAX_FRAGMENT_PLAINTEXT: usize = MAX_DATAGRAM - OVERHEAD;
/// chitchat messages are at most one datagram, so two fragments always suffice; a few
/// more leave room without letting a peer make us buffer much.
pub const MAX_FRAGMENTS: usize = 4;
const KEY_LEN: usize = 32;
/// HKDF salt of every derivation from the cluster key: fixed and public, it only separates
/// Stratus's derivations from any other use of the same key material (RFC 5869, 3.1).
pub const HKDF_SALT: &[u8] = b"stratus cluster key";
/// HKDF info of the node API MAC key; a new derivation from the cluster key gets its own.
/// (v1 and v2 of "stratus node api token" were static bearer tokens, refused now.)
pub const NODE_MAC_INFO: &[u8] = b"stratus node api mac v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("cluster key is not valid base64: {0}")]
    NotBase64(String),
    #[error(
        "cluster key must be {KEY_LEN} bytes once decoded, got {0} (generate one with `stratus keygen`)"
    )]
    WrongLength(usize),
    #[error("no cluster key given")]
    Empty,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("datagram shorter than a sealed header")]
    TooShort,
    #[error("unknown wire version {0}")]
    UnknownVersion(u8),
    #[error("sealed with a key this node does not hold")]
    UnknownKey,
    #[error("authentication failed")]
    Unauthentic,
    #[error("invalid fragment header")]
    BadFragment,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("message of {0} bytes exceeds the largest sealable message")]
    TooLarge(usize),
}

/// One 256-bit cluster key.
#[derive(Clone)]
pub struct ClusterKey {
    cipher: XChaCha20Poly1305,
    /// Seals config vars at rest: a derivation of its own, so neither use weakens the other.
    config_cipher: XChaCha20Poly1305,
    id: [u8; KEY_ID_LEN],
    /// Signs and checks node-to-node API calls.
    mac_key: api::MacKey,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "ClusterKey({})", self.fingerprint())
    }
}

impl ClusterKey {
    pub fn parse(encoded: &str) -> Result<ClusterKey, KeyError> {
        let encoded = encoded.trim();
        if encoded.is_empty() {
            return Err(KeyError::Empty);
        }
        let bytes = BASE64
            .decode(encoded)
            .map_err(|err| KeyError::NotBase64(err.to_string()))?;
        if bytes.len() != KEY_LEN {
            return Err(KeyError::WrongLength(bytes.len()));
        }
        let digest = Sha256::digest(&bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Ok(ClusterKey {
            cipher: XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&bytes)),
            config_cipher: config_cipher(&bytes),
            mac_key: api::MacKey::new(hex::encode(id), node_mac_secret(&bytes)),
            id,
        })
    }

    /// A fresh random key, base64-encoded as the flags take it.
    pub fn generate(rng: &mut impl RngCore) -> String {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        BASE64.encode(bytes)
    }

    /// Short public fingerprint, safe to log.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.id)
    }

    /// The key node-to-node API calls are signed with, named by [`ClusterKey::fingerprint`].
    pub fn mac_key(&self) -> &api::MacKey {
        &self.mac_key
    }

    /// The AEAD config vars are sealed with ([`crate::secrets`]).
    pub fn config_cipher(&self) -> &XChaCha20Poly1305 {
        &self.config_cipher
    }
}

/// HKDF-SHA256 of the cluster key for config vars at rest.
fn config_cipher(key: &[u8]) -> XChaCha20Poly1305 {
    let mut derived = [0u8; KEY_LEN];
    Hkdf::<Sha256>::new(Some(HKDF_SALT), key)
        .expand(b"stratus config vars v1", &mut derived)
        .expect("32 bytes is far below HKDF-SHA256's 8160-byte output limit");
    XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&derived))
}

/// The HMAC key of node-to-node API calls: HKDF-SHA256 of `ikm` (the cluster key). A
/// separate derivation, so neither the MACs nor the key reveal anything about the gossip key.
pub fn node_mac_secret(ikm: &[u8]) -> [u8; KEY_LEN] {
    let mut secret = [0u8; KEY_LEN];
    Hkdf::<Sha256>::new(Some(HKDF_SALT), ikm)
        .expand(NODE_MAC_INFO, &mut secret)
        .expect("32 bytes is far below HKDF-SHA256's 8160-byte output limit");
    secret
}

/// The primary key seals; every key in the ring (primary included) opens.
///
/// Rotation without downtime: add the new key as an extra key on every node, then make it
/// primary on every node, then remove the old one.
#[derive(Clone, Debug)]
pub struct Keyring {
    primary: ClusterKey,
    extra: Vec<ClusterKey>,
}

impl Keyring {
    /// The first key is the primary one.
    pub fn parse<S: AsRef<str>>(keys: &[S]) -> Result<Keyring, KeyError> {
        let mut parsed = keys
            .iter()
            .map(|key| key.as_ref().trim())
            .filter(|key| !key.is_empty())
            .map(ClusterKey::parse);
        let primary = parsed.next().ok_or(KeyError::Empty)??;
        let extra = parsed.collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring { primary, extra })
    }

    pub fn primary(&self) -> &ClusterKey {
        &self.primary
    }

    /// The MAC keys of every key of the ring, the primary's (which signs) first: a node
    /// checks calls against all of them, so a rotation keeps APIs open.
    pub fn mac_keys(&self) -> Vec<api::MacKey> {
        std::iter::once(&self.primary)
            .chain(&self.extra)
            .map(|key| key.mac_key.clone())
            .collect()
    }

    /// The key of the ring whose fingerprint is `fingerprint`.
    pub fn by_fingerprint(&self, fingerprint: &str) -> Option<&ClusterKey> {
        std::iter::once(&self.primary)
            .chain(&self.extra)
            .find(|key| key.fingerprint() == fingerprint)
    }

    fn find(&self, id: &[u8]) -> Option<&ClusterKey> {
        std::iter::once(&self.primary)
            .chain(&self.extra)
            .find(|key| key.id == id)
    }

    /// Seals `plaintext` into one datagram, or several fragments if it does not fit.
    pub fn seal(
        &self,
        plaintext: &[u8],
        msg_id: u64,
        rng: &mut impl RngCore,
    ) -> Result<Vec<Vec<u8>>, SealError> {
        let count = plaintext.len().div_ceil(MAX_FRAGMENT_PLAINTEXT).max(1);
        if count > MAX_FRAGMENTS {
            return Err(SealError::TooLarge(plaintext.len()));
        }
        let chunks: Vec<&[u8]> = if plaintext.is_empty() {
            vec![plaintext]
        } else {
            plaintext.chunks(MAX_FRAGMENT_PLAINTEXT).collect()
        };
        let mut datagrams = Vec::with_capacity(count);
        for (idx, chunk) in chunks.into_iter().enumerate() {
            let mut nonce = [0u8; NONCE_LEN];
            rng.fill_bytes(&mut nonce);
            let mut datagram = Vec::with_capacity(OVERHEAD + chunk.len());
            datagram.push(WIRE_VERSION);
            datagram.extend_from_slice(&self.primary.id);
            datagram.extend_from_slice(&nonce);
            datagram.extend_from_slice(&msg_id.to_be_bytes());
            datagram.push(idx as u8);
            datagram.push(count as u8);
            let ciphertext = self
                .primary
                .cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: chunk,
                        aad: &datagram[..HEADER_LEN],
                    },
                )
                // Encryption only fails for inputs beyond 256 GiB.
                .map_err(|_| SealError::TooLarge(plaintext.len()))?;
            datagram.extend_from_slice(&ciphertext);
            datagrams.push(datagram);
        }
        Ok(datagrams)
    }

    /// Authenticates and decrypts one datagram.
    pub fn open(&self, datagram: &[u8]) -> Result<Fragment, OpenError> {
        if datagram.len() < OVERHEAD {
            return Err(OpenError::TooShort);
        }
        let (header, ciphertext) = datagram.split_at(HEADER_LEN);
        if header[0] != WIRE_VERSION {
            return Err(OpenError::UnknownVersion(header[0]));
        }
        let key = self
            .find(&header[1..1 + KEY_ID_LEN])
            .ok_or(OpenError::UnknownKey)?;
        let nonce_start = 1 + KEY_ID_LEN;
        let nonce = XNonce::from_slice(&header[nonce_start..nonce_start + NONCE_LEN]);
        let plaintext = key
            .cipher
            .decrypt(
                nonce,
                Payload {
                    msg: ciphertext,
                    aad: header,
                },
            )
            .map_err(|_| OpenError::Unauthentic)?;
        let tail = &header[nonce_start + NONCE_LEN..];
        let mut msg_id = [0u8; 8];
        msg_id.copy_from_slice(&tail[..8]);
        let fragment = Fragment {
            msg_id: u64::from_be_bytes(msg_id),
            idx: tail[8],
            count: tail[9],
            payload: plaintext,
        };
        if fragment.count == 0
            || usize::from(fragment.count) > MAX_FRAGMENTS
            || fragment.idx >= fragment.count
        {
            return Err(OpenError::BadFragment);
        }
        Ok(fragment)
    }
}

/// Compares secrets without leaking where they differ through timing (`subtle`; only the
/// lengths, which are public, may end the comparison early).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// An authenticated piece of a message.
#[derive(Debug, PartialEq, Eq)]
pub struct Fragment {
    pub msg_id: u64,
    pub idx: u8,
    pub count: u8,
    pub payload: Vec<u8>,
}

struct Partial {
    started: Instant,
    parts: Vec<Option<Vec<u8>>>,
}

/// Puts fragmented messages back together. Bounded in memory: at most
/// `max_partials` messages in flight, each dropped `timeout` after its first fragment.
pub struct Reassembler {
    partials: HashMap<(SocketAddr, u64), Partial>,
    max_partials: usize,
    timeout: Duration,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::new(64, Duration::from_secs(5))
    }
}

impl Reassembler {
    pub fn new(max_partials: usize, timeout: Duration) -> Reassembler {
        Reassembler {
            partials: HashMap::new(),
            max_partials,
            timeout,
        }
    }

    /// Returns the whole message once its last fragment arrives.
    pub fn push(&mut self, from: SocketAddr, fragment: Fragment, now: Instant) -> Option<Vec<u8>> {
        if fragment.count == 1 {
            return Some(fragment.payload);
        }
        self.partials
            .retain(|_, partial| now.duration_since(partial.started) < self.timeout);
        let key = (from, fragment.msg_id);
        if !self.partials.contains_key(&key) && self.partials.len() >= self.max_partials {
            return None;
        }
        let partial = self.partials.entry(key).or_insert_with(|| Partial {
            started: now,
            parts: vec![None; usize::from(fragment.count)],
        });
        let slot = partial.parts.get_mut(usize::from(fragment.idx))?;
        *slot = Some(fragment.payload);
        if partial.parts.iter().any(Option::is_none) {
            return None;
        }
        let partial = self.partials.remove(&key)?;
        Some(partial.parts.into_iter().flatten().flatten().collect())
    }

    pub fn in_flight(&self) -> usize {
        self.partials.len()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn ring(seed: u64) -> (Keyring, String) {
        let key = ClusterKey::generate(&mut StdRng::seed_from_u64(seed));
        (Keyring::parse(std::slice::from_ref(&key)).unwrap(), key)
    }

    fn addr() -> SocketAddr {
        "127.0.0.2:7946".parse().unwrap()
    }

    #[test]
    fn seal_then_open_round_trips() {
        let (ring, _) = ring(1);
        let mut rng = StdRng::seed_from_u64(7);
        let datagrams = ring.seal(b"hello gossip", 42, &mut rng).unwrap();
        assert_eq!(datagrams.len(), 1);
        assert_eq!(datagrams[0].len(), b"hello gossip".len() + OVERHEAD);
        let fragment = ring.open(&datagrams[0]).unwrap();
        assert_eq!(fragment.payload, b"hello gossip");
        assert_eq!(fragment.msg_id, 42);
    }

    #[test]
    fn a_node_with_another_key_cannot_open() {
        let (ring_a, _) = ring(1);
        let (ring_b, _) = ring(2);
        let datagrams = ring_a
            .seal(b"secret", 1, &mut StdRng::seed_from_u64(0))
            .unwrap();
        assert_eq!(ring_b.open(&datagrams[0]), Err(OpenError::UnknownKey));
    }

    #[test]
    fn forged_key_id_with_wrong_key_fails_authentication() {
        let (ring_a, _) = ring(1);
        let (ring_b, _) = ring(2);
        let mut datagram = ring_b
            .seal(b"forged", 1, &mut StdRng::seed_from_u64(0))
            .unwrap()
            .remove(0);
        // Claim to be sealed with A's key.
        datagram[1..5].copy_from_slice(&ring_a.primary.id);
        assert_eq!(ring_a.open(&datagram), Err(OpenError::Unauthentic));
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        let (ring, _) = ring(1);
        let datagram = ring
            .seal(b"integrity matters", 9, &mut StdRng::seed_from_u64(0))
            .unwrap()
            .remove(0);
        for byte in 0..datagram.len() {
            let mut tampered = datagram.clone();
            tampered[byte] ^= 0x01;
            assert!(
                ring.open(&tampered).is_err(),
                "flip at byte {byte} accepted"
            );
        }
    }

    #[test]
    fn garbage_and_short_datagrams_are_rejected() {
        let (ring, _) = ring(1);
        assert_eq!(ring.open(b"junk"), Err(OpenError::TooShort));
        let mut rng = StdRng::seed_from_u64(3);
        for len in [OVERHEAD, 100, 1500] {
            let mut junk = vec![0u8; len];
            rng.fill_bytes(&mut junk);
            junk[0] = WIRE_VERSION;
            assert!(ring.open(&junk).is_err());
        }
    }

    #[test]
    fn rotation_extra_keys_open_and_primary_seals() {
        let (_, old) = ring(1);
        let (_, new) = ring(2);
        let old_ring = Keyring::parse(std::slice::from_ref(&old)).unwrap();
        let rotating = Keyring::parse(&[new.clone(), old.clone()]).unwrap();
        let new_ring = Keyring::parse(&[new]).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        // A node still on the old key is understood by a rotating node...
        let from_old = old_ring.seal(b"a", 1, &mut rng).unwrap().remove(0);
        assert!(rotating.open(&from_old).is_ok());
        // ...and the rotating node already seals with the new one.
        let from_rotating = rotating.seal(b"b", 2, &mut rng).unwrap().remove(0);
        assert!(new_ring.open(&from_rotating).is_ok());
        assert!(old_ring.open(&from_rotating).is_err());
    }

    #[test]
    fn mac_keys_follow_the_keyring() {
        let (ring_a, key_a) = ring(1);
        let (ring_b, key_b) = ring(2);
        assert_eq!(ring_a.mac_keys(), [ring_a.primary().mac_key().clone()]);
        assert_ne!(ring_a.mac_keys(), ring_b.mac_keys());
        assert_eq!(ring_a.mac_keys()[0].id(), ring_a.primary().fingerprint());
        let rotating = Keyring::parse(&[key_b, key_a]).unwrap();
        assert_eq!(
            rotating.mac_keys(),
            [ring_b.mac_keys()[0].clone(), ring_a.mac_keys()[0].clone()],
            "the primary signs, both check"
        );
    }

    /// Pins the derivations, so a change to them (which locks out nodes of the previous
    /// version) cannot pass unnoticed. The expected values were computed outside this code,
    /// from RFC 5869 with HMAC-SHA256: PRK = HMAC(salt, key), okm = HMAC(PRK, info || 0x01).
    #[test]
    fn the_mac_key_and_fingerprint_match_their_test_vectors() {
        // The key is the bytes 0x00, 0x01, ... 0x1f.
        let key = ClusterKey::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let bytes: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            hex::encode(node_mac_secret(&bytes)),
            "c4ec93ef5a7aa3a3679e64576b4f7361efa8c9c70ab0cc3921dab5b7d8e1f1b9"
        );
        assert_eq!(
            key.mac_key(),
            &api::MacKey::new("630dcd29", node_mac_secret(&bytes))
        );
        assert_eq!(key.fingerprint(), "630dcd29");
        assert_eq!(format!("{key:?}"), "ClusterKey(630dcd29)");
    }

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"token", b"tokeN"));
        assert!(!constant_time_eq(b"token", b"token2"));
        assert!(!constant_time_eq(b"", b"t"));
    }

    #[test]
    fn key_parsing_errors_say_what_to_do() {
        assert_eq!(ClusterKey::parse("").unwrap_err(), KeyError::Empty);
        assert!(matches!(
            ClusterKey::parse("!!!").unwrap_err(),
            KeyError::NotBase64(_)
        ));
        let short = ClusterKey::parse("AAAA").unwrap_err();
        assert_eq!(short, KeyError::WrongLength(3));
        assert!(short.to_string().contains("stratus keygen"));
    }

    #[test]
    fn oversize_messages_are_fragmented_and_reassembled_in_any_order() {
        let (ring, _) = ring(1);
        let mut rng = StdRng::seed_from_u64(5);
        let mut message = vec![0u8; MAX_DATAGRAM + 10_000];
        rng.fill_bytes(&mut message);
        let mut datagrams = ring.seal(&message, 77, &mut rng).unwrap();
        assert_eq!(datagrams.len(), 2);
        assert!(datagrams.iter().all(|d| d.len() <= MAX_DATAGRAM));
        datagrams.reverse();
        let now = Instant::now();
        let mut reassembler = Reassembler::default();
        let first = ring.open(&datagrams[0]).unwrap();
        assert_eq!(reassembler.push(addr(), first, now), None);
        let second = ring.open(&datagrams[1]).unwrap();
        assert_eq!(reassembler.push(addr(), second, now), Some(message));
        assert_eq!(reassembler.in_flight(), 0);
    }

    #[test]
    fn messages_beyond_the_fragment_limit_are_refused() {
        let (ring, _) = ring(1);
        let message = vec![0u8; MAX_FRAGMENT_PLAINTEXT * MAX_FRAGMENTS + 1];
        assert!(matches!(
            ring.seal(&message, 1, &mut StdRng::seed_from_u64(0)),
            Err(SealError::TooLarge(_))
        ));
    }

    #[test]
    fn reassembler_is_bounded_and_forgets_stale_partials() {
        let mut reassembler = Reassembler::new(2, Duration::from_secs(5));
        let now = Instant::now();
        let part = |msg_id| Fragment {
            msg_id,
            idx: 0,
            count: 2,
            payload: vec![1],
        };
        assert_eq!(reassembler.push(addr(), part(1), now), None);
        assert_eq!(reassembler.push(addr(), part(2), now), None);
        assert_eq!(reassembler.push(addr(), part(3), now), None);
        assert_eq!(
            reassembler.in_flight(),
            2,
            "a third partial must not be buffered"
        );
        let later = now + Duration::from_secs(6);
        assert_eq!(reassembler.push(addr(), part(4), later), None);
        assert_eq!(reassembler.in_flight(), 1, "stale partials are dropped");
    }
}
