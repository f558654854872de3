//! Old images are removed from this node's Docker:
//! - release images: each node keeps those of the last `--keep-releases` releases of each
//!   app, and of every release the catalog still runs;
//! - dependency images (the build cache): those the kept builds of any app were made on
//!   stay, the others go, and then the oldest while they pass `--build-cache-size`.
//!
//! The blobs stay in the store (they are the cluster's copies); only this node's Docker is
//! cleaned. The decisions are pure, the drivers list and remove.

use std::collections::{BTreeMap, BTreeSet};

use bollard::Docker;
use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use tracing::{info, warn};

/// A release image in this node's Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    pub id: String,
    pub app: String,
    pub release: u64,
}

/// The images to remove: all but the newest `keep` releases of each app, never one the
/// catalog says runs now (`running`: app to release).
pub fn to_remove(
    images: &[LocalImage],
    running: &BTreeMap<String, u64>,
    keep: usize,
) -> Vec<String> {
    let mut by_app: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for image in images {
        by_app.entry(&image.app).or_default().insert(image.release);
    }
    let kept: BTreeSet<(&str, u64)> = by_app
        .iter()
        .flat_map(|(app, releases)| releases.iter().rev().take(keep).map(|r| (*app, *r)))
        .collect();
    let mut remove: Vec<String> = images
        .iter()
        .filter(|image| !kept.contains(&(image.app.as_str(), image.release)))
        .filter(|image| running.get(&image.app) != Some(&image.release))
        .map(|image| image.id.clone())
        .collect();
    remove.sort();
    remove.dedup();
    remove
}

/// The app and release of a release image's tag, `stratus-app/NAME:rN`.
pub fn release_of_tag(tag: &str) -> Option<(String, u64)> {
    let (name, release) = tag.strip_prefix("stratus-app/")?.rsplit_once(":r")?;
    Some((name.to_string(), release.parse().ok()?))
}

/// Removes this node's old release images (tagged `stratus-app/NAME:rN`). An image a
/// container still uses is left: Docker refuses, and it is retried after the next build.
pub async fn collect(docker: &Docker, running: &BTreeMap<String, u64>, keep: usize) {
    let Some(listed) = list_tagged(docker, "stratus-app/*").await else {
        return;
    };
    let images: Vec<LocalImage> = listed
        .into_iter()
        .flat_map(|image| {
            let id = image.id.clone();
            image.repo_tags.into_iter().filter_map(move |tag| {
                let (app, release) = release_of_tag(&tag)?;
                Some(LocalImage {
                    id: id.clone(),
                    app,
                    release,
                })
            })
        })
        .collect();
    for id in to_remove(&images, running, keep) {
        let options = RemoveImageOptionsBuilder::default().force(false).build();
        match docker.remove_image(&id, Some(options), None).await {
            Ok(_) => info!(image = %id, "removed an old release image"),
            Err(err) => warn!(image = %id, error = %err, "old release image not removed"),
        }
    }
}

/// This node's images whose reference matches `pattern`; `None` (logged) if Docker does
/// not answer, so nothing is removed.
async fn list_tagged(docker: &Docker, pattern: &str) -> Option<Vec<bollard::models::ImageSummary>> {
    let filters =
        std::collections::HashMap::from([("reference".to_string(), vec![pattern.to_string()])]);
    let options = ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    match docker.list_images(Some(options)).await {
        Ok(listed) => Some(listed),
        Err(err) => {
            warn!(error = %err, pattern, "cannot list images to collect");
            None
        }
    }
}

/// A dependency image (`stratus-deps/BUILDER:KEY`) in this node's Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyImage {
    pub id: String,
    pub tag: String,
    /// Unix seconds.
    pub created: i64,
    /// Its whole size, base layers included: the cap is counted high, never low.
    pub bytes: u64,
}

/// The dependency images to remove: every one whose tag is not `wanted` (used by a kept
/// build), then the oldest of the rest until what is left fits in `cap` bytes.
pub fn dependencies_to_remove(
    images: &[DependencyImage],
    wanted: &BTreeSet<String>,
    cap: u64,
) -> Vec<String> {
    let (kept, unwanted): (Vec<&DependencyImage>, Vec<&DependencyImage>) =
        images.iter().partition(|image| wanted.contains(&image.tag));
    let mut remove: Vec<String> = unwanted.iter().map(|image| image.id.clone()).collect();
    let mut kept = kept;
    kept.sort_by_key(|image| (image.created, image.id.clone()));
    let mut total: u64 = kept.iter().map(|image| image.bytes).sum();
    for image in kept {
        if total <= cap {
            break;
        }
        total -= image.bytes;
        remove.push(image.id.clone());
    }
    remove.sort();
    remove.dedup();
    remove
}

/// Removes the dependency images [`dependencies_to_remove`] picks. A release image keeps
/// the layers it shares with one: only the tag and what nothing else uses go.
pub async fn collect_dependencies(docker: &Docker, wanted: &BTreeSet<String>, cap: u64) {
    let Some(listed) = list_tagged(docker, "stratus-deps/*").await else {
        return;
    };
    let images: Vec<DependencyImage> = listed
        .into_iter()
        .flat_map(|image| {
            let (id, created, bytes) = (image.id.clone(), image.created, image.size.max(0) as u64);
            image
                .repo_tags
                .into_iter()
                .filter(|tag| tag.starts_with("stratus-deps/"))
                .map(move |tag| DependencyImage {
                    id: id.clone(),
                    tag,
                    created,
                    bytes,
                })
        })
        .collect();
    for id in dependencies_to_remove(&images, wanted, cap) {
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        match docker.remove_image(&id, Some(options), None).await {
            Ok(_) => info!(image = %id, "removed a dependency image"),
            Err(err) => warn!(image = %id, error = %err, "dependency image not removed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(app: &str, release: u64) -> LocalImage {
        LocalImage {
            id: format!("sha256:{app}{release}"),
            app: app.into(),
            release,
        }
    }

    #[test]
    fn the_newest_releases_of_each_app_and_the_running_one_are_kept() {
        let images: Vec<LocalImage> = (1..=8)
            .map(|r| image("web", r))
            .chain([image("api", 1), image("api", 2)])
            .collect();
        let running = BTreeMap::from([("web".to_string(), 2)]);
        let removed = to_remove(&images, &running, 5);
        // web keeps 4-8 (newest five) and 2 (it runs: a rollback to it happened).
        assert_eq!(
            removed,
            vec!["sha256:web1".to_string(), "sha256:web3".to_string()]
        );
        assert!(to_remove(&images, &BTreeMap::new(), 100).is_empty());
        assert_eq!(to_remove(&images, &BTreeMap::new(), 1).len(), 8);
        assert_eq!(
            release_of_tag("stratus-app/web-2:r17"),
            Some(("web-2".to_string(), 17))
        );
        assert_eq!(release_of_tag("stratus/python:3.11"), None);
        assert_eq!(release_of_tag("stratus-app/web:latest"), None);
    }

    fn deps(tag: &str, created: i64, bytes: u64) -> DependencyImage {
        DependencyImage {
            id: format!("sha256:{tag}"),
            tag: tag.into(),
            created,
            bytes,
        }
    }

    #[test]
    fn dependency_images_no_kept_build_uses_go_then_the_oldest_past_the_cap() {
        let images = [
            deps("a", 1, 100),
            deps("b", 2, 100),
            deps("c", 3, 100),
            deps("d", 4, 100),
        ];
        let wanted: BTreeSet<String> = ["b", "c", "d"].map(String::from).into();
        assert_eq!(
            dependencies_to_remove(&images, &wanted, 1_000),
            ["sha256:a"]
        );
        // 300 bytes wanted, room for 250: the oldest wanted one goes too.
        assert_eq!(
            dependencies_to_remove(&images, &wanted, 250),
            ["sha256:a", "sha256:b"]
        );
        assert_eq!(dependencies_to_remove(&images, &wanted, 0).len(), 4);
        assert!(dependencies_to_remove(&[], &wanted, 0).is_empty());
    }
}
