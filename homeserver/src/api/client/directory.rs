//! Room aliases and the public room directory.
//!
//! <https://spec.matrix.org/latest/client-server-api/#room-aliases>
//! <https://spec.matrix.org/latest/client-server-api/#listing-rooms>

use axum::{extract::State, http::StatusCode};
use ruma::{
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        directory::{
            get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
        },
        room::{aliases, Visibility},
    },
    directory::PublicRoomsChunk,
    OwnedRoomAliasId, RoomAliasId, RoomId, UInt,
};

use super::room::require_joined;
use crate::{
    api::ruma::Ruma,
    auth::now_ms,
    error::{Error, Result},
    rooms::{power, summary::public_rooms_chunk},
    AppState,
};

fn local_alias(state: &AppState, alias: &RoomAliasId) -> Result<()> {
    if alias.server_name() != state.server_name {
        return Err(Error::invalid_param(
            "Aliases on other servers cannot be managed here",
        ));
    }
    Ok(())
}

/// PUT /_matrix/client/v3/directory/room/{roomAlias}
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3directoryroomroomalias>
pub async fn create_alias(
    State(state): State<AppState>,
    req: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response> {
    local_alias(&state, &req.body.room_alias)?;
    require_joined(&state, &req.body.room_id, &req.sender().user_id).await?;
    let created = state
        .storage
        .create_alias(
            req.body.room_alias.as_str(),
            req.body.room_id.as_str(),
            req.sender().user_id.as_str(),
            now_ms(),
        )
        .await;
    match created {
        Err(myelin_storage::Error::UniqueViolation) => Err(Error::new(
            StatusCode::CONFLICT,
            "M_UNKNOWN",
            "Room alias already exists",
        )),
        other => {
            other?;
            Ok(create_alias::v3::Response::new())
        }
    }
}

/// GET /_matrix/client/v3/directory/room/{roomAlias}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3directoryroomroomalias>
pub async fn get_alias(
    State(state): State<AppState>,
    req: Ruma<get_alias::v3::Request>,
) -> Result<get_alias::v3::Response> {
    if req.body.room_alias.server_name() != state.server_name {
        return Err(Error::not_found(
            "Resolving aliases on other servers is not supported yet",
        ));
    }
    let (room_id, _) = state
        .storage
        .resolve_alias(req.body.room_alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let room_id = RoomId::parse(room_id).map_err(Error::internal)?;
    Ok(get_alias::v3::Response::new(
        room_id,
        vec![state.server_name.clone()],
    ))
}

/// DELETE /_matrix/client/v3/directory/room/{roomAlias}
///
/// Allowed for the alias's creator, server admins, and room members who may change the
/// room's canonical alias.
/// <https://spec.matrix.org/latest/client-server-api/#delete_matrixclientv3directoryroomroomalias>
pub async fn delete_alias(
    State(state): State<AppState>,
    req: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    local_alias(&state, &req.body.room_alias)?;
    let sender = req.sender();
    let (room_id, creator) = state
        .storage
        .resolve_alias(req.body.room_alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let room_id = RoomId::parse(room_id).map_err(Error::internal)?;
    let allowed = creator == sender.user_id.as_str()
        || sender.is_admin
        || (require_joined(&state, &room_id, &sender.user_id)
            .await
            .is_ok()
            && power::has_level(
                &state,
                &room_id,
                &sender.user_id,
                power::Action::State("m.room.canonical_alias"),
            )
            .await?);
    if !allowed {
        return Err(Error::forbidden("You may not delete this alias"));
    }
    state
        .storage
        .delete_alias(req.body.room_alias.as_str())
        .await?;
    Ok(delete_alias::v3::Response::new())
}

/// GET /_matrix/client/v3/rooms/{roomId}/aliases
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidaliases>
pub async fn get_room_aliases(
    State(state): State<AppState>,
    req: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response> {
    require_joined(&state, &req.body.room_id, &req.sender().user_id).await?;
    let aliases = state
        .storage
        .aliases_for_room(req.body.room_id.as_str())
        .await?
        .into_iter()
        .filter_map(|a| OwnedRoomAliasId::try_from(a).ok())
        .collect();
    Ok(aliases::v3::Response::new(aliases))
}

/// GET /_matrix/client/v3/directory/list/room/{roomId}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3directorylistroomroomid>
pub async fn get_room_visibility(
    State(state): State<AppState>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    let room = state
        .storage
        .get_room(req.body.room_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room not found"))?;
    let visibility = if room.is_public {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(get_room_visibility::v3::Response::new(visibility))
}

/// PUT /_matrix/client/v3/directory/list/room/{roomId}
///
/// Members who may change the canonical alias may publish the room (as in Synapse).
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3directorylistroomroomid>
pub async fn set_room_visibility(
    State(state): State<AppState>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let sender = req.sender();
    require_joined(&state, &req.body.room_id, &sender.user_id).await?;
    let may = sender.is_admin
        || power::has_level(
            &state,
            &req.body.room_id,
            &sender.user_id,
            power::Action::State("m.room.canonical_alias"),
        )
        .await?;
    if !may {
        return Err(Error::forbidden(
            "You may not change this room's directory visibility",
        ));
    }
    let public = match req.body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(Error::invalid_param("Unknown visibility")),
    };
    state
        .storage
        .set_room_public(req.body.room_id.as_str(), public)
        .await?;
    Ok(set_room_visibility::v3::Response::new())
}

/// One page of the directory: rooms matching `search`, biggest first, from offset `since`.
pub(crate) async fn directory_page(
    state: &AppState,
    limit: Option<UInt>,
    since: Option<&str>,
    search: Option<&str>,
) -> Result<(Vec<PublicRoomsChunk>, Option<String>, Option<String>, usize)> {
    // Offsets are ours (`o<n>`), so any token beyond `u32` was not made by us; refusing it
    // keeps `offset + limit` far from overflowing `usize`.
    let offset: usize = match since {
        Some(token) => token
            .strip_prefix('o')
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| Error::invalid_param("Invalid since token"))?
            as usize,
        None => 0,
    };
    let limit = limit
        .map(|l| u64::from(l) as usize)
        .unwrap_or(100)
        .clamp(1, 500);
    let search = search.map(str::to_lowercase).filter(|s| !s.is_empty());
    let mut rooms = Vec::new();
    for room_id in state.storage.public_rooms().await? {
        let room_id = RoomId::parse(room_id).map_err(Error::internal)?;
        let chunk = public_rooms_chunk(state, &room_id).await?;
        let matches = search.as_ref().is_none_or(|term| {
            [
                chunk.name.as_deref(),
                chunk.topic.as_deref(),
                chunk.canonical_alias.as_ref().map(|a| a.as_str()),
            ]
            .into_iter()
            .flatten()
            .any(|text| text.to_lowercase().contains(term.as_str()))
        });
        if matches {
            rooms.push(chunk);
        }
    }
    rooms.sort_by(|a, b| {
        b.num_joined_members
            .cmp(&a.num_joined_members)
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    let total = rooms.len();
    let end = offset.saturating_add(limit);
    let next = (end < total).then(|| format!("o{end}"));
    let prev = (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit)));
    let page = rooms.into_iter().skip(offset).take(limit).collect();
    Ok((page, next, prev, total))
}

/// A page of a room directory: the rooms, the next and previous tokens, the total estimate.
type DirectoryPage = (
    Vec<PublicRoomsChunk>,
    Option<String>,
    Option<String>,
    Option<UInt>,
);

/// A page of the directory of `server` (another server's through federation `publicRooms`;
/// ours when `None` or our name), as both `/publicRooms` endpoints answer it.
async fn directory_page_of(
    state: &AppState,
    server: Option<&ruma::ServerName>,
    limit: Option<UInt>,
    since: Option<&str>,
    search: Option<&str>,
) -> Result<DirectoryPage> {
    match server.filter(|s| *s != state.server_name) {
        Some(server) => remote_directory(state, server, limit, since, search).await,
        None => {
            let (chunk, next, prev, total) = directory_page(state, limit, since, search).await?;
            Ok((chunk, next, prev, UInt::new(total as u64)))
        }
    }
}

/// A page of another server's public room directory (federation `publicRooms`).
async fn remote_directory(
    state: &AppState,
    server: &ruma::ServerName,
    limit: Option<UInt>,
    since: Option<&str>,
    search: Option<&str>,
) -> Result<DirectoryPage> {
    let mut body = serde_json::json!({});
    if let Some(limit) = limit {
        body["limit"] = u64::from(limit).into();
    }
    if let Some(since) = since {
        body["since"] = since.into();
    }
    if let Some(term) = search {
        body["filter"] = serde_json::json!({ "generic_search_term": term });
    }
    let answer = state
        .federation
        .post_json(server, "/_matrix/federation/v1/publicRooms", &body)
        .await
        .map_err(|e| {
            tracing::info!(%server, error = %e, "could not read another server's directory");
            Error::not_found("That server's room directory is not available")
        })?;
    let bad = || {
        Error::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            "The server sent an invalid directory",
        )
    };
    let chunk: Vec<PublicRoomsChunk> =
        serde_json::from_value(answer["chunk"].clone()).map_err(|_| bad())?;
    let text = |key: &str| answer[key].as_str().map(str::to_owned);
    let total = answer["total_room_count_estimate"]
        .as_u64()
        .and_then(UInt::new);
    Ok((chunk, text("next_batch"), text("prev_batch"), total))
}

/// GET /_matrix/client/v3/publicRooms
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3publicrooms>
pub async fn get_public_rooms(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let (chunk, next, prev, total) = directory_page_of(
        &state,
        req.body.server.as_deref(),
        req.body.limit,
        req.body.since.as_deref(),
        None,
    )
    .await?;
    let mut response = get_public_rooms::v3::Response::new(chunk);
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = total;
    Ok(response)
}

/// POST /_matrix/client/v3/publicRooms
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3publicrooms>
pub async fn get_public_rooms_filtered(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let search = req.body.filter.generic_search_term.as_deref();
    let (chunk, next, prev, total) = directory_page_of(
        &state,
        req.body.server.as_deref(),
        req.body.limit,
        req.body.since.as_deref(),
        search,
    )
    .await?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = total;
    Ok(response)
}
