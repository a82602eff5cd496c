//! Voice over IP: TURN server credentials.
//!
//! <https://spec.matrix.org/latest/client-server-api/#voice-over-ip>

use axum::{extract::State, response::IntoResponse, Json};
use ruma::api::client::voip::get_turn_server_info;
use serde_json::json;

use crate::{api::ruma::Ruma, error::Result, AppState};

/// GET /_matrix/client/v3/voip/turnServer
///
/// Myelin has no TURN server to hand out credentials for, so it answers 200 with an empty
/// object, as Synapse does when no `turn_uris` are configured. The spec's response has every
/// field required, but clients (matrix-js-sdk, which Element Web asks at every start and then
/// every minute) read the missing `uris` as "no TURN server" and fall back to STUN or direct
/// connections; a 404 would instead be logged as a failure and retried. ruma's response type
/// cannot be empty, hence the raw JSON.
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3voipturnserver>
pub async fn get_turn_server_info(
    State(_state): State<AppState>,
    _req: Ruma<get_turn_server_info::v3::Request>,
) -> Result<impl IntoResponse> {
    Ok(Json(json!({})))
}
