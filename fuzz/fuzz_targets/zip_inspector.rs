//! Uploaded bundles are hostile: inspecting and unpacking any bytes never panics, and what
//! unpacks stays inside its folder, with no links.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use node::bundle::{UnpackLimits, inspect_and_unpack};

fn check_inside(root: &Path, dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("an unpacked folder reads") {
        let entry = entry.expect("an entry");
        let meta = std::fs::symlink_metadata(entry.path()).expect("its metadata");
        assert!(
            !meta.file_type().is_symlink(),
            "a link was unpacked: {:?}",
            entry.path()
        );
        let canonical = entry.path().canonicalize().expect("a real path");
        assert!(
            canonical.starts_with(root),
            "{canonical:?} is outside {root:?}"
        );
        if meta.is_dir() {
            check_inside(root, &entry.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in("/dev/shm").expect("a temporary folder");
    let zip = dir.path().join("bundle.zip");
    std::fs::write(&zip, data).expect("the bytes are written");
    let limits = UnpackLimits {
        max_total_bytes: 8 << 20,
        ..UnpackLimits::default()
    };
    let inspected = inspect_and_unpack(&zip, None, limits);
    let dest = dir.path().join("app");
    let unpacked = inspect_and_unpack(&zip, Some(&dest), limits);
    // Inspecting alone decompresses everything, so it judges exactly as unpacking does.
    assert_eq!(
        inspected.is_ok(),
        unpacked.is_ok(),
        "{inspected:?} / {unpacked:?}"
    );
    match unpacked {
        Ok(_) => {
            let root = dest.canonicalize().expect("the folder exists");
            check_inside(&root, &root);
        }
        Err(_) => assert!(!dest.exists(), "a refused bundle left files behind"),
    }
});
