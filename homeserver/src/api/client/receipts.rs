//! Typing, read receipts and read markers.
//!
//! <https://spec.matrix.org/latest/client-server-api/#typing-notifications>
//! <https://spec.matrix.org/latest/client-server-api/#receipts>
//! <https://spec.matrix.org/latest/client-server-api/#fully-read-markers>

use std::time::{Duration, Instant};

use axum::extract::State;
use ruma::{
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
        typing::create_typing_event::{self, v3::Typing},
    },
    events::receipt::ReceiptThread,
    EventId, RoomId, UserId,
};

use super::room::require_joined;
use crate::{
    api::ruma::Ruma,
    auth::now_ms,
    error::{Error, Result},
    AppState,
};

/// PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}
pub async fn create_typing_event(
    State(state): State<AppState>,
    req: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response> {
    let user = &req.sender().user_id;
    if *user != req.body.user_id {
        return Err(Error::forbidden(
            "You cannot set another user's typing state",
        ));
    }
    require_joined(&state, &req.body.room_id, user).await?;
    let (typing, timeout) = match req.body.state {
        Typing::Yes(ref info) => (true, info.timeout),
        Typing::No => (false, Duration::ZERO),
    };
    let timeout = if timeout.is_zero() {
        crate::typing::DEFAULT_TIMEOUT
    } else {
        timeout
    };
    if state.typing.set(
        req.body.room_id.as_str(),
        user.as_str(),
        typing,
        timeout,
        Instant::now(),
    ) {
        state.wake_room(req.body.room_id.as_str()).await?;
        let edu = serde_json::json!({
            "edu_type": "m.typing",
            "content": { "room_id": req.body.room_id, "user_id": user, "typing": typing },
        });
        crate::federation::sender::send_edu(&state, req.body.room_id.as_str(), edu).await;
    }
    if typing {
        crate::presence_active(&state, user.as_str()).await;
    }
    Ok(create_typing_event::v3::Response::new())
}

/// Checks that the event exists in the room and the user may see it, then moves the receipt.
async fn store_receipt(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    receipt_type: &str,
    thread_id: Option<String>,
    event_id: &EventId,
) -> Result<()> {
    let edu_thread = thread_id.clone();
    let row = state
        .storage
        .get_event(event_id.as_str())
        .await?
        .filter(|r| r.room_id == room_id.as_str())
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let mut visibility =
        crate::rooms::visibility::Visibility::new(state, user, room_id.as_str()).await?;
    if !visibility.allows(&row).await? {
        return Err(Error::not_found("Event not found"));
    }
    let moved = state
        .storage
        .set_receipt(&myelin_storage::ReceiptRow {
            room_id: room_id.to_string(),
            user_id: user.to_string(),
            receipt_type: receipt_type.to_owned(),
            thread_id,
            event_id: event_id.to_string(),
            ts: now_ms(),
        })
        .await?;
    if moved.is_none() {
        // For an earlier event than the current receipt: ignored, and the request still
        // succeeds (as on Synapse), since clients send receipts out of order.
        return Ok(());
    }
    if receipt_type == "m.read.private" {
        state.notifier.notify([user.as_str()]);
    } else {
        state.wake_room(room_id.as_str()).await?;
    }
    if receipt_type == "m.read" {
        // Public receipts go to the other servers in the room.
        let mut data = serde_json::json!({ "ts": now_ms() });
        if let Some(thread) = &edu_thread {
            data["thread_id"] = thread.clone().into();
        }
        let edu = serde_json::json!({
            "edu_type": "m.receipt",
            "content": { room_id.as_str(): { "m.read": { user.as_str(): {
                "event_ids": [event_id],
                "data": data,
            } } } },
        });
        crate::federation::sender::send_edu(state, room_id.as_str(), edu).await;
    }
    if matches!(receipt_type, "m.read" | "m.read.private") {
        // The user's other devices get the new badge.
        state.pushers.receipt(user.as_str());
    }
    Ok(())
}

/// Moves the `m.fully_read` marker to `event_id`, unless it already points at a later event
/// (then, like a receipt, it stays and the request still succeeds).
async fn set_fully_read(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    event_id: &EventId,
) -> Result<()> {
    let current = state
        .storage
        .get_account_data(user.as_str(), Some(room_id.as_str()), "m.fully_read")
        .await?
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v["event_id"].as_str().map(str::to_owned));
    if let Some(current) = current {
        let after = state
            .storage
            .event_is_after(event_id.as_str(), &current)
            .await?;
        if after == Some(false) {
            return Ok(());
        }
    }
    let content = serde_json::json!({ "event_id": event_id }).to_string();
    super::account_data::write_account_data(state, user, Some(room_id), "m.fully_read", &content)
        .await
}

/// POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}
pub async fn create_receipt(
    State(state): State<AppState>,
    req: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response> {
    let user = &req.sender().user_id;
    require_joined(&state, &req.body.room_id, user).await?;
    let thread_id = match &req.body.thread {
        ReceiptThread::Unthreaded => None,
        ReceiptThread::Main => Some("main".to_owned()),
        ReceiptThread::Thread(id) => Some(id.to_string()),
        _ => None,
    };
    match &req.body.receipt_type {
        ReceiptType::FullyRead => {
            set_fully_read(&state, &req.body.room_id, user, &req.body.event_id).await?;
        }
        other => {
            let receipt_type = other.to_string();
            if receipt_type != "m.read" && receipt_type != "m.read.private" {
                return Err(Error::invalid_param(format!(
                    "Unknown receipt type {receipt_type}"
                )));
            }
            store_receipt(
                &state,
                &req.body.room_id,
                user,
                &receipt_type,
                thread_id,
                &req.body.event_id,
            )
            .await?;
        }
    }
    crate::presence_active(&state, user.as_str()).await;
    Ok(create_receipt::v3::Response::new())
}

/// POST /_matrix/client/v3/rooms/{roomId}/read_markers
pub async fn set_read_marker(
    State(state): State<AppState>,
    req: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response> {
    let user = &req.sender().user_id;
    let room_id = &req.body.room_id;
    require_joined(&state, room_id, user).await?;
    if let Some(event_id) = &req.body.fully_read {
        set_fully_read(&state, room_id, user, event_id).await?;
    }
    if let Some(event_id) = &req.body.read_receipt {
        store_receipt(&state, room_id, user, "m.read", None, event_id).await?;
    }
    if let Some(event_id) = &req.body.private_read_receipt {
        store_receipt(&state, room_id, user, "m.read.private", None, event_id).await?;
    }
    Ok(set_read_marker::v3::Response::new())
}
