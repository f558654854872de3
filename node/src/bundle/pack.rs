//! Packing an app folder into a bundle, on the developer's machine.
//!
//! What goes in: every regular file and folder under the app folder, minus what
//! `.stratusignore` excludes, then what `.gitignore` excludes (`.stratusignore` wins, so it
//! can also put back a file git ignores), minus `.git` always. Only the folder's own ignore
//! files count, never a parent's or the user's global git config, so a bundle depends on
//! the folder alone. Symbolic links are skipped, never followed, and reported: a link may
//! point outside the folder, and the node refuses links in a bundle anyway.
//!
//! The zip is deterministic: entries sorted by path, a fixed timestamp, the same options
//! for every entry, so the same folder always packs to the same bytes and the same digest.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use ignore::WalkBuilder;
use proto::manifest::{MANIFEST_FILE, Manifest, PROCFILE};
use tracing::warn;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::unpack::{MAX_MANIFEST_BYTES, text_file, zip_error_text};
use super::{BundleError, IGNORE_FILE, check_entry_name};

/// What [`pack_dir`] put in the bundle, and what it left out that the developer should know
/// about.
#[derive(Debug, Clone, PartialEq)]
pub struct PackSummary {
    /// Regular files packed.
    pub files: usize,
    /// Their total size before compression.
    pub bytes: u64,
    /// The validated manifest.
    pub manifest: Manifest,
    /// Symbolic links left out, relative to the app folder.
    pub skipped_symlinks: Vec<PathBuf>,
    /// Sockets, pipes and devices left out, relative to the app folder.
    pub skipped_special: Vec<PathBuf>,
}

#[derive(Debug)]
enum Kind {
    Dir,
    File { mode: u32, len: u64 },
}

#[derive(Debug)]
struct Listed {
    /// The zip entry name: relative, `/`-separated, no trailing slash.
    name: String,
    path: PathBuf,
    kind: Kind,
}

/// Zips the app folder `dir` into `out`. Checks `stratus.toml` (and the Procfile, if any)
/// first, so a bad manifest is reported before anything is written.
pub fn pack_dir(dir: &Path, out: impl Write + Seek) -> Result<PackSummary, BundleError> {
    let metadata = fs::metadata(dir).map_err(BundleError::io("read", dir))?;
    if !metadata.is_dir() {
        return Err(BundleError::NotAFolder(dir.to_path_buf()));
    }
    let manifest = read_local_manifest(dir)?;
    let mut summary = PackSummary {
        files: 0,
        bytes: 0,
        manifest,
        skipped_symlinks: Vec::new(),
        skipped_special: Vec::new(),
    };
    let mut listed = list(dir, &mut summary)?;
    // The node needs these two whatever the ignore files say (`*.toml` in a .gitignore is
    // common): put them back if the walk left them out.
    for required in [MANIFEST_FILE, PROCFILE] {
        let path = dir.join(required);
        let is_file = fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_file());
        if is_file && !listed.iter().any(|entry| entry.name == required) {
            let meta = fs::metadata(&path).map_err(BundleError::io("read", &path))?;
            listed.push(Listed {
                name: required.to_string(),
                path,
                kind: Kind::File {
                    mode: meta.permissions().mode(),
                    len: meta.len(),
                },
            });
        }
    }
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    write_zip(&listed, out, &mut summary)?;
    Ok(summary)
}

/// Reads the manifest exactly as the node will: from regular files only (a linked Procfile
/// is left out of the bundle, so it must not count here either).
fn read_local_manifest(dir: &Path) -> Result<Manifest, BundleError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    match fs::symlink_metadata(&manifest_path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(BundleError::Symlink {
                name: MANIFEST_FILE.to_string(),
            });
        }
        Ok(meta) if !meta.is_file() => {
            return Err(BundleError::NotRegularFile {
                name: MANIFEST_FILE.to_string(),
                mode: meta.permissions().mode(),
            });
        }
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(BundleError::MissingManifest);
        }
        Err(err) => return Err(BundleError::io("read", &manifest_path)(err)),
    }
    let text = read_text(&manifest_path, MANIFEST_FILE)?;
    let procfile_path = dir.join(PROCFILE);
    let procfile = match fs::symlink_metadata(&procfile_path) {
        Ok(meta) if meta.is_file() => Some(read_text(&procfile_path, PROCFILE)?),
        _ => None,
    };
    Ok(Manifest::parse(&text, procfile.as_deref())?)
}

fn read_text(path: &Path, field: &str) -> Result<String, BundleError> {
    let file = File::open(path).map_err(BundleError::io("open", path))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(BundleError::io("read", path))?;
    text_file(field, bytes)
}

/// Walks the folder with the ignore rules; records what it skips in `summary`.
fn list(dir: &Path, summary: &mut PackSummary) -> Result<Vec<Listed>, BundleError> {
    let walk = WalkBuilder::new(dir)
        // Off: hidden-file skipping, `.ignore` files, global and parent git rules. On:
        // the folder's own `.gitignore` files, even outside a git repository.
        .standard_filters(false)
        .git_ignore(true)
        .require_git(false)
        .parents(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .filter_entry(|entry| entry.file_name() != ".git")
        .build();
    let mut listed = Vec::new();
    for result in walk {
        let entry = result.map_err(BundleError::Walk)?;
        // A folder whose ignore file does not parse is still walked; the error rides on
        // its entry. Stop: packing anyway could upload what the pattern meant to keep out.
        if let Some(err) = entry.error() {
            return Err(BundleError::Walk(err.clone()));
        }
        if entry.depth() == 0 {
            continue;
        }
        // The walker joins names onto `dir`, so this cannot fail; if it ever did, the
        // absolute path would be refused by the name check below rather than dropped.
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let Some(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_symlink() {
            warn!(
                path = %relative.display(),
                "skipping a symbolic link: a bundle holds only regular files and folders"
            );
            summary.skipped_symlinks.push(relative.to_path_buf());
            continue;
        }
        if !file_type.is_dir() && !file_type.is_file() {
            warn!(path = %relative.display(), "skipping a socket, pipe or device");
            summary.skipped_special.push(relative.to_path_buf());
            continue;
        }
        let name = entry_name(relative)?;
        // Refuse here what the node would refuse (a backslash, a newline in a name), so the
        // developer hears it before uploading.
        check_entry_name(&name).map_err(|problem| BundleError::UnsafePath {
            name: name.clone(),
            problem,
        })?;
        let kind = if file_type.is_dir() {
            Kind::Dir
        } else {
            let meta = entry.metadata().map_err(BundleError::Walk)?;
            Kind::File {
                mode: meta.permissions().mode(),
                len: meta.len(),
            }
        };
        listed.push(Listed {
            name,
            path: entry.path().to_path_buf(),
            kind,
        });
    }
    Ok(listed)
}

/// `a/b/c` from a relative path, refusing names that are not UTF-8.
fn entry_name(relative: &Path) -> Result<String, BundleError> {
    let mut parts = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or_else(|| BundleError::NonUtf8Name(relative.to_path_buf()))?,
            ),
            // Not produced by a walk under the folder; passed on so the name check refuses it.
            Component::CurDir => parts.push("."),
            Component::ParentDir => parts.push(".."),
            Component::RootDir | Component::Prefix(_) => parts.push(""),
        }
    }
    Ok(parts.join("/"))
}

fn write_zip(
    listed: &[Listed],
    out: impl Write + Seek,
    summary: &mut PackSummary,
) -> Result<(), BundleError> {
    let mut zip = ZipWriter::new(out);
    // 1980-01-01 for every entry: the time a file was touched must not change the digest.
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default());
    for entry in listed {
        match entry.kind {
            Kind::Dir => zip
                .add_directory(entry.name.as_str(), options.unix_permissions(0o755))
                .map_err(write_error)?,
            Kind::File { mode, len } => {
                // Type bits are added by the zip writer; setuid and friends are dropped.
                let file_options = options
                    .unix_permissions(mode & 0o777)
                    .large_file(len >= u64::from(u32::MAX));
                zip.start_file(entry.name.as_str(), file_options)
                    .map_err(write_error)?;
                let mut file =
                    File::open(&entry.path).map_err(BundleError::io("open", &entry.path))?;
                let copied =
                    io::copy(&mut file, &mut zip).map_err(BundleError::io("pack", &entry.path))?;
                summary.files += 1;
                summary.bytes += copied;
            }
        }
    }
    zip.finish().map_err(write_error)?;
    Ok(())
}

fn write_error(err: zip::result::ZipError) -> BundleError {
    BundleError::Write(zip_error_text(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_use_forward_slashes() {
        assert_eq!(entry_name(Path::new("a/b/c.txt")).unwrap(), "a/b/c.txt");
        assert_eq!(entry_name(Path::new("x")).unwrap(), "x");
    }

    #[test]
    fn odd_paths_become_names_the_check_refuses() {
        for odd in ["/etc/passwd", "../up", "./here"] {
            let name = entry_name(Path::new(odd)).unwrap();
            assert!(check_entry_name(&name).is_err(), "{odd:?} gave {name:?}");
        }
    }

    #[test]
    fn a_folder_without_a_manifest_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), "print(1)").unwrap();
        let mut out = io::Cursor::new(Vec::new());
        let err = pack_dir(dir.path(), &mut out).unwrap_err();
        assert!(matches!(err, BundleError::MissingManifest), "{err}");
        assert!(out.get_ref().is_empty());
    }

    #[test]
    fn a_broken_ignore_pattern_stops_packing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stratus.toml"), "name = \"a\"\ncmd = \"x\"").unwrap();
        std::fs::write(dir.path().join(".stratusignore"), "secrets/{a,b\n").unwrap();
        let err = pack_dir(dir.path(), io::Cursor::new(Vec::new())).unwrap_err();
        assert!(matches!(err, BundleError::Walk(_)), "{err}");
    }

    #[test]
    fn a_file_is_not_an_app_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = pack_dir(&file, io::Cursor::new(Vec::new())).unwrap_err();
        assert!(matches!(err, BundleError::NotAFolder(_)), "{err}");
    }
}
