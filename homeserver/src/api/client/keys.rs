//! Key management and cross-signing.
//!
//! <https://spec.matrix.org/latest/client-server-api/#key-management-api>
//! <https://spec.matrix.org/latest/client-server-api/#cross-signing>
//!
//! Keys of other servers' users are asked for at their servers (`federation::e2ee`, which
//! caches their device lists); signatures of their keys are not stored yet (`M_NOT_FOUND`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::extract::State;
use ruma::{
    api::client::keys::{
        claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures,
        upload_signatures::v3::Failure, upload_signing_keys,
    },
    encryption::{CrossSigningKey, DeviceKeys, OneTimeKey},
    serde::Raw,
    CanonicalJsonObject, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId, UInt,
};
use serde_json::{json, Value};

use crate::{
    api::ruma::{Ruma, Sender},
    e2ee::{
        announce_device_list_change, is_local, key_counts_with_default,
        signing::{self, canonical_object, canonical_string, cross_signing_public_key},
    },
    error::{Error, Result},
    uia, AppState,
};
use myelin_storage::{KeySignature, KeyUpload, NewKey, UploadOutcome};

use axum::http::StatusCode;

fn invalid_signature(message: impl Into<String>) -> Error {
    Error::new(StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE", message)
}

/// Checks uploaded device keys and returns them as canonical JSON to store:
/// 1. they parse as `DeviceKeys`;
/// 2. they are the sender's user and device;
/// 3. they hold the device's ed25519 key, `ed25519:<device_id>`;
/// 4. they are signed with it (`signatures[user]["ed25519:<device_id>"]`);
/// 5. `unsigned` (the server's to fill in) is dropped.
fn check_device_keys(raw: &Raw<DeviceKeys>, sender: &Sender) -> Result<String> {
    let typed = raw
        .deserialize()
        .map_err(|e| Error::bad_json(format!("Invalid device_keys: {e}")))?;
    if typed.user_id != sender.user_id {
        return Err(Error::bad_json(
            "device_keys.user_id does not match the authenticated user",
        ));
    }
    if typed.device_id != sender.device_id {
        return Err(Error::bad_json(
            "device_keys.device_id does not match the authenticated device",
        ));
    }
    let mut object = canonical_object(raw.json().get())
        .map_err(|e| Error::bad_json(format!("Invalid device_keys: {e}")))?;
    let key_id = format!("ed25519:{}", sender.device_id);
    let public_key = signing::keys_of(&object)
        .into_iter()
        .find(|(id, _)| *id == key_id)
        .map(|(_, key)| key.to_owned())
        .ok_or_else(|| Error::bad_json(format!("device_keys has no {key_id} key")))?;
    signing::verify(&object, sender.user_id.as_str(), &key_id, &public_key)
        .map_err(|e| invalid_signature(format!("device_keys: {e}")))?;
    object.remove("unsigned");
    Ok(canonical_string(&object))
}

/// One-time or fallback keys as rows to store.
fn new_keys(keys: &BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>) -> Result<Vec<NewKey>> {
    keys.iter()
        .map(|(id, raw)| {
            let value: Value = serde_json::from_str(raw.json().get())
                .map_err(|e| Error::bad_json(format!("Invalid key {id}: {e}")))?;
            let canonical = ruma::CanonicalJsonValue::try_from(value)
                .map_err(|e| Error::bad_json(format!("Invalid key {id}: {e}")))?;
            Ok(NewKey {
                algorithm: id.algorithm().to_string(),
                key_id: id.key_name().to_string(),
                key_json: canonical.to_string(),
            })
        })
        .collect()
}

fn counts_response(counts: BTreeMap<String, u64>) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
    key_counts_with_default(counts)
        .into_iter()
        .map(|(algorithm, n)| {
            (
                OneTimeKeyAlgorithm::from(algorithm.as_str()),
                UInt::try_from(n).unwrap_or(UInt::MAX),
            )
        })
        .collect()
}

/// POST /_matrix/client/v3/keys/upload
///
/// Device keys must be the sender's own and signed by their own ed25519 key. Re-uploading a
/// key is harmless; a different one-time key under an existing ID is refused (400
/// `M_INVALID_PARAM`) and nothing of the request is stored. New device keys are a
/// device-list change for everyone sharing a room with the user.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysupload>
pub async fn upload_keys(
    State(state): State<AppState>,
    req: Ruma<upload_keys::v3::Request>,
) -> Result<upload_keys::v3::Response> {
    let sender = req.sender();
    let device_keys = req
        .body
        .device_keys
        .as_ref()
        .map(|raw| check_device_keys(raw, sender))
        .transpose()?;
    let one_time_keys = new_keys(&req.body.one_time_keys)?;
    let fallback_keys = new_keys(&req.body.fallback_keys)?;
    let mut algorithms = BTreeSet::new();
    if !fallback_keys
        .iter()
        .all(|k| algorithms.insert(&k.algorithm))
    {
        return Err(Error::invalid_param(
            "At most one fallback key per algorithm may be uploaded",
        ));
    }
    let outcome = state
        .storage
        .upload_keys(
            sender.user_id.as_str(),
            sender.device_id.as_str(),
            &KeyUpload {
                device_keys: device_keys.as_deref(),
                one_time_keys: &one_time_keys,
                fallback_keys: &fallback_keys,
            },
        )
        .await?;
    match outcome {
        UploadOutcome::Stored {
            one_time_key_counts,
            device_list_changed,
        } => {
            if device_list_changed {
                announce_device_list_change(
                    &state,
                    sender.user_id.as_str(),
                    Some(sender.device_id.as_str()),
                )
                .await;
            }
            Ok(upload_keys::v3::Response::new(counts_response(
                one_time_key_counts,
            )))
        }
        // The device was deleted while the request was in flight: so was its token.
        UploadOutcome::NoSuchDevice => Err(Error::unknown_token()),
        UploadOutcome::OneTimeKeyConflict(id) => Err(Error::invalid_param(format!(
            "One-time key {id} already exists with a different value"
        ))),
    }
}

/// What `/keys/query` shows of a stored key: signatures merged in from `key_signatures`.
fn with_signatures(
    json: &str,
    target_user: &str,
    target_key: &str,
    signatures: &[KeySignature],
) -> Result<Value> {
    let mut value: Value = serde_json::from_str(json).map_err(Error::internal)?;
    for s in signatures
        .iter()
        .filter(|s| s.target_user_id == target_user && s.target_key_id == target_key)
    {
        if !value["signatures"].is_object() {
            value["signatures"] = json!({});
        }
        if !value["signatures"][&s.signer_user_id].is_object() {
            value["signatures"][&s.signer_user_id] = json!({});
        }
        value["signatures"][&s.signer_user_id][&s.signer_key_id] =
            Value::String(s.signature.clone());
    }
    Ok(value)
}

fn raw<T>(value: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(value).map_err(Error::internal)?,
    ))
}

/// The public key name of a stored cross-signing key (`<base64>` of `ed25519:<base64>`).
fn public_key_name(json: &str) -> Option<String> {
    let object = canonical_object(json).ok()?;
    cross_signing_public_key(&object).map(|(id, _)| id["ed25519:".len()..].to_owned())
}

/// What a request asks per user, split into this server's users and, per server, the
/// others'.
#[allow(clippy::type_complexity)]
fn split_by_server<V: Clone>(
    state: &AppState,
    wanted: &BTreeMap<OwnedUserId, V>,
) -> (
    BTreeMap<OwnedUserId, V>,
    BTreeMap<ruma::OwnedServerName, BTreeMap<OwnedUserId, V>>,
) {
    let mut local = BTreeMap::new();
    let mut remote: BTreeMap<_, BTreeMap<_, _>> = BTreeMap::new();
    for (user, value) in wanted {
        if is_local(state, user) {
            local.insert(user.clone(), value.clone());
        } else {
            remote
                .entry(user.server_name().to_owned())
                .or_default()
                .insert(user.clone(), value.clone());
        }
    }
    (local, remote)
}

/// POST /_matrix/client/v3/keys/query
///
/// Device keys of the requested devices (all of a user's devices for an empty list), with
/// the signatures made of them by their owner's cross-signing keys and the device's display
/// name in `unsigned`; master and self-signing keys; the user-signing key only to its owner.
/// Signatures of a master key are shown if made by its owner or by the requester. Users of
/// other servers are asked for at their servers, all at once and within `timeout` (10 s by
/// default); a server that does not answer in time is named in `failures`.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysquery>
pub async fn get_keys(
    State(state): State<AppState>,
    req: Ruma<get_keys::v3::Request>,
) -> Result<get_keys::v3::Response> {
    let requester = req.sender().user_id.as_str();
    let (local, remote) = split_by_server(&state, &req.body.device_keys);
    let timeout = crate::federation::e2ee::timeout(req.body.timeout);
    let (response, from_others) = tokio::join!(
        local_keys(&state, &local, Some(requester)),
        crate::federation::e2ee::query_keys(&state, remote, timeout),
    );
    let mut response = response?;
    response.device_keys.extend(from_others.device_keys);
    response.master_keys.extend(from_others.master_keys);
    response
        .self_signing_keys
        .extend(from_others.self_signing_keys);
    response.failures.extend(from_others.failures);
    Ok(response)
}

/// The keys of local users' devices (all of a user's devices for an empty list), as
/// `/keys/query` shows them to `requester`, or to another server (`None`: no device display
/// names, no user-signing keys, master-key signatures only by their owner).
pub async fn local_keys(
    state: &AppState,
    wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    requester: Option<&str>,
) -> Result<get_keys::v3::Response> {
    let mut response = get_keys::v3::Response::new();
    let local: Vec<String> = wanted
        .keys()
        .filter(|user| is_local(state, user))
        .map(|user| {
            response.device_keys.insert(user.clone(), BTreeMap::new());
            user.to_string()
        })
        .collect();
    if local.is_empty() {
        return Ok(response);
    }
    let devices = state.storage.device_keys_for_users(&local).await?;
    let cross_signing = state.storage.cross_signing_keys_for_users(&local).await?;
    let signatures = state
        .storage
        .key_signatures_for(&local, requester.unwrap_or_default())
        .await?;

    for row in devices {
        let Ok(user) = OwnedUserId::try_from(row.user_id.as_str()) else {
            continue;
        };
        let Some(devices) = wanted.get(&user) else {
            continue;
        };
        if !devices.is_empty() && !devices.iter().any(|d| d.as_str() == row.device_id) {
            continue;
        }
        let mut value = with_signatures(&row.key_json, &row.user_id, &row.device_id, &signatures)?;
        if let (Some(name), Some(_)) = (&row.display_name, requester) {
            value["unsigned"] = json!({ "device_display_name": name });
        }
        response
            .device_keys
            .entry(user)
            .or_default()
            .insert(OwnedDeviceId::from(row.device_id.as_str()), raw(&value)?);
    }
    for (user_id, key_type, json) in cross_signing {
        let Ok(user) = OwnedUserId::try_from(user_id.as_str()) else {
            continue;
        };
        match key_type.as_str() {
            "master" => {
                let name = public_key_name(&json).unwrap_or_default();
                let value = with_signatures(&json, &user_id, &name, &signatures)?;
                response.master_keys.insert(user, raw(&value)?);
            }
            "self_signing" => {
                let value: Value = serde_json::from_str(&json).map_err(Error::internal)?;
                response.self_signing_keys.insert(user, raw(&value)?);
            }
            "user_signing" if requester == Some(user_id.as_str()) => {
                let value: Value = serde_json::from_str(&json).map_err(Error::internal)?;
                response.user_signing_keys.insert(user, raw(&value)?);
            }
            _ => {}
        }
    }
    Ok(response)
}

/// POST /_matrix/client/v3/keys/claim
///
/// For each device, its oldest one-time key of the algorithm (each handed out once), or
/// else its fallback key, which is then reported as used. Devices with neither are left out.
/// Keys of other servers' users are claimed at their servers, all at once and within
/// `timeout`; a server that does not answer in time is named in `failures`.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysclaim>
pub async fn claim_keys(
    State(state): State<AppState>,
    req: Ruma<claim_keys::v3::Request>,
) -> Result<claim_keys::v3::Response> {
    let (local, remote) = split_by_server(&state, &req.body.one_time_keys);
    let timeout = crate::federation::e2ee::timeout(req.body.timeout);
    let (claimed, from_others) = tokio::join!(
        claim_local_keys(&state, &local),
        crate::federation::e2ee::claim_keys(&state, remote, timeout),
    );
    let (others, failures) = from_others;
    let mut one_time_keys = claimed?;
    one_time_keys.extend(others);
    let mut response = claim_keys::v3::Response::new(one_time_keys);
    response.failures = failures;
    Ok(response)
}

/// Claims one key of each wanted local device (see [`claim_keys`]).
pub async fn claim_local_keys(
    state: &AppState,
    wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
) -> Result<BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys>> {
    let mut triples = Vec::new();
    for (user, devices) in wanted {
        if !is_local(state, user) {
            continue;
        }
        for (device, algorithm) in devices {
            triples.push((user.to_string(), device.to_string(), algorithm.to_string()));
        }
    }
    if triples.is_empty() {
        return Ok(BTreeMap::new());
    }
    let claimed = state.storage.claim_keys(&triples).await?;
    // The owners' waiting syncs report the lower counts at once (see `sync::sync`).
    let owners: BTreeSet<&str> = claimed.iter().map(|c| c.0.as_str()).collect();
    state.notifier.notify(owners);
    let mut one_time_keys: BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys> = BTreeMap::new();
    for (user_id, device_id, algorithm, key_id, key_json) in claimed {
        let (Ok(user), Ok(key_id)) = (
            OwnedUserId::try_from(user_id.as_str()),
            OwnedOneTimeKeyId::try_from(format!("{algorithm}:{key_id}")),
        ) else {
            tracing::warn!(%user_id, %device_id, %key_id, "skipping a stored key with an invalid ID");
            continue;
        };
        let value = serde_json::value::RawValue::from_string(key_json).map_err(Error::internal)?;
        one_time_keys
            .entry(user)
            .or_default()
            .entry(OwnedDeviceId::from(device_id.as_str()))
            .or_default()
            .insert(key_id, Raw::from_json(value));
    }
    Ok(one_time_keys)
}

/// GET /_matrix/client/v3/keys/changes
///
/// Users whose device lists changed between two sync tokens and who share a room with the
/// requester (`changed`), and users who no longer share any room with them (`left`), as
/// `/sync`'s `device_lists` would have reported them.
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3keyschanges>
pub async fn get_key_changes(
    State(state): State<AppState>,
    req: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response> {
    let from = crate::sync::parse_token(&req.body.from)?.position;
    let to = crate::sync::parse_token(&req.body.to)?
        .position
        .min(state.storage.safe_stream_position());
    let (changed, left) =
        crate::sync::e2ee::device_list_changes(&state, req.sender().user_id.as_str(), from, to)
            .await?;
    let ids = |users: Vec<String>| -> Vec<OwnedUserId> {
        users
            .into_iter()
            .filter_map(|u| OwnedUserId::try_from(u).ok())
            .collect()
    };
    Ok(get_key_changes::v3::Response::new(ids(changed), ids(left)))
}

/// The three kinds of cross-signing key, as stored and as `usage` names them.
const KEY_TYPES: [&str; 3] = ["master", "self_signing", "user_signing"];

/// Checks an uploaded cross-signing key: it parses, belongs to the sender, names its own
/// type in `usage`, and has exactly one ed25519 key.
fn check_cross_signing_key(
    raw: &Raw<CrossSigningKey>,
    key_type: &str,
    user: &OwnedUserId,
) -> Result<CanonicalJsonObject> {
    let invalid = || Error::invalid_param(format!("Invalid {key_type} key"));
    let typed = raw
        .deserialize()
        .map_err(|e| Error::bad_json(format!("Invalid {key_type} key: {e}")))?;
    let object = canonical_object(raw.json().get())
        .map_err(|e| Error::bad_json(format!("Invalid {key_type} key: {e}")))?;
    if typed.user_id != *user
        || !typed.usage.iter().any(|u| u.as_str() == key_type)
        || cross_signing_public_key(&object).is_none()
    {
        return Err(invalid());
    }
    Ok(object)
}

/// POST /_matrix/client/v3/keys/device_signing/upload
///
/// 1. Each uploaded key is the sender's, of its type, with one ed25519 key.
/// 2. Keys identical to the stored ones change nothing: 200 at once.
/// 3. Replacing existing cross-signing keys needs user-interactive auth (password); a user
///    without a master key sets theirs up without it.
/// 4. The self-signing and user-signing keys must be signed by the master key (the uploaded
///    one, or the stored one).
/// 5. The keys are stored in one transaction; a new master or self-signing key is a
///    device-list change for everyone sharing a room, a new user-signing key concerns only
///    the user.
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysdevice_signingupload>
pub async fn upload_signing_keys(
    State(state): State<AppState>,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response> {
    let sender = req.sender();
    let user = &sender.user_id;
    // 1.
    let mut uploads: Vec<(&str, CanonicalJsonObject)> = Vec::new();
    for (key_type, raw) in KEY_TYPES.iter().zip([
        &req.body.master_key,
        &req.body.self_signing_key,
        &req.body.user_signing_key,
    ]) {
        if let Some(raw) = raw {
            uploads.push((key_type, check_cross_signing_key(raw, key_type, user)?));
        }
    }
    let stored: HashMap<String, String> = state
        .storage
        .cross_signing_keys_for_users(&[user.to_string()])
        .await?
        .into_iter()
        .map(|(_, key_type, json)| (key_type, json))
        .collect();
    // 2.
    let changed = uploads
        .iter()
        .any(|(key_type, object)| stored.get(*key_type) != Some(&canonical_string(object)));
    if !changed {
        return Ok(upload_signing_keys::v3::Response::new());
    }
    // 3.
    if stored.contains_key("master") {
        uia::authorize(
            &state,
            req.body.auth.as_ref(),
            &[&[uia::PASSWORD]],
            Some(user),
        )
        .await?;
    }
    // 4.
    let master = match uploads.iter().find(|(t, _)| *t == "master") {
        Some((_, object)) => object.clone(),
        None => match stored.get("master") {
            Some(json) => canonical_object(json).map_err(Error::internal)?,
            None => {
                return Err(Error::missing_param("No master key available"));
            }
        },
    };
    let (master_id, master_public) = cross_signing_public_key(&master)
        .ok_or_else(|| Error::internal("stored master key has no ed25519 key"))?;
    for (key_type, object) in uploads.iter().filter(|(t, _)| *t != "master") {
        signing::verify(object, user.as_str(), master_id, master_public)
            .map_err(|e| invalid_signature(format!("Invalid signature on {key_type} key: {e}")))?;
    }
    // 5.
    let public = uploads.iter().any(|(t, _)| *t != "user_signing");
    let rows: Vec<(&str, String)> = uploads
        .iter()
        .map(|(key_type, object)| (*key_type, canonical_string(object)))
        .collect();
    state
        .storage
        .set_cross_signing_keys(user.as_str(), &rows, public)
        .await?;
    if public {
        announce_device_list_change(&state, user.as_str(), None).await;
        crate::e2ee::announce_signing_keys_change(&state, user.as_str()).await;
    } else {
        state.notifier.notify([user.as_str()]);
    }
    Ok(upload_signing_keys::v3::Response::new())
}

fn failure(errcode: &str, error: impl Into<String>) -> Result<Failure> {
    serde_json::from_value(json!({ "errcode": errcode, "error": error.into() }))
        .map_err(Error::internal)
}

/// A key the uploader says it signed, and what happened to it.
type Checked = std::result::Result<Vec<KeySignature>, (&'static str, String)>;

/// The stored keys `/keys/signatures/upload` checks uploads against.
struct SigningContext {
    master: Option<CanonicalJsonObject>,
    self_signing: Option<CanonicalJsonObject>,
    user_signing: Option<CanonicalJsonObject>,
    devices: HashMap<String, CanonicalJsonObject>,
}

impl SigningContext {
    async fn load(state: &AppState, user: &str, with_devices: bool) -> Result<Self> {
        let mut context = SigningContext {
            master: None,
            self_signing: None,
            user_signing: None,
            devices: HashMap::new(),
        };
        for (_, key_type, json) in state
            .storage
            .cross_signing_keys_for_users(&[user.to_owned()])
            .await?
        {
            let object = canonical_object(&json).map_err(Error::internal)?;
            match key_type.as_str() {
                "master" => context.master = Some(object),
                "self_signing" => context.self_signing = Some(object),
                "user_signing" => context.user_signing = Some(object),
                _ => {}
            }
        }
        if with_devices {
            for row in state
                .storage
                .device_keys_for_users(&[user.to_owned()])
                .await?
            {
                let object = canonical_object(&row.key_json).map_err(Error::internal)?;
                context.devices.insert(row.device_id, object);
            }
        }
        Ok(context)
    }

    fn master_name(&self) -> Option<&str> {
        let master = self.master.as_ref()?;
        cross_signing_public_key(master).map(|(id, _)| &id["ed25519:".len()..])
    }
}

/// A signature of the signer's own master key (`master`, named `name`) by one of their
/// devices.
fn check_own_master(
    user: &str,
    uploaded: &CanonicalJsonObject,
    master: &CanonicalJsonObject,
    name: &str,
    own: &SigningContext,
) -> Checked {
    if !signing::same_key(uploaded, master) {
        return Err((
            "M_INVALID_PARAM",
            "Key does not match the stored master key".into(),
        ));
    }
    let mut found = Vec::new();
    let signatures = match uploaded.get("signatures") {
        Some(ruma::CanonicalJsonValue::Object(s)) => s.get(user),
        _ => None,
    };
    let Some(ruma::CanonicalJsonValue::Object(by_key)) = signatures else {
        return Err(("M_INVALID_SIGNATURE", "No signature by the user".into()));
    };
    for (key_id, signature) in by_key {
        if signing::signature_of(master, user, key_id).is_some() {
            continue; // already stored with the key
        }
        let device = key_id.strip_prefix("ed25519:").unwrap_or_default();
        let public_key = own
            .devices
            .get(device)
            .and_then(|d| signing::keys_of(d).into_iter().find(|(id, _)| id == key_id))
            .map(|(_, key)| key.to_owned())
            .ok_or((
                "M_INVALID_SIGNATURE",
                format!("Unknown signing device {key_id}"),
            ))?;
        signing::verify(uploaded, user, key_id, &public_key)
            .map_err(|e| ("M_INVALID_SIGNATURE", e.to_string()))?;
        let ruma::CanonicalJsonValue::String(signature) = signature else {
            return Err(("M_INVALID_SIGNATURE", format!("Invalid signature {key_id}")));
        };
        found.push(KeySignature {
            target_user_id: user.to_owned(),
            target_key_id: name.to_owned(),
            signer_user_id: user.to_owned(),
            signer_key_id: key_id.clone(),
            signature: signature.clone(),
        });
    }
    Ok(found)
}

/// A signature of one of the signer's devices by their self-signing key.
fn check_own_device(
    user: &str,
    device: &str,
    uploaded: &CanonicalJsonObject,
    own: &SigningContext,
) -> Checked {
    let stored = own
        .devices
        .get(device)
        .ok_or(("M_NOT_FOUND", format!("Unknown device {device}")))?;
    let self_signing = own
        .self_signing
        .as_ref()
        .ok_or(("M_NOT_FOUND", "No self-signing key".to_owned()))?;
    let (key_id, public_key) = cross_signing_public_key(self_signing)
        .ok_or(("M_NOT_FOUND", "No self-signing key".to_owned()))?;
    if !signing::same_key(uploaded, stored) {
        return Err((
            "M_INVALID_PARAM",
            "Key does not match the stored device keys".into(),
        ));
    }
    signing::verify(uploaded, user, key_id, public_key)
        .map_err(|e| ("M_INVALID_SIGNATURE", e.to_string()))?;
    let signature = signing::signature_of(uploaded, user, key_id).unwrap_or_default();
    Ok(vec![KeySignature {
        target_user_id: user.to_owned(),
        target_key_id: device.to_owned(),
        signer_user_id: user.to_owned(),
        signer_key_id: key_id.to_owned(),
        signature: signature.to_owned(),
    }])
}

/// A signature of another user's master key by the signer's user-signing key.
fn check_other_master(
    signer: &str,
    target: &str,
    key_name: &str,
    uploaded: &CanonicalJsonObject,
    own: &SigningContext,
    theirs: &SigningContext,
) -> Checked {
    let user_signing = own
        .user_signing
        .as_ref()
        .ok_or(("M_NOT_FOUND", "No user-signing key".to_owned()))?;
    let (key_id, public_key) = cross_signing_public_key(user_signing)
        .ok_or(("M_NOT_FOUND", "No user-signing key".to_owned()))?;
    let master = theirs
        .master
        .as_ref()
        .filter(|_| theirs.master_name() == Some(key_name))
        .ok_or(("M_NOT_FOUND", format!("Unknown key {key_name}")))?;
    if !signing::same_key(uploaded, master) {
        return Err((
            "M_INVALID_PARAM",
            "Key does not match the stored master key".into(),
        ));
    }
    signing::verify(uploaded, signer, key_id, public_key)
        .map_err(|e| ("M_INVALID_SIGNATURE", e.to_string()))?;
    let signature = signing::signature_of(uploaded, signer, key_id).unwrap_or_default();
    Ok(vec![KeySignature {
        target_user_id: target.to_owned(),
        target_key_id: key_name.to_owned(),
        signer_user_id: signer.to_owned(),
        signer_key_id: key_id.to_owned(),
        signature: signature.to_owned(),
    }])
}

/// POST /_matrix/client/v3/keys/signatures/upload
///
/// Each uploaded object must be the stored key (apart from signatures) and carry a valid new
/// signature by the uploader: of their own devices by their self-signing key, of their own
/// master key by one of their devices, or of another user's master key by their user-signing
/// key. Keys that fail are listed in `failures` (`M_INVALID_SIGNATURE` for a bad
/// signature); the others are stored. Signatures of the uploader's own keys are a
/// device-list change for everyone sharing a room; signatures of others' keys are told to
/// the uploader only.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keyssignaturesupload>
pub async fn upload_signatures(
    State(state): State<AppState>,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response> {
    let signer = req.sender().user_id.as_str();
    let own = SigningContext::load(&state, signer, true).await?;
    let mut response = upload_signatures::v3::Response::new();
    let mut accepted = Vec::new();
    for (target, keys) in &req.body.signed_keys {
        let theirs = if target.as_str() == signer || !is_local(&state, target) {
            None
        } else {
            Some(SigningContext::load(&state, target.as_str(), false).await?)
        };
        for (key_id, raw_key) in keys {
            let uploaded = canonical_object(raw_key.get())
                .map_err(|e| Error::bad_json(format!("Invalid signed key {key_id}: {e}")))?;
            let checked = if target.as_str() == signer {
                match (&own.master, own.master_name()) {
                    (Some(master), Some(name)) if name == key_id => {
                        check_own_master(signer, &uploaded, master, name, &own)
                    }
                    _ => check_own_device(signer, key_id, &uploaded, &own),
                }
            } else {
                match &theirs {
                    Some(theirs) => {
                        check_other_master(signer, target.as_str(), key_id, &uploaded, &own, theirs)
                    }
                    None => Err((
                        "M_NOT_FOUND",
                        "Users of other servers are not supported yet".to_owned(),
                    )),
                }
            };
            match checked {
                Ok(signatures) => accepted.extend(signatures),
                Err((errcode, message)) => {
                    response
                        .failures
                        .entry(target.clone())
                        .or_default()
                        .insert(key_id.to_owned(), failure(errcode, message)?);
                }
            }
        }
    }
    state
        .storage
        .store_key_signatures(signer, &accepted)
        .await?;
    if accepted.iter().any(|s| s.target_user_id == signer) {
        announce_device_list_change(&state, signer, None).await;
    } else if !accepted.is_empty() {
        state.notifier.notify([signer]);
    }
    Ok(response)
}
