//! TLS termination: certificates from files, chosen per domain by the client's SNI.
//!
//! A listener is given any number of [`CertSpec`]s (`DOMAIN=CERT.pem:KEY.pem`). During
//! the handshake [`SniTable::select`] picks the certificate: the exact domain, else a
//! wildcard entry (`*.example.com` covers `a.example.com`, not `a.b.example.com`, as in
//! RFC 6125 §6.4.3), else the first certificate given (clients that send no SNI, or a name
//! we hold no certificate for, get it and decide for themselves, as with nginx's default
//! server). The choice is pure; [`SniResolver`] is the rustls hook around it.
//!
//! Files are read once, when the ingress starts: a renewed certificate takes a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::error::Error;

/// One domain's certificate chain and private key files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Lowercase, without a trailing dot; may start with `*.`.
    pub domain: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertSpec {
    /// Parses `DOMAIN=CERT.pem:KEY.pem` (the key path is what follows the last `:`).
    pub fn parse(text: &str) -> Result<CertSpec, Error> {
        let bad = || Error::CertSpec(text.to_string());
        let (domain, files) = text.split_once('=').ok_or_else(bad)?;
        let (cert, key) = files.rsplit_once(':').ok_or_else(bad)?;
        let domain = normalize_domain(domain).ok_or_else(bad)?;
        if cert.trim().is_empty() || key.trim().is_empty() {
            return Err(bad());
        }
        Ok(CertSpec {
            domain,
            cert: PathBuf::from(cert.trim()),
            key: PathBuf::from(key.trim()),
        })
    }
}

impl std::str::FromStr for CertSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CertSpec::parse(text)
    }
}

/// Lowercases `domain` and drops a trailing dot; `None` unless it is a plausible DNS name
/// (labels of letters, digits, `-` and `_`) or such a name under a leading `*.`.
pub fn normalize_domain(domain: &str) -> Option<String> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = domain.strip_prefix("*.").unwrap_or(&domain);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(domain)
}

/// Domains to certificates: the SNI decision, pure and generic over what a certificate is.
#[derive(Debug, Clone)]
pub struct SniTable<T> {
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, usize>,
    entries: Vec<T>,
}

impl<T> SniTable<T> {
    /// A table of `(domain, certificate)` in order; the first is the default. A domain given
    /// twice keeps its first certificate. `None` when empty.
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Option<SniTable<T>> {
        let mut table = SniTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            entries: Vec::new(),
        };
        for (domain, entry) in entries {
            let index = table.entries.len();
            table.entries.push(entry);
            let slot = match domain.strip_prefix("*.") {
                Some(parent) => table.wildcard.entry(parent.to_string()),
                None => table.exact.entry(domain),
            };
            slot.or_insert(index);
        }
        (!table.entries.is_empty()).then_some(table)
    }

    /// The certificate for a client that asked for `sni` (`None`: no SNI sent).
    pub fn select(&self, sni: Option<&str>) -> &T {
        let index = sni
            .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|name| {
                self.exact.get(&name).copied().or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.wildcard.get(parent).copied()
                })
            })
            .unwrap_or(0);
        &self.entries[index]
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The rustls certificate hook: an [`SniTable`] of loaded certificates.
#[derive(Debug)]
pub struct SniResolver {
    table: SniTable<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Reads every spec's files; fails on the first unreadable or mismatched pair.
    pub fn load(specs: &[CertSpec]) -> Result<SniResolver, Error> {
        // rustls needs a process-wide crypto provider; installing it twice is a no-op.
        pingora_core::tls::install_default_crypto_provider();
        let provider = CryptoProvider::get_default().ok_or_else(|| Error::Tls {
            path: PathBuf::new(),
            reason: "no TLS crypto provider installed".to_string(),
        })?;
        let mut loaded = Vec::with_capacity(specs.len());
        for spec in specs {
            loaded.push((spec.domain.clone(), Arc::new(load_pair(spec, provider)?)));
        }
        let table = SniTable::new(loaded).ok_or(Error::InvalidConfig(
            "a TLS listener needs at least one certificate",
        ))?;
        Ok(SniResolver { table })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.table.select(client_hello.server_name()).clone())
    }
}

fn load_pair(spec: &CertSpec, provider: &CryptoProvider) -> Result<CertifiedKey, Error> {
    let cert_path = path_str(&spec.cert)?;
    let key_path = path_str(&spec.key)?;
    // Pingora's loader names neither file in its errors: open each first for a clear one.
    for path in [&spec.cert, &spec.key] {
        std::fs::File::open(path).map_err(|error| Error::Tls {
            path: path.clone(),
            reason: error.to_string(),
        })?;
    }
    let (certs, key) = pingora_core::tls::load_certs_and_key_files(cert_path, key_path)
        .map_err(|error| Error::Tls {
            path: spec.cert.clone(),
            reason: error.to_string(),
        })?
        .ok_or_else(|| Error::Tls {
            path: spec.key.clone(),
            reason: "no private key in the file".to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Tls {
            path: spec.cert.clone(),
            reason: "no certificate in the file".to_string(),
        });
    }
    CertifiedKey::from_der(certs, key, provider).map_err(|error| Error::Tls {
        path: spec.key.clone(),
        reason: format!(
            "does not fit the certificate {}: {error}",
            spec.cert.display()
        ),
    })
}

fn path_str(path: &Path) -> Result<&str, Error> {
    path.to_str().ok_or_else(|| Error::Tls {
        path: path.to_path_buf(),
        reason: "the path is not UTF-8".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cert_specs() {
        let spec = CertSpec::parse("App.Example.com.=/etc/c/app.pem:/etc/c/app.key").ok();
        assert_eq!(
            spec,
            Some(CertSpec {
                domain: "app.example.com".into(),
                cert: "/etc/c/app.pem".into(),
                key: "/etc/c/app.key".into(),
            })
        );
        let wildcard = CertSpec::parse("*.apps.example.com=a.pem:a.key").ok();
        assert_eq!(
            wildcard.map(|s| s.domain),
            Some("*.apps.example.com".into())
        );
        for bad in [
            "",
            "app.example.com",
            "app.example.com=cert.pem",
            "=cert.pem:key.pem",
            "app..example.com=c:k",
            "app.example.com=:key.pem",
            "app.example.com=cert.pem:",
            "bad host=c:k",
            "*.=c:k",
        ] {
            assert!(CertSpec::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn selects_exact_then_wildcard_then_default() {
        let table = SniTable::new([
            ("first.example.com".to_string(), 1),
            ("*.apps.example.com".to_string(), 2),
            ("shop.apps.example.com".to_string(), 3),
            ("first.example.com".to_string(), 4),
        ])
        .unwrap_or_else(|| panic!("not empty"));
        assert_eq!(*table.select(Some("first.example.com")), 1);
        assert_eq!(*table.select(Some("FIRST.example.com.")), 1);
        assert_eq!(*table.select(Some("shop.apps.example.com")), 3);
        assert_eq!(*table.select(Some("blog.apps.example.com")), 2);
        // A wildcard covers one label only.
        assert_eq!(*table.select(Some("a.blog.apps.example.com")), 1);
        assert_eq!(*table.select(Some("apps.example.com")), 1);
        assert_eq!(*table.select(Some("other.org")), 1);
        assert_eq!(*table.select(None), 1);
        assert_eq!(table.len(), 4);
        assert!(SniTable::<u8>::new([]).is_none());
    }
}
