//! App bundles end to end: packing a folder with ignore files, links and `.git`; the round
//! trip pack → inspect → unpack; every kind of hostile zip, each refused with its own error
//! and nothing left on disk; and the content-addressed blob store.
//!
//! Hostile zips are built here with the `zip` writer where it allows the trick, and byte by
//! byte ([`raw_zip`]) where it does not (duplicate names, lying headers, special files).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::fs;
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::DeflateEncoder;
use node::bundle::{
    BlobStore, BundleError, PathProblem, Sha256Writer, UnpackLimits, inspect_and_unpack, pack_dir,
    sha256_file,
};
use zip::write::SimpleFileOptions;
use zip::{ZipArchive, ZipWriter};

const MANIFEST: &str = "name = \"hello\"\ncmd = \"./bin/run\"\n";

// ---------------------------------------------------------------------------------------
// Helpers

/// An app folder with everything the walker has to get right.
fn app_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write = |path: &str, content: &str| {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    };
    write("stratus.toml", MANIFEST);
    write("app.py", "print('hello')\n");
    write("bin/run", "#!/bin/sh\nexec python3 app.py\n");
    fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
    write(".gitignore", "*.log\nbuild/\nsecret.txt\n");
    // `.stratusignore` wins over `.gitignore`: it excludes tests/ and puts keep.log back.
    write(".stratusignore", "tests/\n!keep.log\n");
    write("debug.log", "noise");
    write("keep.log", "wanted");
    write("secret.txt", "hunter2");
    write("build/out.o", "binary");
    write("tests/test_app.py", "assert True");
    write("sub/.gitignore", "*.tmp\n");
    write("sub/data.txt", "data");
    write("sub/scratch.tmp", "scratch");
    write(".git/HEAD", "ref: refs/heads/main\n");
    write(".git/config", "[core]\n");
    write("vendor/lib/.git", "gitdir: ../../.git/modules/lib\n");
    write("vendor/lib/lib.py", "x = 1\n");
    fs::create_dir(root.join("empty")).unwrap();
    symlink("/etc/passwd", root.join("passwd-link")).unwrap();
    symlink("/etc", root.join("sub/etc-link")).unwrap();
    dir
}

fn pack_to_vec(dir: &Path) -> (Vec<u8>, node::bundle::PackSummary) {
    let mut out = Cursor::new(Vec::new());
    let summary = pack_dir(dir, &mut out).unwrap();
    (out.into_inner(), summary)
}

fn entry_names(zip: &[u8]) -> Vec<String> {
    let archive = ZipArchive::new(Cursor::new(zip)).unwrap();
    archive.file_names().map(str::to_string).collect()
}

/// Writes `bytes` as a bundle file and returns (temp dir, bundle path, releases folder).
fn bundle_file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.zip");
    fs::write(&path, bytes).unwrap();
    let releases = dir.path().join("releases");
    fs::create_dir(&releases).unwrap();
    (dir, path, releases)
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().next().is_none()
}

/// Inspects `bytes` and unpacks them; both must fail the same way, with a lowercase message,
/// and leave the releases folder empty. Returns the error.
fn refuse_with(bytes: &[u8], limits: UnpackLimits) -> BundleError {
    let (_dir, path, releases) = bundle_file(bytes);
    let inspected = inspect_and_unpack(&path, None, limits).unwrap_err();
    let dest = releases.join("r1");
    let unpacked = inspect_and_unpack(&path, Some(&dest), limits).unwrap_err();
    assert_eq!(inspected.to_string(), unpacked.to_string());
    assert!(
        is_empty_dir(&releases),
        "a refused bundle left files behind"
    );
    let message = unpacked.to_string();
    assert!(
        message.starts_with(|c: char| c.is_lowercase()),
        "message should start lowercase: {message}"
    );
    unpacked
}

fn refuse(bytes: &[u8]) -> BundleError {
    refuse_with(bytes, UnpackLimits::default())
}

/// A zip made by the `zip` writer: the manifest first, then whatever `more` adds.
fn written_zip(more: impl FnOnce(&mut ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    zip.start_file("stratus.toml", SimpleFileOptions::default())
        .unwrap();
    zip.write_all(MANIFEST.as_bytes()).unwrap();
    more(&mut zip);
    zip.finish().unwrap().into_inner()
}

const S_IFREG: u32 = 0o100_000;

/// One entry of a zip built byte by byte.
#[derive(Clone)]
struct Raw {
    name: Vec<u8>,
    /// The bytes after the local header: already deflated when `method` is 8.
    data: Vec<u8>,
    method: u16,
    flags: u16,
    /// The uncompressed size the headers claim.
    size: u32,
    crc: u32,
    /// Unix mode with file type; `None` writes no attributes, like minimal tools do.
    mode: Option<u32>,
}

impl Raw {
    fn file(name: &str, data: &[u8]) -> Raw {
        Raw {
            name: name.as_bytes().to_vec(),
            data: data.to_vec(),
            method: 0,
            flags: 0,
            size: data.len() as u32,
            crc: crc32fast::hash(data),
            mode: Some(S_IFREG | 0o644),
        }
    }

    fn manifest() -> Raw {
        Raw::file("stratus.toml", MANIFEST.as_bytes())
    }

    fn mode(mut self, mode: u32) -> Raw {
        self.mode = Some(mode);
        self
    }
}

/// A zip with exactly these local and central records, whatever they say.
fn raw_zip(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for entry in entries {
        let offset = out.len() as u32;
        let name_len = entry.name.len() as u16;
        let common = |buf: &mut Vec<u8>| {
            buf.extend(20u16.to_le_bytes()); // version needed
            buf.extend(entry.flags.to_le_bytes());
            buf.extend(entry.method.to_le_bytes());
            buf.extend(0u16.to_le_bytes()); // time
            buf.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            buf.extend(entry.crc.to_le_bytes());
            buf.extend((entry.data.len() as u32).to_le_bytes());
            buf.extend(entry.size.to_le_bytes());
            buf.extend(name_len.to_le_bytes());
            buf.extend(0u16.to_le_bytes()); // extra length
        };
        out.extend(b"PK\x03\x04");
        common(&mut out);
        out.extend(&entry.name);
        out.extend(&entry.data);

        central.extend(b"PK\x01\x02");
        let made_by: u16 = if entry.mode.is_some() {
            (3 << 8) | 20
        } else {
            20
        };
        central.extend(made_by.to_le_bytes());
        common(&mut central);
        central.extend(0u16.to_le_bytes()); // comment length
        central.extend(0u16.to_le_bytes()); // disk
        central.extend(0u16.to_le_bytes()); // internal attributes
        central.extend((entry.mode.unwrap_or(0) << 16).to_le_bytes());
        central.extend(offset.to_le_bytes());
        central.extend(&entry.name);
    }
    let central_offset = out.len() as u32;
    let central_len = central.len() as u32;
    out.extend(central);
    out.extend(b"PK\x05\x06");
    out.extend(0u16.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend(central_len.to_le_bytes());
    out.extend(central_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// A raw deflate stream of `mib` MiB of zeros, built without compressing them all: one
/// MiB is compressed and sync-flushed (so its blocks end on a byte boundary and reference
/// only zeros), then repeated, then closed. 2 GiB of zeros cost about 2 MiB.
fn deflated_zeros(mib: usize) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(&vec![0u8; 1 << 20]).unwrap();
    encoder.flush().unwrap();
    let chunk = encoder.get_ref().clone();
    let whole = encoder.finish().unwrap();
    let mut stream = Vec::with_capacity(chunk.len() * mib + 16);
    for _ in 0..mib {
        stream.extend_from_slice(&chunk);
    }
    stream.extend_from_slice(&whole[chunk.len()..]);
    stream
}

/// An entry of `mib` MiB of zeros whose header claims `claimed_size` bytes.
fn zeros_entry(name: &str, mib: usize, claimed_size: u32) -> Raw {
    Raw {
        name: name.as_bytes().to_vec(),
        data: deflated_zeros(mib),
        method: 8,
        flags: 0,
        size: claimed_size,
        // Never checked: the limits stop decompression long before the end.
        crc: 0,
        mode: Some(S_IFREG | 0o644),
    }
}

// ---------------------------------------------------------------------------------------
// Packing

#[test]
fn packing_honours_ignore_files_skips_git_and_links() {
    let app = app_folder();
    let (zip, summary) = pack_to_vec(app.path());
    assert_eq!(
        entry_names(&zip),
        [
            ".gitignore",
            ".stratusignore",
            "app.py",
            "bin/",
            "bin/run",
            "empty/",
            "keep.log",
            "stratus.toml",
            "sub/",
            "sub/.gitignore",
            "sub/data.txt",
            "vendor/",
            "vendor/lib/",
            "vendor/lib/lib.py",
        ]
    );
    assert_eq!(summary.files, 9);
    assert_eq!(summary.manifest.name, "hello");
    let mut skipped = summary.skipped_symlinks.clone();
    skipped.sort();
    assert_eq!(
        skipped,
        [PathBuf::from("passwd-link"), PathBuf::from("sub/etc-link")]
    );
    assert!(summary.skipped_special.is_empty());
    let expected_bytes: u64 = [
        ".gitignore",
        ".stratusignore",
        "app.py",
        "bin/run",
        "keep.log",
        "stratus.toml",
        "sub/.gitignore",
        "sub/data.txt",
        "vendor/lib/lib.py",
    ]
    .iter()
    .map(|path| fs::metadata(app.path().join(path)).unwrap().len())
    .sum();
    assert_eq!(summary.bytes, expected_bytes);

    let mut archive = ZipArchive::new(Cursor::new(&zip)).unwrap();
    let run_mode = archive.by_name("bin/run").unwrap().unix_mode().unwrap();
    assert_eq!(run_mode & 0o777, 0o755);
    let app_mode = archive.by_name("app.py").unwrap().unix_mode().unwrap();
    assert_eq!(app_mode & 0o111, 0);
}

#[test]
fn the_same_folder_always_packs_to_the_same_bytes() {
    let app = app_folder();
    let (first, _) = pack_to_vec(app.path());
    // A new modification time must not change the bundle.
    fs::write(app.path().join("app.py"), "print('hello')\n").unwrap();
    let (second, _) = pack_to_vec(app.path());
    assert_eq!(first, second);
}

#[test]
fn the_manifest_and_procfile_go_in_even_if_ignored() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("stratus.toml"), "name = \"web\"\n").unwrap();
    fs::write(dir.path().join("Procfile"), "web: ./serve\n").unwrap();
    fs::write(dir.path().join(".gitignore"), "*.toml\nProcfile\n").unwrap();
    let (zip, summary) = pack_to_vec(dir.path());
    assert_eq!(summary.manifest.cmd.as_deref(), Some("./serve"));
    assert_eq!(
        entry_names(&zip),
        [".gitignore", "Procfile", "stratus.toml"]
    );
}

#[test]
fn a_bad_manifest_is_caught_before_packing() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("stratus.toml"), "name = \"Bad Name\"\n").unwrap();
    let mut out = Cursor::new(Vec::new());
    let err = pack_dir(dir.path(), &mut out).unwrap_err();
    let BundleError::InvalidManifest(errors) = &err else {
        panic!("expected an invalid manifest, got {err}");
    };
    let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
    // No `cmd` is no error here: a builder may start the app (checked at deploy).
    assert_eq!(fields, ["name"]);
    assert!(out.get_ref().is_empty(), "nothing should be written");
}

#[test]
fn a_linked_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.toml");
    fs::write(&real, MANIFEST).unwrap();
    symlink(&real, dir.path().join("stratus.toml")).unwrap();
    let err = pack_dir(dir.path(), Cursor::new(Vec::new())).unwrap_err();
    assert!(matches!(err, BundleError::Symlink { .. }), "{err}");
}

#[test]
fn a_file_name_the_node_would_refuse_is_refused_when_packing() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("stratus.toml"), MANIFEST).unwrap();
    fs::write(dir.path().join("back\\slash"), "").unwrap();
    let err = pack_dir(dir.path(), Cursor::new(Vec::new())).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::UnsafePath {
                problem: PathProblem::Backslash,
                ..
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Round trip

#[test]
fn pack_inspect_unpack_round_trip() {
    let app = app_folder();
    let (zip, summary) = pack_to_vec(app.path());
    let (_dir, path, releases) = bundle_file(&zip);

    let manifest = inspect_and_unpack(&path, None, UnpackLimits::default()).unwrap();
    assert_eq!(manifest, summary.manifest);

    let dest = releases.join("r1");
    let unpacked = inspect_and_unpack(&path, Some(&dest), UnpackLimits::default()).unwrap();
    assert_eq!(unpacked, summary.manifest);
    for file in [
        "app.py",
        "bin/run",
        "keep.log",
        "sub/data.txt",
        "stratus.toml",
    ] {
        assert_eq!(
            fs::read(dest.join(file)).unwrap(),
            fs::read(app.path().join(file)).unwrap(),
            "{file}"
        );
    }
    let mode = |path: &str| fs::metadata(dest.join(path)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin/run"), 0o755);
    assert_eq!(mode("app.py"), 0o644);
    assert_eq!(mode("empty"), 0o755);
    assert_eq!(mode(""), 0o755);
    assert!(!dest.join("secret.txt").exists());
    assert!(!dest.join("passwd-link").exists());
    // Only the release: the staging folder was renamed, not copied.
    let left: Vec<_> = fs::read_dir(&releases).unwrap().collect();
    assert_eq!(left.len(), 1);

    // A release folder is never written into twice.
    let err = inspect_and_unpack(&path, Some(&dest), UnpackLimits::default()).unwrap_err();
    assert!(matches!(err, BundleError::DestinationExists(_)), "{err}");
    assert!(dest.join("app.py").exists());
}

#[test]
fn zips_from_other_tools_without_unix_modes_unpack() {
    let mut manifest = Raw::manifest();
    manifest.mode = None;
    let mut data = Raw::file("data/x.txt", b"x");
    data.mode = None;
    let (_dir, path, releases) = bundle_file(&raw_zip(&[manifest, data]));
    let dest = releases.join("r1");
    inspect_and_unpack(&path, Some(&dest), UnpackLimits::default()).unwrap();
    assert_eq!(fs::read(dest.join("data/x.txt")).unwrap(), b"x");
}

// ---------------------------------------------------------------------------------------
// Hostile zips

#[test]
fn not_a_zip() {
    for bytes in [
        &b""[..],
        b"PK",
        b"hello, this is not a zip at all",
        b"\x7fELF\x02\x01",
    ] {
        assert!(matches!(refuse(bytes), BundleError::NotAZip), "{bytes:?}");
    }
}

#[test]
fn a_truncated_zip() {
    let (zip, _) = pack_to_vec(app_folder().path());
    for cut in [zip.len() / 2, zip.len() - 1, 10] {
        let err = refuse(&zip[..cut]);
        assert!(matches!(err, BundleError::Corrupt { .. }), "{cut}: {err}");
    }
}

#[test]
fn a_corrupted_entry_fails_its_checksum() {
    let mut zip = raw_zip(&[Raw::manifest(), Raw::file("data.txt", b"precious data")]);
    let at = zip
        .windows(b"precious".len())
        .position(|w| w == b"precious")
        .unwrap();
    zip[at] = b'P';
    let err = refuse(&zip);
    assert!(
        matches!(&err, BundleError::Corrupt { reason } if reason.contains("checksum")),
        "{err}"
    );
}

#[test]
fn a_header_that_lies_about_the_size_is_corrupt() {
    let mut lying = Raw::file("data.txt", b"hello");
    lying.size = 3;
    let err = refuse(&raw_zip(&[Raw::manifest(), lying]));
    assert!(
        matches!(&err, BundleError::Corrupt { reason } if reason.contains("header says 3")),
        "{err}"
    );
}

#[test]
fn paths_that_escape_the_folder() {
    for (name, problem) in [
        ("../evil", PathProblem::ParentDir),
        ("a/../../b", PathProblem::ParentDir),
        ("/abs", PathProblem::Absolute),
        ("/etc/cron.d/x", PathProblem::Absolute),
    ] {
        let zip = written_zip(|zip| {
            zip.start_file(name, SimpleFileOptions::default()).unwrap();
            zip.write_all(b"pwned").unwrap();
        });
        let err = refuse(&zip);
        assert!(
            matches!(&err, BundleError::UnsafePath { name: n, problem: p } if n == name && *p == problem),
            "{name}: {err}"
        );
    }
    // Windows-style paths, byte by byte (the writer would turn `\` into `/`).
    for (name, problem) in [
        ("..\\evil", PathProblem::Backslash),
        ("C:\\Windows\\evil", PathProblem::Backslash),
        ("C:/evil", PathProblem::DriveLetter),
        ("a/\0/b", PathProblem::ControlCharacter),
        ("./stratus.toml", PathProblem::DotComponent),
    ] {
        let err = refuse(&raw_zip(&[Raw::manifest(), Raw::file(name, b"pwned")]));
        assert!(
            matches!(&err, BundleError::UnsafePath { problem: p, .. } if *p == problem),
            "{name:?}: {err}"
        );
    }
}

#[test]
fn a_symlink_entry() {
    let zip = written_zip(|zip| {
        zip.add_symlink("passwd", "/etc/passwd", SimpleFileOptions::default())
            .unwrap();
    });
    let err = refuse(&zip);
    assert!(
        matches!(&err, BundleError::Symlink { name } if name == "passwd"),
        "{err}"
    );
    // A link named like a folder is still a link.
    let link_dir = Raw::file("etc/", b"/etc").mode(0o120_777);
    let err = refuse(&raw_zip(&[Raw::manifest(), link_dir]));
    assert!(matches!(err, BundleError::Symlink { .. }), "{err}");
}

#[test]
fn special_files() {
    for (mode, kind) in [
        (0o010_644, "fifo"),
        (0o020_644, "char device"),
        (0o060_644, "block device"),
        (0o140_644, "socket"),
    ] {
        let err = refuse(&raw_zip(&[
            Raw::manifest(),
            Raw::file("dev", b"").mode(mode),
        ]));
        assert!(
            matches!(&err, BundleError::NotRegularFile { mode: m, .. } if *m == mode),
            "{kind}: {err}"
        );
    }
}

#[test]
fn duplicate_names() {
    let err = refuse(&raw_zip(&[
        Raw::manifest(),
        Raw::file("app.py", b"print('good')"),
        Raw::file("app.py", b"print('evil')"),
    ]));
    assert!(
        matches!(&err, BundleError::Duplicate { name } if name == "app.py"),
        "{err}"
    );
    // Two manifests: which one would the node have read?
    let err = refuse(&raw_zip(&[Raw::manifest(), Raw::manifest()]));
    assert!(matches!(err, BundleError::Duplicate { .. }), "{err}");
    // A file and a folder of the same name.
    let err = refuse(&raw_zip(&[
        Raw::manifest(),
        Raw::file("lib", b""),
        Raw::file("lib/", b"").mode(0o040_755),
    ]));
    assert!(
        matches!(&err, BundleError::Duplicate { name } if name == "lib"),
        "{err}"
    );
    // A file that another entry needs as a folder.
    let err = refuse(&raw_zip(&[
        Raw::manifest(),
        Raw::file("lib", b""),
        Raw::file("lib/x.py", b""),
    ]));
    assert!(
        matches!(&err, BundleError::FileFolderConflict { name } if name == "lib"),
        "{err}"
    );
}

#[test]
fn a_zip_bomb_with_an_honest_header_is_refused_from_its_header() {
    // 2 GiB of zeros in about 2 MiB.
    let bomb = zeros_entry("zeros.bin", 2048, 2048 << 20);
    assert!(bomb.data.len() < 4 << 20, "{} bytes", bomb.data.len());
    let err = refuse(&raw_zip(&[Raw::manifest(), bomb]));
    assert!(
        matches!(err, BundleError::TooLarge { limit } if limit == 1 << 30),
        "{err}"
    );
}

#[test]
fn a_zip_bomb_with_a_lying_header_is_stopped_by_its_ratio() {
    // Claims 1,000 bytes; stopped once the decompressed bytes pass 1 MiB at over 200:1.
    let bomb = zeros_entry("zeros.bin", 2048, 1_000);
    let err = refuse(&raw_zip(&[Raw::manifest(), bomb]));
    assert!(
        matches!(&err, BundleError::CompressionRatio { name, limit: 200 } if name == "zeros.bin"),
        "{err}"
    );
}

#[test]
fn the_total_size_is_counted_on_decompressed_bytes() {
    // An honest 8 MiB entry, then one that claims 1,000 bytes: the headers add up to less
    // than the limit, the decompressed bytes do not.
    let limits = UnpackLimits {
        max_total_bytes: 12 << 20,
        max_ratio: u64::MAX,
        ..UnpackLimits::default()
    };
    let mut honest = zeros_entry("a.bin", 8, 8 << 20);
    honest.crc = crc32fast::hash(&vec![0u8; 8 << 20]);
    let err = refuse_with(
        &raw_zip(&[Raw::manifest(), honest, zeros_entry("b.bin", 8, 1_000)]),
        limits,
    );
    assert!(
        matches!(err, BundleError::TooLarge { limit } if limit == 12 << 20),
        "{err}"
    );
}

#[test]
fn small_files_may_compress_well() {
    // 1 MiB of zeros compresses about 1000:1 but is under the size where the ratio counts.
    let mut zeros = zeros_entry("zeros.bin", 1, 1 << 20);
    zeros.crc = crc32fast::hash(&vec![0u8; 1 << 20]);
    let (_dir, path, _) = bundle_file(&raw_zip(&[Raw::manifest(), zeros]));
    inspect_and_unpack(&path, None, UnpackLimits::default()).unwrap();
}

#[test]
fn too_many_entries() {
    let zip = written_zip(|zip| {
        for i in 0..10_000 {
            zip.start_file(format!("f/{i}"), SimpleFileOptions::default())
                .unwrap();
        }
    });
    let err = refuse(&zip);
    assert!(
        matches!(err, BundleError::TooManyEntries { limit: 10_000 }),
        "{err}"
    );
}

/// `zip` with its end record (the last 22 bytes, no comment) patched at `offset`.
fn patch_end_record(mut zip: Vec<u8>, offset: usize, value: &[u8]) -> Vec<u8> {
    let end = zip.len() - 22;
    assert_eq!(&zip[end..end + 4], b"PK\x05\x06");
    zip[end + offset..end + offset + value.len()].copy_from_slice(value);
    zip
}

/// `zip` turned into a zip64 archive: a zip64 end record declaring `entries` and the real
/// directory, its locator, and an end record whose fields hold the zip64 sentinels.
fn as_zip64(zip: &[u8], entries: u64) -> Vec<u8> {
    let end = zip.len() - 22;
    let directory_len = u32::from_le_bytes(zip[end + 12..end + 16].try_into().unwrap());
    let directory_at = u32::from_le_bytes(zip[end + 16..end + 20].try_into().unwrap());
    let mut out = zip[..end].to_vec();
    let record_at = out.len() as u64;
    out.extend(b"PK\x06\x06");
    out.extend(44u64.to_le_bytes()); // size of the rest of the record
    out.extend(45u16.to_le_bytes()); // made by
    out.extend(45u16.to_le_bytes()); // needed
    out.extend(0u32.to_le_bytes()); // this disk
    out.extend(0u32.to_le_bytes()); // disk with the directory
    out.extend(entries.to_le_bytes()); // entries on this disk
    out.extend(entries.to_le_bytes()); // entries
    out.extend(u64::from(directory_len).to_le_bytes());
    out.extend(u64::from(directory_at).to_le_bytes());
    out.extend(b"PK\x06\x07");
    out.extend(0u32.to_le_bytes());
    out.extend(record_at.to_le_bytes());
    out.extend(1u32.to_le_bytes()); // disks
    out.extend(b"PK\x05\x06");
    out.extend(0u16.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(u16::MAX.to_le_bytes());
    out.extend(u16::MAX.to_le_bytes());
    out.extend(u32::MAX.to_le_bytes());
    out.extend(u32::MAX.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

#[test]
fn an_end_record_declaring_too_many_entries_is_refused_before_the_directory_is_read() {
    let zip = raw_zip(&[Raw::manifest()]);
    let count = 60_000u16.to_le_bytes();
    let zip = patch_end_record(patch_end_record(zip, 8, &count), 10, &count);
    let err = refuse(&zip);
    assert!(
        matches!(err, BundleError::TooManyEntries { limit: 10_000 }),
        "{err}"
    );
}

#[test]
fn a_zip64_end_record_declaring_too_many_entries_is_refused() {
    let err = refuse(&as_zip64(&raw_zip(&[Raw::manifest()]), 1 << 40));
    assert!(
        matches!(err, BundleError::TooManyEntries { limit: 10_000 }),
        "{err}"
    );
}

#[test]
fn an_honest_zip64_end_record_passes() {
    let (_dir, path, _) = bundle_file(&as_zip64(&raw_zip(&[Raw::manifest()]), 1));
    inspect_and_unpack(&path, None, UnpackLimits::default()).unwrap();
}

#[test]
fn a_central_directory_larger_than_its_entries_need_is_refused() {
    let zip = raw_zip(&[Raw::manifest()]);
    let err = refuse(&patch_end_record(zip, 12, &(1u32 << 20).to_le_bytes()));
    assert!(
        matches!(&err, BundleError::Corrupt { reason } if reason.contains("larger than 1 entries can need")),
        "{err}"
    );
}

#[test]
fn an_end_record_hidden_in_the_comment_is_checked_too() {
    // The real end record's comment holds a second one that declares 60,000 entries: the
    // zip crate could pick either.
    let mut fake = b"PK\x05\x06".to_vec();
    fake.extend([0, 0, 0, 0]);
    fake.extend(60_000u16.to_le_bytes());
    fake.extend(60_000u16.to_le_bytes());
    fake.extend([0; 8]);
    fake.extend(0u16.to_le_bytes());
    let zip = raw_zip(&[Raw::manifest()]);
    let mut zip = patch_end_record(zip, 20, &(fake.len() as u16).to_le_bytes());
    zip.extend(&fake);
    let err = refuse(&zip);
    assert!(
        matches!(err, BundleError::TooManyEntries { limit: 10_000 }),
        "{err}"
    );
}

#[test]
fn unsupported_entries() {
    let mut encrypted = Raw::file("secret.txt", b"xxxx");
    encrypted.flags = 1;
    let mut bzip2 = Raw::file("data.bz2", b"xxxx");
    bzip2.method = 12;
    for entry in [encrypted, bzip2] {
        let err = refuse(&raw_zip(&[Raw::manifest(), entry]));
        assert!(matches!(err, BundleError::Unsupported { .. }), "{err}");
    }
}

#[test]
fn a_missing_manifest() {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    zip.start_file("app.py", SimpleFileOptions::default())
        .unwrap();
    let zip = zip.finish().unwrap().into_inner();
    assert!(matches!(refuse(&zip), BundleError::MissingManifest));
    // An empty zip, and a manifest only in a subfolder.
    let empty = ZipWriter::new(Cursor::new(Vec::new()))
        .finish()
        .unwrap()
        .into_inner();
    assert!(matches!(refuse(&empty), BundleError::MissingManifest));
    let nested = Raw::file("app/stratus.toml", MANIFEST.as_bytes());
    assert!(matches!(
        refuse(&raw_zip(&[nested])),
        BundleError::MissingManifest
    ));
}

#[test]
fn a_bad_manifest_returns_every_manifest_error() {
    let bad = Raw::file("stratus.toml", b"name = \"Bad\"\nport = 0\n");
    let err = refuse(&raw_zip(&[bad]));
    let BundleError::InvalidManifest(errors) = &err else {
        panic!("expected an invalid manifest, got {err}");
    };
    let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["name", "port"]);

    // A name too long for any file system is refused before it is even kept in memory.
    let long = Raw::file(&"a".repeat(5000), b"");
    let err = refuse(&raw_zip(&[Raw::manifest(), long]));
    assert!(
        matches!(
            err,
            BundleError::UnsafePath {
                problem: PathProblem::TooLong,
                ..
            }
        ),
        "{err}"
    );

    let binary = Raw::file("stratus.toml", b"\xff\xfe\x00");
    assert!(matches!(
        refuse(&raw_zip(&[binary])),
        BundleError::InvalidManifest(_)
    ));
}

#[test]
fn a_procfile_in_the_bundle_supplies_the_command() {
    let manifest = Raw::file("stratus.toml", b"name = \"web\"\n");
    let procfile = Raw::file("Procfile", b"web: ./serve --port $PORT\n");
    let (_dir, path, _) = bundle_file(&raw_zip(&[manifest, procfile]));
    let manifest = inspect_and_unpack(&path, None, UnpackLimits::default()).unwrap();
    assert_eq!(manifest.cmd.as_deref(), Some("./serve --port $PORT"));
}

// ---------------------------------------------------------------------------------------
// Hashing and the blob store

/// Streams `bytes` into a store temp file through the hashing writer, like an upload.
fn upload(store: &BlobStore, bytes: &[u8]) -> (tempfile::NamedTempFile, String) {
    let temp = store.temp_file().unwrap();
    let mut writer = Sha256Writer::new(temp.as_file());
    for chunk in bytes.chunks(1000) {
        writer.write_all(chunk).unwrap();
    }
    let (_, checksum) = writer.finish();
    assert_eq!(checksum.bytes, bytes.len() as u64);
    (temp, checksum.digest)
}

#[test]
fn an_upload_is_stored_under_its_digest_and_unpacked_as_a_release() {
    let data = tempfile::tempdir().unwrap();
    let store = BlobStore::open(data.path()).unwrap();
    let (zip, summary) = pack_to_vec(app_folder().path());
    let (temp, digest) = upload(&store, &zip);
    assert_eq!(sha256_file(temp.path()).unwrap(), digest);

    // The upload is validated before it is stored, as the API would.
    let manifest = inspect_and_unpack(temp.path(), None, UnpackLimits::default()).unwrap();
    assert_eq!(manifest, summary.manifest);
    let path = store.put_verified(temp.path(), &digest).unwrap();
    assert!(path.ends_with(format!("blobs/{}/{digest}", &digest[..2])));
    assert!(store.has(&digest));

    let releases = data.path().join("releases");
    fs::create_dir(&releases).unwrap();
    let dest = releases.join(&digest);
    let manifest = store
        .unpack_release(&digest, &dest, UnpackLimits::default())
        .unwrap();
    assert_eq!(manifest.name, "hello");
    assert!(dest.join("bin/run").is_file());
}

#[test]
fn a_put_with_the_wrong_digest_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let store = BlobStore::open(data.path()).unwrap();
    let (temp, digest) = upload(&store, b"some bundle");
    let (_, other) = upload(&store, b"another bundle");
    let err = store.put_verified(temp.path(), &other).unwrap_err();
    assert!(
        matches!(&err, BundleError::DigestMismatch { expected, actual } if *expected == other && *actual == digest),
        "{err}"
    );
    assert!(!store.has(&other));
    assert!(!store.has(&digest));
    // Nothing in the store but its temporary folder; the upload is still its owner's.
    let entries: Vec<_> = fs::read_dir(store.root())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["tmp"]);
    assert!(temp.path().exists());

    let err = store.put_verified(temp.path(), "../../etc").unwrap_err();
    assert!(matches!(err, BundleError::InvalidDigest(_)), "{err}");
}

#[test]
fn a_corrupt_blob_is_detected_and_deleted() {
    let data = tempfile::tempdir().unwrap();
    let store = BlobStore::open(data.path()).unwrap();
    let (zip, _) = pack_to_vec(app_folder().path());
    let (temp, digest) = upload(&store, &zip);
    let path = store.put_verified(temp.path(), &digest).unwrap();

    // Bit rot: one byte flipped in the stored copy.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let releases = data.path().join("releases");
    fs::create_dir(&releases).unwrap();
    let err = store
        .unpack_release(&digest, &releases.join("r1"), UnpackLimits::default())
        .unwrap_err();
    assert!(
        matches!(&err, BundleError::CorruptBlob { digest: d, .. } if *d == digest),
        "{err}"
    );
    assert!(
        !err.is_bad_bundle(),
        "a corrupt local copy is this node's problem"
    );
    assert!(!path.exists(), "the corrupt copy must be deleted");
    assert!(!store.has(&digest));
    assert!(is_empty_dir(&releases));
    assert!(matches!(
        store.open_verified(&digest),
        Err(BundleError::BlobNotFound(_))
    ));
}

#[test]
fn a_verified_blob_reads_from_its_start() {
    let data = tempfile::tempdir().unwrap();
    let store = BlobStore::open(data.path()).unwrap();
    let (temp, digest) = upload(&store, b"contents");
    store.put_verified(temp.path(), &digest).unwrap();
    let mut text = String::new();
    store
        .open_verified(&digest)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "contents");
}

#[test]
fn the_bomb_stream_is_valid_deflate() {
    let mut zeros = Vec::new();
    flate2::read::DeflateDecoder::new(&deflated_zeros(3)[..])
        .read_to_end(&mut zeros)
        .unwrap();
    assert_eq!(zeros.len(), 3 << 20);
    assert!(zeros.iter().all(|b| *b == 0));
}
