//! Room upgrades: a new room in a new version, linked both ways, with the old room's
//! important state carried over and its members able to follow.
//!
//! <https://spec.matrix.org/latest/client-server-api/#room-upgrades>
//!
//! 1. Check the user may send `m.room.tombstone` in the old room.
//! 2. Create the new room, in one transaction, with `predecessor` in its create event, the
//!    old room's transferable state (name, topic, avatar, join rules, history visibility,
//!    guest access, encryption, server ACL, canonical alias, power levels), invites for the
//!    old room's joined local members if the new room is not public (so everyone can
//!    follow), and the old room's local aliases and directory entry moved over. The same
//!    transaction marks the old room as still to be finished.
//! 3. Finish the old room ([`finish_old_room`]): clear its canonical alias, send the
//!    tombstone, then raise its power levels so that ordinary members can no longer send
//!    messages or invite; then clear the mark. Each step is skipped if already done, so a
//!    server stopped between 2 and 3 finishes the job at start-up ([`resume_pending`]).

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
                let pdu: Value = row.parse_pdu().map_err(Error::internal)?;
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
        .filter_map(|t| {
            contents
                .get(t)
                .map(|c| (t.to_string(), String::new(), object(c)))
        })
        .collect();
    // Members of a non-public room need an invite to follow.
    let mut invite = Vec::new();
    if !public {
        for (member, membership, _) in state.storage.room_members(old.as_str()).await?.iter() {
            let Ok(member_id) = UserId::parse(member) else {
                continue;
            };
            if membership == "join"
                && member_id != user
                && member_id.server_name() == state.server_name
            {
                invite.push(member_id);
            }
        }
    }
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
            invite,
            is_direct: false,
            publish: state
                .storage
                .get_room(old.as_str())
                .await?
                .is_some_and(|r| r.is_public),
            replaces: Some(old.to_owned()),
        },
    )
    .await?;
    finish_old_room(state, old, &new_room, user).await?;
    tracing::info!(old_room = %old, %new_room, "upgraded room");
    Ok(new_room)
}

/// Step 3 of the module docs: the old room points to the new one and goes quiet. Every step
/// looks at the old room's current state first, so running it again does nothing twice.
async fn finish_old_room(
    state: &AppState,
    old: &RoomId,
    new_room: &RoomId,
    user: &UserId,
) -> Result<(), Error> {
    let content_of = |current: &myelin_storage::StateMap, event_type: &str| {
        let id = current
            .get(&(event_type.to_owned(), String::new()))
            .cloned();
        async move {
            let Some(id) = id else {
                return Ok::<_, Error>(None);
            };
            let Some(row) = state.storage.get_event(&id).await? else {
                return Ok(None);
            };
            let pdu: Value = row.parse_pdu().map_err(Error::internal)?;
            Ok(Some(pdu["content"].clone()))
        }
    };
    let current = state.storage.current_state(old.as_str()).await?;

    // The aliases have moved: the old room's canonical alias no longer points at it.
    if content_of(&current, "m.room.canonical_alias")
        .await?
        .is_some_and(|c| c.as_object().is_some_and(|o| !o.is_empty()))
    {
        if let Err(e) = send(
            state,
            old,
            user,
            Send::state("m.room.canonical_alias", "", CanonicalJsonObject::new()),
        )
        .await
        {
            tracing::warn!(room_id = %old, error = %e, "could not clear the upgraded room's canonical alias");
        }
    }

    // The tombstone, then the old room goes quiet.
    let tombstoned = content_of(&current, "m.room.tombstone")
        .await?
        .is_some_and(|c| c["replacement_room"].as_str() == Some(new_room.as_str()));
    if !tombstoned {
        let tombstone =
            json!({ "body": "This room has been replaced", "replacement_room": new_room });
        send(
            state,
            old,
            user,
            Send::state("m.room.tombstone", "", object(&tombstone)),
        )
        .await?;
    }
    if let Some(mut levels) = content_of(&current, "m.room.power_levels").await? {
        let users_default = levels["users_default"].as_i64().unwrap_or(0);
        let restricted = (users_default + 1).max(50);
        let mut changed = false;
        for key in ["events_default", "invite"] {
            if levels[key].as_i64().unwrap_or(0) < restricted {
                levels[key] = restricted.into();
                changed = true;
            }
        }
        if changed {
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
    }
    state.storage.finish_upgrade(old.as_str()).await?;
    Ok(())
}

/// At start-up: finishes the old rooms of upgrades a stopped server left between the new
/// room's commit and the old room's tombstone. The upgrading user is the new room's creator.
pub async fn resume_pending(state: AppState) {
    let pending = match state.storage.pending_upgrades().await {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!(error = %e, "could not read unfinished room upgrades");
            return;
        }
    };
    for (old, new) in pending {
        let (Ok(old), Ok(new)) = (RoomId::parse(&old), RoomId::parse(&new)) else {
            continue;
        };
        let creator = match state.storage.get_room(new.as_str()).await {
            Ok(Some(room)) => room.creator,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "could not read an upgraded room");
                continue;
            }
        };
        let Ok(user) = UserId::parse(&creator) else {
            continue;
        };
        if let Err(e) = finish_old_room(&state, &old, &new, &user).await {
            tracing::warn!(old_room = %old, new_room = %new, error = %e, "could not finish a room upgrade");
        }
    }
}
