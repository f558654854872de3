//! Typed client of the API, used by the CLI, by agents calling each other, and the testbed.

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use crate::checksum::{Checksum, Sha256Stream};
use crate::node_auth::{CONTENT_SHA256, CallParts, EMPTY_SHA256, NodeSigner, sha256_hex};
use futures_util::{Stream, StreamExt, TryStreamExt};
use proto::api::BuildRequest;
use proto::api::{
    AppView, AppsResponse, BuildsResponse, ChangeAccepted, DeployAccepted, DeployProgress,
    DrainReply, ErrorBody, HealthResponse, NodeUsageReply, NodesResponse, PlacementReply,
    PlacementRequest, ReleasesResponse, ReplicasResponse, RollbackRequest, ScaleRequest,
    StopRequest,
};
use proto::api::{
    AuditRecord, AuditResponse, ConfigChange, ConfigView, CreateTenantRequest, CreateTokenRequest,
    ReserveQuota, TenantView, TenantsResponse, TokenCreated, TokenView, TokensResponse, WhoAmI,
};
use proto::build::BuildEvent;
use proto::catalog::AppRecord;
use proto::events::EventLine;
use proto::tenancy::{Quota, TenancyRecord};
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the Stratus API at {url}: {source}. Is `stratus agent` running there? (set --api or STRATUS_API)"
    )]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {detail}")]
    Api {
        url: String,
        status: u16,
        error: String,
        detail: String,
    },
    #[error("{url} answered something that is not a Stratus API response: {source}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("invalid API URL {0:?}: write http://host:port or https://host:port")]
    BadUrl(String),
    #[error("invalid CA certificate {path}: {reason}")]
    BadCa { path: String, reason: String },
    #[error("cannot sign the call to {url}: its body is streamed and its digest unknown")]
    Unsigned { url: String },
    #[error("{0:?} cannot be part of an API path: use a valid app, node or replica name")]
    BadName(String),
    #[error("{url} did not finish answering within {} s: the node is stuck or too slow", .after.as_secs_f32())]
    Timeout { url: String, after: Duration },
    #[error("the answer from {url} broke off: {source}")]
    Stream {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read or write {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "blob from {url} does not match its checksum (expected {expected}, got {actual}): discarded"
    )]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
}

impl ClientError {
    /// The HTTP status the server answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// What the server said went wrong, if it answered with an API error.
    pub fn detail(&self) -> Option<String> {
        match self {
            ClientError::Api { detail, .. } => Some(detail.clone()),
            _ => None,
        }
    }
}

/// Lines of a log stream as the CLI reads them: a stream that breaks ends with the error,
/// so a broken `logs -f` is not mistaken for one that ended.
pub type LogLines = Pin<Box<dyn Stream<Item = Result<String, ClientError>> + Send>>;

/// Lines of a log stream where an error can only be told in-band (the node merging its
/// peers' streams into its own answer): a break ends the stream with a line saying so.
type TextLines = Pin<Box<dyn Stream<Item = String> + Send>>;

/// Longest log line the client accepts. The node cuts app lines at 16 KiB; this leaves
/// room for the prefix a node adds and refuses anything that is not a log line.
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024;

/// How long each kind of call may take. Every call to a node has a deadline: a peer that
/// accepts the connection and then never answers (or answers a byte a minute) must not
/// stall a deploy, a replication or a log merge forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadlines {
    /// A JSON call, from connecting to the end of the answer.
    json: Duration,
    /// Until the headers of a streamed answer (logs, a blob download).
    headers: Duration,
    /// A blob transfer may take this long plus one second per `blob_bytes_per_sec`...
    blob_base: Duration,
    /// ...the slowest transfer rate that still counts as progress.
    blob_bytes_per_sec: u64,
    /// Longest wait for the next chunk of a blob download.
    blob_idle: Duration,
}

const DEADLINES: Deadlines = Deadlines {
    json: Duration::from_secs(30),
    headers: Duration::from_secs(30),
    blob_base: Duration::from_secs(30),
    blob_bytes_per_sec: 512 << 10,
    blob_idle: Duration::from_secs(30),
};

/// The size a download without a `Content-Length` is given time for: the largest bundle
/// a node accepts by default is 256 MiB.
const UNKNOWN_BLOB_BYTES: u64 = 1 << 30;

impl Deadlines {
    fn blob(&self, size: u64) -> Duration {
        self.blob_base + Duration::from_secs(size / self.blob_bytes_per_sec.max(1))
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    base_url: Url,
    token: Option<String>,
    /// Agents calling agents sign each call instead of sending a token.
    signer: Option<NodeSigner>,
    http: reqwest::Client,
    deadlines: Deadlines,
}

/// The HTTP client under [`Client`]: the web's roots, plus the CA certificates in `ca_pem`
/// (PEM, one or more) for agents whose certificates a private CA signed. Build it once and
/// share it ([`Client::with_http`]): it holds the connection pool and the parsed roots.
pub fn http_client(ca_pem: Option<(&str, &[u8])>) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(3));
    if let Some((path, pem)) = ca_pem {
        let bad = |reason: String| ClientError::BadCa {
            path: path.to_string(),
            reason,
        };
        let certificates =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|err| bad(err.to_string()))?;
        if certificates.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|err| ClientError::BadCa {
        path: ca_pem.map_or("(none)", |(path, _)| path).to_string(),
        reason: err.to_string(),
    })
}

impl Client {
    /// `base` is like `http://127.0.0.1:7070`; a bare `host:port` is accepted too.
    pub fn new(base: &str) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|_| ClientError::BadUrl(base.to_string()))?;
        Client::with_http(base, http)
    }

    /// A client for `base` over `http` (see [`http_client`]).
    pub fn with_http(base: &str, http: reqwest::Client) -> Result<Client, ClientError> {
        let base = base.trim().trim_end_matches('/');
        if base.is_empty() {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        let base_url = Url::parse(&base).map_err(|_| ClientError::BadUrl(base.clone()))?;
        if !matches!(base_url.scheme(), "http" | "https")
            || !base_url.has_host()
            || base_url.query().is_some()
            || base_url.fragment().is_some()
        {
            return Err(ClientError::BadUrl(base));
        }
        Ok(Client {
            base,
            base_url,
            token: None,
            signer: None,
            http,
            deadlines: DEADLINES,
        })
    }

    /// Sends `token` as a bearer token with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|token| !token.is_empty());
        self
    }

    /// Signs every call as a node of the cluster ([`crate::node_auth`]).
    pub fn with_signer(mut self, signer: NodeSigner) -> Client {
        self.signer = Some(signer);
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, &["v1", "health"], &[])?)
            .await
    }

    pub async fn nodes(&self) -> Result<NodesResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, &["v1", "nodes"], &[])?)
            .await
    }

    pub async fn apps(&self) -> Result<AppsResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, &["v1", "apps"], &[])?)
            .await
    }

    pub async fn app(&self, name: &str) -> Result<AppView, ClientError> {
        self.send(self.call(reqwest::Method::GET, &["v1", "apps", name], &[])?)
            .await
    }

    pub async fn destroy(&self, name: &str) -> Result<AppView, ClientError> {
        self.send(self.call(reqwest::Method::DELETE, &["v1", "apps", name], &[])?)
            .await
    }

    /// Releases of an app, newest first.
    pub async fn releases(&self, app: &str) -> Result<ReleasesResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, &["v1", "apps", app, "releases"], &[])?)
            .await
    }

    /// Sets an app's replica count.
    pub async fn scale(&self, app: &str, replicas: u32) -> Result<ChangeAccepted, ClientError> {
        let request = self
            .call(reqwest::Method::POST, &["v1", "apps", app, "scale"], &[])?
            .json(&ScaleRequest { replicas });
        self.send(request).await
    }

    /// Rolls an app back to release `to` (default: the last good one before the current).
    pub async fn rollback(
        &self,
        app: &str,
        to: Option<u64>,
    ) -> Result<ChangeAccepted, ClientError> {
        let request = self
            .call(reqwest::Method::POST, &["v1", "apps", app, "rollback"], &[])?
            .json(&RollbackRequest { to });
        self.send(request).await
    }

    /// Replaces every replica of an app, one at a time.
    pub async fn restart(&self, app: &str) -> Result<ChangeAccepted, ClientError> {
        self.send(self.call(reqwest::Method::POST, &["v1", "apps", app, "restart"], &[])?)
            .await
    }

    /// Drains (`true`) or undrains a node, by id.
    pub async fn drain(&self, node: &str, draining: bool) -> Result<DrainReply, ClientError> {
        let verb = if draining { "drain" } else { "undrain" };
        self.send(self.call(reqwest::Method::POST, &["v1", "nodes", node, verb], &[])?)
            .await
    }

    /// Node-to-node: drains (or undrains) the node this client talks to.
    pub async fn set_draining(
        &self,
        node: &str,
        draining: bool,
    ) -> Result<DrainReply, ClientError> {
        let request = self
            .call(reqwest::Method::PUT, &["v1", "internal", "draining"], &[])?
            .json(&DrainReply {
                node_id: node.to_string(),
                draining,
            });
        self.send(request).await
    }

    /// Node-to-node: asks the node to stop one of its replicas.
    pub async fn stop_replica(&self, stop: &StopRequest) -> Result<(), ClientError> {
        let path = ["v1", "internal", "placements", &stop.placement_id, "stop"];
        let request = self.call(reqwest::Method::POST, &path, &[])?.json(stop);
        let _: serde_json::Value = self.send(request).await?;
        Ok(())
    }

    /// Uploads a zipped app folder, streamed from `zip`; `progress` is called with the
    /// bytes sent so far.
    ///
    /// No overall deadline: the node answers once it has replicated the bundle to its
    /// peers, and each of those transfers has its own.
    pub async fn deploy(
        &self,
        app: &str,
        zip: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<DeployAccepted, ClientError> {
        let (body, _) = file_body(zip, progress).await?;
        let request = self
            .request(
                reqwest::Method::POST,
                self.url(&["v1", "apps", app, "deploys"], &[])?,
            )
            .header(reqwest::header::CONTENT_TYPE, "application/zip")
            .body(body);
        self.send(request).await
    }

    /// [`Client::deploy`], with the build followed live: `on_build` is called with each of
    /// its events as the node streams them.
    pub async fn deploy_following(
        &self,
        app: &str,
        zip: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
        mut on_build: impl FnMut(BuildEvent) + Send,
    ) -> Result<DeployAccepted, ClientError> {
        let (body, _) = file_body(zip, progress).await?;
        let url = self.url(&["v1", "apps", app, "deploys"], &[])?;
        let shown = url.to_string();
        let request = self
            .request(reqwest::Method::POST, url)
            .header(reqwest::header::CONTENT_TYPE, "application/zip")
            .header(reqwest::header::ACCEPT, NDJSON)
            .body(body);
        let response = self.check(shown.clone(), request).await?;
        let mut lines = ndjson::<DeployProgress>(response, shown.clone());
        while let Some(line) = lines.next().await {
            match line? {
                DeployProgress::Build { build } => on_build(build),
                DeployProgress::Accepted { accepted } => return Ok(*accepted),
                DeployProgress::Failed { status, error } => {
                    return Err(ClientError::Api {
                        url: shown,
                        status,
                        error: error.error,
                        detail: error.detail,
                    });
                }
            }
        }
        Err(ClientError::Stream {
            url: shown,
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the node stopped answering before the deploy ended: check `stratus builds APP` and `stratus status APP` on another node",
            ),
        })
    }

    /// `GET /v1/events` as NDJSON: the kept events after `query.since`, then (unless
    /// `follow` is false) each new one and heartbeats. A `gone` line ends the stream.
    pub async fn events(
        &self,
        query: &crate::EventQuery,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<EventLine, ClientError>> + Send>>, ClientError>
    {
        let mut pairs = Vec::new();
        if let Some(since) = query.since {
            pairs.push(("since", since.to_string()));
        }
        if let Some(topic) = query.topic {
            pairs.push(("topic", topic.to_string()));
        }
        if let Some(app) = &query.app {
            pairs.push(("app", app.clone()));
        }
        if let Some(follow) = query.follow {
            pairs.push(("follow", follow.to_string()));
        }
        let url = self.url(&["v1", "events"], &pairs)?;
        let shown = url.to_string();
        let request = self
            .request(reqwest::Method::GET, url)
            .header(reqwest::header::ACCEPT, NDJSON);
        let response = self.check_within(&shown, request).await?;
        Ok(ndjson::<EventLine>(response, shown))
    }

    /// `GET /v1/apps/{app}`, and the index of the newest event about it; with `index`, a
    /// blocking read that answers when the app changes after it or `wait` passes.
    pub async fn app_after(
        &self,
        name: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(AppView, u64), ClientError> {
        let mut query = Vec::new();
        if let Some(index) = index {
            query.push(("index", index.to_string()));
            query.push(("wait", format!("{}ms", wait.as_millis())));
        }
        let url = self.url(&["v1", "apps", name], &query)?;
        let shown = url.to_string();
        let request = self
            .request(reqwest::Method::GET, url)
            .timeout(self.deadlines.json + wait);
        let response = self.check(shown.clone(), request).await?;
        let index = response
            .headers()
            .get("x-stratus-index")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let view = response
            .json()
            .await
            .map_err(|source| ClientError::Decode { url: shown, source })?;
        Ok((view, index))
    }

    /// An app's last builds, newest first.
    pub async fn builds(&self, app: &str) -> Result<BuildsResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, &["v1", "apps", app, "builds"], &[])?)
            .await
    }

    /// The whole output of the build of release `release`.
    pub async fn build_log(&self, app: &str, release: u64) -> Result<LogLines, ClientError> {
        let release = release.to_string();
        self.log_lines(self.url(&["v1", "apps", app, "builds", &release, "log"], &[])?)
            .await
    }

    /// Node-to-node: builds a release on that node; its events as they come, the last a
    /// `finished`. A stream that breaks (the node died) ends with the error.
    pub async fn build(
        &self,
        request: &BuildRequest,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<BuildEvent, ClientError>> + Send>>, ClientError>
    {
        let url = self.url(&["v1", "internal", "builds"], &[])?;
        let shown = url.to_string();
        let response = self
            .check_within(
                &shown,
                self.request(reqwest::Method::POST, url).json(request),
            )
            .await?;
        Ok(ndjson::<BuildEvent>(response, shown))
    }

    /// Node-to-node: sends a bundle copy. The whole transfer, the peer's check of the
    /// checksum included, has a deadline that grows with the blob's size.
    pub async fn put_blob(&self, sha256: &str, path: &Path) -> Result<(), ClientError> {
        let (body, size) = file_body(path, |_| {}).await?;
        let deadline = self.deadlines.blob(size);
        let request = self
            .request(
                reqwest::Method::PUT,
                self.url(&["v1", "blobs", sha256], &[])?,
            )
            .timeout(deadline)
            // The body is streamed: the call signs the digest the peer checks it against.
            .header(CONTENT_SHA256, sha256)
            .body(body);
        match self.send::<serde_json::Value>(request).await {
            Ok(_) => Ok(()),
            Err(ClientError::Timeout { url, .. }) => Err(ClientError::Timeout {
                url,
                after: deadline,
            }),
            Err(err) => Err(err),
        }
    }

    /// Node-to-node: whether the peer holds blob `sha256` (a `HEAD`), so a copy it already
    /// has (a layer two images share) is not sent again.
    pub async fn has_blob(&self, sha256: &str) -> Result<bool, ClientError> {
        let url = self.url(&["v1", "blobs", sha256], &[])?;
        let shown = url.to_string();
        match self
            .check_within(&shown, self.request(reqwest::Method::HEAD, url))
            .await
        {
            Ok(_) => Ok(true),
            Err(ClientError::Api { status: 404, .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Node-to-node: downloads a bundle to `dest`, verifying its checksum on the way; a
    /// copy that does not match, or a download that stalls or runs past its deadline
    /// (which grows with the size the peer announces), is deleted and reported.
    pub async fn get_blob(&self, sha256: &str, dest: &Path) -> Result<u64, ClientError> {
        let url = self.url(&["v1", "blobs", sha256], &[])?;
        let shown = url.to_string();
        let response = self
            .check_within(&shown, self.request(reqwest::Method::GET, url))
            .await?;
        let started = tokio::time::Instant::now();
        let deadline = started
            + self
                .deadlines
                .blob(response.content_length().unwrap_or(UNKNOWN_BLOB_BYTES));
        let result = self
            .download(&shown, response, dest, deadline, sha256)
            .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result.map_err(|err| match err {
            ClientError::Timeout { url, .. } => ClientError::Timeout {
                url,
                after: started.elapsed(),
            },
            other => other,
        })
    }

    async fn download(
        &self,
        url: &str,
        response: reqwest::Response,
        dest: &Path,
        deadline: tokio::time::Instant,
        sha256: &str,
    ) -> Result<u64, ClientError> {
        let file_err = |source| ClientError::File {
            path: dest.display().to_string(),
            source,
        };
        // Each write to a tokio file is a trip to a blocking thread: gather the network's
        // small chunks first.
        let mut file = tokio::io::BufWriter::with_capacity(
            FILE_CHUNK,
            tokio::fs::File::create(dest).await.map_err(file_err)?,
        );
        let mut hasher = Sha256Stream::new();
        let mut stream = response.bytes_stream();
        loop {
            let idle_until = deadline.min(tokio::time::Instant::now() + self.deadlines.blob_idle);
            let next = tokio::time::timeout_at(idle_until, stream.next())
                .await
                .map_err(|_| ClientError::Timeout {
                    url: url.to_string(),
                    after: Duration::ZERO,
                })?;
            let Some(chunk) = next else {
                break;
            };
            let chunk = chunk.map_err(|source| ClientError::Unreachable {
                url: url.to_string(),
                source,
            })?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(file_err)?;
        }
        file.flush().await.map_err(file_err)?;
        file.get_ref().sync_all().await.map_err(file_err)?;
        let Checksum {
            digest: actual,
            bytes,
        } = hasher.finish();
        if actual != sha256 {
            return Err(ClientError::Checksum {
                url: url.to_string(),
                expected: sha256.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Output of every replica of `app`, a line at a time; with `follow`, until dropped.
    /// A stream that breaks ends with the error.
    pub async fn logs(
        &self,
        app: &str,
        follow: bool,
        tail: usize,
    ) -> Result<LogLines, ClientError> {
        let query = [("follow", follow.to_string()), ("tail", tail.to_string())];
        self.log_lines(self.url(&["v1", "apps", app, "logs"], &query)?)
            .await
    }

    /// The kept output of an app's stopped replicas (replaced, moved, crashed).
    pub async fn previous_logs(&self, app: &str, tail: usize) -> Result<TextLines, ClientError> {
        let query = [("previous", "true".to_string()), ("tail", tail.to_string())];
        self.text_lines(self.url(&["v1", "apps", app, "logs"], &query)?)
            .await
    }

    /// Node-to-node: the kept output of an app's stopped replicas on that node.
    pub async fn node_previous_logs(
        &self,
        app: &str,
        tail: usize,
    ) -> Result<TextLines, ClientError> {
        let path = ["v1", "internal", "apps", app, "previous-logs"];
        self.text_lines(self.url(&path, &[("tail", tail.to_string())])?)
            .await
    }

    /// Node-to-node: output of one replica the node runs.
    pub async fn replica_logs(
        &self,
        placement_id: &str,
        follow: bool,
        tail: usize,
    ) -> Result<TextLines, ClientError> {
        let path = ["v1", "internal", "replicas", placement_id, "logs"];
        let query = [("follow", follow.to_string()), ("tail", tail.to_string())];
        self.text_lines(self.url(&path, &query)?).await
    }

    /// Every replica of `app` with its uptime, restarts and what it uses (`stratus ps`).
    pub async fn replicas(&self, app: &str) -> Result<ReplicasResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, &["v1", "apps", app, "replicas"], &[])?)
            .await
    }

    /// Node-to-node: what the replicas of `app` on that node use.
    pub async fn replica_usage(&self, app: &str) -> Result<NodeUsageReply, ClientError> {
        let path = ["v1", "internal", "apps", app, "usage"];
        self.send(self.call(reqwest::Method::GET, &path, &[])?)
            .await
    }

    /// A log stream whose break can only be told in-band: it becomes a last line.
    async fn text_lines(&self, url: Url) -> Result<TextLines, ClientError> {
        let lines = self.log_lines(url).await?;
        let lines = lines.scan(false, |broken, line| {
            let line = match line {
                _ if *broken => None,
                Ok(line) => Some(line),
                Err(err) => {
                    *broken = true;
                    Some(format!("({err})"))
                }
            };
            futures_util::future::ready(line)
        });
        Ok(Box::pin(lines))
    }

    /// The answer of a log call, decoded a line at a time, each at most
    /// [`MAX_LOG_LINE_BYTES`]; the first error ends the stream.
    async fn log_lines(&self, url: Url) -> Result<LogLines, ClientError> {
        let shown = url.to_string();
        let response = self
            .check_within(&shown, self.request(reqwest::Method::GET, url))
            .await?;
        let body = tokio_util::io::StreamReader::new(
            response.bytes_stream().map_err(std::io::Error::other),
        );
        let mut broken = false;
        let lines = FramedRead::new(body, CappedLines::default())
            .map_err(move |source| ClientError::Stream {
                url: shown.clone(),
                source,
            })
            .take_while(move |line| {
                let go_on = !broken;
                broken = line.is_err();
                futures_util::future::ready(go_on)
            });
        Ok(Box::pin(lines))
    }

    /// Node-to-node: asks the node to keep a tenant or token record.
    pub async fn hold_tenancy(&self, record: &TenancyRecord) -> Result<(), ClientError> {
        let request = self
            .call(reqwest::Method::PUT, &["v1", "internal", "tenancy"], &[])?
            .json(record);
        let _: serde_json::Value = self.send(request).await?;
        Ok(())
    }

    /// An app's config vars; values only with `show`.
    pub async fn config(&self, app: &str, show: bool) -> Result<ConfigView, ClientError> {
        let query = [("show", show.to_string())];
        self.send(self.call(reqwest::Method::GET, &["v1", "apps", app, "config"], &query)?)
            .await
    }

    /// Sets and unsets config vars in one new release.
    pub async fn change_config(
        &self,
        app: &str,
        change: &ConfigChange,
    ) -> Result<ChangeAccepted, ClientError> {
        let request = self
            .call(reqwest::Method::PATCH, &["v1", "apps", app, "config"], &[])?
            .json(change);
        self.send(request).await
    }

    /// Node-to-node: asks a tenant's quota keeper to reserve quota for an app.
    pub async fn reserve_quota(
        &self,
        tenant: &str,
        reserve: &ReserveQuota,
    ) -> Result<(), ClientError> {
        let request = self
            .call(
                reqwest::Method::POST,
                &["v1", "internal", "tenants", tenant, "reservations"],
                &[],
            )?
            .json(reserve);
        let _: serde_json::Value = self.send(request).await?;
        Ok(())
    }

    /// Node-to-node: the peer's own audit records matching `query`.
    pub async fn audit(&self, query: &crate::AuditQuery) -> Result<Vec<AuditRecord>, ClientError> {
        self.send(self.call(
            reqwest::Method::GET,
            &["v1", "internal", "audit"],
            &audit_params(query),
        )?)
        .await
    }

    /// Every live node's audit records matching `query`, oldest first.
    pub async fn gather_audit(
        &self,
        query: &crate::AuditQuery,
    ) -> Result<AuditResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, &["v1", "audit"], &audit_params(query))?)
            .await
    }

    /// Who the client's token is.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.send(self.call(reqwest::Method::GET, &["v1", "whoami"], &[])?)
            .await
    }

    pub async fn tenants(&self) -> Result<TenantsResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, &["v1", "tenants"], &[])?)
            .await
    }

    pub async fn create_tenant(
        &self,
        tenant: &CreateTenantRequest,
    ) -> Result<TenantView, ClientError> {
        let request = self
            .call(reqwest::Method::POST, &["v1", "tenants"], &[])?
            .json(tenant);
        self.send(request).await
    }

    pub async fn delete_tenant(&self, tenant: &str) -> Result<TenantView, ClientError> {
        self.send(self.call(reqwest::Method::DELETE, &["v1", "tenants", tenant], &[])?)
            .await
    }

    pub async fn set_quota(&self, tenant: &str, quota: &Quota) -> Result<TenantView, ClientError> {
        let request = self
            .call(
                reqwest::Method::PUT,
                &["v1", "tenants", tenant, "quota"],
                &[],
            )?
            .json(quota);
        self.send(request).await
    }

    /// Tokens of the caller's tenant (the administrator: of `tenant`, or all).
    pub async fn tokens(&self, tenant: Option<&str>) -> Result<TokensResponse, ClientError> {
        let query: Vec<(&str, String)> = tenant
            .map(|tenant| ("tenant", tenant.to_string()))
            .into_iter()
            .collect();
        self.send(self.call(reqwest::Method::GET, &["v1", "tokens"], &query)?)
            .await
    }

    pub async fn create_token(
        &self,
        token: &CreateTokenRequest,
    ) -> Result<TokenCreated, ClientError> {
        let request = self
            .call(reqwest::Method::POST, &["v1", "tokens"], &[])?
            .json(token);
        self.send(request).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<TokenView, ClientError> {
        self.send(self.call(reqwest::Method::DELETE, &["v1", "tokens", id], &[])?)
            .await
    }

    /// Node-to-node: asks the node to keep an app record.
    pub async fn hold_record(&self, record: &AppRecord) -> Result<(), ClientError> {
        let request = self
            .call(
                reqwest::Method::PUT,
                &["v1", "internal", "apps", &record.name],
                &[],
            )?
            .json(record);
        let _: serde_json::Value = self.send(request).await?;
        Ok(())
    }

    /// Node-to-node: asks an app's keeper for the app's next release number.
    pub async fn reserve_release_number(&self, app: &str) -> Result<u64, ClientError> {
        #[derive(serde::Deserialize)]
        struct Reserved {
            number: u64,
        }
        let path = ["v1", "internal", "apps", app, "numbers"];
        let reserved: Reserved = self
            .send(self.call(reqwest::Method::POST, &path, &[])?)
            .await?;
        Ok(reserved.number)
    }

    /// Node-to-node: asks the node to run a replica.
    pub async fn place(&self, placement: &PlacementRequest) -> Result<PlacementReply, ClientError> {
        let request = self
            .call(
                reqwest::Method::POST,
                &["v1", "internal", "placements"],
                &[],
            )?
            .json(placement);
        self.send(request).await
    }

    /// `base` with `segments` appended, each one percent-escaped (a `/` in a name stays
    /// inside its segment), and `query` form-encoded.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, ClientError> {
        // The url crate silently drops `.` and `..` segments: `app("..")` would become
        // `GET /v1`, another call altogether.
        if let Some(bad) = segments
            .iter()
            .find(|segment| matches!(**segment, "" | "." | ".."))
        {
            return Err(ClientError::BadName((*bad).to_string()));
        }
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::BadUrl(self.base.clone()))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// A JSON call (not an upload or a stream): a peer that accepts the connection and
    /// never answers must not stall the caller forever.
    fn call(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let url = self.url(segments, query)?;
        Ok(self.request(method, url).timeout(self.deadlines.json))
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// [`Client::check`] for a streamed answer, whose headers must come within the
    /// headers deadline (the body then has deadlines of its own, or none for `follow`).
    async fn check_within(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let after = self.deadlines.headers;
        tokio::time::timeout(after, self.check(url.to_string(), request))
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.to_string(),
                after,
            })?
    }

    /// Signs `request` if this client is a node's.
    fn sign(&self, url: &str, request: &mut reqwest::Request) -> Result<(), ClientError> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        let unsigned = || ClientError::Unsigned {
            url: url.to_string(),
        };
        let content_sha256 = match request
            .headers()
            .get(CONTENT_SHA256)
            .and_then(|value| value.to_str().ok())
        {
            Some(digest) => digest.to_string(),
            None => match request.body() {
                None => EMPTY_SHA256.to_string(),
                Some(body) => sha256_hex(body.as_bytes().ok_or_else(unsigned)?),
            },
        };
        let target = request.url();
        let host = target.host_str().ok_or_else(unsigned)?;
        // As the Host header is written: the port only when it is not the scheme's default.
        let authority = match target.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let authorization = signer.sign(&CallParts {
            method: request.method().as_str(),
            authority: &authority,
            path: target.path(),
            query: target.query().unwrap_or(""),
            content_sha256: &content_sha256,
        });
        let headers = request.headers_mut();
        let value =
            |text: &str| reqwest::header::HeaderValue::from_str(text).map_err(|_| unsigned());
        headers.insert(reqwest::header::AUTHORIZATION, value(&authorization)?);
        headers.insert(CONTENT_SHA256, value(&content_sha256)?);
        Ok(())
    }

    async fn check(
        &self,
        url: String,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = request.build().map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })?;
        self.sign(&url, &mut request)?;
        let response = self.http.execute(request).await.map_err(|source| {
            if source.is_timeout() {
                ClientError::Timeout {
                    url: url.clone(),
                    after: self.deadlines.json,
                }
            } else {
                ClientError::Unreachable {
                    url: url.clone(),
                    source,
                }
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: ErrorBody = response.json().await.unwrap_or_else(|_| ErrorBody {
            error: "unknown".into(),
            detail: status.canonical_reason().unwrap_or("error").into(),
        });
        Err(ClientError::Api {
            url,
            status: status.as_u16(),
            error: body.error,
            detail: body.detail,
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let url = request
            .try_clone()
            .and_then(|r| r.build().ok())
            .map(|r| r.url().to_string())
            .unwrap_or_else(|| self.base.clone());
        let response = self.check(url.clone(), request).await?;
        response.json().await.map_err(|source| {
            if source.is_timeout() {
                ClientError::Timeout {
                    url: url.clone(),
                    after: self.deadlines.json,
                }
            } else {
                ClientError::Decode {
                    url: url.clone(),
                    source,
                }
            }
        })
    }
}

/// `LinesCodec` with a maximum length that reports an over-long line in the stream and
/// goes on, instead of ending it: one odd line must not cut a `logs -f` short.
#[derive(Debug)]
struct CappedLines(LinesCodec);

impl Default for CappedLines {
    fn default() -> Self {
        CappedLines(LinesCodec::new_with_max_length(MAX_LOG_LINE_BYTES))
    }
}

/// Stands for a line longer than [`MAX_LOG_LINE_BYTES`], which is dropped.
const DROPPED_LINE: &str = "[stratus: line longer than 64 KiB dropped]";

impl Decoder for CappedLines {
    type Item = String;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<String>, std::io::Error> {
        capped(self.0.decode(buf))
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<String>, std::io::Error> {
        capped(self.0.decode_eof(buf))
    }
}

fn capped(
    decoded: Result<Option<String>, LinesCodecError>,
) -> Result<Option<String>, std::io::Error> {
    match decoded {
        Ok(line) => Ok(line),
        // The codec has started dropping the line up to its newline.
        Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(DROPPED_LINE.to_string())),
        Err(LinesCodecError::Io(err)) => Err(err),
    }
}

const NDJSON: &str = "application/x-ndjson";

/// Longest line of a newline-delimited JSON answer (a build's summary is the largest).
const MAX_NDJSON_LINE_BYTES: usize = 1 << 20;

/// A newline-delimited JSON answer, decoded a line at a time; the first error ends it.
fn ndjson<T: DeserializeOwned + Send + 'static>(
    response: reqwest::Response,
    url: String,
) -> Pin<Box<dyn Stream<Item = Result<T, ClientError>> + Send>> {
    let body =
        tokio_util::io::StreamReader::new(response.bytes_stream().map_err(std::io::Error::other));
    let mut broken = false;
    let lines = FramedRead::new(body, LinesCodec::new_with_max_length(MAX_NDJSON_LINE_BYTES))
        .map(move |line| {
            let stream_error = |source| ClientError::Stream {
                url: url.clone(),
                source,
            };
            let line = line.map_err(|err| match err {
                LinesCodecError::Io(err) => stream_error(err),
                LinesCodecError::MaxLineLengthExceeded => {
                    stream_error(std::io::Error::other("a line longer than 1 MiB"))
                }
            })?;
            serde_json::from_str::<T>(&line).map_err(|err| {
                stream_error(std::io::Error::other(format!(
                    "not an event of the API ({err}): {line:.200}"
                )))
            })
        })
        .take_while(move |line| {
            let go_on = !broken;
            broken = line.is_err();
            futures_util::future::ready(go_on)
        });
    Box::pin(lines)
}

/// The read size of streamed files.
pub const FILE_CHUNK: usize = 256 << 10;

/// A streamed body of the file at `path`, and the file's size.
async fn file_body(
    path: &Path,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<(reqwest::Body, u64), ClientError> {
    let file_err = |source| ClientError::File {
        path: path.display().to_string(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(file_err)?;
    let size = file.metadata().await.map_err(file_err)?.len();
    let mut sent = 0u64;
    // 4 KiB reads (ReaderStream's default) make a 100 MB image 25,000 chunks: each a
    // syscall, a frame and a wake-up on both ends.
    let stream = tokio_util::io::ReaderStream::with_capacity(file, FILE_CHUNK).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            sent += bytes.len() as u64;
            progress(sent);
        }
        chunk
    });
    Ok((reqwest::Body::wrap_stream(stream), size))
}

fn audit_params(query: &crate::AuditQuery) -> Vec<(&'static str, String)> {
    let mut params = Vec::new();
    if let Some(tenant) = &query.tenant {
        params.push(("tenant", tenant.clone()));
    }
    if let Some(since) = query.since_ms {
        params.push(("since_ms", since.to_string()));
    }
    params
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Deadlines short enough for a test, long enough for a loaded machine.
    const SHORT: Deadlines = Deadlines {
        json: Duration::from_millis(300),
        headers: Duration::from_millis(300),
        blob_base: Duration::from_millis(300),
        blob_bytes_per_sec: 1 << 30,
        blob_idle: Duration::from_millis(300),
    };

    /// A one-connection HTTP server on port 0 that reads the request head and then
    /// writes `answer` in pieces with `pause` between them, and keeps the connection open
    /// (the peer that stalls) unless `close` is set. Returns the client and the request
    /// line it received.
    async fn server(
        answer: Vec<Vec<u8>>,
        pause: Duration,
        close: bool,
    ) -> (Client, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if socket.read(&mut byte).await.unwrap() == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let _ = seen_tx.send(line);
            for piece in answer {
                if socket.write_all(&piece).await.is_err() {
                    return;
                }
                tokio::time::sleep(pause).await;
            }
            if !close {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
        let mut client = Client::new(&addr.to_string()).unwrap();
        client.deadlines = SHORT;
        (client, seen_rx)
    }

    fn chunked(pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = vec![
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec(),
        ];
        for piece in pieces {
            let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
            chunk.extend_from_slice(piece);
            chunk.extend_from_slice(b"\r\n");
            out.push(chunk);
        }
        out
    }

    #[test]
    fn path_segments_are_escaped_and_dot_segments_refused() {
        let client = Client::new("http://127.0.0.1:7070/").unwrap();
        let url = client
            .url(
                &["v1", "apps", "a b/c?d#e", "logs"],
                &[("tail", "5".into())],
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7070/v1/apps/a%20b%2Fc%3Fd%23e/logs?tail=5"
        );
        for bad in ["..", ".", ""] {
            assert!(matches!(
                client.url(&["v1", "apps", bad], &[]),
                Err(ClientError::BadName(_))
            ));
        }
        // A base with a path keeps it.
        let prefixed = Client::new("https://example.test/stratus").unwrap();
        assert_eq!(
            prefixed.url(&["v1", "health"], &[]).unwrap().as_str(),
            "https://example.test/stratus/v1/health"
        );
        assert!(matches!(Client::new(""), Err(ClientError::BadUrl(_))));
        assert!(matches!(
            Client::new("ftp://x"),
            Err(ClientError::BadUrl(_))
        ));
        assert_eq!(
            Client::new("127.0.0.1:1/").unwrap().base(),
            "http://127.0.0.1:1"
        );
    }

    #[tokio::test]
    async fn a_broken_log_stream_ends_with_an_error() {
        // A line, then the connection closes in the middle of a chunked body.
        let mut answer = chunked(&[b"first\nsecond\n"]);
        answer.push(b"20\r\nhalf a li".to_vec());
        let (client, seen) = server(answer, Duration::ZERO, true).await;
        let lines: Vec<_> = client.logs("web", true, 10).await.unwrap().collect().await;
        assert_eq!(
            seen.await.unwrap(),
            "GET /v1/apps/web/logs?follow=true&tail=10 HTTP/1.1"
        );
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0].as_ref().unwrap(), "first");
        assert_eq!(lines[1].as_ref().unwrap(), "second");
        assert!(
            matches!(&lines[2], Err(ClientError::Stream { .. })),
            "{:?}",
            lines[2]
        );
    }

    #[tokio::test]
    async fn a_broken_peer_log_stream_says_so_in_its_last_line() {
        let mut answer = chunked(&[b"first\n"]);
        answer.push(b"20\r\nhalf".to_vec());
        let (client, _) = server(answer, Duration::ZERO, true).await;
        let lines: Vec<String> = client
            .replica_logs("web-1-0", false, 5)
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], "first");
        assert!(lines[1].contains("broke off"), "{}", lines[1]);
    }

    #[tokio::test]
    async fn log_lines_are_capped_and_the_stream_goes_on() {
        let long = vec![b'x'; MAX_LOG_LINE_BYTES + 10];
        let mut body = long.clone();
        body.extend_from_slice(b"\nafter\n");
        let mut answer = chunked(&[&body[..1000], &body[1000..]]);
        answer.push(b"0\r\n\r\n".to_vec());
        let (client, _) = server(answer, Duration::ZERO, true).await;
        let lines: Vec<_> = client.logs("web", false, 10).await.unwrap().collect().await;
        let lines: Vec<String> = lines.into_iter().map(Result::unwrap).collect();
        assert_eq!(lines, [DROPPED_LINE, "after"]);
    }

    #[tokio::test]
    async fn a_stalled_blob_download_times_out_and_leaves_no_file() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec();
        let (client, _) = server(vec![head, vec![b'a'; 10]], Duration::ZERO, false).await;
        let dir = tempfile_dir();
        let dest = dir.join("blob");
        let err = client.get_blob(&"0".repeat(64), &dest).await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(!dest.exists(), "a stalled download left a partial file");
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_a_blob_upload_times_out() {
        let (client, _) = server(Vec::new(), Duration::ZERO, false).await;
        let dir = tempfile_dir();
        let blob = dir.join("blob");
        std::fs::write(&blob, b"bundle").unwrap();
        let started = tokio::time::Instant::now();
        let err = client.put_blob(&"0".repeat(64), &blob).await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_peer_that_never_sends_log_headers_times_out() {
        let (client, _) = server(Vec::new(), Duration::ZERO, false).await;
        let err = match client.replica_logs("web-1-0", true, 5).await {
            Err(err) => err,
            Ok(_) => panic!("a peer without an answer gave a stream"),
        };
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    }

    #[test]
    fn blob_deadlines_grow_with_the_size() {
        assert_eq!(DEADLINES.blob(0), Duration::from_secs(30));
        assert_eq!(DEADLINES.blob(256 << 20), Duration::from_secs(30 + 512));
    }

    /// A fresh folder under the system temp dir, unique to the test process and name.
    fn tempfile_dir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "stratus-client-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
