//! Tenants and their API tokens, as they are gossiped and stored beside the app catalog.
//!
//! There is no central database: a tenant and each token are records with an HLC
//! [`Stamp`], merged last-writer-wins on every node like app records. A revocation is a
//! newer record of the same token, so it reaches every node as gossip does. Only the
//! SHA-256 of a token's secret travels; the secret is shown once, to whoever created it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::{AppRecord, Stamp};

/// What a token may do within its tenant. Each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Apps, status, logs, releases, events.
    #[default]
    Read,
    /// Read, plus deploy, scale, restart, rollback and config.
    Deploy,
    /// Deploy, plus the tenant's tokens and quotas.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Read, Role::Deploy, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a tenant's replicas are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Isolation {
    /// Docker's default runtime (runc), with Stratus's hardened defaults.
    #[default]
    Container,
    /// gVisor (`runsc`): only nodes that have it take the tenant's replicas.
    Gvisor,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Container => "container",
            Isolation::Gvisor => "gvisor",
        }
    }
}

/// Limits on what one tenant may reserve; `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Total CPU reserved, thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Total memory reserved, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// What a tenant reserves: the sum over its apps (each app's desired replicas times its
/// manifest's reservation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    pub apps: u32,
    pub replicas: u32,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Usage {
    /// What one app reserves with `replicas` replicas of its current release.
    pub fn of_app(record: &AppRecord, replicas: u32) -> Usage {
        let resources = record
            .release
            .as_ref()
            .map(|release| release.manifest.resources)
            .unwrap_or_default();
        Usage::reserved(resources, replicas)
    }

    /// What one app reserves with `replicas` replicas of `resources` each.
    pub fn reserved(resources: crate::manifest::Resources, replicas: u32) -> Usage {
        Usage {
            apps: 1,
            replicas,
            cpu_millis: resources.cpu_millis * u64::from(replicas),
            memory_bytes: resources.memory_bytes * u64::from(replicas),
        }
    }

    /// What `tenant`'s existing apps reserve.
    pub fn of_tenant<'a>(tenant: &str, apps: impl IntoIterator<Item = &'a AppRecord>) -> Usage {
        apps.into_iter()
            .filter(|record| !record.deleted && record.tenant.as_deref() == Some(tenant))
            .map(|record| Usage::of_app(record, record.replicas))
            .fold(Usage::default(), Usage::plus)
    }

    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            apps: self.apps + other.apps,
            replicas: self.replicas + other.replicas,
            cpu_millis: self.cpu_millis + other.cpu_millis,
            memory_bytes: self.memory_bytes + other.memory_bytes,
        }
    }

    /// `self` without `other` (an app's old reservation, when it changes).
    pub fn minus(self, other: Usage) -> Usage {
        Usage {
            apps: self.apps.saturating_sub(other.apps),
            replicas: self.replicas.saturating_sub(other.replicas),
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }
}

/// One tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantRecord {
    pub name: String,
    pub stamp: Stamp,
    /// A deleted tenant stays as a tombstone so a node that was away learns it is gone.
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default)]
    pub quota: Quota,
    pub created_at_ms: u64,
}

/// One API token of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenRecord {
    /// The public part of the token, unique in the cluster.
    pub id: String,
    pub stamp: Stamp,
    pub tenant: String,
    pub role: Role,
    /// What the token is for ("ci", "laptop").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
}

impl TokenRecord {
    /// Whether the token opens anything at `now_ms` (its tenant aside).
    pub fn usable_at(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|expiry| now_ms < expiry)
    }
}

/// A tenant or a token, as one node hands it to another to hold ([`TenancyRecord::key`]
/// is also its gossip key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TenancyRecord {
    Tenant(TenantRecord),
    Token(TokenRecord),
}

impl TenancyRecord {
    pub fn stamp(&self) -> &Stamp {
        match self {
            TenancyRecord::Tenant(tenant) => &tenant.stamp,
            TenancyRecord::Token(token) => &token.stamp,
        }
    }

    /// The gossip key the record is published under.
    pub fn key(&self) -> String {
        match self {
            TenancyRecord::Tenant(tenant) => crate::gossip::tenant_key(&tenant.name),
            TenancyRecord::Token(token) => crate::gossip::token_key(&token.id),
        }
    }
}

/// The text of a tenant token: `stratus_<id>_<secret>`, where the id is 16 lowercase hex
/// digits and the secret 64. The prefix makes a leaked token easy to recognise (secret
/// scanners, logs); the id finds the record without trying every hash.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenText {
    pub id: String,
    pub secret: String,
}

/// The prefix every tenant token starts with.
pub const TOKEN_PREFIX: &str = "stratus_";
pub const TOKEN_ID_LEN: usize = 16;
pub const TOKEN_SECRET_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    #[error("not a Stratus tenant token: it does not start with {TOKEN_PREFIX}")]
    Prefix,
    #[error(
        "malformed Stratus token: expected {TOKEN_PREFIX}<16 hex digits>_<64 hex digits>; \
         copy the whole token `stratus token create` printed"
    )]
    Shape,
}

impl TokenText {
    pub fn parse(text: &str) -> Result<TokenText, TokenParseError> {
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenParseError::Prefix)?;
        let (id, secret) = rest.split_once('_').ok_or(TokenParseError::Shape)?;
        if !lower_hex(id, TOKEN_ID_LEN) || !lower_hex(secret, TOKEN_SECRET_LEN) {
            return Err(TokenParseError::Shape);
        }
        Ok(TokenText {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

impl fmt::Display for TokenText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }
}

// The secret must never reach a log line through `{:?}`.
impl fmt::Debug for TokenText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenText {{ id: {:?}, secret: <hidden> }}", self.id)
    }
}

/// Whether `id` has the shape of a token id.
pub fn valid_token_id(id: &str) -> bool {
    lower_hex(id, TOKEN_ID_LEN)
}

fn lower_hex(part: &str, len: usize) -> bool {
    part.len() == len
        && part
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// Tenant names follow app names' rules: they become Docker network names and labels.
pub fn valid_tenant_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TokenText {
        TokenText {
            id: "0123456789abcdef".into(),
            secret: "ab".repeat(32),
        }
    }

    #[test]
    fn a_token_round_trips_through_its_text() {
        let text = sample().to_string();
        assert!(text.starts_with("stratus_0123456789abcdef_abab"));
        assert_eq!(TokenText::parse(&text).unwrap(), sample());
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        let good = sample().to_string();
        assert_eq!(
            TokenText::parse("hunter2").unwrap_err(),
            TokenParseError::Prefix
        );
        for bad in [
            format!("{good}0"),
            good[..good.len() - 1].to_string(),
            good.replace("0123456789abcdef", "0123456789ABCDEF"),
            format!("stratus_{}-{}", sample().id, sample().secret),
            "stratus_".to_string(),
            "stratus__".to_string(),
            format!("stratus_{}_{}_x", sample().id, sample().secret),
        ] {
            assert_eq!(TokenText::parse(&bad), Err(TokenParseError::Shape), "{bad}");
        }
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let debug = format!("{:?}", sample());
        assert!(!debug.contains(&sample().secret));
    }

    #[test]
    fn roles_are_ordered_by_what_they_include() {
        assert!(Role::Read < Role::Deploy && Role::Deploy < Role::Admin);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn expiry_and_revocation_end_a_token() {
        let mut token = TokenRecord {
            id: "0123456789abcdef".into(),
            stamp: Stamp {
                wall_ms: 1,
                counter: 0,
                node_id: "a".into(),
            },
            tenant: "acme".into(),
            role: Role::Read,
            name: None,
            secret_sha256: String::new(),
            created_at_ms: 0,
            expires_at_ms: Some(100),
            revoked_at_ms: None,
        };
        assert!(token.usable_at(99));
        assert!(!token.usable_at(100));
        token.expires_at_ms = None;
        token.revoked_at_ms = Some(5);
        assert!(!token.usable_at(6));
    }

    #[test]
    fn tenant_names_are_dns_and_docker_safe() {
        assert!(valid_tenant_name("acme-2"));
        for bad in ["", "-a", "a-", "Acme", "a_b", &"a".repeat(41)] {
            assert!(!valid_tenant_name(bad), "{bad}");
        }
    }
}
