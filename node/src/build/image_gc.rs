//! Old release images are removed: each node keeps the images of the last `--keep-releases`
//! releases of each app, and of every release the catalog still runs or may roll back to
//! within that window. The archives stay in the store (they are the cluster's copies); only
//! this node's Docker is cleaned. The decision is pure, the driver lists and removes.

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
    let filters = std::collections::HashMap::from([(
        "reference".to_string(),
        vec!["stratus-app/*".to_string()],
    )]);
    let options = ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let listed = match docker.list_images(Some(options)).await {
        Ok(listed) => listed,
        Err(err) => {
            warn!(error = %err, "cannot list images to collect old releases");
            return;
        }
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
}
