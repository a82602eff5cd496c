//! The user directory: finding people to talk to ("Start chat", invite dialogs).
//!
//! <https://spec.matrix.org/latest/client-server-api/#user-directory>
//!
//! The index and its visibility rules live in storage (`directory.rs`); this module reads the
//! request and the server's policy. [`backfill`] fills the index at start-up with what was
//! there before it existed.

use axum::extract::State;
use ruma::{api::client::user_directory::search_users, OwnedMxcUri, OwnedUserId};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    AppState,
};

/// Most users one search returns, whatever the client asks for.
const MAX_LIMIT: usize = 100;

/// POST /_matrix/client/v3/user_directory/search
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3user_directorysearch>
///
/// Users every word of the search term starts a word of (of their user ID or display name,
/// case and accents ignored), among those the searcher shares a room with and those in public
/// rooms (every local user when `user_directory.search_all_users` is set). `limited` says
/// there were more.
pub async fn search_user_directory(
    State(state): State<AppState>,
    req: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response> {
    let sender = &req.sender().user_id;
    let limit = usize::try_from(u64::from(req.body.limit))
        .unwrap_or(MAX_LIMIT)
        .min(MAX_LIMIT);
    let (found, mut limited) = state
        .storage
        .search_user_directory(
            sender.as_str(),
            &req.body.search_term,
            limit,
            state.config.user_directory.search_all_users,
        )
        .await?;
    if u64::from(req.body.limit) > MAX_LIMIT as u64 && found.len() == MAX_LIMIT {
        limited = true;
    }
    let results = found
        .into_iter()
        .filter_map(|row| {
            let mut user = search_users::v3::User::new(OwnedUserId::try_from(row.user_id).ok()?);
            user.display_name = row.displayname;
            user.avatar_url = row.avatar_url.map(OwnedMxcUri::from);
            Some(user)
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}

/// At start-up: copies the join rule and history visibility of rooms created before the
/// directory existed onto their rows, then adds the users registered before it. Runs in the
/// background; a failure is logged and the rest is done at the next start.
pub async fn backfill(state: AppState) {
    if let Err(e) = backfill_rooms(&state).await {
        tracing::warn!(error = %e, "could not fill in the user directory's room settings");
        return;
    }
    match state.storage.backfill_user_directory().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(users = n, "added users to the user directory"),
        Err(e) => tracing::warn!(error = %e, "could not add users to the user directory"),
    }
}

async fn backfill_rooms(state: &AppState) -> Result<()> {
    for room_id in state.storage.rooms_missing_directory_settings().await? {
        let join_rule = setting(state, &room_id, "m.room.join_rules", "join_rule").await?;
        let visibility = setting(
            state,
            &room_id,
            "m.room.history_visibility",
            "history_visibility",
        )
        .await?;
        state
            .storage
            .set_room_directory_settings(&room_id, join_rule.as_deref(), visibility.as_deref())
            .await?;
    }
    Ok(())
}

/// A string field of a room's current state event of `event_type` (state key `""`).
async fn setting(
    state: &AppState,
    room_id: &str,
    event_type: &str,
    field: &str,
) -> Result<Option<String>> {
    let Some(event_id) = state
        .storage
        .current_state_event(room_id, event_type, "")
        .await?
    else {
        return Ok(None);
    };
    let Some(row) = state.storage.get_event(&event_id).await? else {
        return Ok(None);
    };
    let pdu: serde_json::Value = row.parse_pdu().map_err(Error::internal)?;
    Ok(Some(
        pdu["content"][field]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ))
}
