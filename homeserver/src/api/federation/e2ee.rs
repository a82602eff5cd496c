//! End-to-end encryption keys of our users, for other servers: the endpoints their
//! `/keys/query` and `/keys/claim` fan out to, and the device-list resync.
//!
//! <https://spec.matrix.org/latest/server-server-api/#end-to-end-encryption>
//!
//! Any authenticated server may ask (as with Synapse): public keys are public, and a server
//! must be able to encrypt for a user before they share a room. Device display names are not
//! shown (Synapse's default), nor user-signing keys.

use std::collections::BTreeMap;

use axum::{
    extract::State,
    routing::{get, post},
    Json, Router,
};
use ruma::{OneTimeKeyAlgorithm, OwnedDeviceId, OwnedUserId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    api::client::keys::{claim_local_keys, local_keys},
    error::Error,
    federation::inbound::ServerRequest,
    AppState,
};

/// Most users one query may name, and most devices one claim may name.
const MAX_USERS_PER_QUERY: usize = 1000;
const MAX_DEVICES_PER_CLAIM: usize = 1000;

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/_matrix/federation/v1/user/keys/query", post(query_keys))
        .route("/_matrix/federation/v1/user/keys/claim", post(claim_keys))
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(get_devices),
        )
}

fn body<T: for<'de> Deserialize<'de>>(request: &ServerRequest) -> Result<T, Error> {
    serde_json::from_slice(&request.body).map_err(|e| Error::bad_json(format!("Invalid body: {e}")))
}

#[derive(Deserialize)]
struct QueryBody {
    device_keys: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
}

/// POST /_matrix/federation/v1/user/keys/query
///
/// The device keys (of the named devices, or all for an empty list), master and
/// self-signing keys of our users among those named; others are left out.
///
/// <https://spec.matrix.org/latest/server-server-api/#post_matrixfederationv1userkeysquery>
async fn query_keys(
    State(state): State<AppState>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let body = body::<QueryBody>(&request)?;
    if body.device_keys.len() > MAX_USERS_PER_QUERY {
        return Err(Error::invalid_param(format!(
            "At most {MAX_USERS_PER_QUERY} users per query"
        )));
    }
    let keys = local_keys(&state, &body.device_keys, None).await?;
    Ok(Json(json!({
        "device_keys": keys.device_keys,
        "master_keys": keys.master_keys,
        "self_signing_keys": keys.self_signing_keys,
    })))
}

#[derive(Deserialize)]
struct ClaimBody {
    one_time_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
}

/// POST /_matrix/federation/v1/user/keys/claim
///
/// One key of each named device of our users (a one-time key, each handed out once, else
/// the fallback key), as `/keys/claim` does for our own users.
///
/// <https://spec.matrix.org/latest/server-server-api/#post_matrixfederationv1userkeysclaim>
async fn claim_keys(
    State(state): State<AppState>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let body = body::<ClaimBody>(&request)?;
    let devices: usize = body.one_time_keys.values().map(BTreeMap::len).sum();
    if devices > MAX_DEVICES_PER_CLAIM {
        return Err(Error::invalid_param(format!(
            "At most {MAX_DEVICES_PER_CLAIM} devices per claim"
        )));
    }
    let claimed = claim_local_keys(&state, &body.one_time_keys).await?;
    Ok(Json(json!({ "one_time_keys": claimed })))
}

/// GET /_matrix/federation/v1/user/devices/{userId}
///
/// All devices of one of our users with their keys, the cross-signing keys, and the
/// `stream_id` of the latest change (what the next `m.device_list_update` follows).
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1userdevicesuserid>
async fn get_devices(
    State(state): State<AppState>,
    axum::extract::Path(user_id): axum::extract::Path<String>,
    _request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let user = OwnedUserId::try_from(user_id.as_str())
        .map_err(|_| Error::invalid_param("Invalid user ID"))?;
    if !crate::e2ee::is_local(&state, &user) {
        return Err(Error::invalid_param("Not a user of this server"));
    }
    // Read before the keys: a change committed in between is then announced with a later
    // stream_id, never lost.
    let stream_id = state.storage.device_list_position(user.as_str()).await?;
    let keys = local_keys(&state, &BTreeMap::from([(user.clone(), Vec::new())]), None).await?;
    let devices: Vec<Value> = keys
        .device_keys
        .get(&user)
        .into_iter()
        .flatten()
        .map(|(device_id, keys)| json!({ "device_id": device_id, "keys": keys }))
        .collect();
    let mut answer = json!({ "user_id": user, "stream_id": stream_id, "devices": devices });
    if let Some(key) = keys.master_keys.get(&user) {
        answer["master_key"] = serde_json::to_value(key).map_err(Error::internal)?;
    }
    if let Some(key) = keys.self_signing_keys.get(&user) {
        answer["self_signing_key"] = serde_json::to_value(key).map_err(Error::internal)?;
    }
    Ok(Json(answer))
}
