//! `GET /rooms/{roomId}/initialSync`: a room's state and latest messages in one answer (a
//! deprecated endpoint some older clients and bots still call).
//!
//! <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidinitialsync>

use axum::{extract::State, Json};
use myelin_storage::{Direction as StorageDirection, TopologicalPosition};
use ruma::api::client::peeking::get_current_state;
use serde_json::{json, Value};

use super::message::{filtered_page, format_token, position};
use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{
        format::client_events,
        visibility::{readable_state, ReadableState, Visibility},
    },
    sync::filter::EventCheck,
    AppState,
};

/// Messages in the answer, as Synapse gives.
const MESSAGES: i64 = 20;

/// GET /_matrix/client/v3/rooms/{roomId}/initialSync
///
/// The state the user may read (current, or as of their leave), the latest messages they
/// may see up to then with tokens to page on, their membership and the room's directory
/// visibility. 403 for a user who may not read the room.
pub async fn room_initial_sync(
    State(state): State<AppState>,
    req: Ruma<get_current_state::v3::Request>,
) -> Result<Json<Value>> {
    let sender = req.sender();
    let room_id = &req.body.room_id;
    let readable = readable_state(&state, room_id.as_str(), &sender.user_id).await?;
    let room = state
        .storage
        .get_room(room_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room not found"))?;
    let membership = state
        .storage
        .membership(room_id.as_str(), sender.user_id.as_str())
        .await?;
    // Where the messages end: now, or the user's leave.
    let (snapshot, from) = match readable {
        ReadableState::Current => {
            let newest = TopologicalPosition {
                depth: i64::MAX,
                stream: i64::MAX,
            };
            (None, newest)
        }
        ReadableState::AtLeave(snapshot) => {
            let leave = match &membership {
                Some((_, event_id)) => state.storage.get_event(event_id).await?,
                None => None,
            };
            let at = leave
                .as_ref()
                .and_then(|row| position(row, 1))
                .ok_or_else(|| Error::forbidden("You cannot read this room"))?;
            (Some(snapshot), at)
        }
    };
    let page = filtered_page(
        &state,
        room_id,
        from,
        None,
        StorageDirection::Backward,
        MESSAGES,
        &EventCheck::default(),
    )
    .await?;
    let end = page.newest_read.unwrap_or(from);
    let start = page.end.unwrap_or(TopologicalPosition {
        depth: 0,
        stream: 0,
    });
    let mut visibility = Visibility::new(&state, &sender.user_id, room_id.as_str()).await?;
    let mut rows = visibility.filter(page.rows).await?;
    rows.reverse();
    let viewer = Some((&*sender.user_id, &*sender.device_id));
    let chunk = client_events(&state, &rows, viewer).await?;

    let state_ids: Vec<String> = match snapshot {
        Some(snapshot) => state.snapshot(snapshot).await?.values().cloned().collect(),
        None => state
            .storage
            .current_state(room_id.as_str())
            .await?
            .into_values()
            .collect(),
    };
    let state_rows = state.storage.get_events(&state_ids).await?;
    let state_events = client_events(&state, &state_rows, viewer).await?;
    // The user's own account data for this room (tags, markers), as Synapse gives.
    let account_data: Vec<Value> = state
        .storage
        .account_data_changes(sender.user_id.as_str(), 0, i64::MAX)
        .await?
        .into_iter()
        .filter(|change| change.room_id.as_deref() == Some(room_id.as_str()))
        .map(|change| {
            let content: Value = serde_json::from_str(&change.content).unwrap_or_default();
            json!({ "type": change.data_type, "content": content })
        })
        .collect();

    let mut response = json!({
        "room_id": room_id,
        "messages": { "chunk": chunk, "start": format_token(start), "end": format_token(end) },
        "state": state_events,
        "visibility": if room.is_public { "public" } else { "private" },
        "account_data": account_data,
    });
    if let Some((membership, _)) = membership {
        response["membership"] = membership.into();
    }
    Ok(Json(response))
}
