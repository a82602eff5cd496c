//! Event context and relations.
//!
//! <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidcontexteventid>
//! <https://spec.matrix.org/latest/client-server-api/#relationships>

use axum::extract::State;
use myelin_storage::{Direction as StorageDirection, TopologicalPosition};
use ruma::{
    api::{
        client::{
            context::get_context,
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
        },
        Direction,
    },
    EventId, RoomId, UInt,
};

use super::{
    message::{filtered_page, format_token, position},
    room::raw,
};
use crate::{
    api::ruma::{Ruma, Sender},
    error::{Error, Result},
    rooms::{format::client_events, visibility::Visibility},
    AppState,
};

/// The largest context window and relations page.
const MAX_LIMIT: u64 = 100;

/// GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}
///
/// The event, up to `limit` events around it (split before and after) that the user may see,
/// and the room state after the last event returned.
pub async fn get_context(
    State(state): State<AppState>,
    req: Ruma<get_context::v3::Request>,
) -> Result<get_context::v3::Response> {
    let sender = req.sender();
    let room_id = &req.body.room_id;
    let row = state
        .storage
        .get_event(req.body.event_id.as_str())
        .await?
        .filter(|r| r.room_id == room_id.as_str() && !r.rejected)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let mut visibility = Visibility::new(&state, &sender.user_id, room_id.as_str()).await?;
    if !visibility.allows(&row).await? {
        return Err(Error::not_found("Event not found"));
    }
    let limit = u64::from(req.body.limit).min(MAX_LIMIT) as i64;
    let check = crate::sync::filter::EventCheck::from_room_event_filter(&req.body.filter);
    let Around {
        before,
        after,
        start,
        end,
    } = around(
        &state,
        &mut visibility,
        &row,
        limit / 2,
        limit - limit / 2,
        &check,
    )
    .await?;
    // The state at the last event the user may see, never at one they may not: for a user who
    // left, events after the leave are filtered out above, and so is the state they made.
    let last_state = after.last().unwrap_or(&row).state_after;

    let viewer = Some((&*sender.user_id, &*sender.device_id));
    let mut response = get_context::v3::Response::new();
    response.event = Some(raw(&client_events(
        &state,
        std::slice::from_ref(&row),
        viewer,
    )
    .await?[0])?);
    response.events_before = client_events(&state, &before, viewer)
        .await?
        .iter()
        .map(raw)
        .collect::<Result<_>>()?;
    response.events_after = client_events(&state, &after, viewer)
        .await?
        .iter()
        .map(raw)
        .collect::<Result<_>>()?;
    response.start = Some(format_token(start));
    response.end = Some(format_token(end));
    if let Some(snapshot) = last_state {
        let map = state.snapshot(snapshot).await?;
        let lazy = !req.body.filter.lazy_load_options.is_disabled();
        let senders: Vec<String> = before
            .iter()
            .chain(after.iter())
            .chain(std::iter::once(&row))
            .map(|r| r.sender.clone())
            .collect();
        let ids: Vec<String> = map
            .iter()
            .filter(|((t, k), _)| !lazy || t != "m.room.member" || senders.contains(k))
            .map(|(_, id)| id.clone())
            .collect();
        let rows = state.storage.get_events(&ids).await?;
        response.state = client_events(&state, &rows, viewer)
            .await?
            .iter()
            .map(raw)
            .collect::<Result<_>>()?;
    }
    Ok(response)
}

/// The events around one event, as `/context` and search results show them.
pub(crate) struct Around {
    pub before: Vec<myelin_storage::EventRow>,
    pub after: Vec<myelin_storage::EventRow>,
    /// Where `/messages` continues backwards from the first event before.
    pub start: TopologicalPosition,
    /// Where `/messages` continues forwards from the last event after.
    pub end: TopologicalPosition,
}

/// Up to `before_n` events before `row` and `after_n` after it that pass `check` and that
/// `visibility`'s user may see, and the tokens to page on from them.
pub(crate) async fn around(
    state: &AppState,
    visibility: &mut Visibility<'_>,
    row: &myelin_storage::EventRow,
    before_n: i64,
    after_n: i64,
    check: &crate::sync::filter::EventCheck,
) -> Result<Around> {
    let room_id = &RoomId::parse(&row.room_id).map_err(Error::internal)?;
    let stream = row
        .stream_ordering
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let at = TopologicalPosition {
        depth: row.depth,
        stream,
    };
    // Walking forward includes the starting position, so start just after the event.
    let after_at = TopologicalPosition {
        depth: row.depth,
        stream: stream + 1,
    };
    // The filter picks the events around the one asked for (never that one), before the
    // limit, as `/messages` does.
    let before = filtered_page(
        state,
        room_id,
        at,
        None,
        StorageDirection::Backward,
        before_n,
        check,
    )
    .await?;
    let after = filtered_page(
        state,
        room_id,
        after_at,
        None,
        StorageDirection::Forward,
        after_n,
        check,
    )
    .await?;
    let before_rows = visibility.filter(before.rows).await?;
    let after_read = after.rows.last().map(|r| r.event_id.clone());
    let after_rows = visibility.filter(after.rows).await?;
    // `start` continues backwards from where the walk stopped. `end` continues forwards from
    // where it stopped, unless what it read last was hidden from the user (events after they
    // left): then from just after the last event they may see, so no token of theirs points
    // past their leave.
    let start = before
        .end
        .or_else(|| before_rows.last().and_then(|r| position(r, 0)))
        .unwrap_or(at);
    let last_visible = after_rows.last().and_then(|r| position(r, 1));
    let end = match (&after_read, after_rows.last()) {
        (Some(read), Some(shown)) if *read == shown.event_id => {
            after.end.or(last_visible).unwrap_or(after_at)
        }
        (Some(_), _) => last_visible.unwrap_or(after_at),
        (None, _) => after.end.unwrap_or(after_at),
    };
    Ok(Around {
        before: before_rows,
        after: after_rows,
        start,
        end,
    })
}

/// What the three relations endpoints share.
struct RelationsQuery<'a> {
    room_id: &'a RoomId,
    event_id: &'a EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    dir: Direction,
    limit: Option<UInt>,
}

/// A page of relations: (events, next_batch).
async fn relations_page(
    state: &AppState,
    sender: &Sender,
    q: RelationsQuery<'_>,
) -> Result<(Vec<serde_json::Value>, Option<String>)> {
    let parent = state
        .storage
        .get_event(q.event_id.as_str())
        .await?
        .filter(|r| r.room_id == q.room_id.as_str() && !r.rejected)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let mut visibility = Visibility::new(state, &sender.user_id, q.room_id.as_str()).await?;
    if !visibility.allows(&parent).await? {
        return Err(Error::not_found("Event not found"));
    }
    let from = match q.from {
        Some(token) => Some(
            token
                .strip_prefix('r')
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| Error::invalid_param("Invalid pagination token"))?,
        ),
        None => None,
    };
    let dir = match q.dir {
        Direction::Backward => StorageDirection::Backward,
        Direction::Forward => StorageDirection::Forward,
    };
    let limit = q.limit.map(u64::from).unwrap_or(50).clamp(1, MAX_LIMIT) as i64;
    let rows = state
        .storage
        .relations(
            q.room_id.as_str(),
            q.event_id.as_str(),
            q.rel_type.as_deref(),
            q.event_type.as_deref(),
            from,
            dir,
            limit,
        )
        .await?;
    let next = if rows.len() as i64 == limit {
        rows.last()
            .and_then(|r| r.stream_ordering)
            .map(|s| format!("r{s}"))
    } else {
        None
    };
    let rows = visibility.filter(rows).await?;
    let events = client_events(state, &rows, Some((&sender.user_id, &sender.device_id))).await?;
    Ok((events, next))
}

/// GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}
pub async fn get_relating_events(
    State(state): State<AppState>,
    req: Ruma<get_relating_events::v1::Request>,
) -> Result<get_relating_events::v1::Response> {
    let b = &req.body;
    let q = RelationsQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: None,
        event_type: None,
        from: b.from.as_deref(),
        dir: b.dir,
        limit: b.limit,
    };
    let (events, next) = relations_page(&state, req.sender(), q).await?;
    let mut response =
        get_relating_events::v1::Response::new(events.iter().map(raw).collect::<Result<_>>()?);
    response.next_batch = next;
    Ok(response)
}

/// GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}
pub async fn get_relating_events_with_rel_type(
    State(state): State<AppState>,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type::v1::Response> {
    let b = &req.body;
    let q = RelationsQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: Some(b.rel_type.to_string()),
        event_type: None,
        from: b.from.as_deref(),
        dir: b.dir,
        limit: b.limit,
    };
    let (events, next) = relations_page(&state, req.sender(), q).await?;
    let mut response = get_relating_events_with_rel_type::v1::Response::new(
        events.iter().map(raw).collect::<Result<_>>()?,
    );
    response.next_batch = next;
    Ok(response)
}

/// GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}
pub async fn get_relating_events_with_rel_type_and_event_type(
    State(state): State<AppState>,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let b = &req.body;
    let q = RelationsQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: Some(b.rel_type.to_string()),
        event_type: Some(b.event_type.to_string()),
        from: b.from.as_deref(),
        dir: b.dir,
        limit: b.limit,
    };
    let (events, next) = relations_page(&state, req.sender(), q).await?;
    let mut response = get_relating_events_with_rel_type_and_event_type::v1::Response::new(
        events.iter().map(raw).collect::<Result<_>>()?,
    );
    response.next_batch = next;
    Ok(response)
}
