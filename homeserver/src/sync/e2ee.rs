//! The end-to-end encryption sections of a sync response, for both transports.
//!
//! <https://spec.matrix.org/latest/client-server-api/#extensions-to-sync>
//! <https://spec.matrix.org/latest/client-server-api/#extensions-to-sync-1> (to-device)
//!
//! For a response covering `(since, upto]` of the global stream:
//! - `to_device.events`: the device's inbox messages in `(since, upto]` (all of it up to
//!   `upto` on an initial sync), in order. Computing a response deletes nothing: messages
//!   leave the inbox only when the device presents a token at or past them
//!   ([`acknowledge`], called by the transports), so a response lost on the way is sent
//!   again to a client retrying with its old token, and each message is processed once by a
//!   client that keeps its tokens. A response carries at most
//!   [`MAX_TO_DEVICE_PER_RESPONSE`] of them: [`capped_upto`] ends the whole response early
//!   when more are waiting.
//! - `device_lists.changed` / `left` (incremental syncs only): see [`device_list_changes`].
//! - `device_one_time_keys_count` (with `signed_curve25519` always present) and
//!   `device_unused_fallback_key_types`, in every response.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::SyncRequest;
use crate::{error::Error, AppState};

/// Adds the encryption sections to a response (the object of its top-level fields) covering
/// `(req.since, upto]`.
pub(super) async fn add_sections(
    state: &AppState,
    req: &SyncRequest<'_>,
    upto: i64,
    response: &mut Value,
) -> Result<(), Error> {
    let (user, device) = (req.user.as_str(), req.device.as_str());
    // Independent reads: run them side by side.
    let device_lists = async {
        match req.since {
            Some(since) => device_list_changes(state, user, since, upto)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let messages = async {
        Ok::<_, Error>(
            state
                .storage
                .to_device_messages(user, device, req.since.unwrap_or(0), upto)
                .await?,
        )
    };
    let counts = key_counts(state, req);
    let (device_lists, messages, counts) = tokio::try_join!(device_lists, messages, counts)?;
    if !messages.is_empty() {
        let events: Vec<Value> = messages
            .into_iter()
            .filter_map(|m| {
                let content: Value = serde_json::from_str(&m.content).ok()?;
                Some(json!({ "sender": m.sender, "type": m.event_type, "content": content }))
            })
            .collect();
        response["to_device"] = json!({ "events": events });
    }
    if let Some((changed, left)) = device_lists {
        if !changed.is_empty() || !left.is_empty() {
            response["device_lists"] = json!({ "changed": changed, "left": left });
        }
    }
    add_key_counts(response, counts);
    Ok(())
}

/// The device's one-time key counts and unused fallback key types, as the two response
/// fields (`device_one_time_keys_count`, `device_unused_fallback_key_types`). Cheap: the
/// storage layer keeps them in memory until keys are uploaded or claimed.
pub(super) async fn key_counts(
    state: &AppState,
    req: &SyncRequest<'_>,
) -> Result<KeyCounts, Error> {
    let (counts, unused_fallback) = state
        .storage
        .key_counts(req.user.as_str(), req.device.as_str())
        .await?;
    Ok(KeyCounts(
        json!(crate::e2ee::key_counts_with_default(counts)),
        json!(unused_fallback),
    ))
}

/// A device's key counts, as [`key_counts`] returns them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KeyCounts(Value, Value);

/// Adds the key counts to a response: every response carries them, also one with nothing
/// else, so a client learns at once that its one-time keys are running out.
pub(super) fn add_key_counts(response: &mut Value, counts: KeyCounts) {
    response["device_one_time_keys_count"] = counts.0;
    response["device_unused_fallback_key_types"] = counts.1;
}

/// The key counts a response carries.
pub(super) fn key_counts_of(response: &Value) -> KeyCounts {
    KeyCounts(
        response["device_one_time_keys_count"].clone(),
        response["device_unused_fallback_key_types"].clone(),
    )
}

/// Whether the encryption sections carry nothing a waiting client should be woken for (key
/// counts are sent with every response and do not count).
pub(super) fn is_empty(response: &Value) -> bool {
    let none = |v: &Value| v.as_array().is_none_or(Vec::is_empty);
    none(&response["to_device"]["events"])
        && none(&response["device_lists"]["changed"])
        && none(&response["device_lists"]["left"])
}

/// Most to-device messages one response carries (Synapse's number). The rest come in the
/// next responses.
pub const MAX_TO_DEVICE_PER_RESPONSE: usize = 100;

/// Where a response over `(since, upto]` must end so that it carries at most
/// [`MAX_TO_DEVICE_PER_RESPONSE`] to-device messages. The whole response ends there (not only
/// its to-device section): its token then acknowledges exactly the messages it gave, and
/// whatever else happened after that position comes in the next response.
pub(super) async fn capped_upto(
    state: &AppState,
    req: &SyncRequest<'_>,
    upto: i64,
) -> Result<i64, Error> {
    let since = req.since.unwrap_or(0);
    Ok(state
        .storage
        .to_device_cut(
            req.user.as_str(),
            req.device.as_str(),
            since,
            upto,
            MAX_TO_DEVICE_PER_RESPONSE,
        )
        .await?
        .map_or(upto, |cut| cut.clamp(since, upto)))
}

/// Removes the to-device messages a device has acknowledged by presenting a token at
/// `position` (never past what is committed: a token from the future acknowledges only what
/// exists). Failing to clean up is logged, not fatal: the messages are just kept longer.
pub async fn acknowledge(state: &AppState, user: &str, device: &str, position: i64) {
    let position = position.min(state.storage.safe_stream_position());
    if let Err(e) = state.storage.ack_to_device(user, device, position).await {
        tracing::warn!(error = %e, "could not remove delivered to-device messages");
    }
}

/// The device-list changes `user` must hear about in `(since, upto]`: `(changed, left)`,
/// sorted.
///
/// 1. `changed`: users whose devices or cross-signing keys changed in the window and who
///    share a joined room with `user` now, `user` themselves, and changes told to `user`
///    alone (their own user-signing key, their signatures of others' keys);
/// 2. plus users who started sharing a room with `user`: they joined one of `user`'s rooms,
///    or `user` joined a room they are in;
/// 3. `left`: users who stopped sharing a room with `user` in the window (they left or were
///    removed from a room of `user`'s, or `user` left a room they are in) and share none
///    now; they are not in `changed`.
///
/// A member whose membership event changed without a change of membership (a new display
/// name) counts as a join: an extra `changed` entry only makes the client query keys again.
pub async fn device_list_changes(
    state: &AppState,
    user: &str,
    since: i64,
    upto: i64,
) -> Result<(Vec<String>, Vec<String>), Error> {
    if since >= upto || state.storage.device_lists_unchanged_since(since) {
        return Ok((Vec::new(), Vec::new()));
    }
    // 1.
    let mut changed: BTreeSet<String> = state
        .storage
        .device_list_changes(user, since, upto)
        .await?
        .into_iter()
        .collect();
    // 2. and the candidates of 3.
    let mut maybe_left = BTreeSet::new();
    for (other, theirs, mine, i_moved) in state
        .storage
        .membership_changes_around(user, since, upto)
        .await?
    {
        let theirs_gone = theirs == "leave" || theirs == "ban";
        match (i_moved, mine.as_str()) {
            (false, _) if theirs == "join" => {
                changed.insert(other);
            }
            (false, _) if theirs_gone => {
                maybe_left.insert(other);
            }
            (true, "join") if theirs == "join" => {
                changed.insert(other);
            }
            (true, "leave" | "ban") if theirs == "join" || theirs_gone => {
                maybe_left.insert(other);
            }
            _ => {}
        }
    }
    // 3.
    let mut left = Vec::new();
    if !maybe_left.is_empty() {
        let candidates: Vec<String> = maybe_left.into_iter().collect();
        let sharing: BTreeSet<String> = state
            .storage
            .users_sharing_a_room(user, &candidates)
            .await?
            .into_iter()
            .collect();
        left = candidates
            .into_iter()
            .filter(|u| !sharing.contains(u) && u != user)
            .collect();
        for u in &left {
            changed.remove(u);
        }
    }
    Ok((changed.into_iter().collect(), left))
}
