//! The tenants and tokens one node knows, merged last-writer-wins, and the pure decisions
//! made over them: who a token is, and what a tenant has used of its quota.

use std::collections::BTreeMap;

use proto::tenancy::{Quota, Role, TenancyRecord, TenantRecord, TokenRecord, TokenText, Usage};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every tenant and token record this node has heard of, tombstones and revoked tokens
/// included (a revocation must win over an older copy that arrives later).
#[derive(Debug, Default, Clone)]
pub struct Directory {
    tenants: BTreeMap<String, TenantRecord>,
    tokens: BTreeMap<String, TokenRecord>,
}

/// Who a valid tenant token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenant: String,
    pub role: Role,
    pub token_id: String,
    pub token_name: Option<String>,
    pub expires_at_ms: Option<u64>,
}

/// Why a token in the tenant format opens nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown token: it was never created, or not in this cluster")]
    Unknown,
    #[error("token {0} was revoked: ask an admin of its tenant for a new one")]
    Revoked(String),
    #[error("token {0} has expired: ask an admin of its tenant for a new one")]
    Expired(String),
    #[error("the tenant {0} of this token was deleted")]
    TenantGone(String),
}

/// The hex SHA-256 of a token's secret: what a record keeps instead of the secret.
pub fn secret_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Directory {
    /// Applies `record` if it is newer than the known copy. Returns whether it changed.
    pub fn merge(&mut self, record: TenancyRecord) -> bool {
        match record {
            TenancyRecord::Tenant(tenant) => match self.tenants.get(&tenant.name) {
                Some(known) if known.stamp >= tenant.stamp => false,
                _ => {
                    self.tenants.insert(tenant.name.clone(), tenant);
                    true
                }
            },
            TenancyRecord::Token(token) => match self.tokens.get(&token.id) {
                Some(known) if known.stamp >= token.stamp => false,
                _ => {
                    self.tokens.insert(token.id.clone(), token);
                    true
                }
            },
        }
    }

    /// Whether merging `record` would change anything (so it must be persisted first).
    pub fn is_news(&self, record: &TenancyRecord) -> bool {
        match record {
            TenancyRecord::Tenant(tenant) => self
                .tenants
                .get(&tenant.name)
                .is_none_or(|known| tenant.stamp > known.stamp),
            TenancyRecord::Token(token) => self
                .tokens
                .get(&token.id)
                .is_none_or(|known| token.stamp > known.stamp),
        }
    }

    /// A tenant that exists (not deleted).
    pub fn tenant(&self, name: &str) -> Option<&TenantRecord> {
        self.tenants.get(name).filter(|tenant| !tenant.deleted)
    }

    /// Tenants that exist, by name.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantRecord> {
        self.tenants.values().filter(|tenant| !tenant.deleted)
    }

    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    /// The tokens of `tenant` (every tenant's with `None`), revoked ones included.
    pub fn tokens<'a>(&'a self, tenant: Option<&'a str>) -> impl Iterator<Item = &'a TokenRecord> {
        self.tokens
            .values()
            .filter(move |token| tenant.is_none_or(|tenant| token.tenant == tenant))
    }

    /// Every record, for publishing and for the disk.
    pub fn records(&self) -> impl Iterator<Item = TenancyRecord> + '_ {
        let tenants = self.tenants.values().cloned().map(TenancyRecord::Tenant);
        let tokens = self.tokens.values().cloned().map(TenancyRecord::Token);
        tenants.chain(tokens)
    }

    /// Who `token` is at `now_ms`. The secret is compared in constant time.
    pub fn authenticate(&self, token: &TokenText, now_ms: u64) -> Result<Grant, Refusal> {
        let record = self.tokens.get(&token.id).ok_or(Refusal::Unknown)?;
        let digest = secret_digest(&token.secret);
        if !bool::from(digest.as_bytes().ct_eq(record.secret_sha256.as_bytes())) {
            return Err(Refusal::Unknown);
        }
        if record.revoked_at_ms.is_some() {
            return Err(Refusal::Revoked(record.id.clone()));
        }
        if !record.usable_at(now_ms) {
            return Err(Refusal::Expired(record.id.clone()));
        }
        if self.tenant(&record.tenant).is_none() {
            return Err(Refusal::TenantGone(record.tenant.clone()));
        }
        Ok(Grant {
            tenant: record.tenant.clone(),
            role: record.role,
            token_id: record.id.clone(),
            token_name: record.name.clone(),
            expires_at_ms: record.expires_at_ms,
        })
    }
}

/// A quota a change would pass: what is used, what the change asks, the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quota exceeded: {what} used {used}, this change asks {asked}, the limit is {limit}: \
     scale something down, destroy an app, or ask the cluster admin to raise the quota"
)]
pub struct QuotaExceeded {
    pub what: &'static str,
    pub used: String,
    pub asked: String,
    pub limit: String,
}

/// Whether `asked` more fits within `quota` on top of `used`.
pub fn check_quota(quota: &Quota, used: Usage, asked: Usage) -> Result<(), QuotaExceeded> {
    fn over<T: PartialOrd + Copy + std::ops::Add<Output = T>>(
        limit: Option<T>,
        used: T,
        asked: T,
    ) -> Option<T> {
        limit.filter(|limit| used + asked > *limit)
    }
    let bytes = |value: u64| bytesize::ByteSize::b(value).display().iec().to_string();
    let cores = |millis: u64| format!("{:.3} cores", millis as f64 / 1000.0);
    if let Some(limit) = over(quota.apps, used.apps, asked.apps) {
        return Err(QuotaExceeded {
            what: "apps",
            used: used.apps.to_string(),
            asked: asked.apps.to_string(),
            limit: limit.to_string(),
        });
    }
    if let Some(limit) = over(quota.replicas, used.replicas, asked.replicas) {
        return Err(QuotaExceeded {
            what: "replicas",
            used: used.replicas.to_string(),
            asked: asked.replicas.to_string(),
            limit: limit.to_string(),
        });
    }
    if let Some(limit) = over(quota.cpu_millis, used.cpu_millis, asked.cpu_millis) {
        return Err(QuotaExceeded {
            what: "cpu",
            used: cores(used.cpu_millis),
            asked: cores(asked.cpu_millis),
            limit: cores(limit),
        });
    }
    if let Some(limit) = over(quota.memory_bytes, used.memory_bytes, asked.memory_bytes) {
        return Err(QuotaExceeded {
            what: "memory",
            used: bytes(used.memory_bytes),
            asked: bytes(asked.memory_bytes),
            limit: bytes(limit),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proto::catalog::Stamp;

    use super::*;

    fn stamp(wall_ms: u64) -> Stamp {
        Stamp {
            wall_ms,
            counter: 0,
            node_id: "n1".into(),
        }
    }

    fn tenant(name: &str, wall_ms: u64, deleted: bool) -> TenancyRecord {
        TenancyRecord::Tenant(TenantRecord {
            name: name.into(),
            stamp: stamp(wall_ms),
            deleted,
            isolation: Default::default(),
            quota: Default::default(),
            created_at_ms: 0,
        })
    }

    fn token(secret: &str, wall_ms: u64, revoked: bool) -> (TokenText, TenancyRecord) {
        let text = TokenText {
            id: "00112233445566aa".into(),
            secret: secret.repeat(64 / secret.len()),
        };
        let record = TokenRecord {
            id: text.id.clone(),
            stamp: stamp(wall_ms),
            tenant: "acme".into(),
            role: Role::Deploy,
            name: Some("ci".into()),
            secret_sha256: secret_digest(&text.secret),
            created_at_ms: 0,
            expires_at_ms: Some(1_000),
            revoked_at_ms: revoked.then_some(wall_ms),
        };
        (text, TenancyRecord::Token(record))
    }

    #[test]
    fn a_valid_token_grants_its_tenant_and_role() {
        let mut directory = Directory::default();
        directory.merge(tenant("acme", 1, false));
        let (text, record) = token("ab", 1, false);
        directory.merge(record);
        let grant = directory.authenticate(&text, 10).unwrap();
        assert_eq!(grant.tenant, "acme");
        assert_eq!(grant.role, Role::Deploy);
        assert_eq!(grant.token_name.as_deref(), Some("ci"));
    }

    #[test]
    fn wrong_secret_revoked_expired_and_deleted_tenant_are_refused() {
        let mut directory = Directory::default();
        directory.merge(tenant("acme", 1, false));
        let (text, record) = token("ab", 1, false);
        directory.merge(record);
        let forged = TokenText {
            secret: "cd".repeat(32),
            ..text.clone()
        };
        assert_eq!(directory.authenticate(&forged, 10), Err(Refusal::Unknown));
        assert!(matches!(
            directory.authenticate(&text, 1_000),
            Err(Refusal::Expired(_))
        ));
        directory.merge(tenant("acme", 2, true));
        assert!(matches!(
            directory.authenticate(&text, 10),
            Err(Refusal::TenantGone(_))
        ));
        directory.merge(tenant("acme", 3, false));
        directory.merge(token("ab", 5, true).1);
        assert!(matches!(
            directory.authenticate(&text, 10),
            Err(Refusal::Revoked(_))
        ));
    }

    #[test]
    fn a_revocation_is_not_undone_by_an_older_copy_arriving_late() {
        let mut directory = Directory::default();
        directory.merge(tenant("acme", 1, false));
        let (text, live) = token("ab", 1, false);
        let revoked = token("ab", 5, true).1;
        assert!(directory.merge(revoked.clone()));
        assert!(!directory.is_news(&live));
        assert!(!directory.merge(live));
        assert!(matches!(
            directory.authenticate(&text, 10),
            Err(Refusal::Revoked(_))
        ));
        assert!(!directory.merge(revoked));
    }

    #[test]
    fn quota_refusals_name_used_asked_and_limit() {
        let quota = Quota {
            apps: Some(2),
            replicas: Some(4),
            cpu_millis: Some(1_000),
            memory_bytes: Some(1 << 30),
        };
        let used = Usage {
            apps: 1,
            replicas: 3,
            cpu_millis: 750,
            memory_bytes: 512 << 20,
        };
        let one = |replicas, cpu_millis, memory_bytes| Usage {
            apps: 0,
            replicas,
            cpu_millis,
            memory_bytes,
        };
        assert!(check_quota(&quota, used, one(1, 250, 512 << 20)).is_ok());
        let err = check_quota(&quota, used, one(2, 0, 0)).unwrap_err();
        assert_eq!(
            (
                err.what,
                err.used.as_str(),
                err.asked.as_str(),
                err.limit.as_str()
            ),
            ("replicas", "3", "2", "4")
        );
        let err = check_quota(&quota, used, one(1, 500, 0)).unwrap_err();
        assert_eq!(err.what, "cpu");
        assert!(err.to_string().contains("0.750 cores"), "{err}");
        let err = check_quota(&quota, used, one(0, 0, 1 << 30)).unwrap_err();
        assert_eq!(err.what, "memory");
        let apps = Usage {
            apps: 2,
            ..Usage::default()
        };
        assert_eq!(check_quota(&quota, used, apps).unwrap_err().what, "apps");
        assert!(check_quota(&Quota::default(), used, apps).is_ok());
    }
}
