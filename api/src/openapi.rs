//! The OpenAPI 3 document, derived per router module from the handlers and merged here
//! (quickwit's `openapi.rs::build_docs`), served at `GET /v1/openapi.json`.

use utoipa::OpenApi;
use utoipa::openapi::header::Header;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};

use crate::routes::{
    apps::AppsApi, audit::AuditApi, blobs::BlobsApi, dashboard::DashboardApi, events::EventsApi,
    internal::InternalApi, metrics::MetricsApi, nodes::NodesApi, tenants::TenantsApi,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stratus API",
        description = "Every agent serves the whole API and answers reads from its own view \
                       of the cluster. Users present a bearer token: the agents' --api-token \
                       (the cluster administrator) or a tenant's token (stratus_<id>_<secret>, \
                       scoped to its tenant and role). The internal routes take no token: each node call is \
                       signed (the node_mac scheme) with an HMAC-SHA256 keyed from the cluster key, over the \
                       method, host, path, query, body digest, time and a nonce; replays, stale calls and \
                       changed calls are refused. User calls are limited per token (--api-rate-limit): over \
                       it, 429 with Retry-After."
    ),
    tags(
        (name = "dashboard", description = "the web page every agent serves at /, and its files"),
        (name = "apps", description = "deploys, releases, scale, rollback, restart, logs"),
        (name = "events", description = "the cluster's changes as the answering node saw them"),
        (name = "nodes", description = "health, the cluster's nodes, drains"),
        (name = "tenants", description = "who calls, tenants, quotas and tokens"),
        (name = "internal", description = "node-to-node calls"),
    )
)]
struct StratusApi;

/// The whole document.
pub fn build_docs() -> utoipa::openapi::OpenApi {
    let mut docs = StratusApi::openapi();
    docs.merge(NodesApi::openapi());
    docs.merge(AppsApi::openapi());
    docs.merge(EventsApi::openapi());
    docs.merge(MetricsApi::openapi());
    docs.merge(TenantsApi::openapi());
    docs.merge(AuditApi::openapi());
    docs.merge(BlobsApi::openapi());
    docs.merge(InternalApi::openapi());
    docs.merge(DashboardApi::openapi());
    let components = docs.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "token",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    // Not a scheme OpenAPI knows: an `Authorization` value a client must compute per call.
    components.add_security_scheme(
        "node_mac",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "Authorization",
            NODE_MAC_DESCRIPTION,
        ))),
    );
    add_rate_limited_answers(&mut docs);
    docs
}

/// Every user route may answer 429 (the rate limit, a layer, so no handler declares it);
/// the node-to-node routes and the dashboard's files never do.
fn add_rate_limited_answers(docs: &mut utoipa::openapi::OpenApi) {
    let rate_limited = ResponseBuilder::new()
        .description("over the caller's --api-rate-limit; other answers carry RateLimit-Remaining")
        .header(
            "Retry-After",
            Header::new(ObjectBuilder::new().schema_type(Type::Integer).build()),
        )
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build();
    for (path, item) in docs.paths.paths.iter_mut() {
        let unlimited = path.starts_with("/v1/internal/")
            || path.starts_with("/v1/blobs/")
            || path == "/"
            || path.starts_with("/dashboard/");
        if unlimited {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("429".to_string())
                .or_insert_with(|| RefOr::T(rate_limited.clone()));
        }
    }
}

/// How a node call is signed, for readers of the document (`api::node_auth` has the rest).
const NODE_MAC_DESCRIPTION: &str = "Node-to-node calls only. `Authorization: Stratus-Node-MAC v1 \
key=<key id>,ts=<unix seconds>,nonce=<32 hex>,mac=<64 hex>` with `x-stratus-content-sha256: <hex \
SHA-256 of the body>`. mac = hex HMAC-SHA256, under the key HKDF-SHA256(salt \"stratus cluster key\", \
cluster key, info \"stratus node api mac v1\") named by the first 4 bytes (hex) of SHA-256 of the \
cluster key, of the lines \"stratus node mac v1\", key id, METHOD, host[:port], path, query, body \
digest, ts, nonce, joined by \\n. Accepted within 30 s of the receiver's clock, once.";
