//! HTTP server: accepts connections, authenticates, routes requests to [`NodeApi`] and
//! answers JSON (or the raw bytes of a blob).

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use proto::api::{
    AppView, AppsResponse, ChangeAccepted, DeployAccepted, DrainReply, HealthResponse,
    NodesResponse, PlacementReply, PlacementRequest, ReleasesResponse, RollbackRequest,
    ScaleRequest, StopRequest,
};
use proto::catalog::AppRecord;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::error::ApiError;
use crate::upload::{Upload, save_body};

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Who a request comes from, by its bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A developer or operator with the API token.
    User,
    /// Another agent, with the token derived from the cluster key.
    Node,
}

/// What the agent provides to the API. Reads are answered from local state: every node
/// answers every read from its own gossip view and catalog.
pub trait NodeApi: Send + Sync + 'static {
    fn health(&self) -> impl Future<Output = HealthResponse> + Send;
    fn nodes(&self) -> impl Future<Output = NodesResponse> + Send;
    /// Who holds `token`, if anyone.
    fn authenticate(&self, token: &str) -> Option<Caller>;
    /// Where uploads are written while they stream in.
    fn upload_dir(&self) -> PathBuf;
    fn max_upload_bytes(&self) -> u64;
    fn apps(&self) -> impl Future<Output = AppsResponse> + Send;
    fn app(&self, name: &str) -> impl Future<Output = Result<AppView, ApiError>> + Send;
    fn destroy(&self, name: &str) -> impl Future<Output = Result<AppView, ApiError>> + Send;
    /// A zipped app folder for `app`, already on disk with its SHA-256.
    fn deploy(
        &self,
        app: &str,
        upload: Upload,
    ) -> impl Future<Output = Result<DeployAccepted, ApiError>> + Send;
    /// Node-to-node: a verified local copy of a bundle.
    fn blob_path(&self, sha256: &str) -> impl Future<Output = Result<PathBuf, ApiError>> + Send;
    /// Node-to-node: store a bundle copy (checked against `sha256`).
    fn put_blob(
        &self,
        sha256: &str,
        upload: Upload,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Node-to-node: keep (persist and publish) an app record.
    fn hold_record(&self, record: AppRecord) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Node-to-node: run one replica here, if it fits.
    fn place(
        &self,
        request: PlacementRequest,
    ) -> impl Future<Output = Result<PlacementReply, ApiError>> + Send;
    /// Node-to-node: the next release number of `app`, reserved (this node is its keeper).
    fn reserve_release_number(
        &self,
        app: &str,
    ) -> impl Future<Output = Result<u64, ApiError>> + Send;
    /// Output of every replica of `app`, each line prefixed with its replica.
    fn app_logs(
        &self,
        app: &str,
        query: LogQuery,
    ) -> impl Future<Output = Result<LineStream, ApiError>> + Send;
    /// Node-to-node: output of one replica this node runs.
    fn replica_logs(
        &self,
        placement_id: &str,
        query: LogQuery,
    ) -> impl Future<Output = Result<LineStream, ApiError>> + Send;
    /// Node-to-node: the kept output of `app`'s stopped replicas on this node.
    fn previous_logs(
        &self,
        app: &str,
        query: LogQuery,
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
    /// Drain (or undrain) `node`: this one, or forwarded to it.
    fn drain(
        &self,
        node: &str,
        draining: bool,
    ) -> impl Future<Output = Result<DrainReply, ApiError>> + Send;
    /// Node-to-node: drain (or undrain) this node.
    fn set_draining(
        &self,
        draining: bool,
    ) -> impl Future<Output = Result<DrainReply, ApiError>> + Send;
    /// Node-to-node: stop one replica this node runs (the app's reconciler asks).
    fn stop_replica(
        &self,
        request: StopRequest,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// Lines streamed to the client as they come.
pub type LineStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>;

/// `?follow=true&tail=N` of the log endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogQuery {
    pub follow: bool,
    pub tail: usize,
    /// The kept output of stopped replicas instead of the running ones.
    pub previous: bool,
}

impl LogQuery {
    pub const DEFAULT_TAIL: usize = 100;
    pub const MAX_TAIL: usize = 10_000;

    fn parse(query: Option<&str>) -> Result<LogQuery, ApiError> {
        let mut parsed = LogQuery {
            follow: false,
            tail: LogQuery::DEFAULT_TAIL,
            previous: false,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
            match key {
                "follow" => parsed.follow = matches!(value, "true" | "1" | "yes"),
                "previous" => parsed.previous = matches!(value, "true" | "1" | "yes"),
                "tail" => {
                    parsed.tail = value
                        .parse::<usize>()
                        .map_err(|_| {
                            ApiError::BadRequest(format!("tail={value} is not a number of lines"))
                        })?
                        .min(LogQuery::MAX_TAIL)
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// Serves the API on `listener` until `shutdown` completes, then lets open requests finish.
pub async fn serve<S: NodeApi>(
    listener: TcpListener,
    api: Arc<S>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Running out of file descriptors must not kill the API.
                        warn!(error = %err, "cannot accept API connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let api = api.clone();
                let service = service_fn(move |request| {
                    let api = api.clone();
                    async move {
                        let response = match route(&*api, request).await {
                            Ok(response) => response,
                            Err(err) => json(err.status(), &err.body()),
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        debug!(%peer, error = %err, "API connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    // Followed log streams never end by themselves: give requests a bounded time.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

async fn route<S: NodeApi>(
    api: &S,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let caller = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| api.authenticate(token.trim()));
    let user = || match caller {
        Some(Caller::User) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    };
    let node = || match caller {
        Some(Caller::Node) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    };
    let not_allowed = || ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: path.clone(),
    };
    match (segments.as_slice(), &method) {
        (["v1", "health"], &Method::GET) => Ok(json(StatusCode::OK, &api.health().await)),
        (["v1", "nodes"], &Method::GET) => Ok(json(StatusCode::OK, &api.nodes().await)),
        (["v1", "apps"], &Method::GET) => {
            user()?;
            Ok(json(StatusCode::OK, &api.apps().await))
        }
        (["v1", "apps", app], &Method::GET) => {
            user()?;
            Ok(json(StatusCode::OK, &api.app(app).await?))
        }
        (["v1", "apps", app], &Method::DELETE) => {
            user()?;
            Ok(json(StatusCode::OK, &api.destroy(app).await?))
        }
        (["v1", "apps", app, "deploys"], &Method::POST) => {
            user()?;
            let app = app.to_string();
            let upload = save_body(
                request.into_body(),
                &api.upload_dir(),
                api.max_upload_bytes(),
            )
            .await?;
            Ok(json(StatusCode::ACCEPTED, &api.deploy(&app, upload).await?))
        }
        (["v1", "blobs", sha256], &Method::GET) => {
            node()?;
            let path = api.blob_path(sha256).await?;
            file_response(path).await
        }
        (["v1", "blobs", sha256], &Method::PUT) => {
            node()?;
            let sha256 = sha256.to_string();
            let upload = save_body(
                request.into_body(),
                &api.upload_dir(),
                api.max_upload_bytes(),
            )
            .await?;
            api.put_blob(&sha256, upload).await?;
            Ok(json(
                StatusCode::CREATED,
                &serde_json::json!({ "sha256": sha256 }),
            ))
        }
        (["v1", "internal", "apps", _], &Method::PUT) => {
            node()?;
            let record: AppRecord = read_json(request.into_body()).await?;
            api.hold_record(record).await?;
            Ok(json(StatusCode::OK, &serde_json::json!({ "held": true })))
        }
        (["v1", "apps", app, "logs"], &Method::GET) => {
            user()?;
            let query = LogQuery::parse(request.uri().query())?;
            Ok(lines_response(api.app_logs(app, query).await?))
        }
        (["v1", "internal", "replicas", id, "logs"], &Method::GET) => {
            node()?;
            let query = LogQuery::parse(request.uri().query())?;
            Ok(lines_response(api.replica_logs(id, query).await?))
        }
        (["v1", "internal", "apps", app, "numbers"], &Method::POST) => {
            node()?;
            let number = api.reserve_release_number(app).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "number": number }),
            ))
        }
        (["v1", "apps", app, "releases"], &Method::GET) => {
            user()?;
            Ok(json(StatusCode::OK, &api.releases(app).await?))
        }
        (["v1", "apps", app, "scale"], &Method::POST) => {
            user()?;
            let app = app.to_string();
            let request: ScaleRequest = read_json(request.into_body()).await?;
            Ok(json(StatusCode::ACCEPTED, &api.scale(&app, request).await?))
        }
        (["v1", "apps", app, "rollback"], &Method::POST) => {
            user()?;
            let app = app.to_string();
            let request: RollbackRequest = read_json(request.into_body()).await?;
            Ok(json(
                StatusCode::ACCEPTED,
                &api.rollback(&app, request).await?,
            ))
        }
        (["v1", "apps", app, "restart"], &Method::POST) => {
            user()?;
            Ok(json(StatusCode::ACCEPTED, &api.restart(app).await?))
        }
        (["v1", "nodes", node, verb @ ("drain" | "undrain")], &Method::POST) => {
            user()?;
            let draining = *verb == "drain";
            Ok(json(StatusCode::OK, &api.drain(node, draining).await?))
        }
        (["v1", "internal", "draining"], &Method::PUT) => {
            node()?;
            let request: DrainReply = read_json(request.into_body()).await?;
            Ok(json(
                StatusCode::OK,
                &api.set_draining(request.draining).await?,
            ))
        }
        (["v1", "internal", "apps", app, "previous-logs"], &Method::GET) => {
            node()?;
            let query = LogQuery::parse(request.uri().query())?;
            Ok(lines_response(api.previous_logs(app, query).await?))
        }
        (["v1", "internal", "placements", id, "stop"], &Method::POST) => {
            node()?;
            let mut stop: StopRequest = read_json(request.into_body()).await?;
            if stop.placement_id != *id {
                return Err(ApiError::BadRequest(format!(
                    "the URL names placement {id}, the body {}",
                    stop.placement_id
                )));
            }
            stop.placement_id = id.to_string();
            api.stop_replica(stop).await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "stopping": true }),
            ))
        }
        (["v1", "internal", "placements"], &Method::POST) => {
            node()?;
            let placement: PlacementRequest = read_json(request.into_body()).await?;
            Ok(json(StatusCode::OK, &api.place(placement).await?))
        }
        (["v1", "health" | "nodes" | "apps"], _)
        | (["v1", "apps", _] | ["v1", "blobs", _], _)
        | (
            [
                "v1",
                "apps",
                _,
                "deploys" | "releases" | "scale" | "rollback" | "restart",
            ],
            _,
        )
        | (["v1", "nodes", _, "drain" | "undrain"], _) => Err(not_allowed()),
        _ => Err(ApiError::NotFound {
            method: method.to_string(),
            path: path.clone(),
        }),
    }
}

/// JSON bodies of internal calls are small; larger ones are refused, not buffered.
const MAX_JSON_BODY: usize = 1 << 20;

async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_JSON_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|err| ApiError::BadRequest(format!("cannot read request body: {err}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::BadRequest(format!("invalid JSON body: {err}")))
}

async fn file_response(path: PathBuf) -> Result<Response<Body>, ApiError> {
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|err| ApiError::Internal(format!("cannot open {}: {err}", path.display())))?;
    let stream = tokio_util::io::ReaderStream::new(file).map(|chunk| chunk.map(Frame::data));
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// Streams lines as a chunked `text/plain` body, each sent as soon as it exists.
fn lines_response(lines: LineStream) -> Response<Body> {
    let frames = lines.map(|line| Ok::<_, std::io::Error>(Frame::data(Bytes::from(line + "\n"))));
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        Err(err) => {
            let err = ApiError::Internal(err.to_string());
            let bytes = serde_json::to_vec(&err.body()).unwrap_or_default();
            (err.status(), bytes)
        }
    };
    let body = Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
