//! The agent behind the API's routers: each service trait of `api::service` answered by the
//! module that owns the work (deploys, changes, logs, the reconciler's driver).

use std::path::PathBuf;

use api::{ApiError, Caller, ErrorCode, LineStream, LogQuery, ServiceError, Upload};
use proto::api::BuildRequest;
use proto::api::{
    AppView, AppsResponse, BuildsResponse, ChangeAccepted, DeployAccepted, DrainReply,
    HealthResponse, NodesResponse, PlacementReply, PlacementRequest, ReleasesResponse,
    RollbackRequest, ScaleRequest, StopRequest,
};
use proto::catalog::AppRecord;

use crate::bundle::BundleError;
use crate::cluster::seal::constant_time_eq;
use crate::control::reconciler_driver;
use crate::handles::AgentHandles;
use crate::operations::{build_release, changes, deploy, health};
use crate::workload::logs;

/// What the API calls on this node.
pub struct AgentService {
    agent: AgentHandles,
}

impl AgentService {
    pub fn new(agent: AgentHandles) -> AgentService {
        AgentService { agent }
    }
}

impl api::Authenticate for AgentService {
    fn authenticate(&self, token: &str) -> Option<Caller> {
        if self.agent.peers.accepts(token) {
            return Some(Caller::Node);
        }
        let user_token = self.agent.config.api_token.as_deref()?;
        constant_time_eq(token.as_bytes(), user_token.as_bytes()).then_some(Caller::User)
    }
}

impl api::NodesService for AgentService {
    async fn health(&self) -> HealthResponse {
        health::report(&self.agent).await
    }

    async fn nodes(&self) -> NodesResponse {
        let view = self.agent.view().await;
        NodesResponse {
            self_id: view.self_id,
            nodes: view.nodes,
        }
    }

    async fn drain(&self, node: &str, draining: bool) -> Result<DrainReply, ApiError> {
        changes::drain(&self.agent, node, draining).await
    }
}

impl api::AppsService for AgentService {
    async fn apps(&self) -> AppsResponse {
        deploy::apps(&self.agent).await
    }

    async fn app(&self, name: &str) -> Result<AppView, ApiError> {
        deploy::app_view(&self.agent, name, false).await
    }

    async fn destroy(&self, name: &str) -> Result<AppView, ApiError> {
        deploy::destroy(&self.agent, name).await
    }

    async fn deploy(
        &self,
        app: &str,
        upload: Upload,
        events: api::BuildEvents,
    ) -> Result<DeployAccepted, ApiError> {
        deploy::accept(&self.agent, app, upload, events).await
    }

    async fn builds(&self, app: &str) -> Result<BuildsResponse, ApiError> {
        build_release::builds(&self.agent, app).await
    }

    async fn build_log(&self, app: &str, release: u64) -> Result<LineStream, ApiError> {
        build_release::build_log(&self.agent, app, release).await
    }

    async fn releases(&self, app: &str) -> Result<ReleasesResponse, ApiError> {
        changes::releases(&self.agent, app).await
    }

    async fn scale(&self, app: &str, request: ScaleRequest) -> Result<ChangeAccepted, ApiError> {
        changes::scale(&self.agent, app, request.replicas).await
    }

    async fn rollback(
        &self,
        app: &str,
        request: RollbackRequest,
    ) -> Result<ChangeAccepted, ApiError> {
        changes::rollback(&self.agent, app, request.to).await
    }

    async fn restart(&self, app: &str) -> Result<ChangeAccepted, ApiError> {
        changes::restart(&self.agent, app).await
    }

    async fn app_logs(&self, app: &str, query: LogQuery) -> Result<LineStream, ApiError> {
        logs::app_logs(&self.agent, app, query).await
    }
}

impl api::BlobsService for AgentService {
    async fn blob_path(&self, sha256: &str) -> Result<PathBuf, ApiError> {
        let blobs = self.agent.bundles.local().clone();
        let digest = sha256.to_string();
        tokio::task::spawn_blocking(move || {
            blobs
                .open_verified(&digest)
                .and_then(|_| blobs.path(&digest))
        })
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?
        .map_err(ApiError::from_service)
    }

    async fn put_blob(&self, sha256: &str, upload: Upload) -> Result<(), ApiError> {
        deploy::put_blob(&self.agent, sha256, upload).await
    }
}

impl api::InternalService for AgentService {
    async fn hold_record(&self, record: AppRecord) -> Result<(), ApiError> {
        deploy::hold_record(&self.agent, record).await
    }

    async fn reserve_release_number(&self, app: &str) -> Result<u64, ApiError> {
        proto::manifest::validate_app_name(app).map_err(ApiError::BadRequest)?;
        Ok(self.agent.catalog.reserve_release_number(app).await)
    }

    async fn build(&self, request: BuildRequest) -> Result<LineStream, ApiError> {
        build_release::serve_build(&self.agent, request).await
    }

    async fn place(&self, request: PlacementRequest) -> Result<PlacementReply, ApiError> {
        reconciler_driver::admit(&self.agent, request).await
    }

    async fn stop_replica(&self, request: StopRequest) -> Result<(), ApiError> {
        reconciler_driver::stop(&self.agent, request).await
    }

    async fn set_draining(&self, draining: bool) -> Result<DrainReply, ApiError> {
        changes::set_own_draining(&self.agent, draining).await?;
        Ok(DrainReply {
            node_id: self.agent.node_id().to_string(),
            draining,
        })
    }

    async fn replica_logs(
        &self,
        placement_id: &str,
        query: LogQuery,
    ) -> Result<LineStream, ApiError> {
        logs::replica_logs(&self.agent, placement_id, query).await
    }

    async fn previous_logs(&self, app: &str, query: LogQuery) -> Result<LineStream, ApiError> {
        let lines = logs::previous_logs(&self.agent, app, query.tail).await;
        Ok(Box::pin(futures_util::stream::iter(lines)))
    }
}

/// A missing or corrupt copy is the caller's to fetch elsewhere (404); a bad digest is a
/// bad request; a bundle that fails its checks is unprocessable; anything else is this
/// node's storage failing (500, with the reason).
impl ServiceError for BundleError {
    fn error_code(&self) -> ErrorCode {
        match self {
            BundleError::BlobNotFound(_) | BundleError::CorruptBlob { .. } => {
                ErrorCode::UnknownBlob
            }
            BundleError::InvalidDigest(_) => ErrorCode::BadRequest,
            BundleError::InvalidManifest(_) | BundleError::MissingManifest => {
                ErrorCode::InvalidManifest
            }
            BundleError::NotAZip
            | BundleError::Corrupt { .. }
            | BundleError::UnsafePath { .. }
            | BundleError::Symlink { .. }
            | BundleError::NotRegularFile { .. }
            | BundleError::Duplicate { .. }
            | BundleError::FileFolderConflict { .. }
            | BundleError::Unsupported { .. }
            | BundleError::TooManyEntries { .. }
            | BundleError::TooLarge { .. }
            | BundleError::CompressionRatio { .. }
            | BundleError::DigestMismatch { .. } => ErrorCode::InvalidBundle,
            BundleError::Io { .. }
            | BundleError::NotAFolder(_)
            | BundleError::Walk(_)
            | BundleError::NonUtf8Name(_)
            | BundleError::Write(_)
            | BundleError::DestinationExists(_) => ErrorCode::Internal,
        }
    }
}
