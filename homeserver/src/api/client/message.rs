//! Sending and reading room events: send, state, redaction, `/messages`, `/event`.
//!
//! <https://spec.matrix.org/latest/client-server-api/#sending-events-to-a-room>
//! <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidmessages>

use axum::{extract::State, http::StatusCode};
use myelin_storage::{Direction as StorageDirection, TopologicalPosition};
use ruma::{
    api::{
        client::{
            message::{get_message_events, send_message_event},
            redact::redact_event,
            room::{get_event_by_timestamp, get_room_event},
            state::{get_state_event_for_key, get_state_events, send_state_event},
        },
        Direction,
    },
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, UserId,
};
use serde_json::Value;

use super::room::{canonical_object, raw, require_joined};
use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms::{
        self,
        format::client_events,
        room_rules,
        visibility::{readable_state, ReadableState, Visibility},
        Send,
    },
    AppState,
};

/// PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}
///
/// Idempotent per device and transaction ID.
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3roomsroomidsendeventtypetxnid>
pub async fn send_message_event(
    State(state): State<AppState>,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<send_message_event::v3::Response> {
    let sender = req.sender();
    // No membership pre-check: the authorization rules refuse a non-member's event (403), and
    // an unknown room is a 404 from the pipeline. This keeps the hot path to one transaction.
    let content = canonical_object(req.body.body.json().get(), "event content")?;
    let mut send = Send::message(&req.body.event_type.to_string(), content);
    send.txn = Some((sender.device_id.to_string(), req.body.txn_id.to_string()));
    let event_id = rooms::send(&state, &req.body.room_id, &sender.user_id, send).await?;
    crate::presence_active(&state, sender.user_id.as_str()).await;
    Ok(send_message_event::v3::Response::new(event_id))
}

/// The aliases named by `m.room.canonical_alias` content (`alias` and `alt_aliases`).
fn canonical_aliases(content: &CanonicalJsonObject) -> Result<Vec<String>> {
    let mut aliases = Vec::new();
    match content.get("alias") {
        Some(CanonicalJsonValue::String(a)) => aliases.push(a.clone()),
        None | Some(CanonicalJsonValue::Null) => {}
        _ => return Err(Error::bad_json("alias must be a string")),
    }
    match content.get("alt_aliases") {
        Some(CanonicalJsonValue::Array(items)) => {
            for item in items {
                match item {
                    CanonicalJsonValue::String(a) => aliases.push(a.clone()),
                    _ => return Err(Error::bad_json("alt_aliases must be strings")),
                }
            }
        }
        None => {}
        _ => return Err(Error::bad_json("alt_aliases must be an array")),
    }
    Ok(aliases)
}

/// Checks `m.room.canonical_alias` content: every alias it adds must point at this room.
/// Aliases already in the current event are not checked again (the spec says servers do not
/// validate aliases that are being removed or already present).
async fn check_canonical_alias(
    state: &AppState,
    room_id: &RoomId,
    content: &CanonicalJsonObject,
) -> Result<()> {
    let current = state.storage.current_state(room_id.as_str()).await?;
    let mut present = Vec::new();
    if let Some(id) = current.get(&("m.room.canonical_alias".to_owned(), String::new())) {
        if let Some(row) = state.storage.get_event(id).await? {
            let pdu: CanonicalJsonObject = row.parse_pdu().map_err(Error::internal)?;
            if let Some(CanonicalJsonValue::Object(old)) = pdu.get("content") {
                present = canonical_aliases(old).unwrap_or_default();
            }
        }
    }
    for alias in canonical_aliases(content)? {
        if ruma::RoomAliasId::parse(&alias).is_err() {
            return Err(Error::invalid_param(format!(
                "{alias} is not a valid room alias"
            )));
        }
        if present.contains(&alias) {
            continue;
        }
        let points_here = state
            .storage
            .resolve_alias(&alias)
            .await?
            .is_some_and(|(r, _)| r == room_id.as_str());
        if !points_here {
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                "M_BAD_ALIAS",
                format!("{alias} does not point at this room"),
            ));
        }
    }
    Ok(())
}

/// PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}
///
/// Re-sending the current content is harmless: the existing event's ID is returned.
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3roomsroomidstateeventtypestatekey>
pub async fn send_state_event(
    State(state): State<AppState>,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response> {
    let sender = &req.sender().user_id;
    let room_id = &req.body.room_id;
    require_joined(&state, room_id, sender).await?;
    let event_type = req.body.event_type.to_string();
    let content = canonical_object(req.body.body.json().get(), "event content")?;
    if event_type == "m.room.canonical_alias" {
        check_canonical_alias(&state, room_id, &content).await?;
    }
    // An identical state event from the same sender changes nothing: answer with it.
    // One key, not the whole state: a send's cost must not grow with the room's state.
    let existing = state
        .storage
        .current_state_event(room_id.as_str(), &event_type, &req.body.state_key)
        .await?;
    if let Some(existing) = existing {
        if let Some(row) = state.storage.get_event(&existing).await? {
            let pdu: Value = row.parse_pdu().map_err(Error::internal)?;
            let same_content =
                serde_json::to_value(&content).map_err(Error::internal)? == pdu["content"];
            if same_content && row.sender == sender.as_str() {
                return Ok(send_state_event::v3::Response::new(
                    OwnedEventId::try_from(row.event_id).map_err(Error::internal)?,
                ));
            }
        }
    }
    let send = Send::state(&event_type, &req.body.state_key, content);
    let event_id = rooms::send(&state, room_id, sender, send).await?;
    Ok(send_state_event::v3::Response::new(event_id))
}

/// The state a user may see (see [`readable_state`]): the current state while joined or if
/// the room is world readable, the state at their leave for a former member.
async fn visible_state(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
) -> Result<myelin_storage::StateMap> {
    match readable_state(state, room_id.as_str(), user).await? {
        ReadableState::Current => Ok(state.storage.current_state(room_id.as_str()).await?),
        ReadableState::AtLeave(snapshot) => Ok((*state.snapshot(snapshot).await?).clone()),
    }
}

async fn history_visibility(state: &AppState, map: &myelin_storage::StateMap) -> Result<String> {
    let Some(id) = map.get(&("m.room.history_visibility".to_owned(), String::new())) else {
        return Ok("shared".into());
    };
    let row = state
        .storage
        .get_event(id)
        .await?
        .ok_or_else(|| Error::internal("missing state event"))?;
    let pdu: Value = row.parse_pdu().map_err(Error::internal)?;
    Ok(pdu["content"]["history_visibility"]
        .as_str()
        .unwrap_or("shared")
        .to_owned())
}

/// GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidstateeventtypestatekey>
pub async fn get_state_event_for_key(
    State(state): State<AppState>,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    let sender = req.sender();
    let map = visible_state(&state, &req.body.room_id, &sender.user_id).await?;
    let event_id = map
        .get(&(req.body.event_type.to_string(), req.body.state_key.clone()))
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let row = state
        .storage
        .get_event(event_id)
        .await?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let event =
        rooms::format::client_event(&state, &row, Some((&sender.user_id, &sender.device_id)))
            .await?;
    let wants_event = req.body.format == get_state_event_for_key::v3::StateEventFormat::Event;
    let value = if wants_event {
        event
    } else {
        event["content"].clone()
    };
    Ok(get_state_event_for_key::v3::Response::new(
        serde_json::value::to_raw_value(&value).map_err(Error::internal)?,
    ))
}

/// GET /_matrix/client/v3/rooms/{roomId}/state
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidstate>
pub async fn get_state_events(
    State(state): State<AppState>,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response> {
    let sender = req.sender();
    let map = visible_state(&state, &req.body.room_id, &sender.user_id).await?;
    let ids: Vec<String> = map.values().cloned().collect();
    let rows = state.storage.get_events(&ids).await?;
    let events = client_events(&state, &rows, Some((&sender.user_id, &sender.device_id))).await?;
    Ok(get_state_events::v3::Response::new(
        events.iter().map(raw).collect::<Result<_>>()?,
    ))
}

/// GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}
///
/// 404 both for unknown events and for events the user may not see, so nothing leaks.
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomideventeventid>
pub async fn get_room_event(
    State(state): State<AppState>,
    req: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response> {
    let sender = req.sender();
    let row = state
        .storage
        .get_event(req.body.event_id.as_str())
        .await?
        .filter(|row| {
            row.room_id == req.body.room_id.as_str()
                && !row.rejected
                && row.stream_ordering.is_some()
        })
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let mut visibility =
        Visibility::new(&state, &sender.user_id, req.body.room_id.as_str()).await?;
    if !visibility.allows(&row).await? {
        return Err(Error::not_found("Event not found"));
    }
    let event =
        rooms::format::client_event(&state, &row, Some((&sender.user_id, &sender.device_id)))
            .await?;
    Ok(get_room_event::v3::Response::new(raw(&event)?))
}

/// Events looked at by `timestamp_to_event` before it gives up finding one the user may see.
const TIMESTAMP_SCAN: i64 = 200;

/// GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event
///
/// The event nearest to `ts` in direction `dir` (`f`: at or after it, `b`: at or before it)
/// by `origin_server_ts`, among those the user may see (a room they cannot see has none: 404,
/// so the answer reveals nothing). Clients use it for "jump to date".
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1roomsroomidtimestamp_to_event>
pub async fn get_event_by_timestamp(
    State(state): State<AppState>,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response> {
    let sender = req.sender();
    let room_id = req.body.room_id.as_str();
    let ts = i64::from(req.body.ts.get());
    let forward = matches!(req.body.dir, ruma::api::Direction::Forward);
    let rows = state
        .storage
        .events_near_ts(room_id, ts, forward, TIMESTAMP_SCAN)
        .await?;
    let mut visibility = Visibility::new(&state, &sender.user_id, room_id).await?;
    for row in rows {
        if visibility.allows(&row).await? {
            let event_id =
                ruma::OwnedEventId::try_from(row.event_id.as_str()).map_err(Error::internal)?;
            let ts = ruma::MilliSecondsSinceUnixEpoch(
                ruma::UInt::try_from(row.origin_server_ts.max(0)).map_err(Error::internal)?,
            );
            return Ok(get_event_by_timestamp::v1::Response::new(event_id, ts));
        }
    }
    Err(Error::not_found(format!(
        "Unable to find event from {} in direction {}",
        req.body.ts.get(),
        if forward { "f" } else { "b" }
    )))
}

/// A `/messages` token: `t<depth>_<stream>`, a position between events in topological order.
/// Sync's `s<stream>` tokens are accepted too and mapped onto the room's topological order.
pub(super) async fn parse_token(
    state: &AppState,
    room_id: &RoomId,
    token: &str,
) -> Result<TopologicalPosition> {
    if let Some(rest) = token.strip_prefix('t') {
        let (depth, stream) = rest
            .split_once('_')
            .ok_or_else(|| Error::invalid_param("Invalid pagination token"))?;
        let depth = depth
            .parse()
            .map_err(|_| Error::invalid_param("Invalid pagination token"))?;
        let stream = stream
            .parse()
            .map_err(|_| Error::invalid_param("Invalid pagination token"))?;
        return Ok(TopologicalPosition { depth, stream });
    }
    if let Some(rest) = token.strip_prefix('s') {
        let stream: i64 = rest
            .split('_')
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|_| Error::invalid_param("Invalid pagination token"))?;
        // Just after the newest event at or before the stream position.
        return Ok(
            match state
                .storage
                .topological_at_stream(room_id.as_str(), stream)
                .await?
            {
                Some(pos) => TopologicalPosition {
                    depth: pos.depth,
                    stream: pos.stream + 1,
                },
                None => TopologicalPosition {
                    depth: 0,
                    stream: 0,
                },
            },
        );
    }
    Err(Error::invalid_param("Invalid pagination token"))
}

pub(super) fn format_token(pos: TopologicalPosition) -> String {
    format!("t{}_{}", pos.depth, pos.stream)
}

/// The position `offset` after `row` (0: the row's own, where a backward walk continues; 1:
/// just after it, where a forward walk continues).
pub(super) fn position(row: &myelin_storage::EventRow, offset: i64) -> Option<TopologicalPosition> {
    row.stream_ordering.map(|stream| TopologicalPosition {
        depth: row.depth,
        stream: stream + offset,
    })
}

/// The largest page `/messages` returns.
const MAX_MESSAGES_LIMIT: u64 = 1000;

/// GET /_matrix/client/v3/rooms/{roomId}/messages
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidmessages>
pub async fn get_message_events(
    State(state): State<AppState>,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let sender = req.sender();
    let room_id = &req.body.room_id;
    room_rules(&state, room_id).await?;
    let membership = state
        .storage
        .membership(room_id.as_str(), sender.user_id.as_str())
        .await?;
    if membership.is_none() {
        let current = state.storage.current_state(room_id.as_str()).await?;
        if history_visibility(&state, &current).await? != "world_readable" {
            return Err(Error::forbidden("You are not a member of this room"));
        }
    }
    let dir = match req.body.dir {
        Direction::Backward => StorageDirection::Backward,
        Direction::Forward => StorageDirection::Forward,
    };
    let from = match &req.body.from {
        Some(token) => parse_token(&state, room_id, token).await?,
        None => match dir {
            StorageDirection::Backward => TopologicalPosition {
                depth: i64::MAX,
                stream: i64::MAX,
            },
            StorageDirection::Forward => TopologicalPosition {
                depth: 0,
                stream: 0,
            },
        },
    };
    let to = match &req.body.to {
        Some(token) => Some(parse_token(&state, room_id, token).await?),
        None => None,
    };
    let limit = u64::from(req.body.limit).clamp(1, MAX_MESSAGES_LIMIT) as i64;
    let filter = &req.body.filter;
    let check = crate::sync::filter::EventCheck::from_room_event_filter(filter);
    let page = filtered_page(&state, room_id, from, to, dir, limit, &check).await?;
    // Without `from`, a backward walk starts at the newest event now: name that position
    // (just after it), not "the end", so the token keeps meaning this point in history.
    let start = match (&req.body.from, dir, &page.newest_read) {
        (Some(token), _, _) => token.clone(),
        (None, StorageDirection::Backward, Some(newest)) => format_token(*newest),
        (None, _, _) => format_token(from),
    };
    let end = page.end;

    let mut visibility = Visibility::new(&state, &sender.user_id, room_id.as_str()).await?;
    let rows = visibility.filter(page.rows).await?;
    // Lazy-loading members: the member events of the chunk's senders, as of its last event.
    let lazy_state = match rows.last().and_then(|r| r.state_after) {
        Some(snapshot) if !filter.lazy_load_options.is_disabled() => {
            // One point lookup per sender, not the whole state (which can be large).
            let mut senders: Vec<&str> = rows.iter().map(|r| r.sender.as_str()).collect();
            senders.sort_unstable();
            senders.dedup();
            let requests: Vec<(i64, String, String)> = senders
                .into_iter()
                .map(|s| (snapshot, "m.room.member".to_owned(), s.to_owned()))
                .collect();
            let mut ids: Vec<String> = state
                .storage
                .state_lookups(&requests)
                .await?
                .into_iter()
                .flatten()
                .collect();
            ids.sort();
            ids.dedup();
            state.storage.get_events(&ids).await?
        }
        _ => Vec::new(),
    };
    let events = client_events(&state, &rows, Some((&sender.user_id, &sender.device_id))).await?;
    let mut response = get_message_events::v3::Response::new();
    response.start = start;
    // `end` is left out when there is nothing further to read.
    response.end = end.map(format_token);
    response.chunk = events.iter().map(raw).collect::<Result<_>>()?;
    let viewer = Some((&*sender.user_id, &*sender.device_id));
    let members = client_events(&state, &lazy_state, viewer).await?;
    response.state = members.iter().map(raw).collect::<Result<_>>()?;
    Ok(response)
}

/// Events `/messages` looks at for one filtered page before it answers with what it found
/// (and an `end` to continue from), so a filter that matches little is never a long scan.
const MESSAGES_SCAN_BUDGET: usize = 2000;
/// Events read per storage call while filling a filtered page.
const MESSAGES_CHUNK: i64 = 200;

/// One `/messages` page before the visibility check.
pub(super) struct Page {
    /// The events the filter lets through, in walking order, at most `limit`.
    pub rows: Vec<myelin_storage::EventRow>,
    /// Just after the first event read walking backwards (the `start` of a walk without
    /// `from`).
    pub newest_read: Option<TopologicalPosition>,
    /// Where the next page starts; `None` when the walk reached the end.
    pub end: Option<TopologicalPosition>,
}

/// Reads events from `from` towards `to`, keeping those `check` lets through, until `limit`
/// are kept, the history ends, or [`MESSAGES_SCAN_BUDGET`] events were read. The filter is
/// applied before the limit, so "the last 3 messages" is 3 messages however many other
/// events lie between them; `end` is just past the last event *read* (kept or not).
pub(super) async fn filtered_page(
    state: &AppState,
    room_id: &RoomId,
    from: TopologicalPosition,
    to: Option<TopologicalPosition>,
    dir: StorageDirection,
    limit: i64,
    check: &crate::sync::filter::EventCheck,
) -> Result<Page> {
    // The position past `row` in the walking direction: just before it going backward,
    // just after it going forward.
    let past = |row: &myelin_storage::EventRow| match dir {
        StorageDirection::Backward => position(row, 0),
        StorageDirection::Forward => position(row, 1),
    };
    let mut page = Page {
        rows: Vec::new(),
        newest_read: None,
        end: None,
    };
    if !check.allows_room(room_id.as_str()) || limit <= 0 {
        return Ok(page);
    }
    let unfiltered = check.passes_everything();
    let chunk = if unfiltered {
        limit
    } else {
        MESSAGES_CHUNK.max(limit)
    };
    let mut position = from;
    let mut read = 0usize;
    loop {
        let rows = state
            .storage
            .room_events_topological(room_id.as_str(), position, to, dir, chunk)
            .await?;
        let full = rows.len() as i64 == chunk;
        if page.newest_read.is_none() {
            page.newest_read = rows.first().map(|newest| TopologicalPosition {
                depth: newest.depth,
                stream: newest.stream_ordering.unwrap_or(0) + 1,
            });
        }
        let mut last_read = None;
        for row in rows {
            read += 1;
            last_read = past(&row);
            if unfiltered || check.allows_event(&row) {
                page.rows.push(row);
                if page.rows.len() as i64 == limit {
                    // A full page: there may be more (as before, `end` is given).
                    page.end = last_read;
                    return Ok(page);
                }
            }
        }
        let Some(next) = last_read.filter(|_| full) else {
            // The history (or the range up to `to`) ended.
            return Ok(page);
        };
        if read >= MESSAGES_SCAN_BUDGET {
            page.end = Some(next);
            return Ok(page);
        }
        position = next;
    }
}

/// PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}
///
/// Anyone may redact their own events; redacting others' needs the `redact` power level. The
/// checks and the rewrite of the target are the write pipeline's (`rooms::redaction`), the
/// same for a redaction sent through `/send`.
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3roomsroomidredacteventidtxnid>
pub async fn redact_event(
    State(state): State<AppState>,
    req: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response> {
    let sender = req.sender();
    let room_id = &req.body.room_id;
    require_joined(&state, room_id, &sender.user_id).await?;
    let mut content = CanonicalJsonObject::new();
    if let Some(reason) = &req.body.reason {
        content.insert("reason".into(), CanonicalJsonValue::String(reason.clone()));
    }
    let mut send = Send::message("m.room.redaction", content);
    send.redacts = Some(req.body.event_id.clone());
    send.txn = Some((sender.device_id.to_string(), req.body.txn_id.to_string()));
    let redaction_id = rooms::send(&state, room_id, &sender.user_id, send).await?;
    Ok(redact_event::v3::Response::new(redaction_id))
}
