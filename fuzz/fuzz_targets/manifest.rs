//! `stratus.toml` (and a Procfile) as a developer may write them: parsing never panics, and
//! what it accepts survives the trip through JSON that releases take between nodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::manifest::{MAX_REPLICAS, Manifest};

// The input is the manifest, then optionally a NUL and a Procfile, so that plain
// `stratus.toml` files are seeds as they are.
fuzz_target!(|data: &[u8]| {
    let (text, procfile) = match data.iter().position(|byte| *byte == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let (Ok(text), Ok(procfile)) = (
        std::str::from_utf8(text),
        procfile.map(std::str::from_utf8).transpose(),
    ) else {
        return;
    };
    let Ok(manifest) = Manifest::parse(text, procfile) else {
        return;
    };
    assert!(manifest.replicas <= MAX_REPLICAS);
    let json = serde_json::to_string(&manifest).expect("a manifest serializes");
    let back: Manifest = serde_json::from_str(&json).expect("and reads back");
    assert_eq!(back, manifest);
});
