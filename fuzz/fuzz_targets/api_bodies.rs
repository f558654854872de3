//! The API's JSON bodies, from users and from peers: any bytes are read or refused without
//! panicking, and what is read writes back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let json = serde_json::to_vec(&value).expect("a body that was read writes");
    let back: T = serde_json::from_slice(&json).expect("and reads back");
    assert_eq!(back, value);
}

fuzz_target!(|input: (u8, &[u8])| {
    let (which, body) = input;
    match which % 7 {
        0 => round_trip::<proto::api::ScaleRequest>(body),
        1 => round_trip::<proto::api::RollbackRequest>(body),
        2 => round_trip::<proto::api::StopRequest>(body),
        3 => round_trip::<proto::api::DrainReply>(body),
        4 => round_trip::<proto::api::PlacementRequest>(body),
        5 => round_trip::<proto::api::BuildRequest>(body),
        _ => round_trip::<proto::catalog::AppRecord>(body),
    }
});
