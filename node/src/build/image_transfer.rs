//! How an image's blobs move between nodes. The building node leaves each blob with the
//! app's keepers (or in S3), sending only those a keeper lacks; a node that must run a
//! release and lacks its image fetches the config and only the layers its Docker lacks,
//! from the store or any holder (each copy checked against its digest, a corrupt one
//! discarded and the next holder tried), and loads them.

use std::collections::HashSet;

use proto::build::ImageRef;
use proto::catalog::BlobRef;
use tracing::{info, warn};

use super::image_layers::{self, ImageBlobs};
use crate::handles::AgentHandles;
use crate::workload::supervisor::fetch_bundle;

/// The store's view of an image.
pub fn blobs_of(image: &ImageRef) -> ImageBlobs {
    ImageBlobs {
        id: image.id.clone(),
        config: image.config.clone(),
        layers: image.layers.clone(),
    }
}

/// Makes `image` present in this node's Docker, fetching what it lacks.
pub async fn ensure(agent: &AgentHandles, image: &ImageRef) -> Result<(), String> {
    let docker = agent.builds.docker()?.clone();
    if image_layers::has_image(&docker, &image.id).await {
        return Ok(());
    }
    let started = tokio::time::Instant::now();
    let cannot = |err: String| format!("cannot get image {}: {err}", image.tag);
    let present = image_layers::local_chains(&docker)
        .await
        .map_err(|err| cannot(err.to_string()))?;
    let blobs = blobs_of(image);
    let missing = image_layers::missing_layers(&blobs.diff_ids(), &present);
    let wanted: Vec<&BlobRef> = std::iter::once(&image.config)
        .chain(
            image
                .layers
                .iter()
                .zip(&missing)
                .filter(|(_, missing)| **missing)
                .map(|(layer, _)| layer),
        )
        .collect();
    let fetched = fetch_all(agent, &wanted).await.map_err(cannot)?;
    let store = agent.bundles.local();
    if let Err(err) = image_layers::load(&docker, store, &blobs, &image.tag).await {
        // Docker checks each layer against its diff id: a copy that rotted on this disk is
        // found by checking them all, and fetched again once.
        warn!(image = %image.tag, error = %err, "the image did not load: checking its blobs");
        let bad = discard_corrupt(agent, &wanted).await;
        if bad == 0 {
            return Err(cannot(err.to_string()));
        }
        fetch_all(agent, &wanted).await.map_err(cannot)?;
        image_layers::load(&docker, store, &blobs, &image.tag)
            .await
            .map_err(|err| cannot(err.to_string()))?;
    }
    let sent: u64 = wanted.iter().skip(1).map(|blob| blob.size).sum();
    info!(image = %image.tag, ms = started.elapsed().as_millis() as u64, fetched_bytes = fetched,
        layers_loaded = wanted.len() - 1, layers_present = image.layers.len() + 1 - wanted.len(),
        layer_bytes = sent, "image loaded from the cluster");
    Ok(())
}

/// Fetches every blob of `wanted` this node's store lacks, at once; the bytes fetched.
async fn fetch_all(agent: &AgentHandles, wanted: &[&BlobRef]) -> Result<u64, String> {
    let store = agent.bundles.local();
    let lacking: Vec<&BlobRef> = wanted
        .iter()
        .copied()
        .filter(|blob| !store.has(&blob.sha256))
        .collect();
    if lacking.is_empty() {
        return Ok(0);
    }
    let holders = super::job::live_api_addrs(agent).await;
    let fetches = lacking
        .iter()
        .map(|blob| fetch_bundle(agent, &blob.sha256, &holders, "layer"));
    let results = futures_util::future::join_all(fetches).await;
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(lacking.iter().map(|blob| blob.size).sum())
}

/// Checks the stored copies of `blobs`, deleting those that no longer match; how many did.
async fn discard_corrupt(agent: &AgentHandles, blobs: &[&BlobRef]) -> usize {
    let store = agent.bundles.local().clone();
    let digests: Vec<String> = blobs.iter().map(|blob| blob.sha256.clone()).collect();
    tokio::task::spawn_blocking(move || {
        digests
            .iter()
            .filter(|digest| {
                matches!(
                    store.open_verified(digest),
                    Err(crate::bundle::BundleError::CorruptBlob { .. })
                )
            })
            .count()
    })
    .await
    .unwrap_or(0)
}

/// Leaves `blobs` with the app's keepers (or in S3), so a node that must run the release
/// and lacks them can fetch them even if this node is gone. A keeper (or S3) that holds a
/// blob already is not sent it again. Returns who holds them all.
pub async fn spread(
    agent: &AgentHandles,
    blobs: &[BlobRef],
    keepers: &[String],
) -> Result<Vec<String>, String> {
    let store = agent.bundles.local();
    let mut unique = HashSet::new();
    let mut paths = Vec::new();
    for blob in blobs.iter().filter(|blob| unique.insert(&blob.sha256)) {
        let path = store.path(&blob.sha256).map_err(|err| err.to_string())?;
        paths.push((blob, path));
    }
    if let Some(s3) = agent.bundles.s3() {
        for (blob, path) in &paths {
            if s3.has(&blob.sha256).await.unwrap_or(false) {
                continue;
            }
            s3.put_file(path, &blob.sha256).await.map_err(|err| {
                format!(
                    "cannot store blob {} in {}: {err}",
                    blob.sha256,
                    s3.config().url()
                )
            })?;
        }
        return Ok(vec![s3.config().url()]);
    }
    let view = agent.view().await;
    let mut held = vec![agent.node_id().to_string()];
    let sends = keepers
        .iter()
        .filter(|keeper| keeper.as_str() != agent.node_id())
        .filter_map(|keeper| {
            let addr = view.node(keeper)?.identity.as_ref()?.api_addr;
            Some((keeper.clone(), agent.peers.client(addr)?))
        })
        .map(|(keeper, client)| {
            let paths = &paths;
            async move {
                for (blob, path) in paths {
                    // An unanswered HEAD costs one send of a blob it may have had.
                    if client.has_blob(&blob.sha256).await.unwrap_or(false) {
                        continue;
                    }
                    if let Err(err) = client.put_blob(&blob.sha256, path).await {
                        return (keeper, Err(err));
                    }
                }
                (keeper, Ok(()))
            }
        });
    for (keeper, sent) in futures_util::future::join_all(sends).await {
        match sent {
            Ok(()) => held.push(keeper),
            Err(err) => warn!(node = %keeper, error = %err, "could not send the image's blobs"),
        }
    }
    Ok(held)
}
