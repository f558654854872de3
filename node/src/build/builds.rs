//! This node's builder: its Docker daemon (none when it runs apps as processes, and then it
//! builds nothing), the base images its runtimes map to, the limits a build runs under, and
//! the builds running here now, so one release is never built twice at once on one node.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use tokio::sync::Mutex;

use super::image_pull::ImagePull;
use super::recipe::BaseImages;

pub struct Builds {
    docker: Option<Docker>,
    bases: BaseImages,
    timeout: Duration,
    pull: ImagePull,
    keep_releases: usize,
    cache_bytes: u64,
    work_dir: PathBuf,
    running: Arc<Mutex<BTreeSet<(String, u64)>>>,
}

/// Held while a build runs; dropping it lets the release be built here again (a retry).
pub struct Running {
    key: (String, u64),
    running: Arc<Mutex<BTreeSet<(String, u64)>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let (running, key) = (self.running.clone(), self.key.clone());
        // Async lock: the mark goes a moment after the build ends, which only delays a
        // retry on this same node.
        tokio::spawn(async move {
            running.lock().await.remove(&key);
        });
    }
}

/// What a node needs to build, besides its Docker client.
pub struct BuildSettings {
    pub bases: BaseImages,
    pub timeout: Duration,
    pub pull: ImagePull,
    pub keep_releases: usize,
    /// Bytes of dependency images kept (`--build-cache-size`).
    pub cache_bytes: u64,
    pub work_dir: PathBuf,
}

impl Builds {
    pub fn new(docker: Option<Docker>, settings: BuildSettings) -> Builds {
        Builds {
            docker,
            bases: settings.bases,
            timeout: settings.timeout,
            pull: settings.pull,
            keep_releases: settings.keep_releases,
            cache_bytes: settings.cache_bytes,
            work_dir: settings.work_dir,
            running: Arc::default(),
        }
    }

    /// The Docker daemon builds and built images use, or why there is none.
    pub fn docker(&self) -> Result<&Docker, String> {
        self.docker.as_ref().ok_or_else(|| {
            "this node runs apps as processes and has no Docker: it cannot build or load images; \
             run its agent with Docker (--runtime docker)"
                .to_string()
        })
    }

    pub fn can_build(&self) -> bool {
        self.docker.is_some()
    }

    pub fn bases(&self) -> &BaseImages {
        &self.bases
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn pull(&self) -> ImagePull {
        self.pull
    }

    pub fn keep_releases(&self) -> usize {
        self.keep_releases
    }

    pub fn cache_bytes(&self) -> u64 {
        self.cache_bytes
    }

    /// Where builds unpack their bundles.
    /// This node's pip and npm download caches, one folder each.
    pub fn cache_dir(&self) -> PathBuf {
        self.work_dir.join("download-cache")
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Marks `app`'s release as building here; `None` if it already is.
    pub async fn begin(&self, app: &str, release: u64) -> Option<Running> {
        let key = (app.to_string(), release);
        let fresh = self.running.lock().await.insert(key.clone());
        fresh.then(|| Running {
            key,
            running: self.running.clone(),
        })
    }
}
