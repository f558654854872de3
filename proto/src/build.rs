//! Builds from source as they cross process boundaries: the builder an app takes, the
//! image a build made (and where its archive is stored), the record of each build, and the
//! events a build streams while it runs, from the building node to the node that accepted
//! the deploy and on to `stratus deploy`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::blob::BlobRef;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Builder {
    /// `docker build` with the bundle as the context.
    Dockerfile,
    /// A `stratus/python` base, dependencies installed into a layer of their own.
    Python,
    /// A `stratus/node` base, `npm ci` (or `npm install`) into a layer of their own.
    Node,
    /// The folder served by a small static file server on `$PORT`.
    Static,
    /// No build: the manifest's `image` (or the node's default) runs `cmd`.
    #[default]
    Image,
}

impl Builder {
    pub const ALL: [Builder; 5] = [
        Builder::Dockerfile,
        Builder::Python,
        Builder::Node,
        Builder::Static,
        Builder::Image,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Builder::Dockerfile => "dockerfile",
            Builder::Python => "python",
            Builder::Node => "node",
            Builder::Static => "static",
            Builder::Image => "image",
        }
    }
}

impl fmt::Display for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown builder {0:?}: use one of dockerfile, python, node, static, image")]
pub struct UnknownBuilder(pub String);

impl FromStr for Builder {
    type Err = UnknownBuilder;

    fn from_str(name: &str) -> Result<Builder, UnknownBuilder> {
        Builder::ALL
            .into_iter()
            .find(|builder| builder.name() == name)
            .ok_or_else(|| UnknownBuilder(name.to_string()))
    }
}

/// The image a build made, as blobs held like bundles: its config (whose SHA-256 is the
/// image id) and its layers, each named by its diff id (the SHA-256 of the uncompressed
/// layer tar). Replicas run it by `id`; a node without it fetches the config and only the
/// layers its Docker lacks, and loads them. Two releases that share their dependency
/// layers share those blobs: a code-only change moves one small layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageRef {
    /// `sha256:...`, the image's config digest: the same on every node that loads it.
    pub id: String,
    /// `stratus-app/NAME:rN` (`stratus-deps/BUILDER:KEY` for a dependency image).
    pub tag: String,
    /// The image config; `config.sha256` is `id` without its `sha256:`.
    pub config: BlobRef,
    /// The layers, base first; `sha256` is the layer's diff id.
    pub layers: Vec<BlobRef>,
    /// `Image`: an image the manifest named, run with the bundle mounted at `/app`;
    /// otherwise the image holds the code and its start command.
    pub builder: Builder,
}

impl ImageRef {
    /// Every blob of the image, config first.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// The bytes of the config and every layer.
    pub fn size(&self) -> u64 {
        self.blobs().map(|blob| blob.size).sum()
    }
}

/// Whether the dependency layer was reused or installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CacheUse {
    /// The dependency layer with this key was already on the building node.
    Hit,
    /// It was installed by this build.
    Miss,
    /// The builder has no dependency layer (Dockerfile, static).
    None,
}

impl fmt::Display for CacheUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
            CacheUse::None => "-",
        })
    }
}

/// One build of one release, kept in the app's record (the last [`KEPT_BUILDS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildSummary {
    pub release: u64,
    pub builder: Builder,
    /// Why this builder: `found requirements.txt`.
    pub reason: String,
    pub node: String,
    pub started_at_ms: u64,
    pub duration_ms: u64,
    pub cache: CacheUse,
    /// The dependency layer's key: builder, base image id and the dependency files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// `None`: it succeeded. Otherwise what went wrong, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The whole output, a blob held like bundles (`stratus logs APP --build N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<BlobRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    /// The dependency image the release image was made on (python, node and static): any
    /// node building the same `cache_key` loads it instead of installing again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<ImageRef>,
}

/// How many build summaries an app's record keeps.
pub const KEPT_BUILDS: usize = 20;

/// A line of a build's live output, as newline-delimited JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BuildEvent {
    /// The build was placed on `node`.
    Placed { node: String, reason: String },
    /// A step begins (`Step 3/7 : RUN pip install ...`, `installing dependencies`).
    Step { text: String },
    /// Output of the current step.
    Line { text: String },
    /// Sent while a step is silent, so the reader knows the builder is alive.
    Alive { elapsed_ms: u64 },
    /// The build (and its release command) finished.
    Finished { summary: Box<BuildSummary> },
}
