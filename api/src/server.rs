//! HTTP server: accepts connections, routes requests to [`NodeApi`], answers JSON.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use proto::api::{HealthResponse, NodesResponse};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::error::ApiError;

/// What the agent provides to the API. Implementations answer from local state only:
/// every node answers every read from its own gossip view.
pub trait NodeApi: Send + Sync + 'static {
    fn health(&self) -> impl Future<Output = HealthResponse> + Send;
    fn nodes(&self) -> impl Future<Output = NodesResponse> + Send;
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
                    async move { Ok::<_, Infallible>(route(&*api, request).await) }
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
    graceful.shutdown().await;
    Ok(())
}

async fn route<S: NodeApi>(api: &S, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let result = match path.as_str() {
        "/v1/health" => match method {
            Method::GET => Ok(json(StatusCode::OK, &api.health().await)),
            _ => Err(not_allowed(&method, &path)),
        },
        "/v1/nodes" => match method {
            Method::GET => Ok(json(StatusCode::OK, &api.nodes().await)),
            _ => Err(not_allowed(&method, &path)),
        },
        _ => Err(ApiError::NotFound {
            method: method.to_string(),
            path: path.clone(),
        }),
    };
    result.unwrap_or_else(|err| json(err.status(), &err.body()))
}

fn not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_string(),
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        Err(err) => {
            let err = ApiError::Internal(err.to_string());
            let bytes = serde_json::to_vec(&err.body()).unwrap_or_default();
            (err.status(), bytes)
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
