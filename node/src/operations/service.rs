//! The agent behind the API's routers: each service trait of `api::service` answered by the
//! module that owns the work (deploys, changes, logs, the reconciler's driver).

use std::path::PathBuf;
use std::time::Duration;

use api::{
    ApiError, AuditQuery, AuditedCall, Caller, ErrorCode, EventQuery, EventStream, LineStream,
    LogQuery, Principal, ServiceError, TenantCaller, Upload,
};
use proto::api::BuildRequest;
use proto::api::{
    AppView, AppsResponse, BuildsResponse, ChangeAccepted, DeployAccepted, DrainReply,
    HealthResponse, NodeUsageReply, NodesResponse, PlacementReply, PlacementRequest,
    ReleasesResponse, ReplicasResponse, RollbackRequest, ScaleRequest, StopRequest,
};
use proto::api::{
    AuditRecord, AuditResponse, ConfigChange, ConfigView, CreateTenantRequest, CreateTokenRequest,
    ReserveQuota, TenantView, TenantsResponse, TokenCreated, TokenView, TokensResponse,
};
use proto::catalog::AppRecord;
use proto::tenancy::{Quota, TenancyRecord, TokenText};

use crate::bundle::BundleError;
use crate::cluster::seal::constant_time_eq;
use crate::control::reconciler_driver;
use crate::events::{EventFilter, Gone};
use crate::handles::AgentHandles;
use crate::operations::{
    access, audit, build_release, changes, config_vars, deploy, health, quota, tenancy,
};
use crate::workload::{logs, usage};

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
    fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        if let Some(admin_token) = self.agent.config.api_token.as_deref()
            && constant_time_eq(token.as_bytes(), admin_token.as_bytes())
        {
            return Ok(Caller::User(Principal::Admin));
        }
        let Ok(text) = TokenText::parse(token) else {
            return Err(ApiError::Unauthorized);
        };
        let grant = self
            .agent
            .tenancy
            .authenticate(&text)
            .map_err(|refusal| ApiError::TokenRefused(refusal.to_string()))?;
        Ok(Caller::User(Principal::Tenant(TenantCaller {
            tenant: grant.tenant,
            role: grant.role,
            token_id: grant.token_id,
            token_name: grant.token_name,
            expires_at_ms: grant.expires_at_ms,
        })))
    }

    fn node_auth(&self) -> Option<&api::NodeAuth> {
        Some(self.agent.peers.node_auth())
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

/// Every call first checks that the app, if it exists, is the caller's: another tenant's
/// app answers as an absent one.
impl api::AppsService for AgentService {
    async fn apps(&self, caller: &Principal) -> AppsResponse {
        deploy::apps(&self.agent, caller).await
    }

    async fn app(&self, caller: &Principal, name: &str) -> Result<AppView, ApiError> {
        access::check_app(&self.agent, caller, name).await?;
        deploy::app_view(&self.agent, name, false).await
    }

    async fn destroy(&self, caller: &Principal, name: &str) -> Result<AppView, ApiError> {
        access::check_app(&self.agent, caller, name).await?;
        deploy::destroy(&self.agent, name).await
    }

    async fn deploy(
        &self,
        caller: &Principal,
        app: &str,
        upload: Upload,
        events: api::BuildEvents,
    ) -> Result<DeployAccepted, ApiError> {
        deploy::accept(&self.agent, caller, app, upload, events).await
    }

    async fn builds(&self, caller: &Principal, app: &str) -> Result<BuildsResponse, ApiError> {
        access::check_app(&self.agent, caller, app).await?;
        build_release::builds(&self.agent, app).await
    }

    async fn build_log(
        &self,
        caller: &Principal,
        app: &str,
        release: u64,
    ) -> Result<LineStream, ApiError> {
        access::check_app(&self.agent, caller, app).await?;
        build_release::build_log(&self.agent, app, release).await
    }

    async fn releases(&self, caller: &Principal, app: &str) -> Result<ReleasesResponse, ApiError> {
        access::check_app(&self.agent, caller, app).await?;
        changes::releases(&self.agent, app).await
    }

    async fn scale(
        &self,
        caller: &Principal,
        app: &str,
        request: ScaleRequest,
    ) -> Result<ChangeAccepted, ApiError> {
        access::check_app(&self.agent, caller, app).await?;
        changes::scale(&self.agent, app, request.replicas).await
    }

    async fn rollback(
        &self,
        caller: &Principal,
        app: &str,
        request: RollbackRequest,
    ) -> Result<ChangeAccepted, ApiError> {
        access::check_app(&self.agent, caller, app).await?;
        changes::rollback(&self.agent, app, request.to).await
    }

    async fn restart(&self, caller: &Principal, app: &str) -> Result<ChangeAccepted, ApiError> {
        access::check_app(&self.agent, caller, app).await?;
        changes::restart(&self.agent, app).await
    }

    async fn config(
        &self,
        caller: &Principal,
        app: &str,
        show: bool,
    ) -> Result<ConfigView, ApiError> {
        access::check_app(&self.agent, caller, app).await?;
        config_vars::view(&self.agent, app, show).await
    }

    async fn change_config(
        &self,
        caller: &Principal,
        app: &str,
        change: ConfigChange,
    ) -> Result<ChangeAccepted, ApiError> {
        access::check_app(&self.agent, caller, app).await?;
        config_vars::change(&self.agent, app, change).await
    }

    async fn app_logs(
        &self,
        caller: &Principal,
        app: &str,
        query: LogQuery,
    ) -> Result<LineStream, ApiError> {
        access::check_app(&self.agent, caller, app).await?;
        logs::app_logs(&self.agent, app, query).await
    }

    async fn replicas(&self, caller: &Principal, app: &str) -> Result<ReplicasResponse, ApiError> {
        access::check_app(&self.agent, caller, app).await?;
        usage::app_replicas(&self.agent, app).await
    }
}

impl api::TenancyService for AgentService {
    async fn tenants(&self, caller: &Principal) -> TenantsResponse {
        tenancy::tenants(&self.agent, caller).await
    }

    async fn create_tenant(
        &self,
        _caller: &Principal,
        request: CreateTenantRequest,
    ) -> Result<TenantView, ApiError> {
        tenancy::create_tenant(&self.agent, request).await
    }

    async fn delete_tenant(
        &self,
        _caller: &Principal,
        tenant: &str,
    ) -> Result<TenantView, ApiError> {
        tenancy::delete_tenant(&self.agent, tenant).await
    }

    async fn set_quota(
        &self,
        _caller: &Principal,
        tenant: &str,
        quota: Quota,
    ) -> Result<TenantView, ApiError> {
        tenancy::set_quota(&self.agent, tenant, quota).await
    }

    async fn tokens(&self, caller: &Principal, tenant: Option<&str>) -> TokensResponse {
        tenancy::tokens(&self.agent, caller, tenant).await
    }

    async fn create_token(
        &self,
        caller: &Principal,
        request: CreateTokenRequest,
    ) -> Result<TokenCreated, ApiError> {
        tenancy::create_token(&self.agent, caller, request).await
    }

    async fn revoke_token(&self, caller: &Principal, id: &str) -> Result<TokenView, ApiError> {
        tenancy::revoke_token(&self.agent, caller, id).await
    }
}

impl api::AuditService for AgentService {
    async fn record_audit(&self, call: AuditedCall) {
        audit::record(&self.agent, call).await;
    }

    async fn gather_audit(&self, query: AuditQuery) -> AuditResponse {
        audit::gather(&self.agent, query).await
    }

    async fn local_audit(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, ApiError> {
        audit::local(&self.agent, &query).await
    }
}

impl api::EventsService for AgentService {
    fn events(
        &self,
        caller: &Principal,
        query: EventQuery,
        heartbeat: Duration,
    ) -> Result<EventStream, ApiError> {
        let filter = EventFilter {
            topic: query.topic,
            app: query.app,
            tenant: caller.tenant().map(str::to_string),
        };
        self.agent
            .events
            .lines(query.since, filter, query.follow.unwrap_or(true), heartbeat)
            .map_err(ApiError::from_service)
    }

    async fn app_index(&self, app: &str, index: Option<u64>, wait: Duration) -> u64 {
        match index {
            None => self.agent.events.newest_about(app),
            Some(index) => self.agent.events.wait_about(app, index, wait).await,
        }
    }
}

impl api::MetricsService for AgentService {
    async fn metrics(&self) -> String {
        let agent = &self.agent;
        let view = agent.view().await;
        let mut members: std::collections::BTreeMap<&'static str, i64> = Default::default();
        for node in &view.nodes {
            let status = match node.status {
                proto::api::NodeStatus::Joining => "joining",
                proto::api::NodeStatus::Live => "live",
                proto::api::NodeStatus::Left => "left",
                proto::api::NodeStatus::Dead => "dead",
            };
            *members.entry(status).or_default() += 1;
        }
        let (apps, releases) = agent
            .catalog
            .read(|catalog| {
                let live: Vec<_> = catalog.apps().filter(|record| !record.deleted).collect();
                let releases: usize = live.iter().map(|r| catalog.releases(&r.name).len()).sum();
                (live.len(), releases)
            })
            .await;
        let directory = agent.tenancy.snapshot();
        let (tenants, tokens) = (directory.tenants().count(), directory.tokens(None).count());
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        agent.metrics.render(&crate::metrics::Scrape {
            members: members.into_iter().collect(),
            gossip: agent.gossip_stats.snapshot(),
            apps: count(apps),
            releases: count(releases),
            tenants: count(tenants),
            tokens: count(tokens),
            event_subscribers: count(agent.events.followers()),
            dns: agent.dns.as_ref().map(|counters| counters.stats()),
        })
    }

    fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.agent
            .metrics
            .api_request(route, method, status, elapsed.as_secs_f64());
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

    async fn hold_tenancy(&self, record: TenancyRecord) -> Result<(), ApiError> {
        tenancy::hold(&self.agent, record).await
    }

    async fn reserve_quota(&self, tenant: &str, request: ReserveQuota) -> Result<(), ApiError> {
        proto::manifest::validate_app_name(&request.app).map_err(ApiError::BadRequest)?;
        quota::keep(&self.agent, tenant, &request.app, request.usage).await
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

    async fn replica_usage(&self, app: &str) -> NodeUsageReply {
        usage::node_usage(&self.agent, app).await
    }
}

/// A resume point this node no longer has: the reader must read the state again.
impl ServiceError for Gone {
    fn error_code(&self) -> ErrorCode {
        ErrorCode::Gone
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
