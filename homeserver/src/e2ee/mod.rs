//! End-to-end encryption, the server's side: what the homeserver checks and who it tells.
//!
//! <https://spec.matrix.org/latest/client-server-api/#end-to-end-encryption>
//!
//! The server never holds a private key or a plaintext room key. It stores and hands out
//! public keys (device keys, one-time and fallback keys, cross-signing keys), checks the
//! signatures on what it is given (`signing`), stores opaque encrypted key backups (with the
//! replacement rule of `backup`), and relays to-device messages. Device-list changes are
//! positions on the global stream, so a sync token says exactly which changes a client has
//! seen.
//!
//! Map: the endpoints are in `api::client::keys` (upload, query, claim, changes,
//! cross-signing, signatures), `api::client::backup` (`/room_keys`) and
//! `api::client::to_device`; what `/sync` adds is in `sync::e2ee`; SQL is in storage's
//! `keys`, `to_device` and `backup` modules. This module holds the pure rules and the
//! wake-ups that follow a device-list change.

pub mod backup;
pub mod signing;

use ruma::UserId;

use crate::AppState;

/// Wakes the syncs of everyone who must hear that `user`'s device list changed (a device
/// added or removed, device or cross-signing keys changed): the users who share a room with
/// them, and the user. Call after the change is committed.
pub async fn announce_device_list_change(state: &AppState, user: &str) {
    match crate::co_members(state, user).await {
        Ok(users) => state.notifier.notify(users.iter().map(String::as_str)),
        Err(e) => tracing::warn!(error = %e, "could not announce a device-list change"),
    }
}

/// The one-time key algorithm clients count on: Synapse always reports it, with 0 when the
/// device has none, and clients upload keys when they see the count fall.
const SIGNED_CURVE25519: &str = "signed_curve25519";

/// One-time key counts as `/keys/upload` and `/sync` report them, `signed_curve25519`
/// included.
pub fn key_counts_with_default(
    counts: std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    let mut counts = counts;
    counts.entry(SIGNED_CURVE25519.to_owned()).or_insert(0);
    counts
}

/// Whether `user` is a user of this server (keys of other servers' users come over
/// federation, which is not there yet).
pub fn is_local(state: &AppState, user: &UserId) -> bool {
    user.server_name() == state.server_name
}
