//! Presence.
//!
//! <https://spec.matrix.org/latest/client-server-api/#presence>

use std::time::Duration;

use axum::extract::State;
use ruma::{
    api::client::presence::{get_presence, set_presence},
    presence::PresenceState,
};

use crate::{
    api::ruma::Ruma,
    auth::now_ms,
    error::{Error, Result},
    AppState,
};

/// GET /_matrix/client/v3/presence/{userId}/status
///
/// Only the user and people who share a room with them may see it.
pub async fn get_presence(
    State(state): State<AppState>,
    req: Ruma<get_presence::v3::Request>,
) -> Result<get_presence::v3::Response> {
    if !state.config.presence.enabled {
        return Err(Error::forbidden("Presence is disabled on this server"));
    }
    let requester = &req.sender().user_id;
    let target = &req.body.user_id;
    // A local user must exist; another server's user is known by sharing a room (below).
    if target.server_name() == state.server_name
        && state.storage.get_user(target.as_str()).await?.is_none()
    {
        return Err(Error::not_found("No such user"));
    }
    if requester != target
        && !crate::co_members(&state, requester.as_str())
            .await?
            .iter()
            .any(|u| u == target.as_str())
    {
        return Err(Error::forbidden("You do not share a room with this user"));
    }
    let content = state.presence.get(target.as_str(), now_ms());
    let presence = PresenceState::from(content["presence"].as_str().unwrap_or("offline"));
    let mut response = get_presence::v3::Response::new(presence);
    response.status_msg = content["status_msg"].as_str().map(str::to_owned);
    response.currently_active = content["currently_active"].as_bool();
    response.last_active_ago = content["last_active_ago"]
        .as_u64()
        .map(Duration::from_millis);
    Ok(response)
}

/// PUT /_matrix/client/v3/presence/{userId}/status
pub async fn set_presence(
    State(state): State<AppState>,
    req: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response> {
    if !state.config.presence.enabled {
        return Err(Error::forbidden("Presence is disabled on this server"));
    }
    let user = &req.sender().user_id;
    if *user != req.body.user_id {
        return Err(Error::forbidden("You cannot set another user's presence"));
    }
    let presence = req.body.presence.to_string();
    if !matches!(presence.as_str(), "online" | "offline" | "unavailable") {
        return Err(Error::invalid_param(format!(
            "Unknown presence state {presence}"
        )));
    }
    if state.presence.set(
        user.as_str(),
        &presence,
        Some(req.body.status_msg.clone()),
        now_ms(),
    ) {
        crate::announce_presence(&state, user.as_str()).await;
    }
    Ok(set_presence::v3::Response::new())
}
