//! The "delivered" tick: when a user's device first receives an event, the server records a
//! receipt of type [`DELIVERED`] so that the sender can show it was delivered.
//!
//! Like `m.read`, it is a per-user watermark per room: the newest event of the room that
//! reached any of the user's devices. It is updated at most once per room per sync response,
//! so a busy room costs one small row update per member per delivery, not one row per member
//! per event; and deliveries are collected for a moment ([`BATCH`]) and written together, so
//! a message into a big room costs one transaction and one wake-up of its members. Clients
//! that do not know the type ignore it. `delivery_receipts = false` in the configuration
//! turns it off. See docs/delivered-receipts.md.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use myelin_storage::ReceiptRow;

use crate::{auth::now_ms, AppState};

/// The receipt type, in the project's own namespace.
pub const DELIVERED: &str = "io.myelin.delivered";

/// How long deliveries are collected before they are written and announced. One message into
/// a 200-member room reaches every member within milliseconds; collecting for this long
/// makes their 200 receipts one transaction and one wake-up of the room, instead of 200
/// writes each waking 200 members.
const BATCH: Duration = Duration::from_millis(50);

/// `(room ID, user ID)` → (event ID, its stream position if known).
type Pending = HashMap<(String, String), (String, Option<i64>)>;

/// Deliveries waiting for the recorder: the newest event per `(room, user)`.
#[derive(Default)]
pub struct Deliveries {
    /// A std mutex: held only to merge in or take the map.
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

/// A sync response handed `user` these `(room ID, event ID, position)` (the newest event
/// from someone else per joined room, see
/// [`super::response::SyncResponse::newest_from_others`]): queue them for the recorder.
pub fn record(state: &AppState, user: &str, delivered: Vec<(String, String, Option<i64>)>) {
    if delivered.is_empty() {
        return;
    }
    let mut pending = state
        .deliveries
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (room_id, event_id, position) in delivered {
        let entry = pending
            .entry((room_id, user.to_owned()))
            .or_insert((event_id.clone(), position));
        // Keep the newest; an unknown position is resolved (and compared) by the recorder.
        let newer = match (entry.1, position) {
            (Some(known), Some(new)) => new > known,
            _ => true,
        };
        if newer {
            *entry = (event_id, position);
        }
    }
    drop(pending);
    state.deliveries.wake.notify_one();
}

/// The recorder: collects deliveries for [`BATCH`], keeps those that move a watermark
/// forward, writes them in one transaction and wakes each affected room once. The only
/// writer of our users' delivered receipts (other servers' users' come in over federation,
/// `api::federation`), so it keeps the watermarks it knows in memory (loaded per room on
/// first use; bounded by clearing).
pub async fn recorder(state: AppState) {
    let mut watermarks: HashMap<String, HashMap<String, i64>> = HashMap::new();
    loop {
        state.deliveries.wake.notified().await;
        tokio::time::sleep(BATCH).await;
        let batch = std::mem::take(
            &mut *state
                .deliveries
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if let Err(e) = write_batch(&state, &mut watermarks, batch).await {
            tracing::warn!(error = %e, "could not record delivery receipts");
            // What is cached may be ahead of what was written: start afresh.
            watermarks.clear();
        }
    }
}

/// Watermarks kept in memory before the cache is cleared (~100 bytes each).
const MAX_WATERMARKS: usize = 200_000;

async fn write_batch(
    state: &AppState,
    watermarks: &mut HashMap<String, HashMap<String, i64>>,
    batch: Pending,
) -> Result<(), crate::error::Error> {
    if watermarks.values().map(HashMap::len).sum::<usize>() > MAX_WATERMARKS {
        watermarks.clear();
    }
    let now = now_ms();
    let mut rows = Vec::new();
    let mut moved: Vec<(String, String, i64)> = Vec::new();
    for ((room_id, user_id), (event_id, position)) in batch {
        let position = match position {
            Some(p) => p,
            None => match state.storage.get_event(&event_id).await? {
                Some(row) => match row.stream_ordering {
                    Some(p) => p,
                    None => continue,
                },
                None => continue,
            },
        };
        if !watermarks.contains_key(&room_id) {
            let known = state.storage.receipt_positions(&room_id, DELIVERED).await?;
            watermarks.insert(room_id.clone(), known);
        }
        let current = watermarks
            .get(&room_id)
            .and_then(|room| room.get(&user_id))
            .copied();
        if current.is_some_and(|c| c >= position) {
            continue;
        }
        rows.push(ReceiptRow {
            room_id: room_id.clone(),
            user_id: user_id.clone(),
            receipt_type: DELIVERED.to_owned(),
            thread_id: None,
            event_id,
            ts: now,
        });
        moved.push((room_id, user_id, position));
    }
    if rows.is_empty() {
        return Ok(());
    }
    state.storage.set_receipts(&rows).await?;
    for (room_id, user_id, position) in &moved {
        watermarks
            .entry(room_id.clone())
            .or_default()
            .insert(user_id.clone(), *position);
    }
    let mut rooms: Vec<&str> = moved.iter().map(|(room, _, _)| room.as_str()).collect();
    rooms.sort_unstable();
    rooms.dedup();
    for room_id in &rooms {
        state.wake_room(room_id).await?;
    }
    // The other servers in these rooms hear of them as receipts of this type, one EDU per
    // room (servers that do not know the type ignore it, as clients do).
    for room_id in rooms {
        let mut users = serde_json::Map::new();
        for row in rows.iter().filter(|r| r.room_id == room_id) {
            users.insert(
                row.user_id.clone(),
                serde_json::json!({ "event_ids": [row.event_id], "data": { "ts": row.ts } }),
            );
        }
        let edu = serde_json::json!({
            "edu_type": "m.receipt",
            "content": { room_id: { DELIVERED: users } },
        });
        crate::federation::sender::send_edu(state, room_id, edu).await;
    }
    Ok(())
}
