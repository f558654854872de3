//! Checking a bundle received from the network, and unpacking it safely.
//!
//! A received zip is hostile until every check has passed. The checks run cheapest first:
//! the magic number, the end-of-central-directory records (entry count and directory size,
//! before the zip crate reads the directory), the central directory (names, kinds,
//! duplicates, entry count, declared sizes), then the manifest, then every entry is decompressed, through a counting sink when
//! only validating or into a staging folder when unpacking. Sizes are counted on the bytes
//! that actually come out of the decompressor: headers are only used to fail early, never to
//! decide that something is small enough.
//!
//! Unpacking writes into a temporary sibling of the destination and renames it into place
//! once everything has been written, so a refused bundle leaves nothing behind and a
//! destination folder, once it exists, is complete. Files are not synced one by one (that
//! would cost more than the unpack): after a machine crash, unpack releases again from the
//! blob store, whose blobs are synced.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use proto::manifest::{MANIFEST_FILE, Manifest, ManifestError, ManifestErrors, PROCFILE};
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use super::BundleError;

/// Limits on what a bundle may unpack to. The defaults suit apps deployed from a folder;
/// tests and operators may tighten or loosen them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Entries in the zip, folders included.
    pub max_entries: usize,
    /// Bytes of all files once decompressed.
    pub max_total_bytes: u64,
    /// Largest decompressed/compressed ratio of one entry...
    pub max_ratio: u64,
    /// ...once that entry has decompressed to more than this: small files of zeros or
    /// repeated text legitimately compress very well.
    pub ratio_min_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_entries: 10_000,
            max_total_bytes: 1 << 30,
            max_ratio: 200,
            ratio_min_bytes: 1 << 20,
        }
    }
}

/// `stratus.toml` and the Procfile are read into memory, so they get a small cap of their own.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Linux's limits: longer names could never be created, so they are refused up front.
const MAX_PATH_BYTES: usize = 4096;
const MAX_COMPONENT_BYTES: usize = 255;

const LOCAL_HEADER_MAGIC: [u8; 4] = *b"PK\x03\x04";
/// An empty archive is only an end record; it is a zip, just one without a manifest.
const EMPTY_ARCHIVE_MAGIC: [u8; 4] = *b"PK\x05\x06";
const CENTRAL_HEADER_MAGIC: [u8; 4] = *b"PK\x01\x02";
const CENTRAL_HEADER_LEN: usize = 46;

const END_MAGIC: [u8; 4] = EMPTY_ARCHIVE_MAGIC;
const END_LEN: usize = 22;
/// A zip comment is at most this long, so the end record lies in the last
/// `END_LEN + MAX_COMMENT_LEN` bytes.
const MAX_COMMENT_LEN: usize = 65_535;
const ZIP64_LOCATOR_MAGIC: [u8; 4] = *b"PK\x06\x07";
const ZIP64_LOCATOR_LEN: u64 = 20;
const ZIP64_END_MAGIC: [u8; 4] = *b"PK\x06\x06";
const ZIP64_END_LEN: usize = 56;
/// Room for extra fields and a comment in one central record, beyond its fixed header
/// and its name: a zip made by `stratus deploy` uses a few dozen bytes of it.
const MAX_CENTRAL_RECORD_EXTRA: u64 = 1024;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Why an entry name is not a safe relative path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    Empty,
    Absolute,
    DriveLetter,
    Backslash,
    ParentDir,
    EmptyComponent,
    DotComponent,
    ControlCharacter,
    TooLong,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathProblem::Empty => "has an empty name",
            PathProblem::Absolute => "is an absolute path",
            PathProblem::DriveLetter => "starts with a drive letter",
            PathProblem::Backslash => {
                "contains a backslash, which Windows tools treat as a separator"
            }
            PathProblem::ParentDir => "climbs out of its folder with `..`",
            PathProblem::EmptyComponent => "has an empty path component (`//`)",
            PathProblem::DotComponent => "has a `.` path component",
            PathProblem::ControlCharacter => "contains a control character",
            PathProblem::TooLong => "is longer than a Linux file name or path may be",
        })
    }
}

/// Checks that a zip entry name is a plain relative path: `/`-separated, no `..`, no `.`,
/// no empty component, nothing absolute. A trailing `/` (a folder entry) is allowed.
///
/// Strict on purpose: there is exactly one spelling for each path, so two entries that
/// would land on the same file always have the same name and are caught as duplicates.
pub fn check_entry_name(name: &str) -> Result<(), PathProblem> {
    if name.is_empty() {
        return Err(PathProblem::Empty);
    }
    if name.chars().any(char::is_control) {
        return Err(PathProblem::ControlCharacter);
    }
    if name.contains('\\') {
        return Err(PathProblem::Backslash);
    }
    if name.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(PathProblem::DriveLetter);
    }
    if name.len() > MAX_PATH_BYTES {
        return Err(PathProblem::TooLong);
    }
    let path = name.strip_suffix('/').unwrap_or(name);
    for component in path.split('/') {
        match component {
            "" => return Err(PathProblem::EmptyComponent),
            "." => return Err(PathProblem::DotComponent),
            ".." => return Err(PathProblem::ParentDir),
            _ if component.len() > MAX_COMPONENT_BYTES => return Err(PathProblem::TooLong),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Dir,
    File { executable: bool },
}

/// What an entry is, from its name (a folder ends in `/`) and its unix mode. Zips made on
/// Windows or by minimal tools carry no file type at all: those are plain files or folders.
fn classify(name: &str, unix_mode: Option<u32>) -> Result<EntryKind, BundleError> {
    let mode = unix_mode.unwrap_or(0);
    match (mode & S_IFMT, name.ends_with('/')) {
        (S_IFLNK, _) => Err(BundleError::Symlink {
            name: name.to_string(),
        }),
        (0 | S_IFDIR, true) => Ok(EntryKind::Dir),
        (0 | S_IFREG, false) => Ok(EntryKind::File {
            executable: mode & 0o111 != 0,
        }),
        _ => Err(BundleError::NotRegularFile {
            name: name.to_string(),
            mode,
        }),
    }
}

/// Only the executable bits survive from a bundle: everything is readable by the app
/// whatever user it runs as, nothing is writable by others, and no setuid bit gets in.
fn unpacked_mode(kind: EntryKind) -> u32 {
    match kind {
        EntryKind::Dir | EntryKind::File { executable: true } => 0o755,
        EntryKind::File { executable: false } => 0o644,
    }
}

/// One entry that passed the name, kind and duplicate checks.
#[derive(Debug)]
struct Entry {
    index: usize,
    /// The path inside the app, without a folder's trailing `/`.
    path: String,
    kind: EntryKind,
    /// Sizes from the central directory: used to fail early and as the ratio's divisor,
    /// never to decide that something is small enough.
    declared_size: u64,
    compressed_size: u64,
}

/// Checks a bundle and, if `dest` is given, unpacks it there; returns its manifest.
///
/// `dest` must not exist yet and its parent must: the bundle is unpacked into a temporary
/// sibling and renamed into place, so on any error nothing is left behind. Without `dest`
/// every entry is still decompressed (into a counting sink), so validation catches
/// everything unpacking would.
pub fn inspect_and_unpack(
    zip_path: &Path,
    dest: Option<&Path>,
    limits: UnpackLimits,
) -> Result<Manifest, BundleError> {
    let file = File::open(zip_path).map_err(BundleError::io("open", zip_path))?;
    inspect_and_unpack_file(&file, dest, limits)
}

/// [`inspect_and_unpack`] on a file that is already open (for instance one whose checksum
/// was just verified through the same handle). The handle's position is moved.
pub fn inspect_and_unpack_file(
    file: &File,
    dest: Option<&Path>,
    limits: UnpackLimits,
) -> Result<Manifest, BundleError> {
    if let Some(dest) = dest {
        match fs::symlink_metadata(dest) {
            Ok(_) => return Err(BundleError::DestinationExists(dest.to_path_buf())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(BundleError::io("inspect", dest)(err)),
        }
    }
    check_magic(file)?;
    check_end_records(file, limits)?;
    let mut archive = ZipArchive::new(file).map_err(archive_error)?;
    let records = central_directory_names(file, archive.central_directory_start(), limits)?;
    let entries = plan(&mut archive, &records, limits)?;
    let manifest = read_manifest(&mut archive, &entries)?;
    match dest {
        None => extract(&mut archive, &entries, limits, None)?,
        Some(dest) => unpack_into(&mut archive, &entries, limits, dest)?,
    }
    Ok(manifest)
}

/// Refuses anything that does not start like a zip. Also refuses zips with data prepended
/// (self-extractors, polyglots): `stratus deploy` never makes them.
fn check_magic(file: &File) -> Result<(), BundleError> {
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) if magic == LOCAL_HEADER_MAGIC || magic == EMPTY_ARCHIVE_MAGIC => Ok(()),
        Ok(()) => Err(BundleError::NotAZip),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(BundleError::NotAZip),
        Err(err) => Err(corrupt(format!("cannot read it: {err}"))),
    }
}

/// Checks what the end-of-central-directory record (and its zip64 twin, if any) declares,
/// before `ZipArchive::new` reads and indexes the whole central directory on their word:
/// too many entries, or a directory larger than that many entries can need, is refused
/// without reading it.
///
/// The zip crate may settle on any record that looks like an end record in the file's
/// last 64 KiB (one can hide in a comment), so every such candidate must pass.
fn check_end_records(file: &File, limits: UnpackLimits) -> Result<(), BundleError> {
    let read_error = |err: io::Error| corrupt(format!("cannot read its end record: {err}"));
    let len = file.metadata().map_err(read_error)?.len();
    let tail_len = len.min((END_LEN + MAX_COMMENT_LEN) as u64) as usize;
    let tail_start = len - tail_len as u64;
    let mut tail = vec![0u8; tail_len];
    file.read_exact_at(&mut tail, tail_start)
        .map_err(read_error)?;
    for at in (0..=tail_len.saturating_sub(END_LEN)).rev() {
        let Some(record) = tail.get(at..at + END_LEN) else {
            continue;
        };
        if record[..4] != END_MAGIC {
            continue;
        }
        let comment_len = usize::from(le_u16(record, 20));
        if at + END_LEN + comment_len > tail_len {
            continue; // its comment would run past the end: not an end record
        }
        let mut entries = u64::from(le_u16(record, 8).max(le_u16(record, 10)));
        let mut directory_len = u64::from(le_u32(record, 12));
        // In a zip64 archive the fields too small for the real value hold all ones and
        // the zip64 end record has it.
        if let Some((entries64, directory_len64)) =
            zip64_counts(file, tail_start + at as u64, len, read_error)?
        {
            if entries == u64::from(u16::MAX) {
                entries = entries64;
            }
            if directory_len == u64::from(u32::MAX) {
                directory_len = directory_len64;
            }
            check_declared(entries64, directory_len64, len, limits)?;
        }
        check_declared(entries, directory_len, len, limits)?;
    }
    // No end record at all: the zip crate says what is wrong in its own words.
    Ok(())
}

/// What the zip64 end record declares, if a zip64 locator sits just before the end record
/// at `end_at`. A locator that points at anything else is refused: the zip crate would go
/// looking for the record elsewhere, and `stratus deploy` never makes such a zip.
fn zip64_counts(
    file: &File,
    end_at: u64,
    len: u64,
    read_error: impl Fn(io::Error) -> BundleError,
) -> Result<Option<(u64, u64)>, BundleError> {
    let Some(locator_at) = end_at.checked_sub(ZIP64_LOCATOR_LEN) else {
        return Ok(None);
    };
    let mut locator = [0u8; ZIP64_LOCATOR_LEN as usize];
    file.read_exact_at(&mut locator, locator_at)
        .map_err(&read_error)?;
    if locator[..4] != ZIP64_LOCATOR_MAGIC {
        return Ok(None);
    }
    let record_at = le_u64(&locator, 8);
    let mut record = [0u8; ZIP64_END_LEN];
    let fits = record_at
        .checked_add(ZIP64_END_LEN as u64)
        .is_some_and(|end| end <= locator_at);
    if !fits {
        return Err(corrupt(format!(
            "its zip64 locator points at {record_at}, outside the archive of {len} bytes"
        )));
    }
    file.read_exact_at(&mut record, record_at)
        .map_err(&read_error)?;
    if record[..4] != ZIP64_END_MAGIC {
        return Err(corrupt(format!(
            "its zip64 locator points at {record_at}, where there is no zip64 end record"
        )));
    }
    let entries = le_u64(&record, 24).max(le_u64(&record, 32));
    Ok(Some((entries, le_u64(&record, 40))))
}

fn check_declared(
    entries: u64,
    directory_len: u64,
    file_len: u64,
    limits: UnpackLimits,
) -> Result<(), BundleError> {
    if entries > limits.max_entries as u64 {
        return Err(BundleError::TooManyEntries {
            limit: limits.max_entries,
        });
    }
    let most = entries.saturating_mul(
        CENTRAL_HEADER_LEN as u64 + MAX_PATH_BYTES as u64 + MAX_CENTRAL_RECORD_EXTRA,
    );
    if directory_len > most {
        return Err(corrupt(format!(
            "its central directory of {directory_len} bytes is larger than {entries} entries \
             can need"
        )));
    }
    if directory_len > file_len {
        return Err(corrupt(format!(
            "its central directory of {directory_len} bytes is larger than the file"
        )));
    }
    Ok(())
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The raw name of every record in the central directory, read by hand: the zip crate keeps
/// entries in a map by name, so a duplicate silently replaces the first and only a second
/// count shows it. Stops at `max_entries + 1` records, so a huge directory costs nothing.
fn central_directory_names(
    file: &File,
    start: u64,
    limits: UnpackLimits,
) -> Result<Vec<Vec<u8>>, BundleError> {
    let mut names = Vec::new();
    let mut position = start;
    let read_at = |buf: &mut [u8], at: u64| {
        file.read_exact_at(buf, at)
            .map_err(|err| corrupt(format!("cannot read the central directory: {err}")))
    };
    loop {
        let mut magic = [0u8; 4];
        read_at(&mut magic, position)?;
        if magic != CENTRAL_HEADER_MAGIC {
            return Ok(names);
        }
        if names.len() >= limits.max_entries {
            return Err(BundleError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let mut header = [0u8; CENTRAL_HEADER_LEN];
        read_at(&mut header, position)?;
        let name_len = u16::from_le_bytes([header[28], header[29]]);
        let extra_len = u16::from_le_bytes([header[30], header[31]]);
        let comment_len = u16::from_le_bytes([header[32], header[33]]);
        let mut name = vec![0u8; usize::from(name_len).min(MAX_PATH_BYTES + 1)];
        read_at(&mut name, position + CENTRAL_HEADER_LEN as u64)?;
        // Refused here rather than kept: 10,000 names of 64 KiB would be a lot of memory.
        if name.len() > MAX_PATH_BYTES {
            name.truncate(64);
            return Err(BundleError::UnsafePath {
                name: format!("{}...", String::from_utf8_lossy(&name)),
                problem: PathProblem::TooLong,
            });
        }
        names.push(name);
        position += CENTRAL_HEADER_LEN as u64
            + u64::from(name_len)
            + u64::from(extra_len)
            + u64::from(comment_len);
    }
}

/// Checks every entry's metadata without decompressing anything.
fn plan(
    archive: &mut ZipArchive<&File>,
    records: &[Vec<u8>],
    limits: UnpackLimits,
) -> Result<Vec<Entry>, BundleError> {
    if records.len() != archive.len() {
        let mut seen = HashSet::new();
        return Err(
            match records.iter().find(|name| !seen.insert(name.as_slice())) {
                Some(name) => BundleError::Duplicate {
                    name: String::from_utf8_lossy(name).into_owned(),
                },
                // Two raw names that decode to one (a unicode path field renames entries).
                None => corrupt(format!(
                    "its central directory has {} records but {} distinct names",
                    records.len(),
                    archive.len()
                )),
            },
        );
    }
    if archive.len() > limits.max_entries {
        return Err(BundleError::TooManyEntries {
            limit: limits.max_entries,
        });
    }
    let mut entries = Vec::with_capacity(archive.len());
    let mut seen = HashSet::new();
    let mut declared_total = 0u64;
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(archive_error)?;
        let name = entry.name().to_string();
        check_entry_name(&name).map_err(|problem| BundleError::UnsafePath {
            name: name.clone(),
            problem,
        })?;
        let kind = classify(&name, entry.unix_mode())?;
        if entry.encrypted() {
            return Err(BundleError::Unsupported {
                name,
                reason: "is encrypted".into(),
            });
        }
        let method = entry.compression();
        if method != CompressionMethod::Stored && method != CompressionMethod::Deflated {
            return Err(BundleError::Unsupported {
                name,
                reason: format!("is compressed with {method}, not stored or deflate"),
            });
        }
        if kind == EntryKind::Dir && entry.size() > 0 {
            return Err(corrupt(format!("folder entry {name:?} has content")));
        }
        declared_total = declared_total.saturating_add(entry.size());
        if declared_total > limits.max_total_bytes {
            return Err(BundleError::TooLarge {
                limit: limits.max_total_bytes,
            });
        }
        let path = name.strip_suffix('/').unwrap_or(&name).to_string();
        if !seen.insert(path.clone()) {
            // `a` and `a/`: the zip crate's map has both, the file system cannot.
            return Err(BundleError::Duplicate { name: path });
        }
        entries.push(Entry {
            index,
            path,
            kind,
            declared_size: entry.size(),
            compressed_size: entry.compressed_size(),
        });
    }
    let files: HashSet<&str> = entries
        .iter()
        .filter(|entry| matches!(entry.kind, EntryKind::File { .. }))
        .map(|entry| entry.path.as_str())
        .collect();
    for entry in &entries {
        for (slash, _) in entry.path.match_indices('/') {
            let parent = &entry.path[..slash];
            if files.contains(parent) {
                return Err(BundleError::FileFolderConflict {
                    name: parent.to_string(),
                });
            }
        }
    }
    Ok(entries)
}

/// Reads and validates `stratus.toml` (and the Procfile, if any) before anything large is
/// decompressed, so a bundle without a usable manifest is refused quickly.
fn read_manifest(
    archive: &mut ZipArchive<&File>,
    entries: &[Entry],
) -> Result<Manifest, BundleError> {
    let find = |path: &str| {
        entries
            .iter()
            .find(|entry| entry.path == path && matches!(entry.kind, EntryKind::File { .. }))
    };
    let manifest = find(MANIFEST_FILE).ok_or(BundleError::MissingManifest)?;
    let text = read_small_text(archive, manifest)?;
    let procfile = match find(PROCFILE) {
        Some(entry) => Some(read_small_text(archive, entry)?),
        None => None,
    };
    Ok(Manifest::parse(&text, procfile.as_deref())?)
}

fn read_small_text(archive: &mut ZipArchive<&File>, entry: &Entry) -> Result<String, BundleError> {
    let reader = archive
        .by_index(entry.index)
        .map_err(|err| entry_error(&entry.path, err))?;
    let mut bytes = Vec::new();
    reader
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| corrupt(format!("entry {:?}: {err}", entry.path)))?;
    text_file(&entry.path, bytes)
}

/// A manifest or Procfile's bytes as text, or the manifest error a developer can act on.
pub(super) fn text_file(field: &str, bytes: Vec<u8>) -> Result<String, BundleError> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(manifest_problem(
            field,
            "is larger than 1 MiB: it should be a few lines of settings",
        ));
    }
    String::from_utf8(bytes).map_err(|_| manifest_problem(field, "is not UTF-8 text"))
}

fn manifest_problem(field: &str, message: &str) -> BundleError {
    BundleError::InvalidManifest(ManifestErrors(vec![ManifestError {
        field: field.to_string(),
        message: message.to_string(),
    }]))
}

/// Unpacks into a staging folder next to `dest`, then renames it into place.
fn unpack_into(
    archive: &mut ZipArchive<&File>,
    entries: &[Entry],
    limits: UnpackLimits,
    dest: &Path,
) -> Result<(), BundleError> {
    // A sibling, so the final rename stays on one file system and is atomic.
    let parent = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".stratus-unpack-")
        .tempdir_in(parent)
        .map_err(BundleError::io("create a staging folder in", parent))?;
    // Dropping `staging` on any error below deletes everything written so far.
    extract(archive, entries, limits, Some(staging.path()))?;
    fs::set_permissions(staging.path(), Permissions::from_mode(0o755))
        .map_err(BundleError::io("set permissions of", staging.path()))?;
    fs::rename(staging.path(), dest).map_err(|err| match err.kind() {
        io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty => {
            BundleError::DestinationExists(dest.to_path_buf())
        }
        _ => BundleError::io("move the unpacked bundle to", dest)(err),
    })?;
    // The staging path is gone (renamed): nothing left to clean up.
    let _moved = staging.keep();
    Ok(())
}

/// Decompresses every file, into `root` if given, else into a sink, enforcing the limits on
/// the bytes that come out.
fn extract(
    archive: &mut ZipArchive<&File>,
    entries: &[Entry],
    limits: UnpackLimits,
    root: Option<&Path>,
) -> Result<(), BundleError> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    // Every folder, named or implied by a file's path, to fix its mode at the end: the
    // process umask must not decide whether the app can read its own files.
    let mut folders = BTreeSet::new();
    for entry in entries {
        if let Some(root) = root {
            let mut ancestors: Vec<&str> = entry
                .path
                .match_indices('/')
                .map(|(slash, _)| &entry.path[..slash])
                .collect();
            if entry.kind == EntryKind::Dir {
                ancestors.push(&entry.path);
            }
            for folder in ancestors {
                if folders.insert(folder) {
                    let path = root.join(folder);
                    fs::create_dir_all(&path).map_err(BundleError::io("create", &path))?;
                }
            }
        }
        if entry.kind == EntryKind::Dir {
            continue;
        }
        let reader = archive
            .by_index(entry.index)
            .map_err(|err| entry_error(&entry.path, err))?;
        match root {
            None => copy_counted(reader, |_| Ok(()), entry, limits, &mut total, &mut buffer)?,
            Some(root) => {
                let path = root.join(&entry.path);
                // `create_new`: never write through something already there.
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(BundleError::io("create", &path))?;
                let write = |chunk: &[u8]| {
                    out.write_all(chunk)
                        .map_err(BundleError::io("write", &path))
                };
                copy_counted(reader, write, entry, limits, &mut total, &mut buffer)?;
                out.set_permissions(Permissions::from_mode(unpacked_mode(entry.kind)))
                    .map_err(BundleError::io("set permissions of", &path))?;
            }
        }
    }
    if let Some(root) = root {
        for folder in folders {
            let path = root.join(folder);
            fs::set_permissions(&path, Permissions::from_mode(unpacked_mode(EntryKind::Dir)))
                .map_err(BundleError::io("set permissions of", &path))?;
        }
    }
    Ok(())
}

/// Copies one entry, counting what the decompressor yields and stopping as soon as a limit
/// is crossed, before the offending bytes are written anywhere.
fn copy_counted(
    mut reader: impl Read,
    mut write: impl FnMut(&[u8]) -> Result<(), BundleError>,
    entry: &Entry,
    limits: UnpackLimits,
    total: &mut u64,
    buffer: &mut [u8],
) -> Result<(), BundleError> {
    let ratio_cap = entry
        .compressed_size
        .max(1)
        .saturating_mul(limits.max_ratio);
    let mut written = 0u64;
    loop {
        let read = match reader.read(buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(corrupt(format!("entry {:?}: {err}", entry.path))),
        };
        written += read as u64;
        *total += read as u64;
        if *total > limits.max_total_bytes {
            return Err(BundleError::TooLarge {
                limit: limits.max_total_bytes,
            });
        }
        if written > limits.ratio_min_bytes && written > ratio_cap {
            return Err(BundleError::CompressionRatio {
                name: entry.path.clone(),
                limit: limits.max_ratio,
            });
        }
        write(buffer.get(..read).unwrap_or_default())?;
    }
    if written != entry.declared_size {
        return Err(corrupt(format!(
            "entry {:?} holds {written} bytes but its header says {}",
            entry.path, entry.declared_size
        )));
    }
    Ok(())
}

fn corrupt(reason: String) -> BundleError {
    BundleError::Corrupt { reason }
}

/// The zip crate's `Io` error displays only as "i/o error": keep the cause instead.
pub(super) fn zip_error_text(err: &ZipError) -> String {
    match err {
        ZipError::Io(err) => err.to_string(),
        other => other.to_string(),
    }
}

/// Errors opening the archive: the magic number was right, so the rest is damage.
fn archive_error(err: ZipError) -> BundleError {
    corrupt(zip_error_text(&err))
}

fn entry_error(path: &str, err: ZipError) -> BundleError {
    match err {
        ZipError::UnsupportedArchive(reason) => BundleError::Unsupported {
            name: path.to_string(),
            reason: reason.to_lowercase(),
        },
        other => corrupt(format!("entry {path:?}: {}", zip_error_text(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_names_pass() {
        for ok in [
            "stratus.toml",
            "a/b/c.txt",
            "dir/",
            "a..b",
            "..a",
            ".hidden/x",
            "C/x",
        ] {
            assert_eq!(check_entry_name(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn every_unsafe_name_is_refused_with_its_reason() {
        let long_component = "a".repeat(256);
        let long_path = "a/".repeat(2049);
        for (name, problem) in [
            ("", PathProblem::Empty),
            ("/abs", PathProblem::Absolute),
            ("/", PathProblem::Absolute),
            ("C:/windows", PathProblem::DriveLetter),
            ("c:evil", PathProblem::DriveLetter),
            ("C:\\windows", PathProblem::Backslash),
            ("..\\evil", PathProblem::Backslash),
            ("../evil", PathProblem::ParentDir),
            ("a/../../b", PathProblem::ParentDir),
            ("a/..", PathProblem::ParentDir),
            ("..", PathProblem::ParentDir),
            ("a//b", PathProblem::EmptyComponent),
            ("a//", PathProblem::EmptyComponent),
            ("./a", PathProblem::DotComponent),
            ("a/./b", PathProblem::DotComponent),
            ("a\0b", PathProblem::ControlCharacter),
            ("a\nb", PathProblem::ControlCharacter),
            (long_component.as_str(), PathProblem::TooLong),
            (long_path.as_str(), PathProblem::TooLong),
        ] {
            assert_eq!(check_entry_name(name), Err(problem), "{name:?}");
        }
    }

    #[test]
    fn entries_are_classified_by_name_and_mode() {
        assert_eq!(classify("a/", None).unwrap(), EntryKind::Dir);
        assert_eq!(
            classify("a/", Some(S_IFDIR | 0o700)).unwrap(),
            EntryKind::Dir
        );
        assert_eq!(
            classify("a", None).unwrap(),
            EntryKind::File { executable: false }
        );
        assert_eq!(
            classify("a", Some(S_IFREG | 0o744)).unwrap(),
            EntryKind::File { executable: true }
        );
        // Zips from Windows tools: permission bits without a file type.
        assert_eq!(
            classify("a", Some(0o444)).unwrap(),
            EntryKind::File { executable: false }
        );
        assert!(matches!(
            classify("link", Some(S_IFLNK | 0o777)),
            Err(BundleError::Symlink { .. })
        ));
        assert!(matches!(
            classify("dir/", Some(S_IFLNK | 0o777)),
            Err(BundleError::Symlink { .. })
        ));
        for special in [0o010_000, 0o020_000, 0o060_000, 0o140_000] {
            assert!(matches!(
                classify("dev", Some(special | 0o644)),
                Err(BundleError::NotRegularFile { .. })
            ));
        }
        // A folder's mode on a name without a trailing slash, and the reverse.
        assert!(classify("a", Some(S_IFDIR | 0o755)).is_err());
        assert!(classify("a/", Some(S_IFREG | 0o644)).is_err());
    }

    #[test]
    fn only_executable_bits_survive() {
        assert_eq!(unpacked_mode(EntryKind::File { executable: true }), 0o755);
        assert_eq!(unpacked_mode(EntryKind::File { executable: false }), 0o644);
        assert_eq!(unpacked_mode(EntryKind::Dir), 0o755);
    }

    #[test]
    fn text_files_are_capped_and_must_be_utf8() {
        assert_eq!(text_file("x", b"ok".to_vec()).unwrap(), "ok");
        assert!(matches!(
            text_file("x", vec![0xff]),
            Err(BundleError::InvalidManifest(_))
        ));
        assert!(matches!(
            text_file("x", vec![b' '; MAX_MANIFEST_BYTES as usize + 1]),
            Err(BundleError::InvalidManifest(_))
        ));
    }
}
