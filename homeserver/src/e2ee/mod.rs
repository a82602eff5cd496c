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
/// them, and the user; and tells the other servers in those rooms with an
/// `m.device_list_update` (`device`: the device that changed, when there is one). Call after
/// the change is committed.
pub async fn announce_device_list_change(state: &AppState, user: &str, device: Option<&str>) {
    let users = match crate::co_members(state, user).await {
        Ok(users) => users,
        Err(e) => {
            tracing::warn!(error = %e, "could not announce a device-list change");
            return;
        }
    };
    state.notifier.notify(users.iter().map(String::as_str));
    let servers = crate::federation::sender::other_servers(
        state.server_name.as_str(),
        users.iter().map(String::as_str),
    );
    if servers.is_empty() {
        return;
    }
    if let Err(e) = tell_servers_of_devices(state, user, device, &servers).await {
        tracing::warn!(error = %e, %user, "could not queue a device-list update for other servers");
    }
}

/// Queues the `m.device_list_update` for `servers` (durably: it must arrive even if either
/// side restarts, or the peer's users keep encrypting for a deleted device).
///
/// `prev_id` is left empty, which tells the peer it cannot apply this update as a delta to
/// what it holds and must ask for the whole list again (`/user/devices`, which gives it the
/// `stream_id` and the cross-signing keys too); the spec allows this and Synapse does the
/// resync. Keeping a per-destination chain of stream IDs would save that request.
async fn tell_servers_of_devices(
    state: &AppState,
    user: &str,
    device: Option<&str>,
    servers: &[String],
) -> crate::error::Result<()> {
    let stream_id = state.storage.device_list_position(user).await?;
    let mut content = serde_json::json!({
        "user_id": user,
        "device_id": device.unwrap_or_default(),
        "stream_id": stream_id,
        "prev_id": [],
    });
    if let Some(device) = device {
        match state.storage.get_device(user, device).await? {
            None => content["deleted"] = serde_json::Value::Bool(true),
            // Display names stay here (as Synapse's default): they often name the person's
            // devices ("Alice's work laptop") and peers do not need them to encrypt.
            Some(_) => {
                let keys = state
                    .storage
                    .device_keys_for_users(&[user.to_owned()])
                    .await?
                    .into_iter()
                    .find(|k| k.device_id == device);
                if let Some(keys) = keys {
                    if let Ok(keys) = serde_json::from_str::<serde_json::Value>(&keys.key_json) {
                        content["keys"] = keys;
                    }
                }
            }
        }
    }
    crate::federation::sender::queue_durable_edus(
        state,
        servers,
        &[("m.device_list_update", content)],
    )
    .await
}

/// Tells the other servers sharing a room with `user` that their public cross-signing keys
/// changed (`m.signing_key_update`, with the keys as stored). Call after the change is
/// committed (and after [`announce_device_list_change`], which wakes the local syncs).
pub async fn announce_signing_keys_change(state: &AppState, user: &str) {
    let result = async {
        let users = crate::co_members(state, user).await?;
        let servers = crate::federation::sender::other_servers(
            state.server_name.as_str(),
            users.iter().map(String::as_str),
        );
        if servers.is_empty() {
            return Ok(());
        }
        let mut content = serde_json::json!({ "user_id": user });
        for (_, key_type, json) in state
            .storage
            .cross_signing_keys_for_users(&[user.to_owned()])
            .await?
        {
            let field = match key_type.as_str() {
                "master" => "master_key",
                "self_signing" => "self_signing_key",
                _ => continue,
            };
            if let Ok(key) = serde_json::from_str::<serde_json::Value>(&json) {
                content[field] = key;
            }
        }
        crate::federation::sender::queue_durable_edus(
            state,
            &servers,
            &[("m.signing_key_update", content)],
        )
        .await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, %user, "could not queue a signing-key update for other servers");
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
/// federation: `federation::e2ee`).
pub fn is_local(state: &AppState, user: &UserId) -> bool {
    user.server_name() == state.server_name
}
