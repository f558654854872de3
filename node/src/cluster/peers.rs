//! Nodes calling nodes: the token this node presents to its peers and the ones it accepts
//! from them. With a cluster key, tokens derive from it (every key of the keyring, so a
//! rotation keeps old and new nodes talking); without one, from the cluster id.

use std::net::SocketAddr;

use crate::cluster::seal::{Keyring, constant_time_eq};

#[derive(Clone)]
pub struct Peers {
    token: String,
    keyring: Option<Keyring>,
}

impl Peers {
    pub fn new(keyring: Option<Keyring>, cluster_id: &str) -> Peers {
        let token = match &keyring {
            Some(keyring) => keyring.node_token().to_string(),
            None => format!("insecure-{cluster_id}"),
        };
        Peers { token, keyring }
    }

    /// Whether `token` is a node's: then its bearer may call the internal routes.
    pub fn accepts(&self, token: &str) -> bool {
        match &self.keyring {
            Some(keyring) => keyring.accepts_node_token(token),
            None => constant_time_eq(token.as_bytes(), self.token.as_bytes()),
        }
    }

    /// A client for another node's API, authenticated as a node.
    pub fn client(&self, api_addr: SocketAddr) -> Option<api::Client> {
        api::Client::new(&api_addr.to_string())
            .ok()
            .map(|client| client.with_token(Some(self.token.clone())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use rand::SeedableRng;

    use super::*;
    use crate::cluster::seal::ClusterKey;

    #[test]
    fn peers_accept_their_own_token_and_no_other() {
        let key = ClusterKey::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
        let sealed = Peers::new(Some(Keyring::parse(&[key]).unwrap()), "c1");
        assert!(sealed.accepts(&sealed.token));
        assert!(
            !sealed.accepts("insecure-c1"),
            "the key's token, not the id's"
        );
        assert!(!sealed.accepts(""));

        let open = Peers::new(None, "c1");
        assert!(open.accepts("insecure-c1"));
        assert!(!open.accepts("insecure-c2"));
        assert!(!open.accepts(&sealed.token));
    }
}
