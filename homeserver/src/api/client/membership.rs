//! Room membership: join, invite, leave, kick, ban, unban, forget, and member lists.
//!
//! <https://spec.matrix.org/latest/client-server-api/#room-membership>
//!
//! Every change is an `m.room.member` event through the write pipeline; the authorization
//! rules of the room version decide whether it is allowed (403 `M_FORBIDDEN` if not).

use std::collections::BTreeMap;

use axum::{extract::State, http::StatusCode};
use ruma::{
    api::client::knock::knock_room,
    api::client::membership::{
        ban_user, forget_room, get_member_events, get_mutual_rooms, invite_user, join_room_by_id,
        join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
    OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, RoomOrAliasId, UserId,
};
use serde_json::{json, Value};

use super::room::{membership_of, raw, require_joined};
use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{
        self,
        format::client_events,
        visibility::{readable_state, ReadableState},
        Send,
    },
    AppState,
};

/// Adds the user's display name and avatar to member event content; returns whether the
/// user has a profile (exists) here.
async fn add_profile(state: &AppState, user: &UserId, content: &mut Value) -> Result<bool> {
    let Some((displayname, avatar_url)) = state.storage.get_profile(user.as_str()).await? else {
        return Ok(false);
    };
    if let Some(name) = displayname {
        content["displayname"] = name.into();
    }
    if let Some(url) = avatar_url {
        content["avatar_url"] = url.into();
    }
    Ok(true)
}

fn member_content(membership: &str, reason: Option<&str>) -> Value {
    let mut content = json!({ "membership": membership });
    if let Some(reason) = reason {
        content["reason"] = reason.into();
    }
    content
}

fn to_object(value: Value) -> ruma::CanonicalJsonObject {
    match ruma::CanonicalJsonValue::try_from(value) {
        Ok(ruma::CanonicalJsonValue::Object(o)) => o,
        _ => ruma::CanonicalJsonObject::new(),
    }
}

/// Sends a membership event for `target` by `sender`.
async fn set_membership(
    state: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    content: Value,
) -> Result<()> {
    if state.storage.get_room(room_id.as_str()).await?.is_none() {
        return Err(Error::not_found("Room not found"));
    }
    rooms::send(
        state,
        room_id,
        sender,
        Send::state("m.room.member", target.as_str(), to_object(content)),
    )
    .await?;
    Ok(())
}

/// Takes `user` out of every room they are joined to, invited to or knocking on, with a
/// `leave` event of their own through the write pipeline (a leave, an invite rejected, a knock
/// withdrawn), as Synapse does when an account is deactivated. Every room is tried: one that
/// refuses the leave (it is logged) does not keep the user in the others, nor the account
/// from being deactivated.
pub(crate) async fn leave_all_rooms(state: &AppState, user: &UserId) -> Result<()> {
    for membership in ["join", "invite", "knock"] {
        for room_id in state
            .storage
            .rooms_for_user(user.as_str(), membership)
            .await?
        {
            let Ok(room_id) = ruma::OwnedRoomId::try_from(room_id) else {
                continue;
            };
            let content = member_content("leave", None);
            if let Err(e) = set_membership(state, &room_id, user, user, content).await {
                tracing::warn!(%room_id, %user, error = %e, "could not leave a room");
            }
        }
    }
    Ok(())
}

/// Joins `user` to a room, with their profile. Joining a room one is in is a no-op. A room
/// this server is not in (no local member joined) is joined through one of `servers` (the
/// room's own server name, for room IDs that carry one, is tried last).
async fn join(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    reason: Option<&str>,
    servers: &[ruma::OwnedServerName],
) -> Result<()> {
    if membership_of(state, room_id, user).await?.as_deref() == Some("join") {
        return Ok(());
    }
    if !is_resident(state, room_id).await? {
        let mut servers = servers.to_vec();
        // Invited: the inviting server is in the room.
        servers.extend(inviting_server(state, room_id, user).await?);
        if let Some(server) = room_id.server_name() {
            if !servers.iter().any(|s| s == server) {
                servers.push(server.to_owned());
            }
        }
        if servers.iter().all(|s| *s == state.server_name) {
            return Err(Error::not_found("Room not found"));
        }
        let mut content = member_content("join", reason);
        add_profile(state, user, &mut content).await?;
        return crate::federation::join::join_remote(state, room_id, user, &servers, content).await;
    }
    let mut content = member_content("join", reason);
    if let Some(authoriser) = restricted_join_authoriser(state, room_id, user).await? {
        content["join_authorised_via_users_server"] = authoriser.into();
    }
    add_profile(state, user, &mut content).await?;
    set_membership(state, room_id, user, user, content).await
}

/// The server of whoever invited `user` into `room_id`, if the user's membership is an invite.
async fn inviting_server(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<ruma::OwnedServerName>> {
    let Some((membership, event_id)) = state
        .storage
        .membership(room_id.as_str(), user.as_str())
        .await?
    else {
        return Ok(None);
    };
    if membership != "invite" {
        return Ok(None);
    }
    Ok(state
        .storage
        .get_event(&event_id)
        .await?
        .and_then(|row| UserId::parse(row.sender).ok())
        .map(|sender| sender.server_name().to_owned()))
}

/// Whether this server is in `room_id`: it knows the room and one of its users is joined.
async fn is_resident(state: &AppState, room_id: &RoomId) -> Result<bool> {
    if state.storage.get_room(room_id.as_str()).await?.is_none() {
        return Ok(false);
    }
    let ours = state.server_name.as_str();
    Ok(state
        .storage
        .room_members(room_id.as_str())
        .await?
        .iter()
        .any(|(user, m, _)| m == "join" && user.split_once(':').is_some_and(|(_, s)| s == ours)))
}

/// For a `restricted` or `knock_restricted` room that the user is not invited to: a local
/// member who may invite, vouching that the user is in one of the rooms the join rule allows
/// (`join_authorised_via_users_server`). `None` when the rule does not apply or the user is
/// not in an allowed room (the authorization rules then refuse the join).
///
/// <https://spec.matrix.org/latest/client-server-api/#restricted-rooms>
pub(crate) async fn restricted_join_authoriser(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<String>> {
    let current = state.storage.current_state(room_id.as_str()).await?;
    let Some(rules_id) = current.get(&("m.room.join_rules".to_owned(), String::new())) else {
        return Ok(None);
    };
    let Some(row) = state.storage.get_event(rules_id).await? else {
        return Ok(None);
    };
    let pdu: Value = row.parse_pdu().map_err(Error::internal)?;
    let rule = pdu["content"]["join_rule"].as_str().unwrap_or("");
    if !matches!(rule, "restricted" | "knock_restricted")
        || membership_of(state, room_id, user).await?.as_deref() == Some("invite")
    {
        return Ok(None);
    }
    let mut in_allowed_room = false;
    for allow in pdu["content"]["allow"].as_array().into_iter().flatten() {
        if allow["type"] != "m.room_membership" {
            continue;
        }
        let Some(allowed) = allow["room_id"].as_str() else {
            continue;
        };
        if state
            .storage
            .membership(allowed, user.as_str())
            .await?
            .is_some_and(|(m, _)| m == "join")
        {
            in_allowed_room = true;
            break;
        }
    }
    if !in_allowed_room {
        return Ok(None);
    }
    for (member, membership, _) in state.storage.room_members(room_id.as_str()).await?.iter() {
        let Ok(member_id) = UserId::parse(member) else {
            continue;
        };
        if membership == "join"
            && member_id.server_name() == state.server_name
            && rooms::power::has_level(state, room_id, &member_id, rooms::power::Action::Invite)
                .await?
        {
            return Ok(Some(member.clone()));
        }
    }
    Ok(None)
}

/// POST /_matrix/client/v3/knock/{roomIdOrAlias}
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3knockroomidoralias>
pub async fn knock_room(
    State(state): State<AppState>,
    req: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response> {
    let mut servers = req.body.via.clone();
    let room_id = match <&RoomId>::try_from(&*req.body.room_id_or_alias) {
        Ok(room_id) => room_id.to_owned(),
        Err(alias) if alias.server_name() != state.server_name => {
            let (room_id, via) =
                crate::federation::join::resolve_remote_alias(&state, alias).await?;
            servers.extend(via);
            room_id
        }
        Err(_) => resolve_room(&state, &req.body.room_id_or_alias).await?,
    };
    let user = &req.sender().user_id;
    match membership_of(&state, &room_id, user).await?.as_deref() {
        Some("join") => return Err(Error::forbidden("You are already in this room")),
        Some("ban") => return Err(Error::forbidden("You are banned from this room")),
        _ => {}
    }
    let mut content = member_content("knock", req.body.reason.as_deref());
    add_profile(&state, user, &mut content).await?;
    if !is_resident(&state, &room_id).await? {
        // A room held elsewhere: knock through the servers named, then its own.
        if let Some(server) = room_id.server_name() {
            if !servers.iter().any(|s| s == server) {
                servers.push(server.to_owned());
            }
        }
        if servers.iter().all(|s| *s == state.server_name) {
            return Err(Error::not_found("Room not found"));
        }
        crate::federation::join::knock_remote(&state, &room_id, user, &servers, content).await?;
        return Ok(knock_room::v3::Response::new(room_id));
    }
    set_membership(&state, &room_id, user, user, content).await?;
    Ok(knock_room::v3::Response::new(room_id))
}

/// POST /_matrix/client/v3/rooms/{roomId}/join
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidjoin>
pub async fn join_room_by_id(
    State(state): State<AppState>,
    req: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    join(
        &state,
        &req.body.room_id,
        &req.sender().user_id,
        req.body.reason.as_deref(),
        &[],
    )
    .await?;
    Ok(join_room_by_id::v3::Response::new(req.body.room_id.clone()))
}

/// POST /_matrix/client/v3/join/{roomIdOrAlias}
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3joinroomidoralias>
pub async fn join_room_by_id_or_alias(
    State(state): State<AppState>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let mut servers = req.body.via.clone();
    let target: Result<&RoomId, &ruma::RoomAliasId> =
        <&RoomId>::try_from(&*req.body.room_id_or_alias);
    let room_id = match target {
        Ok(room_id) => room_id.to_owned(),
        Err(alias) if alias.server_name() != state.server_name => {
            let (room_id, via) =
                crate::federation::join::resolve_remote_alias(&state, alias).await?;
            servers.extend(via);
            room_id
        }
        Err(_) => resolve_room(&state, &req.body.room_id_or_alias).await?,
    };
    join(
        &state,
        &room_id,
        &req.sender().user_id,
        req.body.reason.as_deref(),
        &servers,
    )
    .await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// A room ID, or the room a local alias points at (404 if none).
pub async fn resolve_room(state: &AppState, room: &RoomOrAliasId) -> Result<OwnedRoomId> {
    match <&RoomId>::try_from(room) {
        Ok(room_id) => Ok(room_id.to_owned()),
        Err(alias) => {
            let (room_id, _) = state
                .storage
                .resolve_alias(alias.as_str())
                .await?
                .ok_or_else(|| Error::not_found("Room alias not found"))?;
            RoomId::parse(room_id).map_err(Error::internal)
        }
    }
}

/// POST /_matrix/client/v3/rooms/{roomId}/invite
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidinvite>
pub async fn invite_user(
    State(state): State<AppState>,
    req: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response> {
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &req.body.recipient else {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_UNRECOGNIZED",
            "Third-party invites are not supported",
        ));
    };
    let sender = &req.sender().user_id;
    require_joined(&state, &req.body.room_id, sender).await?;
    let mut content = member_content("invite", recipient.reason.as_deref());
    if recipient.user_id.server_name() == state.server_name {
        if !add_profile(&state, &recipient.user_id, &mut content).await? {
            return Err(Error::not_found("No such user"));
        }
    } else {
        // The invitee's server must sign the invite before it is written (federation v2).
        if membership_of(&state, &req.body.room_id, &recipient.user_id)
            .await?
            .as_deref()
            == Some("join")
        {
            return Err(Error::forbidden("The user is already in the room"));
        }
        crate::federation::join::invite_remote(
            &state,
            &req.body.room_id,
            sender,
            &recipient.user_id,
            content,
        )
        .await?;
        return Ok(invite_user::v3::Response::new());
    }
    set_membership(
        &state,
        &req.body.room_id,
        sender,
        &recipient.user_id,
        content,
    )
    .await?;
    Ok(invite_user::v3::Response::new())
}

/// POST /_matrix/client/v3/rooms/{roomId}/leave
///
/// Also rejects an invite or withdraws a knock.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidleave>
pub async fn leave_room(
    State(state): State<AppState>,
    req: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response> {
    let user = &req.sender().user_id;
    if membership_of(&state, &req.body.room_id, user)
        .await?
        .is_none()
    {
        return Err(Error::forbidden("You are not in this room"));
    }
    if !is_resident(&state, &req.body.room_id).await? {
        // Rejecting an invite to a room held elsewhere, or withdrawing a knock on one.
        let mut servers: Vec<ruma::OwnedServerName> =
            inviting_server(&state, &req.body.room_id, user)
                .await?
                .into_iter()
                .collect();
        servers.extend(req.body.room_id.server_name().map(ToOwned::to_owned));
        // A knock (or an invite) also names servers in the room through its stripped state.
        for server in
            crate::federation::join::servers_from_stripped_state(&state, &req.body.room_id, user)
                .await
        {
            if !servers.contains(&server) {
                servers.push(server);
            }
        }
        crate::federation::join::leave_remote(
            &state,
            &req.body.room_id,
            user,
            &servers,
            member_content("leave", req.body.reason.as_deref()),
        )
        .await?;
        return Ok(leave_room::v3::Response::new());
    }
    set_membership(
        &state,
        &req.body.room_id,
        user,
        user,
        member_content("leave", req.body.reason.as_deref()),
    )
    .await?;
    Ok(leave_room::v3::Response::new())
}

/// POST /_matrix/client/v3/rooms/{roomId}/kick
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidkick>
pub async fn kick_user(
    State(state): State<AppState>,
    req: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response> {
    let sender = &req.sender().user_id;
    require_joined(&state, &req.body.room_id, sender).await?;
    match membership_of(&state, &req.body.room_id, &req.body.user_id)
        .await?
        .as_deref()
    {
        Some("join") | Some("invite") | Some("knock") => {}
        _ => return Err(Error::forbidden("The user is not in the room")),
    }
    let content = member_content("leave", req.body.reason.as_deref());
    set_membership(
        &state,
        &req.body.room_id,
        sender,
        &req.body.user_id,
        content,
    )
    .await?;
    Ok(kick_user::v3::Response::new())
}

/// POST /_matrix/client/v3/rooms/{roomId}/ban
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidban>
pub async fn ban_user(
    State(state): State<AppState>,
    req: Ruma<ban_user::v3::Request>,
) -> Result<ban_user::v3::Response> {
    let sender = &req.sender().user_id;
    require_joined(&state, &req.body.room_id, sender).await?;
    let content = member_content("ban", req.body.reason.as_deref());
    set_membership(
        &state,
        &req.body.room_id,
        sender,
        &req.body.user_id,
        content,
    )
    .await?;
    Ok(ban_user::v3::Response::new())
}

/// POST /_matrix/client/v3/rooms/{roomId}/unban
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidunban>
pub async fn unban_user(
    State(state): State<AppState>,
    req: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response> {
    let sender = &req.sender().user_id;
    require_joined(&state, &req.body.room_id, sender).await?;
    if membership_of(&state, &req.body.room_id, &req.body.user_id)
        .await?
        .as_deref()
        != Some("ban")
    {
        return Err(Error::forbidden("The user is not banned"));
    }
    let content = member_content("leave", req.body.reason.as_deref());
    set_membership(
        &state,
        &req.body.room_id,
        sender,
        &req.body.user_id,
        content,
    )
    .await?;
    Ok(unban_user::v3::Response::new())
}

/// POST /_matrix/client/v3/rooms/{roomId}/forget
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidforget>
pub async fn forget_room(
    State(state): State<AppState>,
    req: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response> {
    let user = &req.sender().user_id;
    match membership_of(&state, &req.body.room_id, user)
        .await?
        .as_deref()
    {
        None => return Err(Error::not_found("You have never been in this room")),
        Some("join") | Some("invite") | Some("knock") => {
            return Err(Error::unknown(
                StatusCode::BAD_REQUEST,
                "You must leave the room before forgetting it",
            ));
        }
        Some(_) => {}
    }
    state
        .storage
        .forget_room(req.body.room_id.as_str(), user.as_str())
        .await?;
    Ok(forget_room::v3::Response::new())
}

/// GET /_matrix/client/v3/joined_rooms
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3joined_rooms>
pub async fn joined_rooms(
    State(state): State<AppState>,
    req: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response> {
    let rooms = state
        .storage
        .rooms_for_user(req.sender().user_id.as_str(), "join")
        .await?;
    let rooms = rooms
        .into_iter()
        .map(|r| RoomId::parse(r).map_err(Error::internal))
        .collect::<Result<_>>()?;
    Ok(joined_rooms::v3::Response::new(rooms))
}

/// GET /_matrix/client/v3/rooms/{roomId}/joined_members
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidjoined_members>
pub async fn joined_members(
    State(state): State<AppState>,
    req: Ruma<joined_members::v3::Request>,
) -> Result<joined_members::v3::Response> {
    require_joined(&state, &req.body.room_id, &req.sender().user_id).await?;
    let members = state
        .storage
        .room_members(req.body.room_id.as_str())
        .await?;
    let joined_ids: Vec<String> = members
        .iter()
        .filter(|(_, m, _)| m == "join")
        .map(|(_, _, e)| e.clone())
        .collect();
    let rows = state.storage.get_events(&joined_ids).await?;
    let mut joined = BTreeMap::new();
    for row in rows {
        let pdu: Value = row.parse_pdu().map_err(Error::internal)?;
        let user = OwnedUserId::try_from(row.state_key.clone().unwrap_or_default())
            .map_err(Error::internal)?;
        let mut member = joined_members::v3::RoomMember::new();
        member.display_name = pdu["content"]["displayname"].as_str().map(str::to_owned);
        member.avatar_url = pdu["content"]["avatar_url"].as_str().map(OwnedMxcUri::from);
        joined.insert(user, member);
    }
    Ok(joined_members::v3::Response::new(joined))
}

/// GET /_matrix/client/v3/rooms/{roomId}/members
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidmembers>
pub async fn get_member_events(
    State(state): State<AppState>,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    let user = &req.sender().user_id;
    let room_id = &req.body.room_id;
    // Members (and anyone, in a world-readable room) see the current list; a user who left
    // after having been joined sees it as of their leave; nobody else sees it.
    let readable = readable_state(&state, room_id.as_str(), user).await?;
    let member_ids: Vec<String> = match readable {
        ReadableState::Current => match &req.body.at {
            // The members as of a pagination token: the state after the last event before it.
            Some(at) => {
                let position = super::message::parse_token(&state, room_id, at).await?;
                let before = state
                    .storage
                    .room_events_topological(
                        room_id.as_str(),
                        position,
                        None,
                        myelin_storage::Direction::Backward,
                        1,
                    )
                    .await?;
                match before.first().and_then(|r| r.state_after) {
                    Some(snapshot) => state
                        .snapshot(snapshot)
                        .await?
                        .iter()
                        .filter(|((t, _), _)| t == "m.room.member")
                        .map(|(_, e)| e.clone())
                        .collect(),
                    None => Vec::new(),
                }
            }
            None => state
                .storage
                .room_members(room_id.as_str())
                .await?
                .iter()
                .map(|(_, _, e)| e.clone())
                .collect(),
        },
        ReadableState::AtLeave(snapshot) => state
            .snapshot(snapshot)
            .await?
            .iter()
            .filter(|((t, _), _)| t == "m.room.member")
            .map(|(_, e)| e.clone())
            .collect(),
    };
    let rows = state.storage.get_events(&member_ids).await?;
    let membership_of_row = |row: &myelin_storage::EventRow| -> Option<String> {
        let pdu: Value = row.parse_pdu().ok()?;
        pdu["content"]["membership"].as_str().map(str::to_owned)
    };
    let wanted = req.body.membership.as_ref().map(|m| m.to_string());
    let unwanted = req.body.not_membership.as_ref().map(|m| m.to_string());
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|row| {
            let m = membership_of_row(row);
            wanted.as_ref().is_none_or(|w| m.as_ref() == Some(w))
                && unwanted.as_ref().is_none_or(|u| m.as_ref() != Some(u))
        })
        .collect();
    let sender = req.sender();
    let events = client_events(&state, &rows, Some((&sender.user_id, &sender.device_id))).await?;
    let chunk = events.iter().map(raw).collect::<Result<_>>()?;
    Ok(get_member_events::v3::Response::new(chunk))
}

/// Rooms per page of `mutual_rooms`.
const MUTUAL_ROOMS_PAGE: usize = 100;

/// The rooms both the sender and `other` are joined to, sorted by room ID: one page from
/// after `from` (a room ID), the total, and the next page's token.
async fn mutual_rooms(
    state: &AppState,
    sender: &UserId,
    other: &UserId,
    from: Option<&str>,
) -> Result<(usize, Vec<OwnedRoomId>, Option<String>)> {
    if sender == other {
        return Err(Error::invalid_param(
            "You cannot request a list of shared rooms with yourself",
        ));
    }
    let mine: std::collections::BTreeSet<String> = state
        .storage
        .rooms_for_user(sender.as_str(), "join")
        .await?
        .into_iter()
        .collect();
    let mut shared: Vec<String> = state
        .storage
        .rooms_for_user(other.as_str(), "join")
        .await?
        .into_iter()
        .filter(|r| mine.contains(r))
        .collect();
    shared.sort();
    let total = shared.len();
    let start = from.map_or(0, |from| shared.partition_point(|r| r.as_str() <= from));
    let page: Vec<OwnedRoomId> = shared[start..]
        .iter()
        .take(MUTUAL_ROOMS_PAGE)
        .map(|r| OwnedRoomId::try_from(r.as_str()).map_err(Error::internal))
        .collect::<Result<_>>()?;
    let next = (start + page.len() < total)
        .then(|| page.last().map(ToString::to_string))
        .flatten();
    Ok((total, page, next))
}

/// GET /_matrix/client/v1/mutual_rooms
///
/// The rooms the sender shares with another user (spec v1.19, MSC2666), paginated.
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1mutual_rooms>
pub async fn get_mutual_rooms(
    State(state): State<AppState>,
    req: Ruma<get_mutual_rooms::v1::Request>,
) -> Result<get_mutual_rooms::v1::Response> {
    let sender = &req.sender().user_id;
    let (total, joined, next) =
        mutual_rooms(&state, sender, &req.body.user_id, req.body.from.as_deref()).await?;
    let mut response = get_mutual_rooms::v1::Response::new(
        ruma::UInt::try_from(total).map_err(Error::internal)?,
        joined,
    );
    response.next_batch = next;
    Ok(response)
}

/// GET /_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms
///
/// The same under MSC2666's unstable path, which current SDKs still call.
pub async fn get_mutual_rooms_unstable(
    State(state): State<AppState>,
    req: Ruma<get_mutual_rooms::unstable::Request>,
) -> Result<get_mutual_rooms::unstable::Response> {
    let sender = &req.sender().user_id;
    let (_, joined, next) =
        mutual_rooms(&state, sender, &req.body.user_id, req.body.from.as_deref()).await?;
    let mut response = get_mutual_rooms::unstable::Response::new(joined);
    response.next_batch = next;
    Ok(response)
}
