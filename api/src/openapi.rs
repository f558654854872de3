//! The OpenAPI 3 document, derived per router module from the handlers and merged here
//! (quickwit's `openapi.rs::build_docs`), served at `GET /v1/openapi.json`.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::routes::{apps::AppsApi, blobs::BlobsApi, internal::InternalApi, nodes::NodesApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stratus API",
        description = "Every agent serves the whole API and answers reads from its own view \
                       of the cluster. Users present the agents' --api-token as a bearer \
                       token; the internal routes take the node token derived from the \
                       cluster key."
    ),
    tags(
        (name = "apps", description = "deploys, releases, scale, rollback, restart, logs"),
        (name = "nodes", description = "health, the cluster's nodes, drains"),
        (name = "internal", description = "node-to-node calls"),
    )
)]
struct StratusApi;

/// The whole document.
pub fn build_docs() -> utoipa::openapi::OpenApi {
    let mut docs = StratusApi::openapi();
    docs.merge(NodesApi::openapi());
    docs.merge(AppsApi::openapi());
    docs.merge(BlobsApi::openapi());
    docs.merge(InternalApi::openapi());
    let components = docs.components.get_or_insert_with(Default::default);
    for name in ["token", "node_token"] {
        components.add_security_scheme(
            name,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
    docs
}
