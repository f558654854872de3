//! The python and node builders' dependency image: the recipe's [`Install`] runs in a
//! one-off container of the base image, with the dependency files mounted read-only and
//! this node's download cache for pip or npm mounted writable, and the container is
//! committed with the app's settings and start command. The download cache outlives the
//! build, so installing the same packages again (another app, or a changed lockfile that
//! keeps most of them) downloads nothing already fetched; it is trimmed, oldest files
//! first, to `--build-cache-size`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::models::ContainerConfig;
use bollard::query_parameters::CommitContainerOptionsBuilder;

use super::SourceTree;
use super::one_off::{self, OneOff};
use super::recipe::{INSTALL_CACHE_DIR, INSTALL_CONTEXT_DIR, Install, Recipe};

/// `PATH` when the base image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the install needs besides the recipe.
pub struct InstallRun<'a> {
    /// The dependency image's tag, `stratus-deps/python:KEY`.
    pub tag: &'a str,
    /// The unpacked bundle.
    pub source: &'a Path,
    /// This node's download caches, one folder per package manager.
    pub cache_root: &'a Path,
    /// A folder for the mounted dependency files (removed after).
    pub work_dir: &'a Path,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub timeout: Duration,
}

/// Installs and commits the dependency image, handing each line of output to `output`.
pub async fn install(
    docker: &Docker,
    recipe: &Recipe,
    install: &Install,
    run: &InstallRun<'_>,
    output: &mut (impl FnMut(&str) + Send),
) -> Result<(), String> {
    let base = recipe
        .base_images
        .first()
        .ok_or("the recipe names no base image")?;
    let base_path = docker
        .inspect_image(base)
        .await
        .map_err(|_| {
            format!(
                "the base image {base} is not on this node: build it (scripts/build-images.sh), \
                 `docker load` it, or map the runtime to another with --base-image"
            )
        })?
        .config
        .and_then(|config| config.env)
        .unwrap_or_default()
        .into_iter()
        .find_map(|entry| entry.strip_prefix("PATH=").map(str::to_string))
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let mut env: Vec<String> = install
        .env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    env.push(match &install.path_prefix {
        Some(prefix) => format!("PATH={prefix}:{base_path}"),
        None => format!("PATH={base_path}"),
    });

    let context = write_context(recipe, run.source, run.work_dir).map_err(|err| {
        format!(
            "cannot prepare the dependency files in {}: {err}",
            run.work_dir.display()
        )
    })?;
    let cache = run.cache_root.join(install.cache);
    std::fs::create_dir_all(&cache).map_err(|err| {
        format!(
            "cannot create the download cache {}: {err}",
            cache.display()
        )
    })?;
    let one_off = OneOff {
        name: format!("stratus-install-{:016x}", rand::random::<u64>()),
        image: base,
        command: &install.command,
        env: env.clone(),
        working_dir: Some(install.working_dir.clone()),
        binds: vec![
            format!("{}:{INSTALL_CONTEXT_DIR}:ro", context.path().display()),
            format!("{}:{INSTALL_CACHE_DIR}", cache.display()),
        ],
        labels: [("stratus.install".to_string(), run.tag.to_string())].into(),
        cpu_millis: run.cpu_millis,
        memory_bytes: run.memory_bytes,
        timeout: run.timeout,
    };
    let (container, outcome) = one_off::run(docker, &one_off, output).await;
    let Some(container) = container else {
        return outcome.map_err(|err| err.to_string());
    };
    if let Err(err) = outcome {
        container.remove().await;
        return Err(format!("installing the dependencies failed: {err}"));
    }
    let (repo, tag) = run.tag.rsplit_once(':').unwrap_or((run.tag, "latest"));
    let options = CommitContainerOptionsBuilder::default()
        .container(&container.name)
        .repo(repo)
        .tag(tag)
        .comment("stratus: the dependencies")
        .pause(false)
        .build();
    let start = recipe.start.clone().unwrap_or_default();
    let config = ContainerConfig {
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), start]),
        entrypoint: Some(Vec::new()),
        env: Some(env),
        working_dir: Some(install.working_dir.clone()),
        ..Default::default()
    };
    let committed = docker.commit_container(options, config).await;
    container.remove().await;
    committed
        .map(|_| ())
        .map_err(|err| format!("cannot commit the dependency image {}: {err}", run.tag))
}

/// The dependency and generated files, in a folder of their own.
fn write_context(
    recipe: &Recipe,
    source: &Path,
    work_dir: &Path,
) -> std::io::Result<tempfile::TempDir> {
    std::fs::create_dir_all(work_dir)?;
    let context = tempfile::Builder::new()
        .prefix("install-")
        .tempdir_in(work_dir)?;
    let tree = super::Folder(source);
    for file in &recipe.dependency_files {
        if tree.exists(file) {
            let target = context.path().join(file);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(source.join(file), target)?;
        }
    }
    for (path, text) in &recipe.generated {
        let target = context.path().join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, text)?;
    }
    Ok(context)
}

/// A file in a download cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    pub path: PathBuf,
    pub modified: SystemTime,
    pub bytes: u64,
}

/// The files to delete so that what is left fits in `cap` bytes: the oldest first.
pub fn to_trim(mut files: Vec<CachedFile>, cap: u64) -> Vec<PathBuf> {
    let mut total: u64 = files.iter().map(|file| file.bytes).sum();
    files.sort_by(|a, b| (a.modified, &a.path).cmp(&(b.modified, &b.path)));
    let mut trimmed = Vec::new();
    for file in files {
        if total <= cap {
            break;
        }
        total -= file.bytes;
        trimmed.push(file.path);
    }
    trimmed
}

/// Trims every download cache under `cache_root` to `cap` bytes. Blocking.
pub fn trim_caches(cache_root: &Path, cap: u64) {
    let Ok(caches) = std::fs::read_dir(cache_root) else {
        return;
    };
    for cache in caches.flatten() {
        let files = walk(&cache.path());
        for path in to_trim(files, cap) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn walk(dir: &Path) -> Vec<CachedFile> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                folders.push(entry.path());
            } else if meta.is_file() {
                files.push(CachedFile {
                    path: entry.path(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    bytes: meta.len(),
                });
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_files_go_until_the_cache_fits() {
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let file = |name: &str, secs, bytes| CachedFile {
            path: PathBuf::from(name),
            modified: at(secs),
            bytes,
        };
        let files = vec![
            file("new", 30, 50),
            file("old", 10, 50),
            file("mid", 20, 50),
        ];
        assert!(to_trim(files.clone(), 150).is_empty());
        assert_eq!(to_trim(files.clone(), 100), [PathBuf::from("old")]);
        assert_eq!(to_trim(files, 0), ["old", "mid", "new"].map(PathBuf::from));
    }

    #[test]
    fn trimming_a_real_folder_keeps_the_newest() {
        let root = tempfile::tempdir().unwrap();
        let pip = root.path().join("pip/http");
        std::fs::create_dir_all(&pip).unwrap();
        for (name, secs) in [("a", 100), ("b", 200)] {
            let path = pip.join(name);
            std::fs::write(&path, [0u8; 64]).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .unwrap();
        }
        trim_caches(root.path(), 64);
        assert!(!pip.join("a").exists());
        assert!(pip.join("b").exists());
    }
}
