//! What peers gossip is not trusted: any keys and values from any members build a cluster
//! view without panicking, and the view only holds what it can read.
#![no_main]

use std::net::SocketAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use node::cluster::membership::{ClusterView, MemberSnapshot};

#[derive(Debug, Arbitrary)]
struct Member {
    node_id: String,
    generation: u64,
    port: u16,
    is_live: bool,
    was_live: bool,
    key_values: Vec<(Key, String)>,
}

/// Keys are mostly the ones agents publish, so the fuzzer reaches their decoders.
#[derive(Debug, Arbitrary)]
enum Key {
    Known(u8, String),
    Any(String),
}

const PREFIXES: &[&str] = &[
    proto::gossip::IDENTITY_KEY,
    proto::gossip::LOAD_KEY,
    proto::gossip::LEAVING_KEY,
    proto::gossip::DRAINING_KEY,
    proto::gossip::CONTAINER_KEY_PREFIX,
    proto::gossip::APP_KEY_PREFIX,
    proto::gossip::FAILURE_KEY_PREFIX,
];

fuzz_target!(|input: (String, Vec<Member>)| {
    let (self_id, members) = input;
    let members: Vec<MemberSnapshot> = members
        .into_iter()
        .map(|member| MemberSnapshot {
            node_id: member.node_id,
            generation: member.generation,
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], member.port)),
            is_live: member.is_live,
            was_live: member.was_live,
            key_values: member
                .key_values
                .into_iter()
                .map(|(key, value)| {
                    let key = match key {
                        Key::Known(which, rest) => {
                            format!("{}{rest}", PREFIXES[usize::from(which) % PREFIXES.len()])
                        }
                        Key::Any(key) => key,
                    };
                    (key, value)
                })
                .collect(),
        })
        .collect();
    let count = members.len();
    let view = ClusterView::build(&self_id, members);
    assert!(view.nodes.len() <= count);
    for node in view.live_nodes() {
        assert!(view.node(&node.node_id).is_some());
    }
    for placed in &view.containers {
        assert!(
            view.node(&placed.node_id).is_some(),
            "a container of no known node"
        );
    }
});
