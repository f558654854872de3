//! What the agent provides to the API, one trait per router: [`AppsService`] and
//! [`NodesService`] answer users, [`BlobsService`] and [`InternalService`] answer peers.
//! Reads are answered from local state: every node answers every read from its own gossip
//! view and catalog.

use std::future::Future;
use std::path::PathBuf;

use proto::api::BuildRequest;
use proto::api::{
    AppView, AppsResponse, BuildsResponse, ChangeAccepted, DeployAccepted, DrainReply,
    HealthResponse, NodesResponse, PlacementReply, PlacementRequest, ReleasesResponse,
    RollbackRequest, ScaleRequest, StopRequest,
};
use proto::catalog::AppRecord;
use serde::Deserialize;

use crate::caller::Authenticate;
use crate::error::ApiError;
use crate::upload::Upload;

/// Lines streamed to the client as they come.
pub type LineStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>;

/// Where a deploy reports its build as it goes; nobody may be listening (a JSON deploy).
pub type BuildEvents = tokio::sync::mpsc::UnboundedSender<proto::build::BuildEvent>;

/// Everything the routers need: the agent implements all of it.
pub trait Service:
    Authenticate + AppsService + NodesService + BlobsService + InternalService
{
}

impl<S> Service for S where
    S: Authenticate + AppsService + NodesService + BlobsService + InternalService
{
}

/// `/v1/apps/...`: deploys, releases, scale, rollback, restart, logs.
pub trait AppsService: Send + Sync + 'static {
    fn apps(&self) -> impl Future<Output = AppsResponse> + Send;
    fn app(&self, name: &str) -> impl Future<Output = Result<AppView, ApiError>> + Send;
    fn destroy(&self, name: &str) -> impl Future<Output = Result<AppView, ApiError>> + Send;
    /// A zipped app folder for `app`, already on disk with its SHA-256; a build, if the app
    /// has one, reports to `events`.
    fn deploy(
        &self,
        app: &str,
        upload: Upload,
        events: BuildEvents,
    ) -> impl Future<Output = Result<DeployAccepted, ApiError>> + Send;
    /// The last builds of `app`, newest first.
    fn builds(&self, app: &str) -> impl Future<Output = Result<BuildsResponse, ApiError>> + Send;
    /// The whole output of the build of release `release`.
    fn build_log(
        &self,
        app: &str,
        release: u64,
    ) -> impl Future<Output = Result<LineStream, ApiError>> + Send;
    /// Releases of `app`, newest first.
    fn releases(
        &self,
        app: &str,
    ) -> impl Future<Output = Result<ReleasesResponse, ApiError>> + Send;
    fn scale(
        &self,
        app: &str,
        request: ScaleRequest,
    ) -> impl Future<Output = Result<ChangeAccepted, ApiError>> + Send;
    fn rollback(
        &self,
        app: &str,
        request: RollbackRequest,
    ) -> impl Future<Output = Result<ChangeAccepted, ApiError>> + Send;
    fn restart(&self, app: &str) -> impl Future<Output = Result<ChangeAccepted, ApiError>> + Send;
    /// Output of every replica of `app`, each line prefixed with its replica.
    fn app_logs(
        &self,
        app: &str,
        query: LogQuery,
    ) -> impl Future<Output = Result<LineStream, ApiError>> + Send;
}

/// `/v1/health` and `/v1/nodes/...`.
pub trait NodesService: Send + Sync + 'static {
    fn health(&self) -> impl Future<Output = HealthResponse> + Send;
    fn nodes(&self) -> impl Future<Output = NodesResponse> + Send;
    /// Drain (or undrain) `node`: this one, or forwarded to it.
    fn drain(
        &self,
        node: &str,
        draining: bool,
    ) -> impl Future<Output = Result<DrainReply, ApiError>> + Send;
}

/// `/v1/blobs/{sha256}`: bundle copies between nodes.
pub trait BlobsService: Send + Sync + 'static {
    /// A verified local copy of a bundle.
    fn blob_path(&self, sha256: &str) -> impl Future<Output = Result<PathBuf, ApiError>> + Send;
    /// Store a bundle copy (checked against `sha256`).
    fn put_blob(
        &self,
        sha256: &str,
        upload: Upload,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// `/v1/internal/...`: what the nodes ask each other.
pub trait InternalService: Send + Sync + 'static {
    /// Keep (persist and publish) an app record.
    fn hold_record(&self, record: AppRecord) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// The next release number of `app`, reserved (this node is its keeper).
    fn reserve_release_number(
        &self,
        app: &str,
    ) -> impl Future<Output = Result<u64, ApiError>> + Send;
    /// Build a release here: newline-delimited JSON [`proto::build::BuildEvent`]s, the
    /// last a `finished`.
    fn build(
        &self,
        request: BuildRequest,
    ) -> impl Future<Output = Result<LineStream, ApiError>> + Send;
    /// Run one replica here, if it fits.
    fn place(
        &self,
        request: PlacementRequest,
    ) -> impl Future<Output = Result<PlacementReply, ApiError>> + Send;
    /// Stop one replica this node runs (the app's reconciler asks).
    fn stop_replica(
        &self,
        request: StopRequest,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Drain (or undrain) this node.
    fn set_draining(
        &self,
        draining: bool,
    ) -> impl Future<Output = Result<DrainReply, ApiError>> + Send;
    /// Output of one replica this node runs.
    fn replica_logs(
        &self,
        placement_id: &str,
        query: LogQuery,
    ) -> impl Future<Output = Result<LineStream, ApiError>> + Send;
    /// The kept output of `app`'s stopped replicas on this node.
    fn previous_logs(
        &self,
        app: &str,
        query: LogQuery,
    ) -> impl Future<Output = Result<LineStream, ApiError>> + Send;
}

/// `?follow=true&tail=N&previous=true` of the log endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Keep the stream open and send new lines as they are written.
    #[serde(deserialize_with = "flag")]
    #[param(value_type = Option<bool>)]
    pub follow: bool,
    /// Lines of history per replica (at most 10,000).
    #[serde(deserialize_with = "tail")]
    #[param(value_type = Option<u32>, maximum = 10000)]
    pub tail: usize,
    /// The kept output of stopped replicas instead of the running ones.
    #[serde(deserialize_with = "flag")]
    #[param(value_type = Option<bool>)]
    pub previous: bool,
}

impl LogQuery {
    pub const DEFAULT_TAIL: usize = 100;
    pub const MAX_TAIL: usize = 10_000;
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery {
            follow: false,
            tail: LogQuery::DEFAULT_TAIL,
            previous: false,
        }
    }
}

/// `true`, `1` and `yes` (and a bare `?follow`) are true; anything else is false, as the
/// hand-written parser before it decided.
fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let value = String::deserialize(deserializer)?;
    Ok(matches!(value.as_str(), "" | "true" | "1" | "yes"))
}

/// A number of lines, capped at [`LogQuery::MAX_TAIL`].
fn tail<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let value = String::deserialize(deserializer)?;
    value
        .parse::<usize>()
        .map(|tail| tail.min(LogQuery::MAX_TAIL))
        .map_err(|_| serde::de::Error::custom(format!("tail={value} is not a number of lines")))
}
