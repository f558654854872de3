//! `/` and `/dashboard/{file}`: the web dashboard, plain HTML, CSS and JavaScript embedded
//! in the binary (`api/assets/dashboard/`). Public: the page holds no data. It signs in
//! with an API token and reads the same `/v1` routes as any client, so every agent serves
//! it and it shows what that token may see.
//!
//! The headers are the page's security: a Content-Security-Policy that allows only this
//! origin's scripts, styles and calls (no inline code, no framing), and `no-cache` with an
//! ETag, so an upgraded agent's page is never mixed with an old script.

use std::sync::OnceLock;

use axum::Router;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::api::ErrorBody;
use sha2::{Digest, Sha256};

use super::shared::{Path, deadline};
use crate::error::ApiError;
use crate::service::Service;
use crate::state::{ApiConfig, ApiState};

/// Only this origin, only what the page uses. `connect-src 'self'` is what lets the page
/// call the API; `img-src data:` is for the inline favicon.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../assets/dashboard/index.html"),
};

/// What `/dashboard/{file}` serves; anything else is a 404.
const FILES: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/dashboard/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/dashboard/style.css"),
    },
];

pub fn router<S: Service>(config: &ApiConfig) -> Router<ApiState<S>> {
    let answer = config.request_timeout;
    Router::new()
        .route("/", deadline(get(index), answer))
        .route("/dashboard/{file}", deadline(get(file), answer))
}

/// The dashboard's page. Sign in with an API token; the page then follows the cluster
/// through `GET /v1/events`.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses(
        (status = 200, content_type = "text/html", body = String),
        (status = 304, description = "unchanged since the ETag sent in If-None-Match"),
    ))]
async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// The dashboard's script and style sheet.
#[utoipa::path(get, path = "/dashboard/{file}", tag = "dashboard",
    params(("file" = String, Path, description = "`app.js` or `style.css`")),
    responses(
        (status = 200, content_type = "text/javascript", body = String),
        (status = 200, content_type = "text/css", body = String),
        (status = 304, description = "unchanged since the ETag sent in If-None-Match"),
        (status = 404, body = ErrorBody),
    ))]
async fn file(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let asset = FILES
        .iter()
        .find(|asset| asset.name == name)
        .ok_or_else(|| ApiError::NotFound {
            method: "GET".to_string(),
            path: format!("/dashboard/{name}"),
        })?;
    Ok(serve(asset, &headers))
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = etag_of(asset);
    let fresh = request
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Revalidated every time: the ETag makes that a 304, and a new binary's page is never
    // served with an old script.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(ETAG, value);
    }
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// A strong ETag per file, from its bytes (computed once: the files are in the binary).
fn etag_of(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(&INDEX)
            .chain(FILES)
            .map(|asset| {
                let digest = Sha256::digest(asset.body);
                (asset.name, format!("\"{}\"", hex::encode(&digest[..12])))
            })
            .collect()
    });
    tags.iter()
        .find(|(name, _)| *name == asset.name)
        .map(|(_, tag)| tag.as_str())
        .unwrap_or("\"\"")
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(index, file))]
pub struct DashboardApi;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_files_that_are_served() {
        let page = std::str::from_utf8(INDEX.body).expect("the page is UTF-8");
        for asset in FILES {
            assert!(
                page.contains(&format!("/dashboard/{}", asset.name)),
                "index.html does not load {}",
                asset.name
            );
        }
        // No inline code: the policy would refuse it.
        assert!(!page.contains("<script>"), "inline script in index.html");
        assert!(!page.contains("style="), "inline style in index.html");
    }

    #[test]
    fn each_file_has_its_own_etag() {
        let tags: Vec<&str> = std::iter::once(&INDEX).chain(FILES).map(etag_of).collect();
        assert_eq!(tags.len(), 3);
        assert!(tags.iter().all(|tag| tag.len() == 26), "{tags:?}");
        assert_ne!(tags[0], tags[1]);
        assert_ne!(tags[1], tags[2]);
    }
}
