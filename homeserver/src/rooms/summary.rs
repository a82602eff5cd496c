//! A room at a glance, read from its current state: name, topic, alias, avatar, join rule,
//! visibility and member count. Used by the public room directory.

use ruma::{
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    room::JoinRuleKind,
    OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId, RoomId, UInt,
};
use serde_json::Value;

use crate::{error::Error, AppState};

/// Builds the directory entry of a room.
pub async fn public_rooms_chunk(
    state: &AppState,
    room_id: &RoomId,
) -> Result<PublicRoomsChunk, Error> {
    let current = state.storage.current_state(room_id.as_str()).await?;
    let wanted = [
        "m.room.name",
        "m.room.topic",
        "m.room.canonical_alias",
        "m.room.avatar",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.guest_access",
        "m.room.create",
    ];
    let ids: Vec<String> = wanted
        .iter()
        .filter_map(|t| current.get(&(t.to_string(), String::new())).cloned())
        .collect();
    let rows = state.storage.get_events(&ids).await?;
    let content = |event_type: &str| -> Value {
        rows.iter()
            .find(|r| r.event_type == event_type)
            .and_then(|r| r.parse_pdu::<Value>().ok())
            .map(|pdu| pdu["content"].clone())
            .unwrap_or(Value::Null)
    };
    let joined = state
        .storage
        .room_members(room_id.as_str())
        .await?
        .iter()
        .filter(|(_, m, _)| m == "join")
        .count();
    let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
        num_joined_members: UInt::new(joined as u64).unwrap_or_default(),
        room_id: OwnedRoomId::from(room_id),
        world_readable: content("m.room.history_visibility")["history_visibility"]
            == "world_readable",
        guest_can_join: content("m.room.guest_access")["guest_access"] == "can_join",
    }
    .into();
    chunk.name = content("m.room.name")["name"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    chunk.topic = content("m.room.topic")["topic"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    chunk.canonical_alias = content("m.room.canonical_alias")["alias"]
        .as_str()
        .and_then(|a| OwnedRoomAliasId::try_from(a).ok());
    chunk.avatar_url = content("m.room.avatar")["url"]
        .as_str()
        .map(OwnedMxcUri::from);
    chunk.join_rule = JoinRuleKind::from(
        content("m.room.join_rules")["join_rule"]
            .as_str()
            .unwrap_or("invite"),
    );
    chunk.room_type = content("m.room.create")["type"].as_str().map(Into::into);
    Ok(chunk)
}
