//! Typed client of the API, used by the CLI, by agents calling each other, and the testbed.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use proto::api::{
    AppView, AppsResponse, ChangeAccepted, DeployAccepted, DrainReply, ErrorBody, HealthResponse,
    NodesResponse, PlacementReply, PlacementRequest, ReleasesResponse, RollbackRequest,
    ScaleRequest, StopRequest,
};
use proto::catalog::AppRecord;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

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
    #[error("invalid API URL {0:?}: write http://host:port")]
    BadUrl(String),
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
}

/// Longest a JSON call may take, connection included.
const JSON_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base` is like `http://127.0.0.1:7070`; a bare `host:port` is accepted too.
    pub fn new(base: &str) -> Result<Client, ClientError> {
        let base = base.trim().trim_end_matches('/');
        if base.is_empty() {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|_| ClientError::BadUrl(base.clone()))?;
        Ok(Client {
            base,
            token: None,
            http,
        })
    }

    /// Sends `token` as a bearer token with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|token| !token.is_empty());
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, "/v1/health"))
            .await
    }

    pub async fn nodes(&self) -> Result<NodesResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, "/v1/nodes"))
            .await
    }

    pub async fn apps(&self) -> Result<AppsResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, "/v1/apps")).await
    }

    pub async fn app(&self, name: &str) -> Result<AppView, ClientError> {
        self.send(self.call(reqwest::Method::GET, &format!("/v1/apps/{name}")))
            .await
    }

    pub async fn destroy(&self, name: &str) -> Result<AppView, ClientError> {
        self.send(self.call(reqwest::Method::DELETE, &format!("/v1/apps/{name}")))
            .await
    }

    /// Releases of an app, newest first.
    pub async fn releases(&self, app: &str) -> Result<ReleasesResponse, ClientError> {
        self.send(self.call(reqwest::Method::GET, &format!("/v1/apps/{app}/releases")))
            .await
    }

    /// Sets an app's replica count.
    pub async fn scale(&self, app: &str, replicas: u32) -> Result<ChangeAccepted, ClientError> {
        let request = self
            .call(reqwest::Method::POST, &format!("/v1/apps/{app}/scale"))
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
            .call(reqwest::Method::POST, &format!("/v1/apps/{app}/rollback"))
            .json(&RollbackRequest { to });
        self.send(request).await
    }

    /// Replaces every replica of an app, one at a time.
    pub async fn restart(&self, app: &str) -> Result<ChangeAccepted, ClientError> {
        self.send(self.call(reqwest::Method::POST, &format!("/v1/apps/{app}/restart")))
            .await
    }

    /// Drains (`true`) or undrains a node, by id.
    pub async fn drain(&self, node: &str, draining: bool) -> Result<DrainReply, ClientError> {
        let verb = if draining { "drain" } else { "undrain" };
        self.send(self.call(reqwest::Method::POST, &format!("/v1/nodes/{node}/{verb}")))
            .await
    }

    /// Node-to-node: drains (or undrains) the node this client talks to.
    pub async fn set_draining(
        &self,
        node: &str,
        draining: bool,
    ) -> Result<DrainReply, ClientError> {
        let request = self
            .call(reqwest::Method::PUT, "/v1/internal/draining")
            .json(&DrainReply {
                node_id: node.to_string(),
                draining,
            });
        self.send(request).await
    }

    /// Node-to-node: asks the node to stop one of its replicas.
    pub async fn stop_replica(&self, stop: &StopRequest) -> Result<(), ClientError> {
        let request = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/internal/placements/{}/stop", stop.placement_id),
            )
            .json(stop);
        let _: serde_json::Value = self.send(request).await?;
        Ok(())
    }

    /// Uploads a zipped app folder, streamed from `zip`; `progress` is called with the
    /// bytes sent so far.
    pub async fn deploy(
        &self,
        app: &str,
        zip: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<DeployAccepted, ClientError> {
        let body = file_body(zip, progress).await?;
        let request = self
            .request(reqwest::Method::POST, &format!("/v1/apps/{app}/deploys"))
            .header(reqwest::header::CONTENT_TYPE, "application/zip")
            .body(body);
        self.send(request).await
    }

    /// Node-to-node: sends a bundle copy.
    pub async fn put_blob(&self, sha256: &str, path: &Path) -> Result<(), ClientError> {
        let body = file_body(path, |_| {}).await?;
        let request = self
            .request(reqwest::Method::PUT, &format!("/v1/blobs/{sha256}"))
            .body(body);
        let _: serde_json::Value = self.send(request).await?;
        Ok(())
    }

    /// Node-to-node: downloads a bundle to `dest`, verifying its checksum on the way; a
    /// copy that does not match is deleted and reported.
    pub async fn get_blob(&self, sha256: &str, dest: &Path) -> Result<u64, ClientError> {
        let url = format!("{}/v1/blobs/{sha256}", self.base);
        let response = self
            .check(
                url.clone(),
                self.request(reqwest::Method::GET, &format!("/v1/blobs/{sha256}")),
            )
            .await?;
        let file_err = |source| ClientError::File {
            path: dest.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(file_err)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(file_err)?;
        }
        file.sync_all().await.map_err(file_err)?;
        let actual: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if actual != sha256 {
            let _ = tokio::fs::remove_file(dest).await;
            return Err(ClientError::Checksum {
                url,
                expected: sha256.to_string(),
                actual,
            });
        }
        Ok(size)
    }

    /// Output of every replica of `app`, a line at a time; with `follow`, until dropped.
    pub async fn logs(
        &self,
        app: &str,
        follow: bool,
        tail: usize,
    ) -> Result<crate::LineStream, ClientError> {
        self.lines(&format!("/v1/apps/{app}/logs?follow={follow}&tail={tail}"))
            .await
    }

    /// The kept output of an app's stopped replicas (replaced, moved, crashed).
    pub async fn previous_logs(
        &self,
        app: &str,
        tail: usize,
    ) -> Result<crate::LineStream, ClientError> {
        self.lines(&format!("/v1/apps/{app}/logs?previous=true&tail={tail}"))
            .await
    }

    /// Node-to-node: the kept output of an app's stopped replicas on that node.
    pub async fn node_previous_logs(
        &self,
        app: &str,
        tail: usize,
    ) -> Result<crate::LineStream, ClientError> {
        self.lines(&format!(
            "/v1/internal/apps/{app}/previous-logs?tail={tail}"
        ))
        .await
    }

    /// Node-to-node: output of one replica the node runs.
    pub async fn replica_logs(
        &self,
        placement_id: &str,
        follow: bool,
        tail: usize,
    ) -> Result<crate::LineStream, ClientError> {
        self.lines(&format!(
            "/v1/internal/replicas/{placement_id}/logs?follow={follow}&tail={tail}"
        ))
        .await
    }

    async fn lines(&self, path: &str) -> Result<crate::LineStream, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .check(url, self.request(reqwest::Method::GET, path))
            .await?;
        let mut partial: Vec<u8> = Vec::new();
        let lines = response
            .bytes_stream()
            .take_while(|chunk| futures_util::future::ready(chunk.is_ok()))
            .map(move |chunk| {
                let bytes = chunk.unwrap_or_default();
                partial.extend_from_slice(&bytes);
                let mut lines = Vec::new();
                while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=end).collect();
                    lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
                }
                futures_util::stream::iter(lines)
            })
            .flatten();
        Ok(Box::pin(lines))
    }

    /// Node-to-node: asks the node to keep an app record.
    pub async fn hold_record(&self, record: &AppRecord) -> Result<(), ClientError> {
        let request = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/internal/apps/{}", record.name),
            )
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
        let request = self.call(
            reqwest::Method::POST,
            &format!("/v1/internal/apps/{app}/numbers"),
        );
        let reserved: Reserved = self.send(request).await?;
        Ok(reserved.number)
    }

    /// Node-to-node: asks the node to run a replica.
    pub async fn place(&self, placement: &PlacementRequest) -> Result<PlacementReply, ClientError> {
        let request = self
            .call(reqwest::Method::POST, "/v1/internal/placements")
            .json(placement);
        self.send(request).await
    }

    /// A JSON call (not an upload or a stream): a peer that accepts the connection and
    /// never answers must not stall the caller forever.
    fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path).timeout(JSON_TIMEOUT)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn check(
        &self,
        url: String,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
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
        response
            .json()
            .await
            .map_err(|source| ClientError::Decode { url, source })
    }
}

async fn file_body(
    path: &Path,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<reqwest::Body, ClientError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| ClientError::File {
            path: path.display().to_string(),
            source,
        })?;
    let mut sent = 0u64;
    let stream = tokio_util::io::ReaderStream::new(file).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            sent += bytes.len() as u64;
            progress(sent);
        }
        chunk
    });
    Ok(reqwest::Body::wrap_stream(stream))
}
