//! The crate's one error type.

use std::path::PathBuf;

/// What can go wrong in the ingress: only configuration and startup, since routing and
/// balancing answer every input with a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    #[error("invalid TLS certificate {0:?}: write DOMAIN=CERT.pem:KEY.pem")]
    CertSpec(String),
    #[error("TLS file {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
}
