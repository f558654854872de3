//! The crate's one error type.

/// What can go wrong in the ingress's decision code: only configuration, since routing and
/// balancing answer every input with a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
}
