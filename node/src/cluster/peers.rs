//! Nodes calling nodes: every call this node makes to a peer's API is signed
//! (`api::node_auth`) with the MAC key of its primary cluster key, and every call it takes
//! from one is checked against the keys of its whole keyring (so a rotation keeps old and
//! new nodes talking). Without a cluster key (`--insecure-no-encryption`) the key derives
//! from the cluster id, which is no secret: such a cluster's API is open to anyone who
//! knows its name, as its gossip is.
//!
//! Peers that say in their gossiped identity that they serve TLS are called over https,
//! their certificates checked against the web's roots and `--api-tls-ca`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use api::node_auth::{REPLAY_CAPACITY, Verifier};
use api::{MacKey, NodeAuth, NodeSigner};
use arc_swap::ArcSwap;

use crate::cluster::membership::ClusterView;
use crate::cluster::seal::{Keyring, node_mac_secret};

#[derive(Clone)]
pub struct Peers {
    signer: NodeSigner,
    auth: Arc<NodeAuth>,
    /// One HTTP client (its pool, its roots) for every call to a peer.
    http: reqwest::Client,
    /// API addresses of the peers that serve TLS, from their identities.
    tls: Arc<ArcSwap<HashSet<SocketAddr>>>,
}

impl Peers {
    /// `authorities` are the `host:port`s peers reach this node's API at: a call addressed
    /// to any other is refused. `ca_pem` (path, PEM) is `--api-tls-ca`.
    pub fn new(
        keyring: Option<&Keyring>,
        cluster_id: &str,
        authorities: Vec<String>,
        ca_pem: Option<(&str, &[u8])>,
    ) -> Result<Peers, api::ClientError> {
        let keys = mac_keys(keyring, cluster_id);
        let signer = NodeSigner::new(keys[0].clone());
        let auth = NodeAuth::new(Verifier::new(keys, authorities, REPLAY_CAPACITY));
        Ok(Peers {
            signer,
            auth: Arc::new(auth),
            http: api::client::http_client(ca_pem)?,
            tls: Arc::default(),
        })
    }

    /// The verifier of the calls peers make to this node.
    pub fn node_auth(&self) -> &NodeAuth {
        &self.auth
    }

    /// Takes note of which peers serve TLS, from a view of the cluster.
    pub fn learn(&self, view: &ClusterView) {
        let tls: HashSet<SocketAddr> = view
            .nodes
            .iter()
            .filter_map(|node| node.identity.as_ref())
            .filter(|identity| identity.api_tls)
            .map(|identity| identity.api_addr)
            .collect();
        if **self.tls.load() != tls {
            self.tls.store(Arc::new(tls));
        }
    }

    /// A client for another node's API, signing its calls as a node.
    pub fn client(&self, api_addr: SocketAddr) -> Option<api::Client> {
        let scheme = if self.tls.load().contains(&api_addr) {
            "https"
        } else {
            "http"
        };
        api::Client::with_http(&format!("{scheme}://{api_addr}"), self.http.clone())
            .ok()
            .map(|client| client.with_signer(self.signer.clone()))
    }
}

/// How a node of this cluster signs its calls: what `stratus doctor` signs with to see
/// whether the local agent holds the same key.
pub fn signer(keyring: Option<&Keyring>, cluster_id: &str) -> NodeSigner {
    let keys = mac_keys(keyring, cluster_id);
    NodeSigner::new(keys[0].clone())
}

/// Primary first; never empty.
fn mac_keys(keyring: Option<&Keyring>, cluster_id: &str) -> Vec<MacKey> {
    match keyring {
        Some(keyring) => keyring.mac_keys(),
        None => vec![insecure_key(cluster_id)],
    }
}

/// The MAC key of a cluster without a cluster key: from its id, which anyone may know.
fn insecure_key(cluster_id: &str) -> MacKey {
    MacKey::new(
        "insecure",
        node_mac_secret(format!("insecure-{cluster_id}").as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use api::node_auth::{CallParts, EMPTY_SHA256};
    use rand::SeedableRng;

    use super::*;
    use crate::cluster::seal::ClusterKey;

    const HOST: &str = "127.0.0.1:7070";

    fn call() -> CallParts<'static> {
        CallParts {
            method: "GET",
            authority: HOST,
            path: "/v1/internal/audit",
            query: "",
            content_sha256: EMPTY_SHA256,
        }
    }

    fn peers(keys: &[String], cluster: &str) -> Peers {
        let keyring = (!keys.is_empty()).then(|| Keyring::parse(keys).unwrap());
        Peers::new(keyring.as_ref(), cluster, vec![HOST.into()], None).unwrap()
    }

    #[test]
    fn peers_accept_calls_of_their_keyring_and_no_other() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let key_a = ClusterKey::generate(&mut rng);
        let key_b = ClusterKey::generate(&mut rng);
        let a = peers(std::slice::from_ref(&key_a), "c1");
        let b = peers(std::slice::from_ref(&key_b), "c1");
        let rotating = peers(&[key_b.clone(), key_a.clone()], "c1");
        let from_a = a.signer.sign(&call());
        assert_eq!(a.node_auth().verify(&from_a, &call()), Ok(()));
        assert!(b.node_auth().verify(&from_a, &call()).is_err());
        assert_eq!(rotating.node_auth().verify(&from_a, &call()), Ok(()));
        let from_rotating = rotating.signer.sign(&call());
        assert_eq!(b.node_auth().verify(&from_rotating, &call()), Ok(()));

        let open = peers(&[], "c1");
        let from_open = open.signer.sign(&call());
        assert_eq!(open.node_auth().verify(&from_open, &call()), Ok(()));
        assert!(
            peers(&[], "c2")
                .node_auth()
                .verify(&open.signer.sign(&call()), &call())
                .is_err()
        );
        assert!(a.node_auth().verify(&from_open, &call()).is_err());
    }
}
