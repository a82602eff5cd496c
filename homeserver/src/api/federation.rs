//! The server-server (federation) API, served on its own TLS listener
//! (`federation_listen`): for now the server's version, its signing keys and the OpenID
//! lookup integrations use. The rest of federation (issue 14) lands here.
//!
//! <https://spec.matrix.org/latest/server-server-api/>

use axum::{routing::get, Json, Router};
use serde_json::{json, Value};

use super::{key, method_not_allowed, timed_to_completion, unknown_endpoint};
use crate::AppState;

/// The routes of the federation listener.
pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/_matrix/federation/v1/version", get(version))
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(super::client::openid::openid_userinfo),
        );
    key::routes(router)
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(timed_to_completion))
        .with_state(state)
}

/// GET /_matrix/federation/v1/version
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1version>
async fn version() -> Json<Value> {
    Json(json!({
        "server": { "name": "Myelin", "version": env!("CARGO_PKG_VERSION") }
    }))
}
