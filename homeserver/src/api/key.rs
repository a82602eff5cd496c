//! Publishing the server's signing key: `GET /_matrix/key/v2/server`.
//!
//! <https://spec.matrix.org/latest/server-server-api/#publishing-keys>

use axum::{extract::State, routing::get, Json, Router};

use crate::{auth::now_ms, error::Error, AppState};

/// How long peers may cache our key before asking again.
const KEY_VALIDITY_MS: i64 = 7 * 24 * 60 * 60 * 1000;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router.route("/_matrix/key/v2/server", get(get_server_keys))
}

/// GET /_matrix/key/v2/server
///
/// This server's current verify key, self-signed.
async fn get_server_keys(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Error> {
    let valid_until = (now_ms() + KEY_VALIDITY_MS) as u64;
    let doc = state
        .signing_key
        .server_keys_document(state.server_name.as_str(), valid_until)
        .map_err(Error::internal)?;
    Ok(Json(serde_json::to_value(doc).map_err(Error::internal)?))
}
