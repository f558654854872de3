//! Bodies of the HTTP API (`/v1/...`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{NodeIdentity, NodeLoad};

/// Every error the API returns: `{ "error": "...", "detail": "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Short machine-friendly cause, e.g. `not_found`.
    pub error: String,
    /// What went wrong and what to do about it.
    pub detail: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthResponse {
    /// `ok` when every check passes, else `degraded`.
    pub status: String,
    pub node_id: String,
    pub version: String,
    pub gossip: GossipStats,
    /// What `status` is made of. Absent from agents before it existed.
    #[serde(default)]
    pub checks: HealthChecks,
    /// The node's wall clock when it answered, milliseconds since the Unix epoch:
    /// `stratus doctor` compares it with its own to find skewed clocks. Absent from agents
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
}

/// The checks behind `GET /v1/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthChecks {
    /// The catalog database takes writes.
    pub catalog: Check,
    /// The container runtime (Docker, or the process driver) answers.
    pub runtime: Check,
    /// This node hears from at least one live peer (or was given no seeds to find one).
    pub gossip: Check,
}

/// One check: whether it passed, and what was seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

/// Counters of the gossip transport since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GossipStats {
    pub encrypted: bool,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Datagrams that failed authentication (wrong key, tampered, garbage): dropped.
    pub dropped_unauthenticated: u64,
    /// Datagrams that were authentic but did not decode as a gossip message: dropped.
    pub dropped_malformed: u64,
    /// Messages too large to send even after fragmentation: dropped.
    pub dropped_oversize: u64,
    /// Gossip rounds this node started that a peer answered (SYN to SYN-ACK).
    #[serde(default)]
    pub round_trips: u64,
    /// Their total time, in microseconds: with `round_trips`, the mean round time.
    #[serde(default)]
    pub round_trip_micros_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Heard of through gossip, not yet confirmed live by this node's failure detector
    /// (a node that just started sees everyone this way for a round or two).
    Joining,
    Live,
    /// Announced a graceful shutdown.
    Left,
    /// The failure detector stopped hearing from it.
    Dead,
}

/// One node as the answering node sees it through gossip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    pub node_id: String,
    /// Grows on every restart of the node.
    pub generation: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub gossip_addr: SocketAddr,
    pub status: NodeStatus,
    /// Absent until the node's identity key has reached the answering node.
    pub identity: Option<NodeIdentity>,
    pub load: Option<NodeLoad>,
    /// Containers it runs (always 0 for a node that is not live).
    pub containers: usize,
    /// Drained by an operator: takes no new replicas, its replicas move away.
    #[serde(default)]
    pub draining: bool,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodesResponse {
    /// The node that answered.
    pub self_id: String,
    pub nodes: Vec<NodeView>,
}

/// `POST /v1/apps/{app}/deploys` answer (202): the release is recorded and its bundle held
/// by enough nodes; the replicas start in the background.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployAccepted {
    pub app: String,
    pub release: u64,
    pub sha256: String,
    pub size: u64,
    /// Nodes holding the bundle and the release record.
    pub holders: Vec<String>,
    /// Where to follow the rollout.
    pub status_url: String,
    /// The build that made the release's image; `None` for an app with no builder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<crate::build::BuildSummary>,
}

/// A line of `POST /v1/apps/{app}/deploys` when asked for `application/x-ndjson`: the
/// build's events as they happen, then exactly one `accepted` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeployProgress {
    Build { build: crate::build::BuildEvent },
    Accepted { accepted: Box<DeployAccepted> },
    Failed { status: u16, error: ErrorBody },
}

/// `GET /v1/apps/{app}/builds`: the app's last builds, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildsResponse {
    pub app: String,
    pub builds: Vec<crate::build::BuildSummary>,
}

/// One replica of an app, as gossiped by the node that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaView {
    pub node_id: String,
    pub container_id: String,
    pub release: u64,
    pub replica: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub addr: SocketAddr,
    pub state: crate::ContainerState,
    pub health: crate::ContainerHealth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How long it has run, its restarts and what it uses. Only `GET /v1/apps/{app}/replicas`
    /// fills it in (it asks each node that runs one); gossip does not carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ReplicaUsage>,
}

/// What one replica uses and how long it has run, as the node that runs it tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaUsage {
    /// When its current container (or process) started, milliseconds since the Unix epoch
    /// by that node's clock; absent while it is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// How long it has run, measured on that node (so clock skew between nodes does not
    /// enter into it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// Times the node started it again after it exited or its container vanished.
    #[serde(default)]
    pub restarts: u32,
    /// CPU it uses now, in thousandths of a core (1000 is one core kept busy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Memory it uses now, in bytes (the page cache it could give back not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The most memory it may use, in bytes; absent when unlimited (the process runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Why part of this is missing: the node did not answer, the runtime had no figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `GET /v1/apps/{app}/replicas`: every replica with what it uses (`stratus ps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicasResponse {
    pub app: String,
    /// The node that answered and asked the others.
    pub node_id: String,
    pub replicas: Vec<ReplicaView>,
}

/// Node-to-node: what the replicas of one app that a node runs use, by placement id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeUsageReply {
    pub node_id: String,
    pub replicas: BTreeMap<String, ReplicaUsage>,
}

/// `GET /v1/apps/{app}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppView {
    pub name: String,
    pub replicas_desired: u32,
    /// The release that should run.
    pub release: Option<crate::catalog::Release>,
    /// Numbers of every release this node knows, oldest first.
    pub releases: Vec<u64>,
    pub replicas: Vec<ReplicaView>,
    /// Why the current release cannot run, if it cannot (e.g. no capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Releases whose rollout failed (the app went back to the one before), with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_releases: BTreeMap<u64, String>,
}

/// One line of `GET /v1/apps/{app}/releases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseSummary {
    pub number: u64,
    pub sha256: String,
    pub size: u64,
    pub created_at_ms: u64,
    pub created_on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `current`, `failed` or `superseded`.
    pub status: String,
    /// Why it failed, for a failed release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// `GET /v1/apps/{app}/releases`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleasesResponse {
    pub app: String,
    pub releases: Vec<ReleaseSummary>,
}

/// `POST /v1/apps/{app}/scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScaleRequest {
    pub replicas: u32,
}

/// `POST /v1/apps/{app}/rollback`: `to` an earlier release, by default the last good one
/// before the current.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackRequest {
    #[serde(default)]
    pub to: Option<u64>,
}

/// Answer to scale, rollback and restart: the release that now should run and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeAccepted {
    pub app: String,
    pub release: u64,
    pub replicas: u32,
    pub message: String,
}

/// Node-to-node: stop one replica (gracefully: out of the routes first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StopRequest {
    pub placement_id: String,
    pub reason: String,
}

/// `POST /v1/nodes/{node}/drain` and `/undrain` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DrainReply {
    pub node_id: String,
    pub draining: bool,
}

/// One line of `GET /v1/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppSummary {
    pub name: String,
    pub release: Option<u64>,
    pub replicas_desired: u32,
    pub replicas_healthy: u32,
}

/// `GET /v1/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppsResponse {
    pub apps: Vec<AppSummary>,
}

/// Node-to-node: asks a node to run one replica. Idempotent by `placement_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlacementRequest {
    pub placement_id: String,
    pub app: String,
    pub release: crate::catalog::Release,
    pub replica: u32,
    /// API addresses of nodes that hold the bundle.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub holders: Vec<SocketAddr>,
    /// The app's tenant: its replicas join that tenant's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How the tenant's replicas must run; a node that cannot refuses the placement.
    #[serde(default)]
    pub isolation: crate::tenancy::Isolation,
}

/// Node-to-node answer to a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PlacementReply {
    Admitted,
    AlreadyAdmitted,
}

/// `PUT /v1/blobs/{sha256}` answer (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobStored {
    pub sha256: String,
}

/// Node-to-node: the record is persisted and published here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeldReply {
    pub held: bool,
}

/// Node-to-node: a release number reserved by the app's first keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReservedNumber {
    pub number: u64,
}

/// Node-to-node: the replica is leaving the routes and will be stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoppingReply {
    pub stopping: bool,
}

/// Node to node: build this release (the bundle is in the store) and stream [`crate::build::BuildEvent`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildRequest {
    pub app: String,
    pub release: u64,
    pub bundle: crate::blob::BlobRef,
    pub manifest: crate::manifest::Manifest,
    pub builder: crate::build::Builder,
    pub reason: String,
    /// The nodes to leave the image archive and the log with (the app's keepers).
    pub keepers: Vec<String>,
}

/// `GET /v1/whoami`: who the token is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    /// The cluster administrator (the agents' `--api-token`): every tenant.
    pub admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub role: crate::tenancy::Role,
    pub token_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// `POST /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateTenantRequest {
    pub name: String,
    #[serde(default)]
    pub isolation: crate::tenancy::Isolation,
    #[serde(default)]
    pub quota: crate::tenancy::Quota,
}

/// A tenant with what it uses of its quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantView {
    pub name: String,
    pub isolation: crate::tenancy::Isolation,
    pub quota: crate::tenancy::Quota,
    /// What its apps reserve now.
    pub used: crate::tenancy::Usage,
    pub created_at_ms: u64,
}

/// `GET /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantsResponse {
    pub tenants: Vec<TenantView>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateTokenRequest {
    pub tenant: String,
    pub role: crate::tenancy::Role,
    /// What the token is for ("ci", "laptop").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Lifetime in seconds; none: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenView {
    pub id: String,
    pub tenant: String,
    pub role: crate::tenancy::Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
}

impl From<&crate::tenancy::TokenRecord> for TokenView {
    fn from(token: &crate::tenancy::TokenRecord) -> TokenView {
        TokenView {
            id: token.id.clone(),
            tenant: token.tenant.clone(),
            role: token.role,
            name: token.name.clone(),
            created_at_ms: token.created_at_ms,
            expires_at_ms: token.expires_at_ms,
            revoked_at_ms: token.revoked_at_ms,
        }
    }
}

/// `POST /v1/tokens` answer (201): the only time the whole token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    /// `stratus_<id>_<secret>`: keep it; only a hash of the secret is stored.
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

/// `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokensResponse {
    pub tokens: Vec<TokenView>,
}

/// Node-to-node: reserve quota for one app of a tenant at the tenant's quota keeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReserveQuota {
    pub app: String,
    /// Everything the app reserves after the change.
    pub usage: crate::tenancy::Usage,
}

/// `GET /v1/apps/{app}/config`: the app's config var names, values only when asked with
/// `?show=true` (deploy role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigView {
    pub app: String,
    /// The release the vars are those of.
    pub release: u64,
    /// Name to value; the value is `null` when hidden.
    pub vars: BTreeMap<String, Option<String>>,
}

/// `PATCH /v1/apps/{app}/config`: one new release with these changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigChange {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// One mutating API call, as the node that served it recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    pub at_ms: u64,
    /// The node that served the call.
    pub node: String,
    /// `admin` for the cluster administrator's token; `none` when no valid token came.
    pub token_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Method and route, e.g. `POST /v1/apps/{app}/scale`.
    pub action: String,
    /// The path called, e.g. `/v1/apps/shop/scale`.
    pub target: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The caller's address.
    pub source: String,
}

/// `GET /v1/audit`: records from every live node, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditResponse {
    pub records: Vec<AuditRecord>,
    /// Live nodes that did not answer: their records are missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}
