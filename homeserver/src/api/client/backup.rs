//! Server-side key backups (`/room_keys`).
//!
//! <https://spec.matrix.org/latest/client-server-api/#server-side-key-backups>
//!
//! The server stores what the client encrypted and never looks inside `session_data`. Keys
//! are uploaded only to the current (newest, not deleted) version; another version gets 403
//! `M_WRONG_ROOM_KEYS_VERSION` with `current_version`. Reading and deleting work on any
//! version that exists. For a session already backed up, the replacement rule of
//! [`crate::e2ee::backup`] decides which copy stays. `etag` changes whenever a version's
//! keys change; `count` is the number of keys in it.

use std::collections::BTreeMap;

use axum::{extract::State, http::StatusCode};
use ruma::{
    api::client::backup::{
        add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
        create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
        update_backup_version, BackupAlgorithm, KeyBackupData, RoomKeyBackup,
    },
    serde::Raw,
    OwnedRoomId, UInt,
};
use serde_json::{json, Value};

use crate::{
    api::ruma::Ruma,
    e2ee::backup::{keep_stored, KeyQuality},
    error::{Error, Result},
    AppState,
};
use myelin_storage::{BackupKeyRow, BackupScope, BackupVersionRow, BackupWriteError};

fn unknown_version() -> Error {
    Error::not_found("Unknown backup version")
}

/// A version number from the path or query; anything else names no version.
fn parse_version(version: &str) -> Result<i64> {
    version
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(unknown_version)
}

fn write_error(e: BackupWriteError) -> Error {
    match e {
        BackupWriteError::NotFound => unknown_version(),
        BackupWriteError::WrongVersion(current) => {
            let mut error = Error::new(
                StatusCode::FORBIDDEN,
                "M_WRONG_ROOM_KEYS_VERSION",
                "The backup version is not the current one",
            );
            if let Error::Matrix(m) = &mut error {
                m.body
                    .insert("current_version".into(), Value::String(current.to_string()));
            }
            error
        }
    }
}

fn uint(n: i64) -> UInt {
    UInt::try_from(n.max(0) as u64).unwrap_or(UInt::MAX)
}

/// `{"algorithm": …, "auth_data": …}` of a request body, checked against the spec's shape.
fn algorithm_json(raw: &Raw<BackupAlgorithm>) -> Result<String> {
    raw.deserialize()
        .map_err(|e| Error::bad_json(format!("Invalid backup algorithm: {e}")))?;
    let body: Value = serde_json::from_str(raw.json().get()).map_err(Error::internal)?;
    Ok(json!({ "algorithm": body["algorithm"], "auth_data": body["auth_data"] }).to_string())
}

fn algorithm_raw(row: &BackupVersionRow) -> Result<Raw<BackupAlgorithm>> {
    Ok(Raw::from_json(
        serde_json::value::RawValue::from_string(row.algorithm.clone()).map_err(Error::internal)?,
    ))
}

async fn existing_version(state: &AppState, user: &str, version: &str) -> Result<BackupVersionRow> {
    let version = parse_version(version)?;
    state
        .storage
        .get_backup_version(user, Some(version))
        .await?
        .ok_or_else(unknown_version)
}

/// POST /_matrix/client/v3/room_keys/version
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3room_keysversion>
pub async fn create_backup_version(
    State(state): State<AppState>,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    let algorithm = algorithm_json(&req.body.algorithm)?;
    let version = state
        .storage
        .create_backup_version(req.sender().user_id.as_str(), &algorithm)
        .await?;
    Ok(create_backup_version::v3::Response::new(
        version.to_string(),
    ))
}

/// GET /_matrix/client/v3/room_keys/version
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3room_keysversion>
pub async fn get_latest_backup_info(
    State(state): State<AppState>,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    let row = state
        .storage
        .get_backup_version(req.sender().user_id.as_str(), None)
        .await?
        .ok_or_else(|| Error::not_found("No current backup version"))?;
    Ok(get_latest_backup_info::v3::Response::new(
        algorithm_raw(&row)?,
        uint(row.count),
        row.etag.to_string(),
        row.version.to_string(),
    ))
}

/// GET /_matrix/client/v3/room_keys/version/{version}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3room_keysversionversion>
pub async fn get_backup_info(
    State(state): State<AppState>,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response> {
    let row = existing_version(&state, req.sender().user_id.as_str(), &req.body.version).await?;
    Ok(get_backup_info::v3::Response::new(
        algorithm_raw(&row)?,
        uint(row.count),
        row.etag.to_string(),
        row.version.to_string(),
    ))
}

/// PUT /_matrix/client/v3/room_keys/version/{version}
///
/// Only `auth_data` may change: a different algorithm, or a `version` in the body that is
/// not the one in the path, is refused with 400 `M_INVALID_PARAM`.
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3room_keysversionversion>
pub async fn update_backup_version(
    State(state): State<AppState>,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    let user = req.sender().user_id.as_str();
    let body: Value =
        serde_json::from_str(req.body.algorithm.json().get()).map_err(Error::internal)?;
    if let Some(version) = body.get("version") {
        if version.as_str() != Some(req.body.version.as_str()) {
            return Err(Error::invalid_param(
                "The version in the body does not match the version in the path",
            ));
        }
    }
    let algorithm = algorithm_json(&req.body.algorithm)?;
    let row = existing_version(&state, user, &req.body.version).await?;
    let stored: Value = serde_json::from_str(&row.algorithm).map_err(Error::internal)?;
    if stored["algorithm"] != body["algorithm"] {
        return Err(Error::invalid_param(
            "The algorithm of a backup version cannot change",
        ));
    }
    if !state
        .storage
        .update_backup_version(user, row.version, &algorithm)
        .await?
    {
        return Err(unknown_version());
    }
    Ok(update_backup_version::v3::Response::new())
}

/// DELETE /_matrix/client/v3/room_keys/version/{version}
///
/// <https://spec.matrix.org/latest/client-server-api/#delete_matrixclientv3room_keysversionversion>
pub async fn delete_backup_version(
    State(state): State<AppState>,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    let version = parse_version(&req.body.version)?;
    if !state
        .storage
        .delete_backup_version(req.sender().user_id.as_str(), version)
        .await?
    {
        return Err(unknown_version());
    }
    Ok(delete_backup_version::v3::Response::new())
}

/// One uploaded session key as a row to store.
fn key_row(room_id: &str, session_id: &str, raw: &Raw<KeyBackupData>) -> Result<BackupKeyRow> {
    let data = raw
        .deserialize()
        .map_err(|e| Error::bad_json(format!("Invalid key data for session {session_id}: {e}")))?;
    Ok(BackupKeyRow {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        first_message_index: u64::from(data.first_message_index) as i64,
        forwarded_count: u64::from(data.forwarded_count) as i64,
        is_verified: data.is_verified,
        session_data: raw.json().get().to_owned(),
    })
}

fn quality(row: &BackupKeyRow) -> KeyQuality {
    KeyQuality {
        is_verified: row.is_verified,
        first_message_index: row.first_message_index.max(0) as u64,
        forwarded_count: row.forwarded_count.max(0) as u64,
    }
}

/// Stores keys in the current version; returns `(etag, count)`.
async fn put_keys(
    state: &AppState,
    user: &str,
    version: &str,
    keys: Vec<BackupKeyRow>,
) -> Result<(String, UInt)> {
    let version = parse_version(version)?;
    let (etag, count) = state
        .storage
        .put_backup_keys(user, version, &keys, |stored, uploaded| {
            keep_stored(quality(stored), quality(uploaded))
        })
        .await?
        .map_err(write_error)?;
    Ok((etag.to_string(), uint(count)))
}

/// PUT /_matrix/client/v3/room_keys/keys
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3room_keyskeys>
pub async fn add_backup_keys(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response> {
    let mut keys = Vec::new();
    for (room_id, room) in &req.body.rooms {
        for (session_id, raw) in &room.sessions {
            keys.push(key_row(room_id.as_str(), session_id, raw)?);
        }
    }
    let (etag, count) = put_keys(
        &state,
        req.sender().user_id.as_str(),
        &req.body.version,
        keys,
    )
    .await?;
    Ok(add_backup_keys::v3::Response::new(etag, count))
}

/// PUT /_matrix/client/v3/room_keys/keys/{roomId}
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3room_keyskeysroomid>
pub async fn add_backup_keys_for_room(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let keys = req
        .body
        .sessions
        .iter()
        .map(|(session_id, raw)| key_row(req.body.room_id.as_str(), session_id, raw))
        .collect::<Result<Vec<_>>>()?;
    let (etag, count) = put_keys(
        &state,
        req.sender().user_id.as_str(),
        &req.body.version,
        keys,
    )
    .await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count))
}

/// PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3room_keyskeysroomidsessionid>
pub async fn add_backup_keys_for_session(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let key = key_row(
        req.body.room_id.as_str(),
        &req.body.session_id,
        &req.body.session_data,
    )?;
    let (etag, count) = put_keys(
        &state,
        req.sender().user_id.as_str(),
        &req.body.version,
        vec![key],
    )
    .await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, count))
}

fn raw_key(row: &BackupKeyRow) -> Result<Raw<KeyBackupData>> {
    Ok(Raw::from_json(
        serde_json::value::RawValue::from_string(row.session_data.clone())
            .map_err(Error::internal)?,
    ))
}

/// GET /_matrix/client/v3/room_keys/keys
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3room_keyskeys>
pub async fn get_backup_keys(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response> {
    let user = req.sender().user_id.as_str();
    let version = existing_version(&state, user, &req.body.version).await?;
    let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>> = BTreeMap::new();
    for row in state
        .storage
        .get_backup_keys(user, version.version, None, None)
        .await?
    {
        let Ok(room_id) = OwnedRoomId::try_from(row.room_id.as_str()) else {
            continue;
        };
        rooms
            .entry(room_id)
            .or_default()
            .insert(row.session_id.clone(), raw_key(&row)?);
    }
    Ok(get_backup_keys::v3::Response::new(
        rooms
            .into_iter()
            .map(|(room, sessions)| (room, RoomKeyBackup::new(sessions)))
            .collect(),
    ))
}

/// GET /_matrix/client/v3/room_keys/keys/{roomId}
///
/// A room without backed-up keys answers with no sessions.
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3room_keyskeysroomid>
pub async fn get_backup_keys_for_room(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let user = req.sender().user_id.as_str();
    let version = existing_version(&state, user, &req.body.version).await?;
    let sessions = state
        .storage
        .get_backup_keys(user, version.version, Some(req.body.room_id.as_str()), None)
        .await?
        .iter()
        .map(|row| Ok((row.session_id.clone(), raw_key(row)?)))
        .collect::<Result<_>>()?;
    Ok(get_backup_keys_for_room::v3::Response::new(sessions))
}

/// GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3room_keyskeysroomidsessionid>
pub async fn get_backup_keys_for_session(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let user = req.sender().user_id.as_str();
    let version = existing_version(&state, user, &req.body.version).await?;
    let rows = state
        .storage
        .get_backup_keys(
            user,
            version.version,
            Some(req.body.room_id.as_str()),
            Some(&req.body.session_id),
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::not_found("No backed-up key for this session"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(raw_key(
        row,
    )?))
}

async fn delete_keys(
    state: &AppState,
    user: &str,
    version: &str,
    scope: BackupScope<'_>,
) -> Result<(String, UInt)> {
    let version = parse_version(version)?;
    let (etag, count) = state
        .storage
        .delete_backup_keys(user, version, scope)
        .await?
        .map_err(write_error)?;
    Ok((etag.to_string(), uint(count)))
}

/// DELETE /_matrix/client/v3/room_keys/keys
///
/// <https://spec.matrix.org/latest/client-server-api/#delete_matrixclientv3room_keyskeys>
pub async fn delete_backup_keys(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    let (etag, count) = delete_keys(
        &state,
        req.sender().user_id.as_str(),
        &req.body.version,
        BackupScope::All,
    )
    .await?;
    Ok(delete_backup_keys::v3::Response::new(etag, count))
}

/// DELETE /_matrix/client/v3/room_keys/keys/{roomId}
///
/// <https://spec.matrix.org/latest/client-server-api/#delete_matrixclientv3room_keyskeysroomid>
pub async fn delete_backup_keys_for_room(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let (etag, count) = delete_keys(
        &state,
        req.sender().user_id.as_str(),
        &req.body.version,
        BackupScope::Room(req.body.room_id.as_str()),
    )
    .await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count))
}

/// DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
///
/// <https://spec.matrix.org/latest/client-server-api/#delete_matrixclientv3room_keyskeysroomidsessionid>
pub async fn delete_backup_keys_for_session(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let (etag, count) = delete_keys(
        &state,
        req.sender().user_id.as_str(),
        &req.body.version,
        BackupScope::Session(req.body.room_id.as_str(), &req.body.session_id),
    )
    .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(
        etag, count,
    ))
}
