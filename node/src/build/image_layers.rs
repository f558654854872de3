//! Images as content-addressed blobs: an image is its config (whose SHA-256 is the image
//! id) and its layers (each named by its diff id, the SHA-256 of the uncompressed layer
//! tar), all held in the blob store exactly like bundles, so they are copied, checked and
//! kept the same way, and two images that share layers share their blobs.
//!
//! - [`export`] files an image of this node's Docker in the store, splitting one `docker
//!   save` into its blobs; an image already there costs nothing.
//! - [`compose`] makes an image without Docker: a parent image plus one layer holding a
//!   folder, the way the python, node and static builders add an app's code to its
//!   dependency image. A code-only deploy is then a tar of the code, not a build.
//! - [`load`] hands Docker an archive of the config and only the layers it lacks: Docker
//!   skips a layer whose chain it already holds without reading its file (`docker load`
//!   looks layers up by chain id first), and checks every layer it does read against its
//!   diff id; the id of what came out is checked against the one recorded.
//!
//! The archive format written is `docker save`'s (manifest.json, `<id>.json`,
//! `<diff id>/layer.tar`), which every Docker since 1.10 loads.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::{ImportImageOptionsBuilder, ListImagesOptionsBuilder};
use bytes::Bytes;
use futures_util::StreamExt;
use proto::catalog::BlobRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bundle::{BlobStore, BundleError, Sha256Writer};

/// Chunks handed to and read from Docker: large enough that a 100 MB layer is a few hundred
/// writes, not tens of thousands.
const CHUNK: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot export image {image} from Docker: {reason}")]
    Save { image: String, reason: String },
    #[error("image {image} is not in this node's Docker: {source}")]
    Missing {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the archive Docker saved of {image} is not what Docker describes: {reason}")]
    BadArchive { image: String, reason: String },
    #[error("the image config {digest} is not a Docker image config: {reason}")]
    BadConfig { digest: String, reason: String },
    #[error("cannot load image {tag} into Docker: {reason}")]
    Load { tag: String, reason: String },
    #[error("loading {tag} gave no image {expected}: the copy is discarded")]
    WrongImage { tag: String, expected: String },
    #[error("cannot store the image's blobs: {0}")]
    Store(#[from] BundleError),
    #[error("cannot write the image's blobs: {0}")]
    Io(#[from] std::io::Error),
}

/// An image's blobs: its config and its layers, base first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBlobs {
    /// `sha256:...`.
    pub id: String,
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
}

impl ImageBlobs {
    /// The layers' diff ids, `sha256:...`, base first.
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers
            .iter()
            .map(|layer| format!("sha256:{}", layer.sha256))
            .collect()
    }
}

/// The part of an image config this module reads and writes; the rest is kept as it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Config {
    rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    history: Vec<serde_json::Value>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

/// One entry of `docker save`'s manifest.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The diff ids (`sha256:...`) of an image config's layers.
pub fn diff_ids(config: &[u8], digest: &str) -> Result<Vec<String>, ImageError> {
    parse_config(config, digest).map(|config| config.rootfs.diff_ids)
}

fn parse_config(config: &[u8], digest: &str) -> Result<Config, ImageError> {
    let parsed: Config = serde_json::from_slice(config).map_err(|err| ImageError::BadConfig {
        digest: digest.to_string(),
        reason: err.to_string(),
    })?;
    if let Some(bad) = parsed
        .rootfs
        .diff_ids
        .iter()
        .find(|diff_id| hex_of(diff_id).is_none())
    {
        return Err(ImageError::BadConfig {
            digest: digest.to_string(),
            reason: format!("layer {bad:?} is not a sha256 digest"),
        });
    }
    Ok(parsed)
}

/// The hex of a `sha256:<hex>` digest, if it is one.
fn hex_of(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| crate::bundle::is_valid_digest(hex))
}

/// Docker's chain ids of a stack of layers: the first layer's diff id, then the digest of
/// `"<parent chain> <diff id>"`; a layer is the same layer on two daemons only if its
/// whole chain is.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chains: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let chain = match chains.last() {
            None => diff_id.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {diff_id}")))
            ),
        };
        chains.push(chain);
    }
    chains
}

/// Which of an image's layers a daemon holding `present` (chain ids) must be sent.
pub fn missing_layers(diff_ids: &[String], present: &HashSet<String>) -> Vec<bool> {
    chain_ids(diff_ids)
        .iter()
        .map(|chain| !present.contains(chain))
        .collect()
}

/// The chain ids of every layer of every image this daemon holds.
pub async fn local_chains(docker: &Docker) -> Result<HashSet<String>, bollard::errors::Error> {
    let images = docker
        .list_images(Some(ListImagesOptionsBuilder::default().all(false).build()))
        .await?;
    let mut chains = HashSet::new();
    for image in images {
        // An image removed since the list is no layer of ours.
        let Ok(inspected) = docker.inspect_image(&image.id).await else {
            continue;
        };
        let layers = inspected
            .root_fs
            .and_then(|root_fs| root_fs.layers)
            .unwrap_or_default();
        chains.extend(chain_ids(&layers));
    }
    Ok(chains)
}

/// The image's blobs if the store has all of them.
pub fn stored(blobs: &BlobStore, id: &str) -> Option<ImageBlobs> {
    let digest = hex_of(id)?;
    let path = blobs.path(digest).ok()?;
    let config = std::fs::read(path).ok()?;
    let layers = diff_ids(&config, digest)
        .ok()?
        .iter()
        .map(|diff_id| {
            let hex = hex_of(diff_id)?;
            let size = std::fs::metadata(blobs.path(hex).ok()?).ok()?.len();
            Some(BlobRef {
                sha256: hex.to_string(),
                size,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ImageBlobs {
        id: id.to_string(),
        config: BlobRef {
            sha256: digest.to_string(),
            size: config.len() as u64,
        },
        layers,
    })
}

/// Files `image` (a tag or id of this node's Docker) in `blobs` as its config and layers.
/// An image whose blobs are all stored already is not exported again.
pub async fn export(
    docker: &Docker,
    image: &str,
    blobs: &BlobStore,
) -> Result<ImageBlobs, ImageError> {
    let id = docker
        .inspect_image(image)
        .await
        .map_err(|source| ImageError::Missing {
            image: image.to_string(),
            source,
        })?
        .id
        .unwrap_or_default();
    let store = blobs.clone();
    let known = id.clone();
    if let Some(found) = tokio::task::spawn_blocking(move || stored(&store, &known))
        .await
        .map_err(std::io::Error::other)?
    {
        return Ok(found);
    }
    let save_failed = |reason: String| ImageError::Save {
        image: image.to_string(),
        reason,
    };
    let chunks = docker
        .export_image(image)
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(chunks));
    let store = blobs.clone();
    let split = tokio::task::spawn_blocking(move || split_archive(reader, &store))
        .await
        .map_err(std::io::Error::other)?
        .map_err(|err| match err {
            SplitError::Io(err) => save_failed(err.to_string()),
            SplitError::Store(err) => ImageError::Store(err),
            SplitError::Bad(reason) => ImageError::BadArchive {
                image: image.to_string(),
                reason,
            },
        })?;
    if split.id != id {
        return Err(ImageError::BadArchive {
            image: image.to_string(),
            reason: format!("the archive holds image {}, Docker says {id}", split.id),
        });
    }
    Ok(split)
}

enum SplitError {
    Io(std::io::Error),
    Store(BundleError),
    Bad(String),
}

impl From<std::io::Error> for SplitError {
    fn from(err: std::io::Error) -> Self {
        SplitError::Io(err)
    }
}

impl From<BundleError> for SplitError {
    fn from(err: BundleError) -> Self {
        SplitError::Store(err)
    }
}

/// Reads a `docker save` archive once, filing every file in it that is not a small JSON
/// document as a blob (layer tars, and the OCI layout's blobs), and returns the image the
/// manifest names, each layer checked against the config's diff ids.
fn split_archive(reader: impl Read, blobs: &BlobStore) -> Result<ImageBlobs, SplitError> {
    let mut archive = tar::Archive::new(reader);
    let mut json: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut filed: BTreeMap<String, BlobRef> = BTreeMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        match entry.header().entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Some(target) = entry.link_name()? {
                    let resolved = resolve_link(&path, &target);
                    links.push((path, resolved));
                }
            }
            tar::EntryType::Regular => {
                if path.ends_with("layer.tar") || path.starts_with("blobs/") {
                    filed.insert(path, file_stream(blobs, &mut entry)?);
                } else if entry.size() < 1 << 20 {
                    // manifest.json, the config, and the legacy per-layer `json`.
                    let mut bytes = Vec::new();
                    entry.read_to_end(&mut bytes)?;
                    json.insert(path, bytes);
                }
            }
            _ => {}
        }
    }
    for (path, target) in links {
        if let Some(blob) = filed.get(&target).cloned() {
            filed.insert(path, blob);
        }
    }
    let manifest = json
        .get("manifest.json")
        .ok_or_else(|| SplitError::Bad("no manifest.json".into()))?;
    let manifests: Vec<ArchiveManifest> = serde_json::from_slice(manifest)
        .map_err(|err| SplitError::Bad(format!("manifest.json: {err}")))?;
    let [manifest] = manifests.as_slice() else {
        return Err(SplitError::Bad(format!(
            "{} images in one archive",
            manifests.len()
        )));
    };
    let config_path = manifest.config.trim_start_matches("./");
    let config_bytes = match (json.get(config_path), filed.get(config_path)) {
        (Some(bytes), _) => bytes.clone(),
        // The OCI layout keeps the config among its blobs.
        (None, Some(blob)) => std::fs::read(blobs.path(&blob.sha256)?)?,
        (None, None) => return Err(SplitError::Bad(format!("no config {config_path}"))),
    };
    let config = file_bytes(blobs, &config_bytes)?;
    let diff_ids =
        diff_ids(&config_bytes, &config.sha256).map_err(|err| SplitError::Bad(err.to_string()))?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(SplitError::Bad(format!(
            "{} layers in the config, {} in the manifest",
            diff_ids.len(),
            manifest.layers.len()
        )));
    }
    let layers = manifest
        .layers
        .iter()
        .zip(&diff_ids)
        .map(|(path, diff_id)| {
            let blob = filed
                .get(path.trim_start_matches("./"))
                .ok_or_else(|| SplitError::Bad(format!("no layer file {path}")))?;
            if Some(blob.sha256.as_str()) != hex_of(diff_id) {
                return Err(SplitError::Bad(format!(
                    "layer {path} hashes to {}, the config says {diff_id}",
                    blob.sha256
                )));
            }
            Ok(blob.clone())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ImageBlobs {
        id: format!("sha256:{}", config.sha256),
        config,
        layers,
    })
}

/// A link's target as an archive path: relative to the link's folder.
fn resolve_link(path: &str, target: &Path) -> String {
    let target = target.to_string_lossy();
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// Files `bytes` as a blob.
fn file_bytes(blobs: &BlobStore, bytes: &[u8]) -> Result<BlobRef, SplitError> {
    file_stream(blobs, &mut &bytes[..])
}

/// Streams `reader` into a blob named by its hash; one already stored is kept as it is.
fn file_stream(blobs: &BlobStore, reader: &mut impl Read) -> Result<BlobRef, SplitError> {
    let tmp = blobs.temp_file()?;
    let mut writer = Sha256Writer::new(std::io::BufWriter::with_capacity(CHUNK, tmp.reopen()?));
    std::io::copy(reader, &mut writer)?;
    let (file, checksum) = writer.finish();
    file.into_inner().map_err(|err| err.into_error())?;
    if !blobs.has(&checksum.digest) {
        blobs.put_hashed(tmp.path(), &checksum.digest)?;
    }
    Ok(BlobRef {
        sha256: checksum.digest,
        size: checksum.bytes,
    })
}

/// A new image: `parent` plus one layer holding the folder `dir` at `/<at>` (owned by root,
/// times and owners left out so the same code makes the same layer), its history noting
/// `created_by`. Both new blobs are filed in `blobs`. Docker is not involved.
pub fn compose(
    blobs: &BlobStore,
    parent: &ImageBlobs,
    dir: &Path,
    at: &str,
    created_by: &str,
) -> Result<ImageBlobs, ImageError> {
    let parent_config = std::fs::read(blobs.path(&parent.config.sha256)?)?;
    let mut config = parse_config(&parent_config, &parent.config.sha256)?;

    let tmp = blobs.temp_file()?;
    let writer = Sha256Writer::new(std::io::BufWriter::with_capacity(CHUNK, tmp.reopen()?));
    let mut tar = tar::Builder::new(writer);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    tar.append_dir_all(at, dir)?;
    let (file, checksum) = tar.into_inner()?.finish();
    file.into_inner()
        .map_err(|err| err.into_error())?
        .sync_all()?;
    if !blobs.has(&checksum.digest) {
        blobs.put_hashed(tmp.path(), &checksum.digest)?;
    }
    let layer = BlobRef {
        sha256: checksum.digest,
        size: checksum.bytes,
    };

    config
        .rootfs
        .diff_ids
        .push(format!("sha256:{}", layer.sha256));
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    config.history.push(serde_json::json!({
        "created": created,
        "created_by": created_by,
    }));
    config
        .rest
        .insert("created".into(), serde_json::Value::String(created));
    let bytes = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
    let config = file_bytes(blobs, &bytes).map_err(|err| match err {
        SplitError::Io(err) => ImageError::Io(err),
        SplitError::Store(err) => ImageError::Store(err),
        SplitError::Bad(reason) => ImageError::BadConfig {
            digest: String::new(),
            reason,
        },
    })?;
    let mut layers = parent.layers.clone();
    layers.push(layer);
    Ok(ImageBlobs {
        id: format!("sha256:{}", config.sha256),
        config,
        layers,
    })
}

/// Loads the image whose blobs are in `blobs` into Docker, tagged `tag`, sending only the
/// layers Docker lacks, and checks that Docker now has the image `id`. Every layer Docker
/// lacks must be in the store; the others need not be.
pub async fn load(
    docker: &Docker,
    blobs: &BlobStore,
    image: &ImageBlobs,
    tag: &str,
) -> Result<(), ImageError> {
    let load_failed = |reason: String| ImageError::Load {
        tag: tag.to_string(),
        reason,
    };
    let present = local_chains(docker)
        .await
        .map_err(|err| load_failed(err.to_string()))?;
    let missing = missing_layers(&image.diff_ids(), &present);
    let plan = ArchivePlan {
        config: (
            image.config.sha256.clone(),
            blobs.path(&image.config.sha256)?,
        ),
        layers: image
            .layers
            .iter()
            .zip(&missing)
            .map(|(layer, &send)| {
                Ok((
                    layer.sha256.clone(),
                    if send {
                        Some(blobs.path(&layer.sha256)?)
                    } else {
                        None
                    },
                ))
            })
            .collect::<Result<Vec<_>, BundleError>>()?,
        tag: tag.to_string(),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let writing = tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            sender,
            buffer: Vec::with_capacity(CHUNK),
        };
        let written = plan.write(&mut writer).and_then(|()| writer.flush());
        if let Err(err) = &written {
            let _ = writer
                .sender
                .blocking_send(Err(std::io::Error::new(err.kind(), err.to_string())));
        }
        written
    });
    let mut receiver = receiver;
    let body = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let options = ImportImageOptionsBuilder::default().quiet(true).build();
    let mut progress = docker.import_image_stream(options, body, None);
    let mut failure = None;
    while let Some(info) = progress.next().await {
        match info {
            Ok(info) => {
                if let Some(message) = info.error_detail.and_then(|detail| detail.message) {
                    failure.get_or_insert(message);
                }
            }
            Err(err) => {
                failure.get_or_insert(err.to_string());
            }
        }
    }
    let written = writing.await.map_err(std::io::Error::other)?;
    if let Some(reason) = failure {
        return Err(load_failed(reason));
    }
    written.map_err(|err| load_failed(format!("cannot read the image's blobs: {err}")))?;
    match docker.inspect_image(&image.id).await {
        Ok(_) => Ok(()),
        Err(_) => Err(ImageError::WrongImage {
            tag: tag.to_string(),
            expected: image.id.clone(),
        }),
    }
}

/// What goes into the archive handed to `docker load`.
struct ArchivePlan {
    config: (String, PathBuf),
    /// Each layer's diff id hex, and its blob if Docker lacks it.
    layers: Vec<(String, Option<PathBuf>)>,
    tag: String,
}

impl ArchivePlan {
    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut tar = tar::Builder::new(out);
        let (config_digest, config_path) = &self.config;
        let config_name = format!("{config_digest}.json");
        let manifest = vec![ArchiveManifest {
            config: config_name.clone(),
            repo_tags: Some(vec![self.tag.clone()]),
            layers: self
                .layers
                .iter()
                .map(|(diff, _)| format!("{diff}/layer.tar"))
                .collect(),
        }];
        let manifest = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
        append_bytes(&mut tar, "manifest.json", &manifest)?;
        append_bytes(&mut tar, &config_name, &std::fs::read(config_path)?)?;
        let mut sent = HashSet::new();
        for (diff, path) in &self.layers {
            let Some(path) = path else { continue };
            if !sent.insert(diff) {
                continue;
            }
            let mut file = std::fs::File::open(path)?;
            let mut header = tar::Header::new_gnu();
            header.set_size(file.metadata()?.len());
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("{diff}/layer.tar"), &mut file)?;
        }
        tar.into_inner()?.flush()
    }
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, path, bytes)
}

/// A blocking `Write` into an async channel, in [`CHUNK`]s: the archive is written by a
/// blocking thread while Docker reads it, never whole in memory or on disk.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.sender.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "Docker stopped reading the image",
            )
        })
    }
}

/// Whether this node's Docker has the image.
pub async fn has_image(docker: &Docker, image: &str) -> bool {
    docker.inspect_image(image).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(text: &str) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(text)))
    }

    #[test]
    fn chain_ids_follow_docker() {
        let a = digest("a");
        let b = digest("b");
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], digest(&format!("{a} {b}")));
    }

    #[test]
    fn only_layers_whose_chain_is_absent_are_sent() {
        let (a, b, c) = (digest("a"), digest("b"), digest("c"));
        let present: HashSet<String> = chain_ids(&[a.clone(), b.clone()]).into_iter().collect();
        assert_eq!(
            missing_layers(&[a.clone(), b.clone(), c.clone()], &present),
            [false, false, true]
        );
        // The same layer on another parent is another layer.
        assert_eq!(missing_layers(&[b, a], &present), [true, true]);
    }

    #[test]
    fn a_saved_archive_splits_into_its_blobs_and_a_composed_image_stacks_on_it() {
        let data = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(data.path()).unwrap();
        let layer = {
            let mut tar = tar::Builder::new(Vec::new());
            append_bytes(&mut tar, "bin/sh", b"#!shell").unwrap();
            tar.into_inner().unwrap()
        };
        let diff = hex::encode(Sha256::digest(&layer));
        let archive = |layers: &[&str], diff_ids: usize| {
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "config": {"Cmd": ["sh"]},
                "rootfs": {"type": "layers", "diff_ids": vec![format!("sha256:{diff}"); diff_ids]},
            }))
            .unwrap();
            let id = hex::encode(Sha256::digest(&config));
            let mut tar = tar::Builder::new(Vec::new());
            let manifest = serde_json::json!([{
                "Config": format!("{id}.json"), "RepoTags": ["base:1"], "Layers": layers,
            }]);
            append_bytes(&mut tar, "manifest.json", manifest.to_string().as_bytes()).unwrap();
            append_bytes(&mut tar, &format!("{id}.json"), &config).unwrap();
            append_bytes(&mut tar, "v1id/json", b"{}").unwrap();
            append_bytes(&mut tar, "v1id/VERSION", b"1.0").unwrap();
            append_bytes(&mut tar, "v1id/layer.tar", &layer).unwrap();
            // `docker save` links a layer that repeats to its first copy.
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            tar.append_link(&mut link, "v1dup/layer.tar", "../v1id/layer.tar")
                .unwrap();
            (id, tar.into_inner().unwrap())
        };
        let (_, mismatched) = archive(&["v1id/layer.tar", "v1dup/layer.tar"], 1);
        assert!(matches!(
            split_archive(&mismatched[..], &blobs),
            Err(SplitError::Bad(reason)) if reason.contains("1 layers in the config, 2")
        ));
        let (_, linked) = archive(&["v1id/layer.tar", "v1dup/layer.tar"], 2);
        let Ok(twice) = split_archive(&linked[..], &blobs) else {
            panic!("a linked layer did not split")
        };
        assert_eq!(twice.layers[0], twice.layers[1]);
        let (id, good) = archive(&["v1id/layer.tar"], 1);
        let Ok(base) = split_archive(&good[..], &blobs) else {
            panic!("the archive did not split")
        };
        // Only the layer became a blob besides the config: no `json` or `VERSION` files.
        let filed = walk_blobs(data.path());
        assert_eq!(
            filed.len(),
            3,
            "config, layer and the two-layer config: {filed:?}"
        );
        assert_eq!(base.id, format!("sha256:{id}"));
        assert_eq!(base.layers[0].sha256, diff);
        assert_eq!(stored(&blobs, &base.id), Some(base.clone()));

        let code = tempfile::tempdir().unwrap();
        std::fs::write(code.path().join("app.py"), "print('hi')\n").unwrap();
        let first = compose(&blobs, &base, code.path(), "app", "the code").unwrap();
        assert_eq!(first.layers.len(), 2);
        assert_eq!(first.layers[0], base.layers[0]);
        let composed = std::fs::read(blobs.path(&first.config.sha256).unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&composed).unwrap();
        assert_eq!(
            value["config"]["Cmd"][0], "sh",
            "the parent's settings are kept"
        );
        assert_eq!(
            diff_ids(&composed, "x").unwrap(),
            [
                format!("sha256:{diff}"),
                format!("sha256:{}", first.layers[1].sha256)
            ]
        );
        // The same code makes the same layer: a redeploy of it moves nothing new.
        let again = compose(&blobs, &base, code.path(), "app", "the code").unwrap();
        assert_eq!(again.layers, first.layers);
        let mut layer_tar = tar::Archive::new(
            std::fs::File::open(blobs.path(&first.layers[1].sha256).unwrap()).unwrap(),
        );
        let names: Vec<String> = layer_tar
            .entries()
            .unwrap()
            .map(|entry| {
                entry
                    .unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert!(names.contains(&"app/app.py".to_string()), "{names:?}");
    }

    fn walk_blobs(root: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![root.join("blobs")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.ends_with("tmp") {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }

    #[test]
    fn the_load_archive_holds_only_the_layers_docker_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::write(&config, b"{}").unwrap();
        let layer = dir.path().join("layer");
        std::fs::write(&layer, b"layer bytes").unwrap();
        let plan = ArchivePlan {
            config: ("c0".into(), config),
            layers: vec![("l1".into(), None), ("l2".into(), Some(layer))],
            tag: "stratus-app/web:r2".into(),
        };
        let mut out = Vec::new();
        plan.write(&mut out).unwrap();
        let mut archive = tar::Archive::new(&out[..]);
        let mut names = Vec::new();
        let mut manifest = String::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if name == "manifest.json" {
                entry.read_to_string(&mut manifest).unwrap();
            }
            names.push(name);
        }
        assert_eq!(names, ["manifest.json", "c0.json", "l2/layer.tar"]);
        assert!(
            manifest.contains(r#""Layers":["l1/layer.tar","l2/layer.tar"]"#),
            "{manifest}"
        );
        assert!(manifest.contains("stratus-app/web:r2"), "{manifest}");
    }
}
