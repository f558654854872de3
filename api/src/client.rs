//! Typed client of the API, used by the CLI and the testbed.

use std::time::Duration;

use proto::api::{ErrorBody, HealthResponse, NodesResponse};
use serde::de::DeserializeOwned;

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
}

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
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
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|_| ClientError::BadUrl(base.clone()))?;
        Ok(Client { base, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        self.get("/v1/health").await
    }

    pub async fn nodes(&self) -> Result<NodesResponse, ClientError> {
        self.get("/v1/nodes").await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let response =
            self.http
                .get(&url)
                .send()
                .await
                .map_err(|source| ClientError::Unreachable {
                    url: url.clone(),
                    source,
                })?;
        let status = response.status();
        if !status.is_success() {
            let body: ErrorBody = response.json().await.unwrap_or_else(|_| ErrorBody {
                error: "unknown".into(),
                detail: status.canonical_reason().unwrap_or("error").into(),
            });
            return Err(ClientError::Api {
                url,
                status: status.as_u16(),
                error: body.error,
                detail: body.detail,
            });
        }
        response
            .json()
            .await
            .map_err(|source| ClientError::Decode { url, source })
    }
}
