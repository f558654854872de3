//! What the agent provides to the API, one trait per router: [`AppsService`],
//! [`NodesService`] and [`TenancyService`] answer users, [`BlobsService`] and [`InternalService`] answer peers.
//! Reads are answered from local state: every node answers every read from its own gossip
//! view and catalog.

use std::future::Future;
use std::path::PathBuf;

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
use proto::tenancy::{Quota, TenancyRecord};
use serde::Deserialize;

use crate::caller::{Authenticate, Principal};
use crate::error::ApiError;
use crate::upload::Upload;

/// Lines streamed to the client as they come.
pub type LineStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>;

/// Where a deploy reports its build as it goes; nobody may be listening (a JSON deploy).
pub type BuildEvents = tokio::sync::mpsc::UnboundedSender<proto::build::BuildEvent>;

/// Everything the routers need: the agent implements all of it.
pub trait Service:
    Authenticate
    + AppsService
    + EventsService
    + MetricsService
    + NodesService
    + TenancyService
    + AuditService
    + BlobsService
    + InternalService
{
}

impl<S> Service for S where
    S: Authenticate
        + AppsService
        + EventsService
        + MetricsService
        + NodesService
        + TenancyService
        + AuditService
        + BlobsService
        + InternalService
{
}

/// The audit log: what every mutating call leaves on the node that served it.
pub trait AuditService: Send + Sync + 'static {
    /// Keeps one record (stamped with the time and this node).
    fn record_audit(&self, call: AuditedCall) -> impl Future<Output = ()> + Send;
    /// Every live node's records matching `query`, oldest first.
    fn gather_audit(&self, query: AuditQuery) -> impl Future<Output = AuditResponse> + Send;
    /// This node's records matching `query` (a peer gathers them).
    fn local_audit(
        &self,
        query: AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, ApiError>> + Send;
}

/// `/v1/tenants` and `/v1/tokens`. The routers have checked the caller's role; the
/// service confines a tenant's admin to its own tenant.
pub trait TenancyService: Send + Sync + 'static {
    fn tenants(&self, caller: &Principal) -> impl Future<Output = TenantsResponse> + Send;
    fn create_tenant(
        &self,
        caller: &Principal,
        request: CreateTenantRequest,
    ) -> impl Future<Output = Result<TenantView, ApiError>> + Send;
    fn delete_tenant(
        &self,
        caller: &Principal,
        tenant: &str,
    ) -> impl Future<Output = Result<TenantView, ApiError>> + Send;
    fn set_quota(
        &self,
        caller: &Principal,
        tenant: &str,
        quota: Quota,
    ) -> impl Future<Output = Result<TenantView, ApiError>> + Send;
    fn tokens(
        &self,
        caller: &Principal,
        tenant: Option<&str>,
    ) -> impl Future<Output = TokensResponse> + Send;
    fn create_token(
        &self,
        caller: &Principal,
        request: CreateTokenRequest,
    ) -> impl Future<Output = Result<TokenCreated, ApiError>> + Send;
    fn revoke_token(
        &self,
        caller: &Principal,
        id: &str,
    ) -> impl Future<Output = Result<TokenView, ApiError>> + Send;
}

/// `/v1/apps/...`: deploys, releases, scale, rollback, restart, logs. Every call gets its
/// caller: another tenant's app must answer exactly as an absent one does.
pub trait AppsService: Send + Sync + 'static {
    fn apps(&self, caller: &Principal) -> impl Future<Output = AppsResponse> + Send;
    fn app(
        &self,
        caller: &Principal,
        name: &str,
    ) -> impl Future<Output = Result<AppView, ApiError>> + Send;
    fn destroy(
        &self,
        caller: &Principal,
        name: &str,
    ) -> impl Future<Output = Result<AppView, ApiError>> + Send;
    /// A zipped app folder for `app`, already on disk with its SHA-256; a build, if the app
    /// has one, reports to `events`.
    fn deploy(
        &self,
        caller: &Principal,
        app: &str,
        upload: Upload,
        events: BuildEvents,
    ) -> impl Future<Output = Result<DeployAccepted, ApiError>> + Send;
    /// The last builds of `app`, newest first.
    fn builds(
        &self,
        caller: &Principal,
        app: &str,
    ) -> impl Future<Output = Result<BuildsResponse, ApiError>> + Send;
    /// The whole output of the build of release `release`.
    fn build_log(
        &self,
        caller: &Principal,
        app: &str,
        release: u64,
    ) -> impl Future<Output = Result<LineStream, ApiError>> + Send;
    /// Releases of `app`, newest first.
    fn releases(
        &self,
        caller: &Principal,
        app: &str,
    ) -> impl Future<Output = Result<ReleasesResponse, ApiError>> + Send;
    fn scale(
        &self,
        caller: &Principal,
        app: &str,
        request: ScaleRequest,
    ) -> impl Future<Output = Result<ChangeAccepted, ApiError>> + Send;
    fn rollback(
        &self,
        caller: &Principal,
        app: &str,
        request: RollbackRequest,
    ) -> impl Future<Output = Result<ChangeAccepted, ApiError>> + Send;
    fn restart(
        &self,
        caller: &Principal,
        app: &str,
    ) -> impl Future<Output = Result<ChangeAccepted, ApiError>> + Send;
    /// The config vars of `app`'s current release, values only if `show`.
    fn config(
        &self,
        caller: &Principal,
        app: &str,
        show: bool,
    ) -> impl Future<Output = Result<ConfigView, ApiError>> + Send;
    /// Sets and unsets config vars: one new release.
    fn change_config(
        &self,
        caller: &Principal,
        app: &str,
        change: ConfigChange,
    ) -> impl Future<Output = Result<ChangeAccepted, ApiError>> + Send;
    /// Every replica of `app` with its uptime, restarts and what it uses, asked of the
    /// nodes that run them.
    fn replicas(
        &self,
        caller: &Principal,
        app: &str,
    ) -> impl Future<Output = Result<ReplicasResponse, ApiError>> + Send;
    /// Output of every replica of `app`, each line prefixed with its replica.
    fn app_logs(
        &self,
        caller: &Principal,
        app: &str,
        query: LogQuery,
    ) -> impl Future<Output = Result<LineStream, ApiError>> + Send;
}

/// Event lines streamed to the client as they come.
pub type EventStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = proto::events::EventLine> + Send>>;

/// `GET /v1/events` and the blocking app read: the cluster's changes as this node saw
/// them.
pub trait EventsService: Send + Sync + 'static {
    /// The kept events after `query.since` that the caller may see, oldest first; with
    /// `follow`, then each new one as it happens and a heartbeat after every `heartbeat`
    /// of silence. A `since` this node no longer has is [`ApiError`] gone (410).
    fn events(
        &self,
        caller: &Principal,
        query: EventQuery,
        heartbeat: std::time::Duration,
    ) -> Result<EventStream, ApiError>;
    /// The index of the newest event about `app`; with `index`, waits up to `wait` for
    /// one newer than it first (Consul's blocking query).
    fn app_index(
        &self,
        app: &str,
        index: Option<u64>,
        wait: std::time::Duration,
    ) -> impl Future<Output = u64> + Send;
}

/// `GET /metrics`, and what the API layer reports of each request it answered.
pub trait MetricsService: Send + Sync + 'static {
    /// The agent's metrics in the Prometheus text format.
    fn metrics(&self) -> impl Future<Output = String> + Send;
    /// One request answered; `route` is the router's template (`/v1/apps/{app}`).
    fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: std::time::Duration);
}

/// `?since=&topic=&app=&follow=` of `GET /v1/events`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events after this index (the `index` of the last event read); without it, every
    /// event the node keeps.
    pub since: Option<u64>,
    /// Only events of this topic: `node`, `app`, `replica`, `build` or `ingress`.
    #[param(value_type = Option<String>)]
    pub topic: Option<proto::events::Topic>,
    /// Only events about this app.
    pub app: Option<String>,
    /// Keep the stream open for new events (the default), or end after the kept ones.
    pub follow: Option<bool>,
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
    /// Keep (persist and publish) a tenant or token record.
    fn hold_tenancy(
        &self,
        record: TenancyRecord,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Reserve quota for an app of `tenant` (this node is the tenant's quota keeper).
    fn reserve_quota(
        &self,
        tenant: &str,
        request: ReserveQuota,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
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
    /// What `app`'s replicas on this node use, and how long they have run.
    fn replica_usage(&self, app: &str) -> impl Future<Output = NodeUsageReply> + Send;
}

/// `?tenant=&since=` of the audit read.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this tenant's records (a tenant's admin sees only its own anyway).
    pub tenant: Option<String>,
    /// Only records at or after this time, milliseconds since the Unix epoch.
    pub since_ms: Option<u64>,
}

/// One audited call as the router saw it; the node adds the time and its own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedCall {
    pub token_id: String,
    pub token_name: Option<String>,
    pub tenant: Option<String>,
    pub action: String,
    pub target: String,
    pub status: u16,
    pub source: String,
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
