//! Spaces: the room hierarchy under a space, and the summary of one room before joining it.
//!
//! <https://spec.matrix.org/latest/client-server-api/#spaces>
//! <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1room_summaryroomidoralias>
//!
//! Rooms this server holds are walked here; a child it does not hold is asked of the servers
//! its `m.space.child` event names (`/_matrix/federation/v1/hierarchy`, answered for others
//! by [`federation_hierarchy`]). A room is shown to a user who is joined to or invited into it, or who could
//! see or join it without an invite: world-readable history, or a `public`, `knock` or
//! `knock_restricted` join rule, or `restricted` with the user joined to one of the allowed
//! rooms.

use std::collections::HashSet;

use axum::{extract::State, Json};
use ruma::{
    api::client::{room::get_summary, space::get_hierarchy},
    RoomId, UserId,
};
use serde_json::{json, Map, Value};

use super::membership::resolve_room;
use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::summary::public_rooms_chunk,
    AppState,
};

/// Rooms per page when the client names no limit, and the most it may ask for.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;
/// How deep and how wide a walk may go, whatever the client asks (a space tree is a graph a
/// room admin controls).
const MAX_DEPTH: usize = 50;
const MAX_ROOMS: usize = 5_000;

/// The state of a room a summary is made of.
struct RoomFacts {
    /// The room's content per state type (`""` state key), `Null` when absent.
    contents: Map<String, Value>,
    /// `m.space.child` events with a non-empty `via`: `(child room ID, event JSON)`.
    children: Vec<(String, Value)>,
}

async fn facts(state: &AppState, room_id: &str) -> Result<RoomFacts> {
    let current = state.storage.current_state(room_id).await?;
    let wanted = [
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.create",
        "m.room.encryption",
    ];
    let mut ids: Vec<String> = wanted
        .iter()
        .filter_map(|t| current.get(&((*t).to_owned(), String::new())).cloned())
        .collect();
    let child_ids: Vec<String> = current
        .iter()
        .filter(|((t, _), _)| t == "m.space.child")
        .map(|(_, id)| id.clone())
        .collect();
    ids.extend(child_ids);
    let rows = state.storage.get_events(&ids).await?;
    let mut facts = RoomFacts {
        contents: Map::new(),
        children: Vec::new(),
    };
    for row in rows {
        let Ok(pdu) = row.parse_pdu::<Value>() else {
            continue;
        };
        if row.event_type == "m.space.child" {
            let has_via = pdu["content"]["via"]
                .as_array()
                .is_some_and(|v| !v.is_empty());
            if let (true, Some(child)) = (has_via, row.state_key.clone()) {
                let stripped = json!({
                    "type": "m.space.child",
                    "state_key": child,
                    "content": pdu["content"],
                    "sender": row.sender,
                    "origin_server_ts": row.origin_server_ts,
                });
                facts.children.push((child, stripped));
            }
        } else {
            facts
                .contents
                .insert(row.event_type.clone(), pdu["content"].clone());
        }
    }
    // The spec's order: by `order` (printable ASCII, at most 50 characters) where valid,
    // those without after; then by when the child was added; then by room ID.
    let order = |event: &Value| {
        event["content"]["order"]
            .as_str()
            .filter(|o| o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7e).contains(&b)))
            .map(str::to_owned)
    };
    facts.children.sort_by(|(a_id, a), (b_id, b)| {
        let (oa, ob) = (order(a), order(b));
        (oa.is_none(), oa, a["origin_server_ts"].as_i64(), a_id).cmp(&(
            ob.is_none(),
            ob,
            b["origin_server_ts"].as_i64(),
            b_id,
        ))
    });
    Ok(facts)
}

fn content_str<'a>(facts: &'a RoomFacts, event_type: &str, field: &str) -> Option<&'a str> {
    facts.contents.get(event_type)?.get(field)?.as_str()
}

/// The user's membership of the room, if any.
async fn membership_of(
    state: &AppState,
    room_id: &str,
    user: Option<&UserId>,
) -> Result<Option<String>> {
    let Some(user) = user else {
        return Ok(None);
    };
    Ok(state
        .storage
        .membership(room_id, user.as_str())
        .await?
        .map(|(m, _)| m))
}

/// Whether `user` may see the room's summary (see the module docs).
async fn accessible(
    state: &AppState,
    facts: &RoomFacts,
    membership: Option<&str>,
    user: Option<&UserId>,
) -> Result<bool> {
    if matches!(membership, Some("join" | "invite")) {
        return Ok(true);
    }
    if content_str(facts, "m.room.history_visibility", "history_visibility")
        == Some("world_readable")
    {
        return Ok(true);
    }
    match content_str(facts, "m.room.join_rules", "join_rule") {
        Some("public" | "knock" | "knock_restricted") => Ok(true),
        Some("restricted") => {
            let Some(user) = user else {
                return Ok(false);
            };
            for room in allowed_rooms(facts) {
                if membership_of(state, &room, Some(user)).await?.as_deref() == Some("join") {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// The rooms a `restricted` join rule lets members of in.
fn allowed_rooms(facts: &RoomFacts) -> Vec<String> {
    facts
        .contents
        .get("m.room.join_rules")
        .and_then(|c| c["allow"].as_array())
        .map(|allow| {
            allow
                .iter()
                .filter(|a| a["type"] == "m.room_membership")
                .filter_map(|a| a["room_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The summary fields shared by the hierarchy and the room summary.
async fn summary(
    state: &AppState,
    room_id: &RoomId,
    facts: &RoomFacts,
) -> Result<Map<String, Value>> {
    let chunk = public_rooms_chunk(state, room_id).await?;
    let Value::Object(mut out) = serde_json::to_value(&chunk).map_err(Error::internal)? else {
        return Err(Error::internal("a room summary is not an object"));
    };
    // Required in both answers (the public room list leaves out the default, `public`).
    let join_rule = content_str(facts, "m.room.join_rules", "join_rule").unwrap_or("invite");
    out.insert("join_rule".into(), join_rule.into());
    if join_rule == "restricted" || join_rule == "knock_restricted" {
        out.insert("allowed_room_ids".into(), json!(allowed_rooms(facts)));
    }
    Ok(out)
}

/// GET /_matrix/client/v1/rooms/{roomId}/hierarchy
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1roomsroomidhierarchy>
///
/// The space and the rooms under it the user may see, depth first, children in the spec's
/// order, each with its `m.space.child` events; `max_depth`, `suggested_only`, and pages of
/// `limit` rooms (`from` is where the previous page stopped in the same walk).
pub async fn get_hierarchy(
    State(state): State<AppState>,
    req: Ruma<get_hierarchy::v1::Request>,
) -> Result<Json<Value>> {
    let user = &req.sender().user_id;
    let root = &req.body.room_id;
    let skip = match req.body.from.as_deref() {
        Some(token) => token
            .strip_prefix('h')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= MAX_ROOMS)
            .ok_or_else(|| Error::invalid_param("Invalid from token"))?,
        None => 0,
    };
    let limit = req
        .body
        .limit
        .map_or(DEFAULT_LIMIT, |l| u64::from(l) as usize)
        .clamp(1, MAX_LIMIT);
    let max_depth = req
        .body
        .max_depth
        .map_or(MAX_DEPTH, |d| (u64::from(d) as usize).min(MAX_DEPTH));
    if state.storage.get_room(root.as_str()).await?.is_none() {
        return Err(Error::forbidden("You cannot see this room"));
    }

    let mut rooms = Vec::new();
    let mut seen = HashSet::new();
    // (room, depth), popped from the end: children are pushed in reverse order.
    let mut stack = vec![(root.clone(), 0usize)];
    let mut position = 0usize;
    let mut more = false;
    // The `via` servers of each child seen, for children held elsewhere.
    let mut vias: std::collections::HashMap<ruma::OwnedRoomId, Vec<String>> =
        std::collections::HashMap::new();
    let mut remote_fetches = 0usize;
    while let Some((room_id, depth)) = stack.pop() {
        if !seen.insert(room_id.clone()) || seen.len() > MAX_ROOMS {
            continue;
        }
        if state.storage.get_room(room_id.as_str()).await?.is_none() {
            // Another server's room: its summary and children from a server in it.
            if remote_fetches == MAX_REMOTE_FETCHES {
                continue;
            }
            remote_fetches += 1;
            let Some((entry, children)) = remote_room(
                &state,
                &room_id,
                vias.get(&room_id),
                req.body.suggested_only,
                user,
            )
            .await
            else {
                continue;
            };
            if position >= skip {
                if rooms.len() == limit {
                    more = true;
                    break;
                }
                rooms.push(entry);
            }
            position += 1;
            if depth < max_depth {
                for (child, via) in children.into_iter().rev() {
                    if let Ok(child) = RoomId::parse(&child) {
                        vias.entry(child.clone()).or_insert(via);
                        stack.push((child, depth + 1));
                    }
                }
            }
            continue;
        }
        let facts = facts(&state, room_id.as_str()).await?;
        let membership = membership_of(&state, room_id.as_str(), Some(user)).await?;
        if !accessible(&state, &facts, membership.as_deref(), Some(user)).await? {
            if room_id == *root {
                return Err(Error::forbidden("You cannot see this room"));
            }
            continue;
        }
        if position >= skip {
            if rooms.len() == limit {
                more = true;
                break;
            }
            let mut entry = summary(&state, &room_id, &facts).await?;
            entry.insert(
                "children_state".into(),
                Value::Array(facts.children.iter().map(|(_, e)| e.clone()).collect()),
            );
            rooms.push(Value::Object(entry));
        }
        position += 1;
        if depth < max_depth {
            for (child, event) in facts.children.iter().rev() {
                if req.body.suggested_only && event["content"]["suggested"] != true {
                    continue;
                }
                if let Ok(child) = RoomId::parse(child) {
                    vias.entry(child.clone()).or_insert_with(|| via_of(event));
                    stack.push((child, depth + 1));
                }
            }
        }
    }
    let mut response = json!({ "rooms": rooms });
    if more {
        response["next_batch"] = format!("h{}", skip + limit).into();
    }
    Ok(Json(response))
}

/// Most rooms held elsewhere one hierarchy request asks other servers about.
const MAX_REMOTE_FETCHES: usize = 20;
/// How long a server may take to answer for one room.
const REMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `via` servers of an `m.space.child` event.
fn via_of(event: &Value) -> Vec<String> {
    event["content"]["via"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .take(10)
        .collect()
}

/// A room held elsewhere, as the first of `via` that answers describes it: its entry for the
/// hierarchy (with its `children_state`) and its children with their `via`, if `user` may see
/// it (the other server already left out what our server may not see; here the user's own
/// view: joined or invited, world-readable, a public or knock rule, or restricted to a room
/// the user is in).
async fn remote_room(
    state: &AppState,
    room_id: &RoomId,
    via: Option<&Vec<String>>,
    suggested_only: bool,
    user: &UserId,
) -> Option<(Value, Vec<(String, Vec<String>)>)> {
    let path = format!(
        "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
        crate::federation::client::query_value(room_id.as_str())
    );
    for server in via.into_iter().flatten() {
        let Ok(server) = ruma::ServerName::parse(server) else {
            continue;
        };
        if server == state.server_name {
            continue;
        }
        let Ok(Ok(answer)) =
            tokio::time::timeout(REMOTE_TIMEOUT, state.federation.get_json(&server, &path)).await
        else {
            continue;
        };
        let room = &answer["room"];
        if room["room_id"] != room_id.as_str() {
            continue;
        }
        let membership = membership_of(state, room_id.as_str(), Some(user))
            .await
            .ok()?;
        let visible = matches!(membership.as_deref(), Some("join" | "invite"))
            || room["world_readable"] == true
            || matches!(
                room["join_rule"].as_str(),
                Some("public" | "knock" | "knock_restricted")
            )
            || (room["join_rule"] == "restricted" && {
                let mut member = false;
                for allowed in room["allowed_room_ids"].as_array().into_iter().flatten() {
                    if let Some(allowed) = allowed.as_str() {
                        if membership_of(state, allowed, Some(user))
                            .await
                            .ok()?
                            .as_deref()
                            == Some("join")
                        {
                            member = true;
                            break;
                        }
                    }
                }
                member
            });
        if !visible {
            return None;
        }
        let mut children = Vec::new();
        for event in room["children_state"]
            .as_array()
            .into_iter()
            .flatten()
            .take(200)
        {
            if suggested_only && event["content"]["suggested"] != true {
                continue;
            }
            if let Some(child) = event["state_key"].as_str() {
                let via = via_of(event);
                if !via.is_empty() {
                    children.push((child.to_owned(), via));
                }
            }
        }
        return Some((room.clone(), children));
    }
    None
}

/// Whether a server may see the summary of a room we hold: a user of it is joined or
/// invited, or anyone may (world-readable, a public or knock rule), or the rule is restricted
/// and a user of it is joined to one of the allowed rooms.
async fn accessible_to_server(
    state: &AppState,
    room_id: &str,
    facts: &RoomFacts,
    server: &ruma::ServerName,
) -> Result<bool> {
    let of_server = |user: &str| {
        UserId::parse(user)
            .map(|u| u.server_name() == server)
            .unwrap_or(false)
    };
    let has_member = |room: String| async move {
        Ok::<bool, Error>(
            state
                .storage
                .room_members(&room)
                .await?
                .iter()
                .any(|(u, m, _)| matches!(m.as_str(), "join" | "invite") && of_server(u)),
        )
    };
    if has_member(room_id.to_owned()).await? {
        return Ok(true);
    }
    if content_str(facts, "m.room.history_visibility", "history_visibility")
        == Some("world_readable")
    {
        return Ok(true);
    }
    match content_str(facts, "m.room.join_rules", "join_rule") {
        Some("public" | "knock" | "knock_restricted") => Ok(true),
        Some("restricted") => {
            for room in allowed_rooms(facts) {
                if state.storage.get_room(&room).await?.is_some() && has_member(room).await? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// The answer to another server's `GET /_matrix/federation/v1/hierarchy/{roomId}`: the room
/// (with its `children_state`) and its children we hold, each if the server may see it
/// ([`accessible_to_server`]); children it may not see are listed as inaccessible. 404 for a
/// room we do not hold or it may not see.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1hierarchyroomid>
pub async fn federation_hierarchy(
    state: &AppState,
    room_id: &RoomId,
    server: &ruma::ServerName,
    suggested_only: bool,
) -> Result<Value> {
    let not_found = || Error::not_found("Room not found or not visible");
    if state.storage.get_room(room_id.as_str()).await?.is_none() {
        return Err(not_found());
    }
    let root = facts(state, room_id.as_str()).await?;
    if !accessible_to_server(state, room_id.as_str(), &root, server).await? {
        return Err(not_found());
    }
    let children_state: Vec<Value> = root
        .children
        .iter()
        .filter(|(_, e)| !suggested_only || e["content"]["suggested"] == true)
        .map(|(_, e)| e.clone())
        .collect();
    let mut room = summary(state, room_id, &root).await?;
    room.insert("children_state".into(), Value::Array(children_state));
    let mut children = Vec::new();
    let mut inaccessible = Vec::new();
    for (child, event) in root.children.iter().take(MAX_LIMIT) {
        if suggested_only && event["content"]["suggested"] != true {
            continue;
        }
        let Ok(child_id) = RoomId::parse(child) else {
            continue;
        };
        if state.storage.get_room(child).await?.is_none() {
            continue;
        }
        let child_facts = facts(state, child).await?;
        if !accessible_to_server(state, child, &child_facts, server).await? {
            inaccessible.push(Value::String(child.clone()));
            continue;
        }
        let mut entry = summary(state, &child_id, &child_facts).await?;
        entry.insert(
            "children_state".into(),
            Value::Array(
                child_facts
                    .children
                    .iter()
                    .map(|(_, e)| e.clone())
                    .collect(),
            ),
        );
        children.push(Value::Object(entry));
    }
    Ok(json!({
        "room": room,
        "children": children,
        "inaccessible_children": inaccessible,
    }))
}

/// GET /_matrix/client/v1/room_summary/{roomIdOrAlias}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1room_summaryroomidoralias>
///
/// What a client shows before joining (name, topic, avatar, members, join rule, type,
/// version, encryption) and the user's membership, for a room the user may see; 404
/// otherwise, so that a private room's existence is not revealed. The access token is
/// optional: a guest sees what anyone may.
pub async fn get_room_summary(
    State(state): State<AppState>,
    req: Ruma<get_summary::v1::Request>,
) -> Result<Json<Value>> {
    let user = req.sender.as_ref().map(|s| &*s.user_id);
    let not_found = || Error::not_found("Room not found or not visible");
    let room_id = resolve_room(&state, &req.body.room_id_or_alias)
        .await
        .map_err(|_| not_found())?;
    let Some(room) = state.storage.get_room(room_id.as_str()).await? else {
        return Err(not_found());
    };
    let facts = facts(&state, room_id.as_str()).await?;
    let membership = membership_of(&state, room_id.as_str(), user).await?;
    if !accessible(&state, &facts, membership.as_deref(), user).await? {
        return Err(not_found());
    }
    let mut out = summary(&state, &room_id, &facts).await?;
    out.insert("room_version".into(), room.room_version.into());
    if let Some(algorithm) = content_str(&facts, "m.room.encryption", "algorithm") {
        out.insert("encryption".into(), algorithm.into());
    }
    if let Some(membership) = membership.filter(|_| user.is_some()) {
        out.insert("membership".into(), membership.into());
    }
    Ok(Json(Value::Object(out)))
}
