//! Creating rooms, and the helpers the room endpoints share.
//!
//! <https://spec.matrix.org/latest/client-server-api/#creation>

use axum::{extract::State, http::StatusCode};
use ruma::{
    api::client::room::{create_room, Visibility},
    serde::Raw,
    CanonicalJsonObject, CanonicalJsonValue, RoomId, UserId,
};
use serde_json::Value;

use crate::{
    api::{client::discovery::SUPPORTED_ROOM_VERSIONS, ruma::Ruma},
    error::{Error, Result},
    rooms::{
        self,
        create::{CreateRoom, Preset},
    },
    AppState,
};

/// JSON text from a client into a canonical-JSON object, or `M_BAD_JSON`.
pub fn canonical_object(json: &str, what: &str) -> Result<CanonicalJsonObject> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| Error::bad_json(format!("{what}: {e}")))?;
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        Ok(_) => Err(Error::bad_json(format!("{what} must be a JSON object"))),
        Err(e) => Err(Error::bad_json(format!(
            "{what} is not canonical JSON: {e}"
        ))),
    }
}

/// A client-format JSON value as a ruma `Raw`.
pub fn raw<T>(value: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(value).map_err(Error::internal)?,
    ))
}

/// The user's current membership of a room, or `None`.
pub async fn membership_of(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<String>> {
    Ok(state
        .storage
        .membership(room_id.as_str(), user.as_str())
        .await?
        .map(|(m, _)| m))
}

/// 404 unless the room exists here; 403 unless the user is joined to it.
pub async fn require_joined(state: &AppState, room_id: &RoomId, user: &UserId) -> Result<()> {
    if state.storage.get_room(room_id.as_str()).await?.is_none() {
        return Err(Error::not_found("Room not found"));
    }
    match membership_of(state, room_id, user).await?.as_deref() {
        Some("join") => Ok(()),
        _ => Err(Error::forbidden("You are not joined to this room")),
    }
}

/// POST /_matrix/client/v3/createRoom
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3createroom>
pub async fn create_room(
    State(state): State<AppState>,
    req: Ruma<create_room::v3::Request>,
) -> Result<create_room::v3::Response> {
    let creator = req.sender().user_id.clone();
    let body = &req.body;
    let version = body
        .room_version
        .clone()
        .unwrap_or(crate::api::client::discovery::DEFAULT_ROOM_VERSION);
    if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("Room version {version} is not supported"),
        ));
    }
    let preset = match body.preset.as_ref().map(|p| p.as_str()) {
        Some("private_chat") => Preset::PrivateChat,
        Some("trusted_private_chat") => Preset::TrustedPrivateChat,
        Some("public_chat") => Preset::PublicChat,
        Some(other) => return Err(Error::bad_json(format!("Unknown preset {other}"))),
        None if body.visibility == Visibility::Public => Preset::PublicChat,
        None => Preset::PrivateChat,
    };
    let creation_content = match &body.creation_content {
        Some(raw) => {
            let mut content = canonical_object(raw.json().get(), "creation_content")?;
            // The server decides these.
            content.remove("room_version");
            content.remove("creator");
            content
        }
        None => CanonicalJsonObject::new(),
    };
    let power_level_override = body
        .power_level_content_override
        .as_ref()
        .map(|raw| canonical_object(raw.json().get(), "power_level_content_override"))
        .transpose()?;
    let mut initial_state = Vec::new();
    for raw in &body.initial_state {
        let event = canonical_object(raw.json().get(), "initial_state event")?;
        let event_type = match event.get("type") {
            Some(CanonicalJsonValue::String(t)) => t.clone(),
            _ => return Err(Error::bad_json("initial_state events need a type")),
        };
        let state_key = match event.get("state_key") {
            Some(CanonicalJsonValue::String(k)) => k.clone(),
            None => String::new(),
            _ => return Err(Error::bad_json("state_key must be a string")),
        };
        let content = match event.get("content") {
            Some(CanonicalJsonValue::Object(c)) => c.clone(),
            _ => {
                return Err(Error::bad_json(
                    "initial_state events need an object content",
                ))
            }
        };
        if event_type == "m.room.create"
            || event_type == "m.room.member"
            || event_type == "m.room.power_levels"
        {
            return Err(Error::bad_json(format!(
                "{event_type} cannot be set through initial_state"
            )));
        }
        initial_state.push((event_type, state_key, content));
    }
    let alias = match &body.room_alias_name {
        Some(name) => {
            if name.is_empty()
                || name.contains(':')
                || name.contains('#')
                || name.chars().any(char::is_whitespace)
            {
                return Err(Error::invalid_param(
                    "room_alias_name must be a plain localpart",
                ));
            }
            let alias = format!("#{name}:{}", state.server_name);
            if ruma::RoomAliasId::parse(&alias).is_err() {
                return Err(Error::invalid_param("Invalid room_alias_name"));
            }
            if state.storage.resolve_alias(&alias).await?.is_some() {
                return Err(Error::new(
                    StatusCode::BAD_REQUEST,
                    "M_ROOM_IN_USE",
                    "Room alias already taken",
                ));
            }
            Some(alias)
        }
        None => None,
    };
    let room_id = rooms::create::create_room(
        &state,
        &creator,
        CreateRoom {
            version: version.clone(),
            preset,
            creation_content,
            power_level_override,
            initial_state,
            name: body.name.clone(),
            topic: body.topic.clone(),
            alias,
            invite: body.invite.clone(),
            is_direct: body.is_direct,
            publish: body.visibility == Visibility::Public,
            replaces: None,
        },
    )
    .await?;
    Ok(create_room::v3::Response::new(room_id))
}

/// POST /_matrix/client/v3/rooms/{roomId}/upgrade
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidupgrade>
pub async fn upgrade_room(
    State(state): State<AppState>,
    req: Ruma<ruma::api::client::room::upgrade_room::v3::Request>,
) -> Result<ruma::api::client::room::upgrade_room::v3::Response> {
    let user = &req.sender().user_id;
    require_joined(&state, &req.body.room_id, user).await?;
    if !SUPPORTED_ROOM_VERSIONS.contains(&req.body.new_version) {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("Room version {} is not supported", req.body.new_version),
        ));
    }
    let new_room = rooms::upgrade::upgrade_room(
        &state,
        &req.body.room_id,
        user,
        req.body.new_version.clone(),
    )
    .await?;
    Ok(ruma::api::client::room::upgrade_room::v3::Response::new(
        new_room,
    ))
}
