//! Images as content-addressed archives: `docker save` into this node's blob store (so a
//! built image is copied, checked and held exactly like a bundle), and `docker load` back
//! from a verified copy, checking that the image that came out is the one recorded.

use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::ImportImageOptionsBuilder;
use futures_util::StreamExt;
use proto::catalog::BlobRef;
use tokio::io::AsyncWriteExt;

use crate::bundle::{BlobStore, BundleError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot export image {image} from Docker: {source}")]
    Save {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot load the image archive into Docker: {0}")]
    Load(String),
    #[error(
        "the archive loaded image {loaded:?}, not the recorded {expected}: the copy is discarded"
    )]
    WrongImage { expected: String, loaded: String },
    #[error("cannot store the image archive: {0}")]
    Store(#[from] BundleError),
    #[error("cannot write the image archive: {0}")]
    Io(#[from] std::io::Error),
}

/// Saves `image` (an id or tag; the archive keeps the tags it is asked by, so save by tag)
/// into `blobs`, returning its digest and size.
pub async fn save(
    docker: &Docker,
    image: &str,
    blobs: &BlobStore,
) -> Result<BlobRef, ArchiveError> {
    let tmp = blobs.temp_file()?;
    let mut file = tokio::fs::File::from_std(tmp.reopen()?);
    let mut hasher = api::checksum::Sha256Stream::new();
    let mut chunks = docker.export_image(image);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|source| ArchiveError::Save {
            image: image.to_string(),
            source,
        })?;
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    drop(file);
    let api::checksum::Checksum {
        digest: sha256,
        bytes: size,
    } = hasher.finish();
    let path = tmp.path().to_path_buf();
    let store = blobs.clone();
    let digest = sha256.clone();
    tokio::task::spawn_blocking(move || store.put_verified(&path, &digest))
        .await
        .map_err(std::io::Error::other)??;
    Ok(BlobRef { sha256, size })
}

/// Loads the archive at `path` (already checked against its digest) and checks that it
/// holds `expected_id`.
pub async fn load(docker: &Docker, path: &Path, expected_id: &str) -> Result<(), ArchiveError> {
    let file = tokio::fs::File::open(path).await?;
    let body = tokio_util::io::ReaderStream::new(file);
    let options = ImportImageOptionsBuilder::default().quiet(true).build();
    let mut progress = docker.import_image_stream(options, body, None);
    while let Some(info) = progress.next().await {
        info.map_err(|err| ArchiveError::Load(err.to_string()))?;
    }
    match docker.inspect_image(expected_id).await {
        Ok(_) => Ok(()),
        Err(err) => Err(ArchiveError::WrongImage {
            expected: expected_id.to_string(),
            loaded: format!("none with that id ({err})"),
        }),
    }
}

/// Whether this node's Docker has the image.
pub async fn has_image(docker: &Docker, image: &str) -> bool {
    docker.inspect_image(image).await.is_ok()
}
