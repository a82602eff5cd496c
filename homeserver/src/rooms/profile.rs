//! Carrying a user's profile (display name, avatar) into the rooms they are joined to.
//!
//! Each room gets a new `m.room.member` event through the write pipeline, so a change costs
//! one event per room and cannot commit as one unit with the profile itself. Instead the
//! profile change leaves a mark in its own transaction (`profiles.propagation_pending`); the
//! mark is cleared once every room has the new event, and a server that stopped half-way
//! finishes the job at start-up ([`resume_pending`]). Propagating twice is harmless: a room
//! whose member event already shows the profile is skipped.

use ruma::UserId;

use super::{send, Send};
use crate::{error::Error, AppState};

/// Sends a new `m.room.member` event with the user's current profile into every room they are
/// joined to, where it differs from what the room shows.
pub async fn propagate(state: &AppState, user_id: &UserId, mark: i64) -> Result<(), Error> {
    let (displayname, avatar_url) = state
        .storage
        .get_profile(user_id.as_str())
        .await?
        .unwrap_or((None, None));
    for room in state
        .storage
        .rooms_for_user(user_id.as_str(), "join")
        .await?
    {
        let Ok(room_id) = ruma::RoomId::parse(&room) else {
            continue;
        };
        let Some((_, event_id)) = state.storage.membership(&room, user_id.as_str()).await? else {
            continue;
        };
        let Some(row) = state.storage.get_event(&event_id).await? else {
            continue;
        };
        let pdu: serde_json::Value = row.parse_pdu().map_err(Error::internal)?;
        let mut content = pdu["content"].clone();
        let unchanged = content["displayname"].as_str() == displayname.as_deref()
            && content["avatar_url"].as_str() == avatar_url.as_deref();
        if unchanged || content["membership"] != "join" {
            continue;
        }
        let Some(object) = content.as_object_mut() else {
            continue;
        };
        object.remove("reason");
        match &displayname {
            Some(name) => object.insert("displayname".into(), name.clone().into()),
            None => object.remove("displayname"),
        };
        match &avatar_url {
            Some(url) => object.insert("avatar_url".into(), url.clone().into()),
            None => object.remove("avatar_url"),
        };
        let Ok(ruma::CanonicalJsonValue::Object(content)) =
            ruma::CanonicalJsonValue::try_from(content)
        else {
            continue;
        };
        // One room refusing the update (e.g. a power level change) must not fail the others.
        if let Err(e) = send(
            state,
            &room_id,
            user_id,
            Send::state("m.room.member", user_id.as_str(), content),
        )
        .await
        {
            tracing::warn!(%room_id, %user_id, error = %e, "could not update the member event after a profile change");
        }
    }
    state
        .storage
        .profile_propagated(user_id.as_str(), mark)
        .await?;
    Ok(())
}

/// At start-up: finishes the propagations a stopped server left half-way. Runs in the
/// background; a failure is logged and retried at the next start.
pub async fn resume_pending(state: AppState) {
    let pending = match state.storage.pending_profile_propagations().await {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!(error = %e, "could not read unfinished profile propagations");
            return;
        }
    };
    for (user, mark) in pending {
        let Ok(user_id) = UserId::parse(&user) else {
            continue;
        };
        if let Err(e) = propagate(&state, &user_id, mark).await {
            tracing::warn!(%user_id, error = %e, "could not finish a profile propagation");
        }
    }
}
