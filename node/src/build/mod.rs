//! Deploys from source (issue 11, in progress): which builder an app folder takes, and the
//! recipe each builder turns into a Docker build. The decisions are pure (a folder's files in, a
//! builder with its reason and a Dockerfile out); `docker_build` is the thin driver. The build queue, image transfer and release phase that
//! run these recipes come next; nothing calls this module from a deploy yet.
//!
//! - [`detect`]: the builder, named by `build = "..."` or detected from the files;
//! - [`docker_build`]: runs a recipe through the Docker daemon's build API, output live;
//! - [`recipe`]: the Dockerfile and start command of each builder, with the dependency
//!   layer kept apart from the code so a code-only change reuses it.

pub mod detect;
pub mod docker_build;
pub mod recipe;

use std::collections::BTreeMap;
use std::path::Path;

/// The files a decision reads, from an unpacked bundle or (in tests) from memory. Paths are
/// relative to the app's root, `/`-separated.
pub trait SourceTree {
    fn exists(&self, path: &str) -> bool;
    /// The file's text, `None` if it is absent, not UTF-8 or larger than `MAX_READ`.
    fn read(&self, path: &str) -> Option<String>;
}

/// No manifest or lockfile a builder reads is this large; a bigger one is not read whole.
pub const MAX_READ: u64 = 4 << 20;

/// A folder on disk (an unpacked bundle).
pub struct Folder<'a>(pub &'a Path);

impl SourceTree for Folder<'_> {
    fn exists(&self, path: &str) -> bool {
        self.0.join(path).is_file()
    }

    fn read(&self, path: &str) -> Option<String> {
        let path = self.0.join(path);
        let size = std::fs::metadata(&path).ok()?.len();
        if size > MAX_READ {
            return None;
        }
        std::fs::read_to_string(path).ok()
    }
}

impl SourceTree for BTreeMap<&str, &str> {
    fn exists(&self, path: &str) -> bool {
        self.contains_key(path)
    }

    fn read(&self, path: &str) -> Option<String> {
        self.get(path).map(|text| text.to_string())
    }
}
