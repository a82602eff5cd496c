//! End-to-end encryption across servers, our side of the wire: asking other servers for
//! their users' keys (`/keys/query` and `/keys/claim` of the client API fan out here), the
//! cache of their device lists, and the EDUs they send us about them (`m.direct_to_device`,
//! `m.device_list_update`, `m.signing_key_update`).
//!
//! <https://spec.matrix.org/latest/server-server-api/#end-to-end-encryption>
//!
//! What we send them (the endpoints they call, the EDUs for our users' changes) is in
//! `api::federation::e2ee` and `e2ee::announce_device_list_change`; to-device messages for
//! their users leave through `api::client::to_device` and the destination's outbox.
//!
//! A remote user's device list is cached (storage, migration 0024) only while they share a
//! room with us, since only then does their server tell us when it changes; every
//! `m.device_list_update` or `m.signing_key_update` drops the cached list and puts the change
//! on our stream (so our users' `device_lists.changed` names them and their clients query
//! again). Updates are not applied as deltas: the next query fetches the whole list, so a
//! lost or out-of-order update (a gap in `prev_id`) cannot leave a wrong list behind.

use std::{collections::BTreeMap, time::Duration};

use ruma::{
    api::client::keys::{claim_keys, get_keys},
    encryption::{CrossSigningKey, DeviceKeys, OneTimeKey},
    serde::Raw,
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, OwnedServerName, OwnedUserId,
    ServerName,
};
use serde_json::{json, Value};

use crate::{auth::now_ms, error::Error, AppState};
use myelin_storage::OutgoingToDevice;

/// How long `/keys/query` and `/keys/claim` wait for other servers by default (the spec's
/// and Synapse's 10 s), and at most.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// Most messages one received `m.direct_to_device` EDU may deliver.
const MAX_MESSAGES_PER_EDU: usize = 1000;

/// The wait for other servers a client asked for.
pub fn timeout(asked: Option<Duration>) -> Duration {
    asked.unwrap_or(DEFAULT_TIMEOUT).min(MAX_TIMEOUT)
}

/// The `failures` entry for a server that did not answer.
fn failure(error: impl std::fmt::Display) -> Value {
    json!({ "status": 503, "message": error.to_string() })
}

fn raw<T>(value: &Value) -> Option<Raw<T>> {
    serde_json::value::to_raw_value(value)
        .ok()
        .map(Raw::from_json)
}

/// What `server` said of `user`'s keys, kept only if it is about `user`: `{device_keys:
/// {device: keys}, master_key, self_signing_key}`, the form cached.
fn user_answer(answer: &Value, user: &OwnedUserId) -> Value {
    let mut devices = serde_json::Map::new();
    for (device_id, keys) in answer["device_keys"][user.as_str()]
        .as_object()
        .into_iter()
        .flatten()
    {
        let fits = serde_json::from_value::<DeviceKeys>(keys.clone())
            .is_ok_and(|k| k.user_id == *user && k.device_id.as_str() == device_id);
        if fits {
            devices.insert(device_id.clone(), keys.clone());
        }
    }
    let mut out = json!({ "device_keys": devices });
    for (field, from) in [
        ("master_key", "master_keys"),
        ("self_signing_key", "self_signing_keys"),
    ] {
        let key = &answer[from][user.as_str()];
        if serde_json::from_value::<CrossSigningKey>(key.clone()).is_ok_and(|k| k.user_id == *user)
        {
            out[field] = key.clone();
        }
    }
    out
}

/// Adds `user`'s keys from `cached` (the form of [`user_answer`]) to `response`, only
/// `devices` of them unless that is empty.
fn add_user(
    response: &mut get_keys::v3::Response,
    user: &OwnedUserId,
    cached: &Value,
    devices: &[OwnedDeviceId],
) {
    let entry = response.device_keys.entry(user.clone()).or_default();
    for (device_id, keys) in cached["device_keys"].as_object().into_iter().flatten() {
        if !devices.is_empty() && !devices.iter().any(|d| d.as_str() == device_id) {
            continue;
        }
        if let Some(keys) = raw(keys) {
            entry.insert(OwnedDeviceId::from(device_id.as_str()), keys);
        }
    }
    if let Some(key) = cached.get("master_key").and_then(raw) {
        response.master_keys.insert(user.clone(), key);
    }
    if let Some(key) = cached.get("self_signing_key").and_then(raw) {
        response.self_signing_keys.insert(user.clone(), key);
    }
}

/// Whether `user` (of another server) shares a room with us, so that their server tells us
/// of changes to their devices.
async fn shares_a_room(state: &AppState, user: &str) -> bool {
    state
        .storage
        .memberships_for_user(user)
        .await
        .is_ok_and(|m| m.iter().any(|m| m.membership == "join"))
}

/// A user and which of their devices are wanted (all for an empty list).
type WantedDevices = (OwnedUserId, Vec<OwnedDeviceId>);

/// The keys of other servers' users (`server → user → devices`, all devices for an empty
/// list): from the cache where held, else asked of each server at once
/// (`/user/keys/query`), each within `timeout`. A server that fails or is too slow is named
/// in `failures`.
pub async fn query_keys(
    state: &AppState,
    wanted: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>>,
    timeout: Duration,
) -> get_keys::v3::Response {
    let mut response = get_keys::v3::Response::new();
    let mut to_ask: Vec<(OwnedServerName, Vec<WantedDevices>)> = Vec::new();
    for (server, users) in wanted {
        let mut ask = Vec::new();
        for (user, devices) in users {
            let cached = state
                .storage
                .remote_device_list(user.as_str())
                .await
                .ok()
                .flatten()
                .and_then(|json| serde_json::from_str::<Value>(&json).ok());
            match cached {
                Some(cached) => add_user(&mut response, &user, &cached, &devices),
                None => ask.push((user, devices)),
            }
        }
        if !ask.is_empty() {
            to_ask.push((server, ask));
        }
    }
    let answers = futures_util::future::join_all(to_ask.into_iter().map(|(server, users)| {
        async move {
            // Positions of the users' last known changes: an update arriving while we ask
            // makes the answer stale, so it is then not cached.
            let mut before = Vec::with_capacity(users.len());
            for (user, _) in &users {
                before.push(state.storage.device_list_position(user.as_str()).await.ok());
            }
            // All devices, so the answer can be cached whole.
            let body = json!({
                "device_keys": users
                    .iter()
                    .map(|(u, _)| (u.to_string(), json!([])))
                    .collect::<serde_json::Map<_, _>>(),
            });
            let answer = tokio::time::timeout(
                timeout,
                state.federation.post_json(
                    &server,
                    "/_matrix/federation/v1/user/keys/query",
                    &body,
                ),
            )
            .await;
            (server, users, before, answer)
        }
    }))
    .await;
    for (server, users, before, answer) in answers {
        let answer = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                response.failures.insert(server.to_string(), failure(e));
                continue;
            }
            Err(_) => {
                response
                    .failures
                    .insert(server.to_string(), failure("timed out"));
                continue;
            }
        };
        for ((user, devices), before) in users.iter().zip(before) {
            let keys = user_answer(&answer, user);
            let unchanged = match before {
                Some(before) => state
                    .storage
                    .device_list_position(user.as_str())
                    .await
                    .is_ok_and(|now| now == before),
                None => false,
            };
            if unchanged && shares_a_room(state, user.as_str()).await {
                if let Err(e) = state
                    .storage
                    .cache_remote_device_list(user.as_str(), &keys.to_string(), now_ms())
                    .await
                {
                    tracing::warn!(%user, error = %e, "could not cache a device list");
                }
            }
            add_user(&mut response, user, &keys, devices);
        }
    }
    response
}

/// What other servers' users' devices are wanted for a claim: server → user → device →
/// algorithm.
pub type ClaimsByServer =
    BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>>;

/// Claims one-time keys of other servers' users' devices at their servers
/// (`/user/keys/claim`), all at once, each within `timeout`. Returns the keys and the
/// `failures`.
pub async fn claim_keys(
    state: &AppState,
    wanted: ClaimsByServer,
    timeout: Duration,
) -> (
    BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys>,
    BTreeMap<String, Value>,
) {
    let answers =
        futures_util::future::join_all(wanted.into_iter().map(|(server, users)| async move {
            let body = json!({ "one_time_keys": &users });
            let answer = tokio::time::timeout(
                timeout,
                state.federation.post_json(
                    &server,
                    "/_matrix/federation/v1/user/keys/claim",
                    &body,
                ),
            )
            .await;
            (server, users, answer)
        }))
        .await;
    let mut keys = BTreeMap::new();
    let mut failures = BTreeMap::new();
    for (server, users, answer) in answers {
        let answer = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                failures.insert(server.to_string(), failure(e));
                continue;
            }
            Err(_) => {
                failures.insert(server.to_string(), failure("timed out"));
                continue;
            }
        };
        // Only the devices we asked for, of users of that server.
        for (user, devices) in &users {
            let mut claimed: claim_keys::v3::OneTimeKeys = BTreeMap::new();
            for device in devices.keys() {
                let Some(by_id) =
                    answer["one_time_keys"][user.as_str()][device.as_str()].as_object()
                else {
                    continue;
                };
                let device_keys: BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>> = by_id
                    .iter()
                    .filter_map(|(id, key)| {
                        Some((OwnedOneTimeKeyId::try_from(id.as_str()).ok()?, raw(key)?))
                    })
                    .take(1)
                    .collect();
                if !device_keys.is_empty() {
                    claimed.insert(device.clone(), device_keys);
                }
            }
            if !claimed.is_empty() {
                keys.insert(user.clone(), claimed);
            }
        }
    }
    (keys, failures)
}

/// Whether `user` is a user of `origin`.
fn of_server(user: &str, origin: &ServerName) -> bool {
    user.split_once(':')
        .is_some_and(|(_, s)| s == origin.as_str())
}

/// A received `m.direct_to_device` EDU: its messages, from a user of the origin, go into our
/// users' devices' inboxes, once (the sender's `message_id` deduplicates a resent EDU).
///
/// <https://spec.matrix.org/latest/server-server-api/#send-to-device-messaging>
pub async fn receive_to_device(
    state: &AppState,
    origin: &ServerName,
    content: &Value,
) -> Result<(), Error> {
    let (Some(sender), Some(event_type), Some(message_id), Some(by_user)) = (
        content["sender"].as_str(),
        content["type"].as_str(),
        content["message_id"].as_str(),
        content["messages"].as_object(),
    ) else {
        return Err(Error::bad_json("m.direct_to_device lacks a field"));
    };
    if !of_server(sender, origin) || ruma::UserId::parse(sender).is_err() {
        return Err(Error::forbidden("The sender is not a user of the origin"));
    }
    if message_id.is_empty() || message_id.len() > 255 || event_type.len() > 255 {
        return Err(Error::bad_json("Invalid message_id or type"));
    }
    let mut messages = Vec::new();
    let mut targets = Vec::new();
    for (user, devices) in by_user {
        let Ok(user_id) = ruma::UserId::parse(user.as_str()) else {
            continue;
        };
        if !crate::e2ee::is_local(state, &user_id) {
            continue;
        }
        for (device, message) in devices.as_object().into_iter().flatten() {
            if messages.len() == MAX_MESSAGES_PER_EDU {
                break;
            }
            if !message.is_object()
                || message.to_string().len() > crate::api::client::to_device::MAX_MESSAGE_BYTES
            {
                continue;
            }
            messages.push(OutgoingToDevice {
                user_id: user.clone(),
                device_id: (device != "*").then(|| device.clone()),
                content: message.to_string(),
            });
        }
        targets.push(user.as_str());
    }
    if messages.is_empty() {
        return Ok(());
    }
    let sent = state
        .storage
        .send_to_device(sender, "", message_id, event_type, &messages, &[], now_ms())
        .await?;
    if sent.is_some() {
        state.notifier.notify(targets);
    }
    Ok(())
}

/// A received `m.device_list_update` or `m.signing_key_update`: a user of the origin who
/// shares a room with us changed devices or cross-signing keys. Their cached list is
/// dropped and our users sharing a room with them are told (`device_lists.changed`).
///
/// <https://spec.matrix.org/latest/server-server-api/#device-management>
pub async fn receive_device_change(
    state: &AppState,
    origin: &ServerName,
    content: &Value,
) -> Result<(), Error> {
    let Some(user) = content["user_id"].as_str() else {
        return Err(Error::bad_json("The update names no user_id"));
    };
    if !of_server(user, origin) {
        return Err(Error::forbidden("The user is not a user of the origin"));
    }
    if !shares_a_room(state, user).await {
        return Ok(());
    }
    state.storage.remote_device_list_changed(user).await?;
    let users = crate::co_members(state, user).await?;
    state.notifier.notify(users.iter().map(String::as_str));
    Ok(())
}
