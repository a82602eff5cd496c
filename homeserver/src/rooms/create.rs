//! Creating a room: the create event, then the creator's join, power levels, alias, preset
//! state, initial state, name, topic and invites, each through the one write pipeline.
//!
//! <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3createroom>

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicI64, Ordering},
};

use myelin_federation::{
    auth,
    pdu::{build_event, rules_for, NewEvent, Pdu, Placement},
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId,
    RoomId, RoomVersionId, UInt, UserId,
};

use super::{pdu_error, Send};
use crate::{auth::now_ms, error::Error, AppState};

/// The presets of the spec.
/// Most events a room's creation writes (its transaction's size): the preset's, plus the
/// client's `initial_state` and invites.
const MAX_CREATION_EVENTS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// Everything `createRoom` can ask for, already validated.
#[derive(Debug, Clone)]
pub struct CreateRoom {
    pub version: RoomVersionId,
    pub preset: Preset,
    pub creation_content: CanonicalJsonObject,
    pub power_level_override: Option<CanonicalJsonObject>,
    /// `(type, state_key, content)`.
    pub initial_state: Vec<(String, String, CanonicalJsonObject)>,
    pub name: Option<String>,
    pub topic: Option<String>,
    /// A full alias (`#name:server`) already checked to be free.
    pub alias: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub publish: bool,
    /// For an upgrade: the room this one replaces (its aliases and directory entry move in
    /// the creation's transaction; see `upgrade.rs`).
    pub replaces: Option<OwnedRoomId>,
}

fn obj(value: serde_json::Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => CanonicalJsonObject::new(),
    }
}

/// Merges `overlay` into `base`, recursing into objects (power level `users` and `events`).
fn merge(base: &mut CanonicalJsonObject, overlay: CanonicalJsonObject) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(CanonicalJsonValue::Object(b)), CanonicalJsonValue::Object(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The power levels a new room starts with (Synapse's defaults), before overrides.
fn default_power_levels(
    creator: &UserId,
    create: &CreateRoom,
    creators_privileged: bool,
) -> CanonicalJsonObject {
    let mut users = serde_json::Map::new();
    // Since v12 creators are privileged by the create event and must not be listed.
    if !creators_privileged {
        users.insert(creator.to_string(), 100.into());
    }
    // Trusted invitees get the creator's power; since v12 they are additional creators instead
    // (see `create_room`), and creators must not be listed.
    if create.preset == Preset::TrustedPrivateChat && !creators_privileged {
        for invitee in &create.invite {
            users.insert(invitee.to_string(), 100.into());
        }
    }
    let invite = if create.preset == Preset::PublicChat {
        50
    } else {
        0
    };
    obj(serde_json::json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": invite,
        "historical": 100,
    }))
}

/// The last `origin_server_ts` given to a create event by this process.
static LAST_CREATE_TS: AtomicI64 = AtomicI64::new(0);

/// A timestamp for a new create event, later than any this process gave before. From room
/// version 12 the room ID is the create event's hash, so two rooms created by one user with
/// the same creation content in the same millisecond would otherwise be the same room.
fn create_ts() -> i64 {
    let now = now_ms();
    let previous = LAST_CREATE_TS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    now.max(previous + 1)
}

/// Creates the room and returns its ID.
pub async fn create_room(
    state: &AppState,
    creator: &UserId,
    create: CreateRoom,
) -> Result<OwnedRoomId, Error> {
    // Another process can still make the same create event in the same millisecond: its
    // room is there, so try again with a later timestamp.
    for _ in 0..3 {
        if let Some(room_id) = create_room_once(state, creator, &create).await? {
            return Ok(room_id);
        }
    }
    Err(Error::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "M_UNKNOWN",
        "Could not find a free room ID; try again",
    ))
}

/// One try of [`create_room`]: `None` when the room ID turned out to be taken.
async fn create_room_once(
    state: &AppState,
    creator: &UserId,
    create: &CreateRoom,
) -> Result<Option<OwnedRoomId>, Error> {
    let rules = rules_for(&create.version).map_err(pdu_error)?;
    let creators_privileged = rules.authorization.explicitly_privilege_room_creators;

    // 1. m.room.create
    let mut content = create.creation_content.clone();
    content.insert(
        "room_version".into(),
        CanonicalJsonValue::String(create.version.to_string()),
    );
    if create.preset == Preset::TrustedPrivateChat && rules.authorization.additional_room_creators {
        let mut creators: Vec<CanonicalJsonValue> = match content.remove("additional_creators") {
            Some(CanonicalJsonValue::Array(existing)) => existing,
            _ => Vec::new(),
        };
        for invitee in &create.invite {
            let id = CanonicalJsonValue::String(invitee.to_string());
            if !creators.contains(&id) && invitee != creator {
                creators.push(id);
            }
        }
        if !creators.is_empty() {
            content.insert(
                "additional_creators".into(),
                CanonicalJsonValue::Array(creators),
            );
        }
    }
    if !rules.authorization.use_room_create_sender {
        content.insert(
            "creator".into(),
            CanonicalJsonValue::String(creator.to_string()),
        );
    }
    let provisional_room_id = if rules.authorization.room_create_event_id_as_room_id {
        None
    } else {
        Some(RoomId::new_v1(&state.server_name))
    };
    let now = create_ts();
    let built = build_event(
        NewEvent {
            event_type: "m.room.create".into(),
            state_key: Some(String::new()),
            content,
            redacts: None,
        },
        Placement {
            rules: &rules,
            room_id: provisional_room_id.as_deref(),
            sender: creator,
            prev_events: Vec::new(),
            auth_events: Vec::new(),
            depth: 1,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(now as u64).unwrap_or_default()),
        },
        state.server_name.as_str(),
        &state.signing_key,
    )
    .map_err(pdu_error)?;
    let pdu = Pdu::from_canonical(built.event_id.clone(), built.room_id.clone(), &built.pdu)
        .map_err(pdu_error)?;
    auth::check(
        &rules.authorization,
        &pdu,
        |_| None::<&Pdu>,
        |_, _| None::<&Pdu>,
    )
    .map_err(|e| Error::bad_json(format!("Invalid creation_content: {e}")))?;
    let room_id = built.room_id.clone();
    // Every event after the create event, in order; written with it in one transaction.
    let mut sends: Vec<Send> = Vec::new();

    // 2. The creator joins, with their profile.
    let (displayname, avatar_url) = state
        .storage
        .get_profile(creator.as_str())
        .await?
        .unwrap_or((None, None));
    let mut member = serde_json::json!({ "membership": "join" });
    if let Some(name) = displayname {
        member["displayname"] = name.into();
    }
    if let Some(url) = avatar_url {
        member["avatar_url"] = url.into();
    }
    sends.push(Send::state("m.room.member", creator.as_str(), obj(member)));

    // 3. Power levels, with the client's overrides.
    let mut power_levels = default_power_levels(creator, create, creators_privileged);
    if let Some(overrides) = create.power_level_override.clone() {
        merge(&mut power_levels, overrides);
    }
    sends.push(Send::state("m.room.power_levels", "", power_levels));

    // 4. The canonical alias.
    if let Some(alias) = &create.alias {
        sends.push(Send::state(
            "m.room.canonical_alias",
            "",
            obj(serde_json::json!({ "alias": alias })),
        ));
    }

    // 5. The preset's state, unless initial_state sets the same keys.
    let (join_rule, guest_access) = match create.preset {
        Preset::PublicChat => ("public", "forbidden"),
        Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "can_join"),
    };
    let overridden = |t: &str| {
        create
            .initial_state
            .iter()
            .any(|(it, ik, _)| it == t && ik.is_empty())
    };
    let mut preset_state: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    preset_state.insert(
        "m.room.join_rules",
        serde_json::json!({ "join_rule": join_rule }),
    );
    preset_state.insert(
        "m.room.history_visibility",
        serde_json::json!({ "history_visibility": "shared" }),
    );
    preset_state.insert(
        "m.room.guest_access",
        serde_json::json!({ "guest_access": guest_access }),
    );
    for event_type in [
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.guest_access",
    ] {
        if !overridden(event_type) {
            sends.push(Send::state(
                event_type,
                "",
                obj(preset_state[event_type].clone()),
            ));
        }
    }

    // 6. initial_state, 7. name and topic.
    for (event_type, state_key, content) in &create.initial_state {
        sends.push(Send::state(event_type, state_key, content.clone()));
    }
    if let Some(name) = &create.name {
        sends.push(Send::state(
            "m.room.name",
            "",
            obj(serde_json::json!({ "name": name })),
        ));
    }
    if let Some(topic) = &create.topic {
        let content = serde_json::json!({
            "topic": topic,
            "m.topic": { "m.text": [{ "body": topic, "mimetype": "text/plain" }] },
        });
        sends.push(Send::state("m.room.topic", "", obj(content)));
    }

    // 8. Invites: of our users, with the room; of other servers' users, once the room exists
    //    (their server must sign the invite, `federation::join::invite_remote`).
    let invite_content = || {
        let mut content = serde_json::json!({ "membership": "invite" });
        if create.is_direct {
            content["is_direct"] = true.into();
        }
        content
    };
    let mut remote_invitees = Vec::new();
    for invitee in &create.invite {
        if invitee.server_name() != state.server_name {
            remote_invitees.push(invitee.clone());
            continue;
        }
        sends.push(Send::state(
            "m.room.member",
            invitee.as_str(),
            obj(invite_content()),
        ));
    }
    if sends.len() > MAX_CREATION_EVENTS {
        return Err(Error::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            format!("A room is created with at most {MAX_CREATION_EVENTS} events"),
        ));
    }
    let written = super::write_new_room(
        state,
        &built,
        pdu,
        myelin_storage::NewRoom {
            version: create.version.as_str(),
            creator: creator.as_str(),
            alias: create.alias.as_deref(),
            public: create.publish,
            replaces: create.replaces.as_ref().map(|r| r.as_str()),
        },
        creator,
        sends,
    )
    .await;
    if let Err(e) = written {
        // A failed write leaves no room behind: a room under this ID is someone else's.
        if rules.authorization.room_create_event_id_as_room_id
            && state.storage.get_room(room_id.as_str()).await?.is_some()
        {
            tracing::warn!(%room_id, "room ID taken by an identical create event; retrying");
            return Ok(None);
        }
        return Err(e);
    }
    tracing::info!(%room_id, %creator, version = %create.version, "created room");
    for invitee in remote_invitees {
        // As in Synapse, the room stays created when another server refuses an invite.
        if let Err(e) = crate::federation::join::invite_remote(
            state,
            &room_id,
            creator,
            &invitee,
            invite_content(),
        )
        .await
        {
            tracing::info!(%room_id, %invitee, error = ?e, "inviting a user of another server failed");
        }
    }
    Ok(Some(room_id))
}
