//! The gossip key schema.
//!
//! Every key starts with a schema version (`v1:`). A node only reads keys of versions it
//! knows, so a rolling upgrade can publish `v2:` keys beside `v1:` ones until every node
//! understands them, then drop the old ones. Values are JSON: compact enough next to
//! chitchat's per-key overhead, and readable in a packet dump.
//!
//! | key                      | value                         | written                   |
//! |--------------------------|-------------------------------|---------------------------|
//! | `v1:identity`            | [`NodeIdentity`] JSON          | at start                  |
//! | `v1:load`                | [`NodeLoad`] JSON              | on meaningful change      |
//! | `v1:leaving`             | `"1"`                         | on graceful shutdown      |
//! | `v1:container:{id}`      | [`ContainerRecord`] JSON       | on container change; deleted when it goes |
//! | `v1:app:{name}`          | [`AppRecord`] JSON             | by the app's keepers (3 nodes), on change |
//! | `v1:failure:{app}`       | [`RolloutFailure`] JSON        | by the app's scheduler when a release cannot be placed |
//! | `v1:tenant:{name}`       | [`TenantRecord`] JSON          | by the tenant's keepers (3 nodes), on change |
//! | `v1:token:{id}`          | [`TokenRecord`] JSON           | by the token's keepers (3 nodes), on change |
//!
//! [`NodeIdentity`]: crate::NodeIdentity
//! [`NodeLoad`]: crate::NodeLoad
//! [`ContainerRecord`]: crate::ContainerRecord
//! [`AppRecord`]: crate::catalog::AppRecord
//! [`TenantRecord`]: crate::tenancy::TenantRecord
//! [`TokenRecord`]: crate::tenancy::TokenRecord

use serde::Serialize;
use serde::de::DeserializeOwned;

pub const SCHEMA_VERSION: u32 = 1;

pub const IDENTITY_KEY: &str = "v1:identity";
pub const LOAD_KEY: &str = "v1:load";
pub const LEAVING_KEY: &str = "v1:leaving";
/// Present while the node is drained: it takes no new replicas and its own move away.
pub const DRAINING_KEY: &str = "v1:draining";
pub const CONTAINER_KEY_PREFIX: &str = "v1:container:";
pub const APP_KEY_PREFIX: &str = "v1:app:";
pub const FAILURE_KEY_PREFIX: &str = "v1:failure:";
pub const TENANT_KEY_PREFIX: &str = "v1:tenant:";
pub const TOKEN_KEY_PREFIX: &str = "v1:token:";

/// The key a tenant record is published under.
pub fn tenant_key(tenant: &str) -> String {
    format!("{TENANT_KEY_PREFIX}{tenant}")
}

/// The key a token record is published under.
pub fn token_key(token_id: &str) -> String {
    format!("{TOKEN_KEY_PREFIX}{token_id}")
}

/// Why a release of an app cannot run, published by the node that schedules it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RolloutFailure {
    pub app: String,
    pub release: u64,
    pub reason: String,
}

/// The key a rollout failure is published under.
pub fn failure_key(app: &str) -> String {
    format!("{FAILURE_KEY_PREFIX}{app}")
}

/// The key an app record is published under.
pub fn app_key(app: &str) -> String {
    format!("{APP_KEY_PREFIX}{app}")
}

/// The key a container record is published under.
pub fn container_key(container_id: &str) -> String {
    format!("{CONTAINER_KEY_PREFIX}{container_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum GossipValueError {
    #[error("gossip key {key} holds an invalid value: {source}")]
    Invalid {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Encodes a value for publication.
pub fn encode<T: Serialize>(value: &T) -> String {
    // Serializing our own plain structs to a String cannot fail: no maps with non-string
    // keys, no I/O. Fall back to an empty object rather than panic if that ever changes.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string())
}

/// Decodes a value read from gossip. Peers are not trusted to send well-formed values.
pub fn decode<T: DeserializeOwned>(key: &str, value: &str) -> Result<T, GossipValueError> {
    serde_json::from_str(value).map_err(|source| GossipValueError::Invalid {
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ContainerHealth, ContainerRecord, ContainerState};

    #[test]
    fn container_record_round_trips_under_its_key() {
        let record = ContainerRecord {
            id: "web-3-1".into(),
            app: "web".into(),
            release: 3,
            replica: 1,
            addr: "127.0.0.2:30001".parse().unwrap(),
            state: ContainerState::Running,
            health: ContainerHealth::Healthy,
            detail: None,
        };
        let key = container_key(&record.id);
        assert_eq!(key, "v1:container:web-3-1");
        let decoded: ContainerRecord = decode(&key, &encode(&record)).unwrap();
        assert_eq!(decoded, record);
    }

    #[test]
    fn garbage_values_are_errors_not_panics() {
        let err = decode::<ContainerRecord>("v1:container:x", "{not json").unwrap_err();
        assert!(err.to_string().contains("v1:container:x"));
    }
}
