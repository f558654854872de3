//! Config vars (Heroku's config vars, Fly's secrets): the rules a change must follow and
//! their sealing at rest. Pure: the key comes from the caller's [`Keyring`].
//!
//! A release carries its vars as one [`SealedConfig`]: XChaCha20-Poly1305 over their JSON
//! map, with the app's name as associated data (a ciphertext moved to another app does not
//! open), under a key derived from the cluster key ([`ClusterKey::config_cipher`]). The
//! catalog on disk, the gossip and the API's answers only ever hold the ciphertext; the
//! plaintext exists in an agent's memory while it answers `stratus config --show` or
//! starts a replica, which gets the vars as environment variables.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, Payload};
use proto::catalog::SealedConfig;
use rand::RngCore;

use crate::cluster::seal::{ClusterKey, Keyring};

/// Heroku's limit: all of an app's keys and values together.
pub const MAX_CONFIG_BYTES: usize = 32 * 1024;

pub type ConfigVars = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config key {0:?} is invalid: use letters, digits and _ (not starting with a digit)")]
    BadKey(String),
    #[error(
        "config vars would take {0} bytes, over the limit of {MAX_CONFIG_BYTES}: keep large \
         data out of config (a file in the app, or a store it reads at start)"
    )]
    TooLarge(usize),
    #[error("nothing to change: give KEY=VALUE pairs to set or KEYs to unset")]
    Empty,
    #[error(
        "config vars need a cluster key to be sealed with: start the agents with --cluster-key"
    )]
    NoKey,
    #[error(
        "config vars were sealed with cluster key {0}, which this node does not have: add it \
         to --cluster-key (as an extra key) on this node"
    )]
    UnknownKey(String),
    #[error("config vars do not open: the ciphertext was altered or belongs to another app")]
    Corrupt,
}

/// Applies `set` and `unset` to `vars`, checking the rules.
pub fn change(
    mut vars: ConfigVars,
    set: &BTreeMap<String, String>,
    unset: &[String],
) -> Result<ConfigVars, ConfigError> {
    if set.is_empty() && unset.is_empty() {
        return Err(ConfigError::Empty);
    }
    for key in set.keys().chain(unset) {
        if !valid_key(key) {
            return Err(ConfigError::BadKey(key.clone()));
        }
    }
    for key in unset {
        vars.remove(key);
    }
    vars.extend(set.iter().map(|(key, value)| (key.clone(), value.clone())));
    let size: usize = vars
        .iter()
        .map(|(key, value)| key.len() + value.len())
        .sum();
    if size > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge(size));
    }
    Ok(vars)
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 256
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Seals `vars` of `app` with the ring's primary key.
pub fn seal(
    keyring: Option<&Keyring>,
    app: &str,
    vars: &ConfigVars,
    rng: &mut impl RngCore,
) -> Result<SealedConfig, ConfigError> {
    let key = keyring.ok_or(ConfigError::NoKey)?.primary();
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let plaintext = serde_json::to_vec(vars).map_err(|_| ConfigError::Corrupt)?;
    let ciphertext = key
        .config_cipher()
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: app.as_bytes(),
            },
        )
        .map_err(|_| ConfigError::Corrupt)?;
    Ok(SealedConfig {
        key_id: key.fingerprint(),
        nonce: hex::encode(nonce),
        ciphertext: BASE64.encode(ciphertext),
    })
}

/// Opens the vars of `app`; no sealed config is no vars.
pub fn open(
    keyring: Option<&Keyring>,
    app: &str,
    sealed: Option<&SealedConfig>,
) -> Result<ConfigVars, ConfigError> {
    let Some(sealed) = sealed else {
        return Ok(ConfigVars::new());
    };
    let key: &ClusterKey = keyring
        .ok_or(ConfigError::NoKey)?
        .by_fingerprint(&sealed.key_id)
        .ok_or_else(|| ConfigError::UnknownKey(sealed.key_id.clone()))?;
    let nonce = hex::decode(&sealed.nonce).map_err(|_| ConfigError::Corrupt)?;
    if nonce.len() != 24 {
        return Err(ConfigError::Corrupt);
    }
    let ciphertext = BASE64
        .decode(&sealed.ciphertext)
        .map_err(|_| ConfigError::Corrupt)?;
    let plaintext = key
        .config_cipher()
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &ciphertext,
                aad: app.as_bytes(),
            },
        )
        .map_err(|_| ConfigError::Corrupt)?;
    serde_json::from_slice(&plaintext).map_err(|_| ConfigError::Corrupt)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn keyring(keys: &[String]) -> Keyring {
        Keyring::parse(keys).unwrap()
    }

    fn key(seed: u64) -> String {
        ClusterKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sealed_vars_open_only_for_their_app_and_never_show_in_clear() {
        let ring = keyring(&[key(1)]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let secret = vars(&[("DATABASE_URL", "postgres://u:hunter2@db/app")]);
        let sealed = seal(Some(&ring), "web", &secret, &mut rng).unwrap();
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("DATABASE_URL"),
            "{text}"
        );
        assert_eq!(open(Some(&ring), "web", Some(&sealed)).unwrap(), secret);
        assert_eq!(
            open(Some(&ring), "other", Some(&sealed)),
            Err(ConfigError::Corrupt)
        );
        let mut altered = sealed.clone();
        altered.ciphertext = BASE64.encode(b"not the ciphertext at all, sorry");
        assert_eq!(
            open(Some(&ring), "web", Some(&altered)),
            Err(ConfigError::Corrupt)
        );
    }

    #[test]
    fn a_rotated_ring_still_opens_what_the_old_key_sealed() {
        let (old, new) = (key(1), key(2));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let sealed = seal(
            Some(&keyring(std::slice::from_ref(&old))),
            "web",
            &vars(&[("A", "1")]),
            &mut rng,
        )
        .unwrap();
        let rotated = keyring(&[new.clone(), old]);
        assert_eq!(
            open(Some(&rotated), "web", Some(&sealed)).unwrap(),
            vars(&[("A", "1")])
        );
        assert!(matches!(
            open(Some(&keyring(&[new])), "web", Some(&sealed)),
            Err(ConfigError::UnknownKey(_))
        ));
        assert_eq!(
            seal(None, "web", &vars(&[("A", "1")]), &mut rng),
            Err(ConfigError::NoKey)
        );
    }

    #[test]
    fn changes_follow_herokus_rules() {
        let current = vars(&[("A", "1"), ("B", "2")]);
        let changed = change(
            current.clone(),
            &vars(&[("C", "3"), ("A", "9")]),
            &["B".into()],
        )
        .unwrap();
        assert_eq!(changed, vars(&[("A", "9"), ("C", "3")]));
        for bad in ["", "1A", "A-B", "A B", "É"] {
            assert_eq!(
                change(current.clone(), &vars(&[(bad, "x")]), &[]),
                Err(ConfigError::BadKey(bad.into()))
            );
        }
        let big = "x".repeat(MAX_CONFIG_BYTES);
        assert!(matches!(
            change(current.clone(), &vars(&[("BIG", &big)]), &[]),
            Err(ConfigError::TooLarge(_))
        ));
        assert_eq!(
            change(current, &BTreeMap::new(), &[]),
            Err(ConfigError::Empty)
        );
    }
}
