//! Joining a room held by other servers (`make_join` / `send_join` v2, as the joining
//! server).
//!
//! <https://spec.matrix.org/latest/server-server-api/#joining-rooms>
//!
//! 1. Ask each candidate server in turn for a join template (`make_join`, offering the room
//!    versions we implement); the first that answers is used.
//! 2. Fill in and sign our join from the template; send it (`send_join` v2).
//! 3. Check what came back: every event of the state and auth chain is of the room, signed
//!    by the servers that must sign it (keys fetched as needed) and allowed by its own auth
//!    events; our join is allowed by that state.
//! 4. Store the state and auth chain as outliers, then the room (if new), its state and our
//!    join in one transaction (`rooms::remote::write_joined_room`); only then is the room
//!    joined. Then the other servers in the room are sent our join and what follows.

use std::collections::HashMap;

use myelin_federation::{auth, incoming::Incoming, pdu::build_from_template};
use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomId, RoomVersionId, UInt, UserId,
};
use serde_json::Value;

use super::client::query_value;
use crate::{auth::now_ms, error::Error, rooms, AppState};

/// The room versions we offer in `make_join` (those whose event IDs are reference hashes).
pub const VERSIONS: [&str; 10] = ["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

/// Most events a `send_join` answer may carry (state plus auth chain).
const MAX_JOIN_EVENTS: usize = 200_000;

/// Joins `user` to `room_id` through one of `servers`, with `content` (the membership, the
/// user's profile, a reason) for the join event. Returns once the join is stored here.
pub async fn join_remote(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    servers: &[OwnedServerName],
    content: Value,
) -> Result<(), Error> {
    through_first(state, room_id, servers, "join", |server| {
        join_through(state, room_id, user, server, content.clone())
    })
    .await
}

/// Tries `attempt` through each of `servers` but ours, in order, until one succeeds (the
/// failover of joins, knocks and leaves through other servers); the last error otherwise.
async fn through_first<'a, F, Fut>(
    state: &AppState,
    room_id: &RoomId,
    servers: &'a [OwnedServerName],
    what: &str,
    mut attempt: F,
) -> Result<(), Error>
where
    F: FnMut(&'a OwnedServerName) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut last_error =
        Error::not_found(format!("No server in the room could be reached to {what}"));
    for server in servers.iter().filter(|s| **s != state.server_name) {
        match attempt(server).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::info!(%room_id, %server, error = ?e, "{what} through a server failed");
                last_error = e;
            }
        }
    }
    Err(last_error)
}

/// Asks `server` for a `membership` template for `user` in `room_id` (`make_join`, offering
/// the room versions we implement, or `make_leave`), checks it is that membership event of
/// that user in that room and of a version we implement, puts `content` in, signs it and sends
/// it back (`send_join` / `send_leave` v2). Returns the room version, its rules, our event
/// and the server's answer.
async fn make_and_send(
    state: &AppState,
    server: &OwnedServerName,
    room_id: &RoomId,
    user: &UserId,
    membership: &str,
    content: Value,
) -> Result<
    (
        RoomVersionId,
        ruma::room_version_rules::RoomVersionRules,
        myelin_federation::pdu::BuiltEvent,
        Value,
    ),
    Error,
> {
    let mut path = format!(
        "/_matrix/federation/v1/make_{membership}/{}/{}",
        query_value(room_id.as_str()),
        query_value(user.as_str()),
    );
    if membership != "leave" {
        let versions: Vec<String> = VERSIONS.iter().map(|v| format!("ver={v}")).collect();
        path.push('?');
        path.push_str(&versions.join("&"));
    }
    let answer = state
        .federation
        .get_json(server, &path)
        .await
        .map_err(remote_error)?;
    // A server that names no version means version 1.
    let version = answer["room_version"].as_str().unwrap_or("1");
    let version = RoomVersionId::try_from(version).map_err(|_| bad("room_version"))?;
    if !VERSIONS.contains(&version.as_str()) {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("Room version {version} is not supported"),
        ));
    }
    let rules = myelin_federation::pdu::rules_for(&version).map_err(|_| bad("room_version"))?;
    let mut template: CanonicalJsonObject =
        serde_json::from_value(answer["event"].clone()).map_err(|_| bad("event"))?;
    // The template must be for this membership of this user; our own content goes in.
    let expect = |field: &str, value: &str| matches!(template.get(field), Some(ruma::CanonicalJsonValue::String(s)) if s == value);
    if !expect("room_id", room_id.as_str())
        || !expect("sender", user.as_str())
        || !expect("state_key", user.as_str())
        || !expect("type", "m.room.member")
    {
        return Err(bad("event"));
    }
    let mut merged = match template.get("content") {
        Some(ruma::CanonicalJsonValue::Object(c)) => c.clone(),
        _ => CanonicalJsonObject::new(),
    };
    if let Ok(ruma::CanonicalJsonValue::Object(ours)) = ruma::CanonicalJsonValue::try_from(content)
    {
        merged.extend(ours);
    }
    template.insert("content".into(), ruma::CanonicalJsonValue::Object(merged));
    let ts = MilliSecondsSinceUnixEpoch(UInt::new(now_ms() as u64).unwrap_or_default());
    let built = build_from_template(
        &template,
        &rules,
        ts,
        state.server_name.as_str(),
        &state.signing_key,
    )
    .map_err(|e| Error::bad_json(format!("The {membership} template: {e}")))?;
    // send_knock has only a v1.
    let api = if membership == "knock" { "v1" } else { "v2" };
    let path = format!(
        "/_matrix/federation/{api}/send_{membership}/{}/{}",
        query_value(room_id.as_str()),
        query_value(built.event_id.as_str())
    );
    let body = serde_json::to_value(&built.pdu).map_err(Error::internal)?;
    let answer = state
        .federation
        .put_json(server, &path, &body)
        .await
        .map_err(remote_error)?;
    Ok((version, rules, built, answer))
}

async fn join_through(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    server: &OwnedServerName,
    content: Value,
) -> Result<(), Error> {
    // 1-2. The template, signed and sent.
    let (version, rules, built, answer) =
        make_and_send(state, server, room_id, user, "join", content).await?;

    // 3. Check the answer.
    let listed = |field: &str| -> Result<Vec<CanonicalJsonObject>, Error> {
        let items = answer[field].as_array().ok_or_else(|| bad(field))?;
        if items.len() > MAX_JOIN_EVENTS {
            return Err(bad(field));
        }
        items
            .iter()
            .map(|v| serde_json::from_value(v.clone()).map_err(|_| bad(field)))
            .collect()
    };
    let state_objects = listed("state")?;
    let chain_objects = listed("auth_chain")?;
    let mut events: HashMap<OwnedEventId, Incoming> = HashMap::new();
    let mut state_ids: Vec<OwnedEventId> = Vec::new();
    for (object, in_state) in state_objects
        .into_iter()
        .map(|o| (o, true))
        .chain(chain_objects.into_iter().map(|o| (o, false)))
    {
        let incoming = match rooms::remote::verify(state, &rules, object).await {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::info!(%room_id, error = ?e, "dropping an event of a send_join answer");
                continue;
            }
        };
        if incoming.room_id != room_id {
            return Err(bad("an event of another room"));
        }
        if in_state {
            state_ids.push(incoming.event_id.clone());
        }
        events.insert(incoming.event_id.clone(), incoming);
    }
    // Each event against its own auth events, oldest first; one that fails is dropped, and
    // so is anything citing it.
    let mut order: Vec<OwnedEventId> = events.keys().cloned().collect();
    order.sort_by_key(|id| events[id].pdu.depth);
    let mut accepted: HashMap<OwnedEventId, myelin_federation::pdu::Pdu> = HashMap::new();
    let create_id = events
        .values()
        .find(|e| {
            e.pdu.kind.to_string() == "m.room.create" && e.pdu.state_key.as_deref() == Some("")
        })
        .map(|e| e.event_id.clone())
        .ok_or_else(|| bad("state without a create event"))?;
    for id in order {
        let pdu = &events[&id].pdu;
        let cited = pdu.auth_events.iter().all(|a| accepted.contains_key(a));
        let allowed = cited
            && auth::check_auth_events(&rules.authorization, pdu, |e| {
                accepted
                    .get(e)
                    .or_else(|| (*e == *create_id).then(|| &events[&create_id].pdu))
            })
            .is_ok();
        if allowed {
            accepted.insert(id.clone(), pdu.clone());
        } else {
            tracing::info!(%room_id, event_id = %id, "an event of a send_join answer fails its auth events");
        }
    }
    if !accepted.contains_key(&create_id) {
        return Err(bad("the create event fails its checks"));
    }
    let room_state: HashMap<(String, String), String> = state_ids
        .iter()
        .filter_map(|id| {
            let pdu = accepted.get(id)?;
            Some((
                (pdu.kind.to_string(), pdu.state_key.clone()?),
                id.to_string(),
            ))
        })
        .collect();
    // Our join as the resident server returned it (it may have added a signature), else ours.
    let join_object: CanonicalJsonObject = answer
        .get("event")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or(built.pdu);
    let join = rooms::remote::verify(state, &rules, join_object).await?;
    if join.event_id != built.event_id {
        return Err(bad("event"));
    }
    let join_pdu = join.pdu.clone();
    auth::check_state(&rules.authorization, &join_pdu, |t, k| {
        room_state
            .get(&(t.to_string(), k.to_owned()))
            .and_then(|id| OwnedEventId::try_from(id.as_str()).ok())
            .and_then(|id| accepted.get(&id))
    })
    .map_err(|reason| Error::forbidden(format!("The join is not allowed: {reason}")))?;

    // 4. Store.
    let kept: Vec<&Incoming> = events
        .values()
        .filter(|e| accepted.contains_key(&e.event_id))
        .collect();
    rooms::remote::write_joined_room(state, &version, &kept, &room_state, join).await?;
    Ok(())
}

fn bad(what: &str) -> Error {
    Error::new(
        http::StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        format!("The resident server sent an invalid {what}"),
    )
}

/// A peer's refusal, passed on as the client would expect (its errcode where it gave one).
fn remote_error(e: super::FederationError) -> Error {
    match e {
        super::FederationError::Status { status, body, .. } => {
            let parsed: Value = serde_json::from_str(&body).unwrap_or_default();
            let errcode = parsed["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned();
            let message = parsed["error"]
                .as_str()
                .unwrap_or("The remote server refused")
                .to_owned();
            let status = match status {
                403 => http::StatusCode::FORBIDDEN,
                404 => http::StatusCode::NOT_FOUND,
                400 => http::StatusCode::BAD_REQUEST,
                _ => http::StatusCode::BAD_GATEWAY,
            };
            Error::new(status, &errcode, message)
        }
        other => Error::new(
            http::StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("Cannot reach the room's server: {other}"),
        ),
    }
}

/// The room a remote alias names, and servers to join it through, from the alias's server
/// (`query/directory`).
pub async fn resolve_remote_alias(
    state: &AppState,
    alias: &ruma::RoomAliasId,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>), Error> {
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        query_value(alias.as_str())
    );
    let answer = state
        .federation
        .get_json(alias.server_name(), &path)
        .await
        .map_err(|e| match e {
            super::FederationError::Status { status: 404, .. } => {
                Error::not_found("Room alias not found")
            }
            other => remote_error(other),
        })?;
    let room_id = answer["room_id"]
        .as_str()
        .and_then(|r| OwnedRoomId::try_from(r).ok())
        .ok_or_else(|| bad("directory answer"))?;
    let mut servers: Vec<OwnedServerName> = answer["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .filter_map(|s| OwnedServerName::try_from(s).ok())
        .take(20)
        .collect();
    if !servers.iter().any(|s| s == alias.server_name()) {
        servers.insert(0, alias.server_name().to_owned());
    }
    Ok((room_id, servers))
}

/// The stripped state another server sent with an invite, kept for the invitee's sync: at
/// most 50 events, each only its `type`, `state_key`, `content` and `sender`.
pub fn stripped_invite_state(value: &Value) -> String {
    let events: Vec<Value> = value
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"].is_string() && e["state_key"].is_string() && e["content"].is_object())
        .take(50)
        .map(|e| {
            serde_json::json!({
                "type": e["type"],
                "state_key": e["state_key"],
                "content": e["content"],
                "sender": e["sender"],
            })
        })
        .collect();
    Value::Array(events).to_string()
}

/// Invites `target` (a user of another server) into `room_id`: the invite is placed on the
/// room's head, signed, sent to the invitee's server (`invite` v2, with the room's stripped
/// state) and, once it came back signed by that server, written through the pipeline.
pub async fn invite_remote(
    state: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    content: Value,
) -> Result<(), Error> {
    let content = match ruma::CanonicalJsonValue::try_from(content) {
        Ok(ruma::CanonicalJsonValue::Object(o)) => o,
        _ => return Err(Error::bad_json("Invalid invite content")),
    };
    let (version, template) = rooms::template(
        state,
        room_id,
        sender,
        rooms::Send::state("m.room.member", target.as_str(), content),
    )
    .await?;
    let rules = myelin_federation::pdu::rules_for(&version).map_err(Error::internal)?;
    let ts = MilliSecondsSinceUnixEpoch(UInt::new(now_ms() as u64).unwrap_or_default());
    let built = build_from_template(
        &template,
        &rules,
        ts,
        state.server_name.as_str(),
        &state.signing_key,
    )
    .map_err(|e| Error::bad_json(format!("Invite: {e}")))?;
    let invite_room_state = rooms::remote::stripped_room_state(state, room_id, sender).await?;
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        query_value(room_id.as_str()),
        query_value(built.event_id.as_str())
    );
    let body = serde_json::json!({
        "event": built.pdu,
        "room_version": version,
        "invite_room_state": invite_room_state,
    });
    let answer = state
        .federation
        .put_json(target.server_name(), &path, &body)
        .await
        .map_err(remote_error)?;
    let signed: CanonicalJsonObject =
        serde_json::from_value(answer["event"].clone()).map_err(|_| bad("invite answer"))?;
    let incoming = rooms::remote::verify(state, &rules, signed).await?;
    if incoming.event_id != built.event_id {
        return Err(bad("invite answer"));
    }
    // The invitee's server must have signed it too.
    let signed_by_invitee = matches!(
        incoming.object.get("signatures"),
        Some(ruma::CanonicalJsonValue::Object(s)) if s.contains_key(target.server_name().as_str())
    );
    if !signed_by_invitee {
        return Err(bad("invite answer without the invitee's signature"));
    }
    rooms::remote::receive(state, incoming).await?;
    Ok(())
}

/// Leaves (or rejects an invite to) a room this server is not in, through one of `servers`
/// (`make_leave` / `send_leave` v2). When none answers, the leave is still recorded here
/// (an event of our own after the invite, which no other server holds), as the spec allows
/// for an invite from a server that went away.
pub async fn leave_remote(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    servers: &[OwnedServerName],
    content: Value,
) -> Result<(), Error> {
    let through = through_first(state, room_id, servers, "leave", |server| {
        leave_through(state, room_id, user, server, content.clone())
    })
    .await;
    if through.is_ok() {
        return Ok(());
    }
    // Nobody answered: record the leave locally, after the invite.
    let (_, event_id) = state
        .storage
        .membership(room_id.as_str(), user.as_str())
        .await?
        .ok_or_else(|| Error::forbidden("You are not in this room"))?;
    let invite = state
        .storage
        .get_event(&event_id)
        .await?
        .ok_or_else(|| Error::internal("the membership event is missing"))?;
    let version = invite_version(state, room_id, user).await;
    let rules = myelin_federation::pdu::rules_for(&version).map_err(Error::internal)?;
    let content = match ruma::CanonicalJsonValue::try_from(content) {
        Ok(ruma::CanonicalJsonValue::Object(o)) => o,
        _ => CanonicalJsonObject::new(),
    };
    let invite_id = OwnedEventId::try_from(invite.event_id.as_str()).map_err(Error::internal)?;
    let built = myelin_federation::pdu::build_event(
        myelin_federation::pdu::NewEvent {
            event_type: "m.room.member".to_owned(),
            state_key: Some(user.to_string()),
            content,
            redacts: None,
        },
        myelin_federation::pdu::Placement {
            rules: &rules,
            room_id: Some(room_id),
            sender: user,
            prev_events: vec![invite_id.clone()],
            auth_events: vec![invite_id],
            depth: (invite.depth + 1) as u64,
            origin_server_ts: MilliSecondsSinceUnixEpoch(
                UInt::new(now_ms() as u64).unwrap_or_default(),
            ),
        },
        state.server_name.as_str(),
        &state.signing_key,
    )
    .map_err(|e| Error::internal(format!("out-of-band leave: {e}")))?;
    record_leave(state, room_id, user, &built.event_id, &built.pdu).await
}

/// Knocks on a room this server is not in, through the first of `servers` that accepts
/// (`make_knock` / `send_knock`): the knock is then recorded here with the room's stripped
/// state the server answered, for the knocker's sync.
pub async fn knock_remote(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    servers: &[OwnedServerName],
    content: Value,
) -> Result<(), Error> {
    through_first(state, room_id, servers, "knock", |server| {
        knock_through(state, room_id, user, server, content.clone())
    })
    .await
}

async fn knock_through(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    server: &OwnedServerName,
    content: Value,
) -> Result<(), Error> {
    let (_, _, built, answer) =
        make_and_send(state, server, room_id, user, "knock", content).await?;
    let stripped = stripped_invite_state(&answer["knock_room_state"]);
    record_membership(
        state,
        room_id,
        user,
        (&built.event_id, &built.pdu),
        "knock",
        Some(&stripped),
    )
    .await
}

async fn leave_through(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    server: &OwnedServerName,
    content: Value,
) -> Result<(), Error> {
    let (_, _, built, _) = make_and_send(state, server, room_id, user, "leave", content).await?;
    record_leave(state, room_id, user, &built.event_id, &built.pdu).await
}

/// The servers of the senders of the stripped state kept for `user`'s invite or knock in
/// `room_id` (the create event's, the join rules' …): servers that are, or were, in the room.
pub async fn servers_from_stripped_state(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> Vec<OwnedServerName> {
    let stripped = state
        .storage
        .remote_invite_state(room_id.as_str(), user.as_str())
        .await
        .ok()
        .flatten()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .unwrap_or_default();
    let mut servers: Vec<OwnedServerName> = Vec::new();
    for event in stripped.as_array().into_iter().flatten() {
        let server = event["sender"]
            .as_str()
            .and_then(|s| UserId::parse(s).ok())
            .map(|u| u.server_name().to_owned());
        if let Some(server) = server {
            if server != state.server_name && !servers.contains(&server) {
                servers.push(server);
            }
        }
    }
    servers
}

/// The room version an invite named (from the stripped create event), else 12.
async fn invite_version(state: &AppState, room_id: &RoomId, user: &UserId) -> RoomVersionId {
    let stripped = state
        .storage
        .remote_invite_state(room_id.as_str(), user.as_str())
        .await
        .ok()
        .flatten()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .unwrap_or_default();
    stripped
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "m.room.create")
        .and_then(|e| e["content"]["room_version"].as_str())
        .and_then(|v| RoomVersionId::try_from(v).ok())
        .unwrap_or(RoomVersionId::V12)
}

async fn record_leave(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    event_id: &OwnedEventId,
    pdu: &CanonicalJsonObject,
) -> Result<(), Error> {
    record_membership(state, room_id, user, (event_id, pdu), "leave", None).await
}

/// Records `user`'s own `membership` event in a room this server is not in (an outlier and
/// the membership row; `stripped` state kept for a knock's sync).
async fn record_membership(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    (event_id, pdu): (&OwnedEventId, &CanonicalJsonObject),
    membership: &str,
    stripped: Option<&str>,
) -> Result<(), Error> {
    let text = serde_json::to_string(pdu).map_err(Error::internal)?;
    let depth = match pdu.get("depth") {
        Some(ruma::CanonicalJsonValue::Integer(d)) => i64::from(*d),
        _ => 0,
    };
    // The event's own time (the column must match the PDU's).
    let origin_server_ts = match pdu.get("origin_server_ts") {
        Some(ruma::CanonicalJsonValue::Integer(t)) => i64::from(*t),
        _ => now_ms(),
    };
    let position = state
        .storage
        .record_remote_membership(
            room_id.as_str(),
            user.as_str(),
            myelin_storage::Outlier {
                event_id: event_id.as_str(),
                depth,
                event_type: "m.room.member",
                state_key: Some(user.as_str()),
                sender: user.as_str(),
                origin_server_ts,
                pdu: &text,
            },
            membership,
            stripped,
        )
        .await?;
    state.notify_when_safe(position, std::iter::once(user.as_str()));
    Ok(())
}
