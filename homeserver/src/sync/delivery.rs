//! The "delivered" tick: when a user's device first receives an event, the server records a
//! receipt of type [`DELIVERED`] so that the sender can show it was delivered.
//!
//! Like `m.read`, it is a per-user watermark per room: the newest event of the room that
//! reached any of the user's devices. It is updated at most once per room per sync response,
//! so a busy room costs one small row update per member per delivery, not one row per member
//! per event. Clients that do not know the type ignore it. `delivery_receipts = false` in the
//! configuration turns it off. See docs/delivered-receipts.md.

use crate::{auth::now_ms, AppState};

/// The receipt type, in the project's own namespace.
pub const DELIVERED: &str = "io.myelin.delivered";

/// Records delivery of `(room ID, event ID)` pairs, the newest event from someone else in
/// each joined room of a response ([`super::response::SyncResponse::newest_from_others`]).
/// Runs after the response is sent; failures are logged, never shown to the client.
pub async fn record(state: AppState, user: String, delivered: Vec<(String, String)>) {
    for (room_id, event_id) in delivered {
        if let Err(e) = advance(&state, &room_id, &user, &event_id).await {
            tracing::warn!(%room_id, %user, error = %e, "could not record a delivery receipt");
        }
    }
}

async fn advance(
    state: &AppState,
    room_id: &str,
    user: &str,
    event_id: &str,
) -> Result<(), crate::error::Error> {
    let Some(row) = state.storage.get_event(event_id).await? else {
        return Ok(());
    };
    let Some(position) = row.stream_ordering else {
        return Ok(());
    };
    let current = state
        .storage
        .receipt_position(room_id, user, DELIVERED)
        .await?;
    if current.is_some_and(|c| c >= position) {
        return Ok(());
    }
    state
        .storage
        .set_receipt(&myelin_storage::ReceiptRow {
            room_id: room_id.to_owned(),
            user_id: user.to_owned(),
            receipt_type: DELIVERED.to_owned(),
            thread_id: None,
            event_id: event_id.to_owned(),
            ts: now_ms(),
        })
        .await?;
    state.wake_room(room_id).await
}
