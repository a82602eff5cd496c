//! Room upgrades: a new room in a new version, linked both ways, with the old room's
//! important state carried over and its members able to follow.
//!
//! <https://spec.matrix.org/latest/client-server-api/#room-upgrades>
//!
//! 1. Check the user may send `m.room.tombstone` in the old room.
//! 2. Create the new room with `predecessor` in its create event and the old room's
//!    transferable state (name, topic, avatar, join rules, history visibility, guest access,
//!    encryption, server ACL, canonical alias, power levels).
//! 3. Move the local aliases to the new room.
//! 4. Send the tombstone in the old room, then raise the old room's power levels so that
//!    ordinary members can no longer send messages or invite.
//! 5. Invite the old room's joined local members if the new room is not public, so everyone
//!    can follow.

use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, RoomId, RoomVersionId, UserId};
use serde_json::{json, Value};

use super::{
    create::{create_room, CreateRoom, Preset},
    power, send, Send,
};
use crate::{error::Error, AppState};

/// State copied into the new room.
const TRANSFERABLE: &[&str] = &[
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.canonical_alias",
];

fn object(value: &Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value.clone()) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => CanonicalJsonObject::new(),
    }
}

/// Upgrades `old` to `version`; returns the new room's ID.
pub async fn upgrade_room(
    state: &AppState,
    old: &RoomId,
    user: &UserId,
    version: RoomVersionId,
) -> Result<OwnedRoomId, Error> {
    if !power::has_level(state, old, user, power::Action::State("m.room.tombstone")).await? {
        return Err(Error::forbidden("You may not upgrade this room"));
    }
    let current = state.storage.current_state(old.as_str()).await?;
    let mut contents = std::collections::HashMap::new();
    for event_type in TRANSFERABLE
        .iter()
        .chain(["m.room.power_levels", "m.room.create"].iter())
    {
        if let Some(id) = current.get(&(event_type.to_string(), String::new())) {
            if let Some(row) = state.storage.get_event(id).await? {
                let pdu: Value = serde_json::from_str(&row.pdu).map_err(Error::internal)?;
                contents.insert(*event_type, pdu["content"].clone());
            }
        }
    }
    let (_, new_rules) = (
        version.clone(),
        myelin_federation::pdu::rules_for(&version).map_err(Error::internal)?,
    );

    // The predecessor link; since v12 it names only the room.
    let last_event = state
        .storage
        .forward_extremities(old.as_str())
        .await?
        .first()
        .map(|(id, _, _)| id.clone());
    let mut predecessor = json!({ "room_id": old });
    if let (Some(event_id), false) = (
        last_event,
        new_rules.authorization.room_create_event_id_as_room_id,
    ) {
        predecessor["event_id"] = event_id.into();
    }
    let mut creation_content = json!({ "predecessor": predecessor });
    if let Some(create) = contents.get("m.room.create") {
        if let Some(room_type) = create.get("type") {
            creation_content["type"] = room_type.clone();
        }
    }

    // Power levels carry over; the upgrading user keeps the power to finish the upgrade.
    let mut power_levels = contents
        .get("m.room.power_levels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(users) = power_levels.get_mut("users").and_then(Value::as_object_mut) {
        if new_rules.authorization.explicitly_privilege_room_creators {
            // Since v12 the creator is privileged by the create event and must not be listed.
            users.remove(user.as_str());
        } else {
            users.insert(user.to_string(), 100.into());
        }
    }
    let public = contents
        .get("m.room.join_rules")
        .is_some_and(|c| c["join_rule"] == "public");
    let initial_state: Vec<(String, String, CanonicalJsonObject)> = TRANSFERABLE
        .iter()
        .filter(|t| **t != "m.room.canonical_alias")
        .filter_map(|t| {
            contents
                .get(t)
                .map(|c| (t.to_string(), String::new(), object(c)))
        })
        .collect();
    let new_room = create_room(
        state,
        user,
        CreateRoom {
            version,
            preset: if public {
                Preset::PublicChat
            } else {
                Preset::PrivateChat
            },
            creation_content: object(&creation_content),
            power_level_override: Some(object(&power_levels)),
            initial_state,
            name: None,
            topic: None,
            alias: None,
            invite: Vec::new(),
            is_direct: false,
            publish: state
                .storage
                .get_room(old.as_str())
                .await?
                .is_some_and(|r| r.is_public),
        },
    )
    .await?;

    // Aliases move, and the canonical alias follows them.
    for alias in state.storage.aliases_for_room(old.as_str()).await? {
        let (_, creator) = state
            .storage
            .resolve_alias(&alias)
            .await?
            .unwrap_or_default();
        state.storage.delete_alias(&alias).await?;
        state
            .storage
            .create_alias(&alias, new_room.as_str(), &creator, crate::auth::now_ms())
            .await?;
    }
    if let Some(canonical) = contents.get("m.room.canonical_alias") {
        send(
            state,
            &new_room,
            user,
            Send::state("m.room.canonical_alias", "", object(canonical)),
        )
        .await?;
        let _ = send(
            state,
            old,
            user,
            Send::state("m.room.canonical_alias", "", CanonicalJsonObject::new()),
        )
        .await;
    }
    if state
        .storage
        .get_room(old.as_str())
        .await?
        .is_some_and(|r| r.is_public)
    {
        state.storage.set_room_public(old.as_str(), false).await?;
    }

    // The tombstone, then the old room goes quiet.
    let tombstone = json!({ "body": "This room has been replaced", "replacement_room": new_room });
    send(
        state,
        old,
        user,
        Send::state("m.room.tombstone", "", object(&tombstone)),
    )
    .await?;
    if let Some(mut levels) = contents.get("m.room.power_levels").cloned() {
        let users_default = levels["users_default"].as_i64().unwrap_or(0);
        let restricted = (users_default + 1).max(50);
        for key in ["events_default", "invite"] {
            if levels[key].as_i64().unwrap_or(0) < restricted {
                levels[key] = restricted.into();
            }
        }
        if let Err(e) = send(
            state,
            old,
            user,
            Send::state("m.room.power_levels", "", object(&levels)),
        )
        .await
        {
            tracing::warn!(room_id = %old, error = %e, "could not restrict the upgraded room");
        }
    }

    // Members of a non-public room need an invite to follow.
    if !public {
        for (member, membership, _) in state.storage.room_members(old.as_str()).await?.iter() {
            let Ok(member_id) = UserId::parse(member) else {
                continue;
            };
            if membership != "join"
                || member_id == user
                || member_id.server_name() != state.server_name
            {
                continue;
            }
            let content = object(&json!({ "membership": "invite" }));
            if let Err(e) = send(
                state,
                &new_room,
                user,
                Send::state("m.room.member", member_id.as_str(), content),
            )
            .await
            {
                tracing::warn!(room_id = %new_room, %member_id, error = %e, "could not invite a member to the upgraded room");
            }
        }
    }
    tracing::info!(old_room = %old, %new_room, "upgraded room");
    Ok(new_room)
}
