//! Thread summaries: what a thread root carries in `unsigned.m.relations.m.thread` (the latest
//! reply, the number of replies, whether the viewer took part), in every response that shows
//! the root (`/sync`, `/messages`, `/event`, `/context`, search).
//!
//! <https://spec.matrix.org/latest/client-server-api/#server-side-aggregation-of-mthread-relationships>
//!
//! The threads themselves are kept by storage (`threads.rs`) in the event transactions; rooms
//! without threads are known from memory, so their events cost no query here.

use std::collections::{HashMap, HashSet};

use myelin_storage::EventRow;
use ruma::UserId;
use serde_json::{json, Value};

use crate::{error::Error, rooms::format::client_events_unbundled, AppState};

/// The events among `rows` that are thread roots (in rooms that have threads at all).
pub async fn roots_among(state: &AppState, rows: &[EventRow]) -> Result<HashSet<String>, Error> {
    let candidates = candidates(state, rows).await?;
    if candidates.is_empty() {
        return Ok(HashSet::new());
    }
    // Whose summary it is does not matter for whether there is one.
    let found = state.storage.thread_summaries(&candidates, "").await?;
    Ok(found.into_keys().collect())
}

/// Rows of rooms with threads that could be roots (a reply is not a root).
async fn candidates<'a>(state: &AppState, rows: &'a [EventRow]) -> Result<Vec<&'a str>, Error> {
    let mut threaded: HashMap<&str, bool> = HashMap::new();
    let mut out = Vec::new();
    for row in rows {
        if row.state_key.is_some() || row.rejected {
            continue;
        }
        let has = match threaded.get(row.room_id.as_str()) {
            Some(has) => *has,
            None => {
                let has = state.storage.room_has_threads(&row.room_id).await?;
                threaded.insert(&row.room_id, has);
                has
            }
        };
        if has {
            out.push(row.event_id.as_str());
        }
    }
    Ok(out)
}

/// `{"m.thread": {...}}` for each thread root among `rows`, as `user` sees it.
pub async fn summaries(
    state: &AppState,
    rows: &[EventRow],
    user: &UserId,
) -> Result<HashMap<String, Value>, Error> {
    let candidates = candidates(state, rows).await?;
    if candidates.is_empty() {
        return Ok(HashMap::new());
    }
    let threads = state
        .storage
        .thread_summaries(&candidates, user.as_str())
        .await?;
    if threads.is_empty() {
        return Ok(HashMap::new());
    }
    let latest_ids: Vec<String> = threads
        .values()
        .map(|t| t.latest_event_id.clone())
        .collect();
    let latest_rows = state.storage.get_events(&latest_ids).await?;
    let formatted = client_events_unbundled(state, &latest_rows, None).await?;
    let latest: HashMap<&str, Value> = latest_rows
        .iter()
        .zip(formatted)
        .filter_map(|(row, event)| Some((row.event_id.as_str(), event?)))
        .collect();
    Ok(threads
        .into_iter()
        .filter_map(|(root, thread)| {
            let event = latest.get(thread.latest_event_id.as_str())?.clone();
            Some((
                root,
                json!({ "m.thread": {
                    "latest_event": event,
                    "count": thread.reply_count,
                    "current_user_participated": thread.participated,
                } }),
            ))
        })
        .collect())
}
