//! The gossip seal: any datagram opens or is refused without panicking; what one node seals
//! opens and reassembles to exactly what it sealed; one changed byte anywhere is refused.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use node::cluster::seal::{Keyring, Reassembler};
use rand::SeedableRng;

fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let key = node::cluster::seal::ClusterKey::generate(&mut rng);
        Keyring::parse(&[key]).expect("a generated key parses")
    })
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>, u64, usize, u8)| {
    let (datagram, payload, msg_id, flip_at, flip) = input;
    let keyring = keyring();
    // Whatever arrives on the socket.
    let _ = keyring.open(&datagram);

    let mut rng = rand::rngs::StdRng::seed_from_u64(msg_id);
    let Ok(sealed) = keyring.seal(&payload, msg_id, &mut rng) else {
        return;
    };
    let from = SocketAddr::from(([127, 0, 0, 1], 7000));
    let now = tokio::time::Instant::now();
    let mut reassembler = Reassembler::new(4, Duration::from_secs(5));
    let mut whole = None;
    for datagram in &sealed {
        let fragment = keyring.open(datagram).expect("a sealed datagram opens");
        whole = reassembler.push(from, fragment, now).or(whole);
    }
    assert_eq!(whole.as_deref(), Some(payload.as_slice()));

    if flip != 0 {
        let mut tampered = sealed[0].clone();
        let at = flip_at % tampered.len();
        tampered[at] ^= flip;
        assert!(
            keyring.open(&tampered).is_err(),
            "a changed byte at {at} was accepted"
        );
    }
});
