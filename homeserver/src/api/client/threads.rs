//! The thread list of a room.
//!
//! <https://spec.matrix.org/latest/client-server-api/#threading>

use axum::extract::State;
use ruma::api::client::threads::get_threads::{self, v1::IncludeThreads};

use super::room::raw;
use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{
        format::client_events,
        visibility::{readable_state, Visibility},
    },
    AppState,
};

/// Threads per page when the client names no limit, and the most it may ask for.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

/// GET /_matrix/client/v1/rooms/{roomId}/threads
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1roomsroomidthreads>
///
/// The room's thread roots the user may see, the thread with the latest reply first, each
/// with its summary; `include=participated` keeps the threads the user sent the root of or
/// replied to. `next_batch` is the latest-reply position to continue below.
pub async fn get_threads(
    State(state): State<AppState>,
    req: Ruma<get_threads::v1::Request>,
) -> Result<get_threads::v1::Response> {
    let sender = req.sender();
    let room_id = req.body.room_id.as_str();
    readable_state(&state, room_id, &sender.user_id).await?;
    let participated = match &req.body.include {
        IncludeThreads::All => false,
        IncludeThreads::Participated => true,
        other => {
            return Err(Error::invalid_param(format!(
                "Unknown include {:?}",
                other.as_str()
            )))
        }
    };
    let mut before = match req.body.from.as_deref() {
        Some(token) => Some(
            token
                .strip_prefix('t')
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| Error::invalid_param("Invalid from token"))?,
        ),
        None => None,
    };
    let limit = req
        .body
        .limit
        .map_or(DEFAULT_LIMIT, |l| u64::from(l) as usize)
        .clamp(1, MAX_LIMIT);
    let mut visibility = Visibility::new(&state, &sender.user_id, room_id).await?;
    let mut roots = Vec::new();
    let mut next_batch = None;
    // Roots the user may not see (sent before they could read the room) are skipped, so a
    // page may need several reads.
    'pages: loop {
        let threads = state
            .storage
            .room_threads(
                room_id,
                sender.user_id.as_str(),
                participated,
                before,
                limit + 1,
            )
            .await?;
        let exhausted = threads.len() <= limit;
        let ids: Vec<String> = threads.iter().map(|t| t.root_event_id.clone()).collect();
        let rows = state.storage.get_events(&ids).await?;
        for thread in &threads {
            if roots.len() == limit {
                next_batch = before.map(|b| format!("t{b}"));
                break 'pages;
            }
            before = Some(thread.latest_stream);
            let Some(row) = rows.iter().find(|r| r.event_id == thread.root_event_id) else {
                continue;
            };
            if row.room_id != room_id || row.rejected || !visibility.allows(row).await? {
                continue;
            }
            roots.push(row.clone());
        }
        if exhausted {
            break;
        }
    }
    let viewer = Some((&*sender.user_id, &*sender.device_id));
    let chunk = client_events(&state, &roots, viewer)
        .await?
        .iter()
        .map(raw)
        .collect::<Result<_>>()?;
    let mut response = get_threads::v1::Response::new(chunk);
    response.next_batch = next_batch;
    Ok(response)
}
