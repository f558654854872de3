//! Deploys from source: which builder an app folder takes, the recipe each builder turns
//! into an image, where the build runs, and how its image reaches the nodes that run
//! the release. The decisions are pure (a folder's files in, a builder with its reason and a
//! Dockerfile out; candidates in, build nodes out); the Docker calls are thin drivers.
//!
//! - [`detect`]: the builder, named by `build = "..."` or detected from the files;
//! - [`recipe`]: the Dockerfile and start command of each builder, with the dependency
//!   layer kept apart from the code so a code-only change reuses it;
//! - [`placement`]: the node a build runs on;
//! - [`builds`]: this node's builder handle (Docker, base images, limits);
//! - [`job`]: one build on the node it was placed on, from bundle to image archive;
//! - [`docker_build`]: runs a recipe through the Docker daemon's build API, output live;
//! - [`dependency_install`]: the python and node dependency image, installed in a container
//!   with this node's pip or npm download cache mounted, and committed;
//! - [`one_off`]: a one-off container, its output live, judged by its exit code;
//! - [`release_phase`]: the release command, once per release, before the rollout;
//! - [`image_layers`]: images as blobs (a config and its layers): filed from Docker,
//!   composed from a parent and the code, loaded sending only the layers Docker lacks;
//! - [`image_transfer`]: image blobs left with keepers and fetched by the nodes that run them;
//! - [`image_gc`]: old release images removed, the last `--keep-releases` kept;
//! - [`image_pull`]: when an image an app names is pulled from a registry.

pub mod builds;
pub mod dependency_install;
pub mod detect;
pub mod docker_build;
pub mod image_gc;
pub mod image_layers;
pub mod image_pull;
pub mod image_transfer;
pub mod job;
pub mod one_off;
pub mod placement;
pub mod recipe;
pub mod release_phase;

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
