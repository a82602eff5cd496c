//! The server-server (federation) API, served on its own TLS listener
//! (`federation_listen`): for now the server's version, its signing keys and the OpenID
//! lookup integrations use. The rest of federation (issue 14) lands here.
//!
//! <https://spec.matrix.org/latest/server-server-api/>

use axum::{extract::State, routing::get, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{key, method_not_allowed, timed_to_completion, unknown_endpoint};
use crate::{error::Error, federation::inbound::ServerRequest, AppState};

/// The routes of the federation listener.
pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/_matrix/federation/v1/version", get(version))
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(super::client::openid::openid_userinfo),
        )
        .route("/_matrix/federation/v1/query/profile", get(query_profile));
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

#[derive(Deserialize)]
struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

/// GET /_matrix/federation/v1/query/profile
///
/// A local user's display name and avatar (or the one `field`), for an authenticated server.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1queryprofile>
async fn query_profile(
    State(state): State<AppState>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let query = axum::extract::Query::<ProfileQuery>::try_from_uri(&request.parts.uri)
        .map_err(|e| Error::missing_param(format!("Invalid query: {e}")))?
        .0;
    let user_id = ruma::UserId::parse(&query.user_id)
        .map_err(|e| Error::invalid_param(format!("Invalid user_id: {e}")))?;
    if user_id.server_name() != state.server_name {
        return Err(Error::invalid_param(
            "The user is not hosted on this server",
        ));
    }
    let (displayname, avatar_url) = state
        .storage
        .get_profile(user_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Profile not found"))?;
    let mut profile = serde_json::Map::new();
    let wanted = |name: &str| query.field.as_deref().is_none_or(|f| f == name);
    if let (true, Some(name)) = (wanted("displayname"), displayname) {
        profile.insert("displayname".into(), name.into());
    }
    if let (true, Some(url)) = (wanted("avatar_url"), avatar_url) {
        profile.insert("avatar_url".into(), url.into());
    }
    Ok(Json(Value::Object(profile)))
}
