//! The sync engine: what a user's device needs to catch up from a token, computed once for
//! both transports (long-poll `/sync` now, the WebSocket later).
//!
//! <https://spec.matrix.org/latest/client-server-api/#syncing>
//!
//! A token is `s<position>_<typing>`: everything up to that position of the global stream
//! has been delivered, and typing changes up to that typing serial (typing lives in memory,
//! not on the stream). A response covers `(since, upto]`, where `upto` is the highest position whose
//! writes are all committed, so every change is returned once, never twice, never skipped —
//! also across restarts, since positions live in the database.
//!
//! Per room:
//! - joined, and already joined at `since`: the new events (the newest `limit`, `limited` if
//!   there were more, `prev_batch` continuing exactly where the timeline starts in
//!   `/messages`), and when limited the state that changed in the gap;
//! - newly joined, initial sync, or `full_state`: the full state at the start of the timeline
//!   (lazy-loaded members if asked);
//! - invited: the stripped state of the invite;
//! - left or banned since `since`: the timeline up to the leave.

pub mod delivery;
pub mod e2ee;
pub mod filter;
pub mod lazy;
pub mod response;
pub mod sliding;
pub mod ws;

use std::{collections::HashSet, time::Duration};

use futures_util::{StreamExt, TryStreamExt};

use myelin_storage::{EventRow, MembershipRow, StateMap, UnreadCount};
use ruma::{DeviceId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    error::Error,
    push::rules::PUSH_RULES,
    rooms::{
        format::{client_events, sync_events_aligned, SyncEvent},
        visibility::Visibility,
    },
    AppState,
};
use filter::SyncFilter;
use response::{JoinedRoom, SyncResponse};

/// What a device asks for.
pub struct SyncRequest<'a> {
    pub user: &'a UserId,
    pub device: &'a DeviceId,
    pub since: Option<i64>,
    /// The typing serial of the token (0 for an initial sync).
    pub since_typing: u64,
    /// The presence serial of the token (0 for an initial sync).
    pub since_presence: u64,
    pub full_state: bool,
    pub filter: SyncFilter,
    pub timeout: Duration,
}

/// A parsed sync token: stream position, typing serial, presence serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub position: i64,
    pub typing: u64,
    pub presence: u64,
}

/// Parses an `s<position>[_<typing>[_<presence>]]` token.
pub fn parse_token(token: &str) -> Result<Token, Error> {
    let bad = || Error::invalid_param("Invalid sync token");
    let rest = token.strip_prefix('s').ok_or_else(bad)?;
    let mut parts = rest.split('_');
    let position = parts
        .next()
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(bad)?;
    let mut serial = || -> Result<u64, Error> {
        match parts.next() {
            Some(n) => n.parse::<u64>().map_err(|_| bad()),
            None => Ok(0),
        }
    };
    let typing = serial()?;
    let presence = serial()?;
    Ok(Token {
        position,
        typing,
        presence,
    })
}

fn format_token(position: i64, typing: u64, presence: u64) -> String {
    format!("s{position}_{typing}_{presence}")
}

/// Runs a sync: computes the response and, when there is nothing new, waits (up to the
/// timeout) for the notifier to say something relevant was committed.
pub async fn sync(state: &AppState, req: &SyncRequest<'_>) -> Result<SyncResponse, Error> {
    let deadline = tokio::time::Instant::now() + req.timeout;
    let handle = state.notifier.handle(req.user.as_str());
    // The position (and typing serial) up to which we know there is nothing for this user:
    // what a timed-out sync may answer with. Never re-read at the deadline: something
    // committed just before it would be skipped.
    let mut covered = (req.since.unwrap_or(0), req.since_typing, req.since_presence);
    // The key counts when the wait began: another user claiming one of this device's one-time
    // keys wakes us (see `claim_keys`), and a change ends the wait, so the client can upload
    // more at once.
    let mut counts_before: Option<e2ee::KeyCounts> = None;
    loop {
        // Subscribe before reading, so a commit in between still wakes us.
        let notified = handle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let upto = state.storage.safe_stream_position();
        if let Some(since) = req.since {
            if since > upto {
                // A token from the future (or another server): answer from where we are.
                return empty_response(
                    state,
                    req,
                    (upto, state.typing.serial(), state.presence.serial()),
                )
                .await;
            }
        }
        // At most so many to-device messages per response: end it early if more wait.
        let upto = e2ee::capped_upto(state, req, upto).await?;
        // A typing serial above ours is from before a restart: everything typing is new then.
        let typing_serial = state.typing.serial();
        let presence_serial = state.presence.serial();
        let nothing_new = req.since == Some(upto)
            && req.since_typing == typing_serial
            && req.since_presence == presence_serial
            && !req.full_state;
        let counts = if nothing_new {
            e2ee::key_counts(state, req).await?
        } else {
            // Boxed: the computation's state is large, and without the box every waiting sync
            // (10,000 idle connections) would carry that space while it waits.
            let response =
                Box::pin(compute(state, req, upto, typing_serial, presence_serial)).await?;
            if req.since.is_none() || req.full_state || !response.is_empty() {
                if state.config.delivery_receipts {
                    let delivered = response.newest_from_others(req.user.as_str());
                    delivery::record(state, req.user.as_str(), delivered);
                }
                return Ok(response);
            }
            covered = (upto, typing_serial, presence_serial);
            e2ee::key_counts_of(&response.rest)
        };
        match &counts_before {
            None => counts_before = Some(counts),
            Some(before) if *before != counts => {
                let mut response = empty_response_without_counts(covered);
                e2ee::add_key_counts(&mut response.rest, counts);
                return Ok(response);
            }
            Some(_) => {}
        }
        // No wait left (`timeout=0`): answer now. A timer for an instant already past would
        // still cost up to a millisecond, since tokio rounds deadlines up to its tick.
        if tokio::time::Instant::now() >= deadline {
            return empty_response(state, req, covered).await;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                return empty_response(state, req, covered).await;
            }
        }
    }
}

/// A response with nothing new up to `covered` but the device's current key counts.
async fn empty_response(
    state: &AppState,
    req: &SyncRequest<'_>,
    covered: (i64, u64, u64),
) -> Result<SyncResponse, Error> {
    let mut response = empty_response_without_counts(covered);
    e2ee::add_key_counts(&mut response.rest, e2ee::key_counts(state, req).await?);
    Ok(response)
}

fn empty_response_without_counts(
    (upto, typing_serial, presence_serial): (i64, u64, u64),
) -> SyncResponse {
    SyncResponse::empty(format_token(upto, typing_serial, presence_serial))
}

/// Computes the response for `(since, upto]`.
async fn compute(
    state: &AppState,
    req: &SyncRequest<'_>,
    upto: i64,
    typing_serial: u64,
    presence_serial: u64,
) -> Result<SyncResponse, Error> {
    let since = req.since.unwrap_or(0);
    let initial = req.since.is_none();
    if initial && req.filter.lazy_load_members {
        // A device starting over has nothing.
        state
            .lazy_members
            .forget(req.user.as_str(), req.device.as_str());
    }
    let memberships = state
        .storage
        .memberships_for_user(req.user.as_str())
        .await?;
    let account_data = state
        .storage
        .account_data_changes(req.user.as_str(), since, upto)
        .await?;
    // One query for the receipts that moved, shared out to rooms below.
    let receipts = if initial {
        Vec::new()
    } else {
        state.storage.receipts_in_range(since, upto).await?
    };
    // `typing_serial` was read before the rooms, so a change during this computation is
    // sent again next time rather than lost.

    let mut joined = Vec::new();
    let mut invite = Map::new();
    let mut knock = Map::new();
    let mut leave = Map::new();
    for m in memberships
        .iter()
        .filter(|m| req.filter.wants_room(&m.room_id))
    {
        let room_check = req.filter.room_account_data();
        let room_account_data: Vec<Value> = if room_check.allows_room(&m.room_id) {
            let events = account_data
                .iter()
                .filter(|a| a.room_id.as_deref() == Some(m.room_id.as_str()))
                .filter(|a| room_check.allows_type(&a.data_type))
                .filter_map(|a| {
                    serde_json::from_str::<Value>(&a.content)
                        .ok()
                        .map(|c| json!({ "type": a.data_type, "content": c }))
                });
            events
                .take(room_check.limit.unwrap_or(usize::MAX))
                .collect()
        } else {
            Vec::new()
        };
        match m.membership.as_str() {
            "join" => {
                // Joined within the window: the client has never seen this room's state.
                // The row's position is that of the join itself; a later join -> join (a
                // profile change) does not move it, so it is no reason to resend the room.
                let fresh = initial || m.stream_ordering > since;
                let receipts = &receipts;
                joined.push(async move {
                    let ephemeral = ephemeral(state, req, m, fresh, upto, receipts).await?;
                    let room = joined_room(
                        state,
                        req,
                        m,
                        since,
                        upto,
                        fresh,
                        room_account_data,
                        ephemeral,
                    )
                    .await?;
                    Ok::<_, Error>(room.map(|room| (m, room)))
                });
            }
            "invite" if initial || m.stream_ordering > since => {
                invite.insert(
                    m.room_id.clone(),
                    json!({ "invite_state": { "events": stripped_state(state, m).await? } }),
                );
            }
            "knock" if initial || m.stream_ordering > since => {
                knock.insert(
                    m.room_id.clone(),
                    json!({ "knock_state": { "events": stripped_state(state, m).await? } }),
                );
            }
            "leave" | "ban"
                if !m.forgotten
                    && ((!initial && m.stream_ordering > since)
                        || (initial && req.filter.include_leave)) =>
            {
                let room = left_room(state, req, m, since, upto, room_account_data).await?;
                leave.insert(m.room_id.clone(), room);
            }
            _ => {}
        }
    }
    // The joined rooms, several at a time: each is a few reads, and an initial sync of
    // hundreds of rooms would otherwise wait for each read in turn.
    let mut join: Vec<(&MembershipRow, JoinedRoom)> = futures_util::stream::iter(joined)
        .buffered(JOINED_ROOMS_AT_ONCE)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .flatten()
        .collect();
    format_joined(state, req, &mut join).await?;

    // Unread counts at `upto`, the position the timelines end at (a response that carries an
    // event carries counts that include it), of the rooms answered with: a room with nothing
    // new is left out whatever its counts, as Synapse does, and a change of counts comes with
    // something new (the event, or the receipt that cleared it).
    let answered: Vec<(&str, i64)> = join
        .iter()
        .map(|(m, _)| (m.room_id.as_str(), m.stream_ordering))
        .collect();
    let unread = if answered.is_empty() {
        Vec::new()
    } else {
        state
            .storage
            .unread_counts_in(req.user.as_str(), upto, &answered)
            .await?
    };
    let join: Vec<(String, JoinedRoom)> = join
        .into_iter()
        .map(|(m, mut room)| {
            (room.unread_notifications, room.unread_thread_notifications) = unread_counts(
                unread.iter().filter(|c| c.room_id == m.room_id),
                req.filter.unread_thread_notifications,
            );
            (m.room_id.clone(), room)
        })
        .collect();

    let mut global: Vec<Value> = account_data
        .iter()
        .filter(|a| a.room_id.is_none() && req.filter.wants_account_data(&a.data_type))
        .filter(|a| a.data_type != PUSH_RULES)
        .filter_map(|a| {
            serde_json::from_str::<Value>(&a.content)
                .ok()
                .map(|c| json!({ "type": a.data_type, "content": c }))
        })
        .collect();
    // Push rules exist for every user whether stored or not: an initial sync carries them,
    // an incremental one when they changed; always as they are now (merged with the current
    // server defaults), which is what the stored row says or newer.
    let push_rules_changed = account_data
        .iter()
        .any(|a| a.room_id.is_none() && a.data_type == PUSH_RULES);
    if (initial || push_rules_changed) && req.filter.wants_account_data(PUSH_RULES) {
        let rules = state.push_rules.get(state, req.user).await?;
        global.push(json!({ "type": PUSH_RULES, "content": { "global": *rules } }));
    }
    global.truncate(req.filter.account_data().limit.unwrap_or(usize::MAX));

    let mut rooms = Map::new();
    for (name, section) in [("invite", invite), ("knock", knock), ("leave", leave)] {
        if !section.is_empty() {
            rooms.insert(name.into(), Value::Object(section));
        }
    }
    let mut response = json!({});
    if state.config.presence.enabled && (initial || req.since_presence != presence_serial) {
        let watched = crate::co_members(state, req.user.as_str()).await?;
        let since_presence = if initial { 0 } else { req.since_presence };
        let events = state
            .presence
            .events_since(&watched, since_presence, crate::auth::now_ms());
        let events = req.filter.presence().apply(events);
        if !events.is_empty() {
            response["presence"] = json!({ "events": events });
        }
    }
    if !rooms.is_empty() {
        response["rooms"] = Value::Object(rooms);
    }
    if !global.is_empty() {
        response["account_data"] = json!({ "events": global });
    }
    e2ee::add_sections(state, req, upto, &mut response).await?;
    Ok(SyncResponse {
        next_batch: format_token(upto, typing_serial, presence_serial),
        join,
        rest: response,
        event_fields: req.filter.event_fields().map(<[_]>::to_vec),
    })
}

/// A room's `unread_notifications` and, when the filter asks for threads,
/// `unread_thread_notifications` (then the first counts the main timeline alone).
pub(crate) fn unread_counts<'a>(
    counts: impl Iterator<Item = &'a UnreadCount>,
    by_thread: bool,
) -> (Value, Option<Value>) {
    let (mut notifications, mut highlights) = (0i64, 0i64);
    let mut threads = Map::new();
    for c in counts {
        if by_thread && c.thread_id != "main" {
            threads.insert(
                c.thread_id.clone(),
                json!({ "notification_count": c.notifications.max(0), "highlight_count": c.highlights.max(0) }),
            );
        } else {
            notifications += c.notifications;
            highlights += c.highlights;
        }
    }
    let room = json!({
        "notification_count": notifications.max(0),
        "highlight_count": highlights.max(0),
    });
    (
        room,
        (!threads.is_empty()).then_some(Value::Object(threads)),
    )
}

pub(crate) fn token_before(row: &EventRow) -> String {
    // `/messages?dir=b&from=<this>` returns the events before `row`.
    format!("t{}_{}", row.depth, row.stream_ordering.unwrap_or(0))
}

/// Events looked at per room before a filtered timeline gives up filling its limit (then it
/// is `limited`, and `prev_batch` continues from the last event looked at).
const TIMELINE_SCAN_BUDGET: usize = 1000;
/// Joined rooms computed at once by one sync: enough to keep a few database connections
/// busy (a pool has 32 on PostgreSQL, 8 on SQLite) without one sync taking them all.
const JOINED_ROOMS_AT_ONCE: usize = 6;
/// Events read per storage call while filling a filtered timeline.
const TIMELINE_CHUNK: i64 = 100;

/// A room's timeline for a sync.
struct Timeline {
    /// In stream order.
    rows: Vec<EventRow>,
    /// More events the filter lets through were left out.
    limited: bool,
    /// Where `/messages` continues backwards (`None`: from the first event, or from `upto`
    /// if there is none).
    prev_batch: Option<String>,
}

/// The timeline of a room for `(after, upto]`: the newest `limit` events the timeline filter
/// lets through and the user may see, in order, and whether some were left out.
///
/// The filter is applied before the limit. Without one this is a single read of `limit + 1`
/// events (mostly from memory); with one, events are read newest first in chunks until the
/// limit is filled, the range is exhausted or [`TIMELINE_SCAN_BUDGET`] events were looked
/// at. In the last case the timeline is `limited` and `prev_batch` points just before the
/// oldest event looked at, so paginating with the same filter misses nothing.
async fn timeline(
    state: &AppState,
    req: &SyncRequest<'_>,
    m: &MembershipRow,
    after: i64,
    upto: i64,
) -> Result<Timeline, Error> {
    let room_id = m.room_id.as_str();
    let limit = req.filter.timeline_limit;
    let check = req.filter.timeline();
    if !check.allows_room(room_id) {
        return Ok(Timeline {
            rows: Vec::new(),
            limited: false,
            prev_batch: None,
        });
    }
    let (mut rows, limited, prev_batch) = if check.passes_everything() {
        let mut rows = state
            .storage
            .room_events_in_range(room_id, after, upto, limit + 1)
            .await?;
        let limited = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        (rows, limited, None)
    } else {
        let wanted = limit as usize;
        let chunk = TIMELINE_CHUNK.max(limit + 1);
        let mut kept: Vec<EventRow> = Vec::new();
        // The oldest event looked at and either kept or passed over.
        let mut oldest_examined: Option<EventRow> = None;
        let mut scanned = 0usize;
        let mut hi = upto;
        let mut limited = false;
        let mut budget_spent = false;
        'read: loop {
            let batch = state
                .storage
                .room_events_in_range(room_id, after, hi, chunk)
                .await?;
            let exhausted = (batch.len() as i64) < chunk;
            for row in batch {
                hi = row.stream_ordering.unwrap_or(0) - 1;
                if check.allows_event(&row) {
                    if kept.len() == wanted {
                        limited = true;
                        break 'read;
                    }
                    kept.push(row.clone());
                }
                oldest_examined = Some(row);
                scanned += 1;
            }
            if exhausted || hi <= after {
                break;
            }
            if scanned >= TIMELINE_SCAN_BUDGET {
                limited = true;
                budget_spent = true;
                break;
            }
        }
        let prev_batch = budget_spent
            .then(|| oldest_examined.as_ref().map(token_before))
            .flatten();
        (kept, limited, prev_batch)
    };
    rows.reverse();
    // Events after the user's current join are theirs to see whatever the history
    // visibility: skip the check (and its reads) for them, the common case of a busy room.
    let joined_since = (m.membership == "join").then_some(m.stream_ordering);
    let all_after_join = rows
        .first()
        .zip(joined_since)
        .is_some_and(|(first, joined)| first.stream_ordering.unwrap_or(0) > joined);
    // Nothing to check (a sync woken by a receipt, say) costs no read either.
    let rows = if all_after_join || rows.is_empty() {
        rows
    } else {
        Visibility::new(state, req.user, room_id)
            .await?
            .filter(rows)
            .await?
    };
    Ok(Timeline {
        rows,
        limited,
        prev_batch,
    })
}

/// State events to send: `full` gives the whole state at `start_snapshot`; otherwise the
/// entries that differ from the state at `since`. Events in the timeline are left out, and
/// with lazy-loading only the members who appear in the timeline (and the user) are sent.
async fn state_section(
    state: &AppState,
    req: &SyncRequest<'_>,
    start_snapshot: Option<i64>,
    since_snapshot: Option<i64>,
    full: bool,
    timeline: &[EventRow],
) -> Result<Vec<EventRow>, Error> {
    let Some(start) = start_snapshot else {
        return Ok(Vec::new());
    };
    let at_start = state.snapshot(start).await?;
    let before: Option<std::sync::Arc<StateMap>> = match (full, since_snapshot) {
        (false, Some(s)) => Some(state.snapshot(s).await?),
        _ => None,
    };
    let in_timeline: HashSet<&str> = timeline.iter().map(|r| r.event_id.as_str()).collect();
    let senders: HashSet<&str> = timeline
        .iter()
        .map(|r| r.sender.as_str())
        .chain(std::iter::once(req.user.as_str()))
        .collect();
    let lazy = req.filter.lazy_load_members;
    let check = req.filter.state();
    let ids: Vec<String> = at_start
        .iter()
        .filter(|(key, id)| before.as_ref().is_none_or(|b| b.get(*key) != Some(*id)))
        .filter(|(_, id)| !in_timeline.contains(id.as_str()))
        .filter(|((event_type, state_key), _)| {
            !lazy || event_type != "m.room.member" || senders.contains(state_key.as_str())
        })
        .filter(|((event_type, _), _)| check.allows_type(event_type))
        .map(|(_, id)| id.clone())
        .collect();
    let mut rows = state.storage.get_events(&ids).await?;
    if !check.passes_everything() {
        rows.retain(|r| check.allows_event(r));
    }
    Ok(rows)
}

async fn format(
    state: &AppState,
    req: &SyncRequest<'_>,
    rows: &[EventRow],
) -> Result<Vec<Value>, Error> {
    let mut events = client_events(state, rows, Some((req.user, req.device))).await?;
    for event in &mut events {
        if let Some(object) = event.as_object_mut() {
            object.remove("room_id");
        }
        if let Some(paths) = req.filter.event_fields() {
            *event = filter::project(event, paths);
        }
    }
    Ok(events)
}

#[allow(clippy::too_many_arguments)]
async fn joined_room(
    state: &AppState,
    req: &SyncRequest<'_>,
    m: &MembershipRow,
    since: i64,
    upto: i64,
    fresh: bool,
    account_data: Vec<Value>,
    ephemeral: Vec<SyncEvent>,
) -> Result<Option<JoinedRoom>, Error> {
    // `full_state` sends the whole state but keeps the timeline to what is new since the
    // token; a room new to the client gets both from the start.
    let full = fresh || req.full_state;
    let after = if fresh { 0 } else { since };
    let Timeline {
        rows,
        limited,
        prev_batch,
    } = timeline(state, req, m, after, upto).await?;
    if !full && rows.is_empty() && !limited && account_data.is_empty() && ephemeral.is_empty() {
        return Ok(None);
    }
    // The state at the timeline's start is needed only to send state (lazy members come
    // from the timeline, and there is none); a sync woken by a receipt skips the read.
    let needs_state = full || limited;
    let start_snapshot = match rows.first() {
        Some(first) => first.state_before.or(first.state_after),
        None if needs_state => state.storage.snapshot_at(&m.room_id, upto).await?,
        None => None,
    };
    let mut state_rows = if full {
        state_section(state, req, start_snapshot, None, true, &rows).await?
    } else if limited {
        let since_snapshot = state.storage.snapshot_at(&m.room_id, since).await?;
        state_section(state, req, start_snapshot, since_snapshot, false, &rows).await?
    } else {
        Vec::new()
    };
    if req.filter.lazy_load_members && !full {
        // The timeline's senders' member events, which an earlier lazy sync may not have sent,
        // less those this device is known to have (unless it asks for redundant ones).
        let mut members = sender_members(state, start_snapshot, &rows, &state_rows).await?;
        members.retain(|r| req.filter.state().allows_event(r));
        if !req.filter.include_redundant_members {
            members.retain(|r| {
                !state.lazy_members.known(
                    req.user.as_str(),
                    req.device.as_str(),
                    &m.room_id,
                    &r.event_id,
                    since,
                )
            });
        }
        state_rows.extend(members);
    }
    if req.filter.lazy_load_members {
        state.lazy_members.record(
            req.user.as_str(),
            req.device.as_str(),
            &m.room_id,
            rows.iter()
                .chain(state_rows.iter())
                .filter(|r| r.event_type == "m.room.member")
                .map(|r| r.event_id.as_str()),
            upto,
        );
    }
    let prev_batch = prev_batch
        .or_else(|| rows.first().map(token_before))
        .unwrap_or_else(|| format!("s{upto}"));
    let members_changed = rows
        .iter()
        .chain(state_rows.iter())
        .any(|r| r.event_type == "m.room.member");
    let summary = if fresh || members_changed {
        Some(summary(state, req.user, &m.room_id).await?)
    } else {
        None
    };
    Ok(Some(JoinedRoom {
        // Formatted by the caller, for all rooms at once.
        timeline: Vec::new(),
        limited,
        prev_batch,
        state: Vec::new(),
        rows: Some((rows, state_rows)),
        account_data,
        ephemeral,
        summary,
        // Filled in by the caller, once it knows which rooms it answers with.
        unread_notifications: Value::Null,
        unread_thread_notifications: None,
    }))
}

/// Formats the timelines and state of the joined rooms, all in one go (a handful of reads
/// for all rooms instead of per room).
async fn format_joined(
    state: &AppState,
    req: &SyncRequest<'_>,
    join: &mut [(&MembershipRow, JoinedRoom)],
) -> Result<(), Error> {
    let mut all: Vec<EventRow> = Vec::new();
    let mut spans = Vec::with_capacity(join.len());
    for (_, room) in join.iter_mut() {
        let (rows, state_rows) = room.rows.take().unwrap_or_default();
        let start = all.len();
        all.extend(rows);
        let middle = all.len();
        all.extend(state_rows);
        spans.push((start, middle, all.len()));
    }
    let mut formatted: Vec<Option<SyncEvent>> =
        sync_events_aligned(state, &all, (req.user, req.device)).await?;
    for ((_, room), (start, middle, end)) in join.iter_mut().zip(spans) {
        room.timeline = formatted[start..middle]
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        room.state = formatted[middle..end]
            .iter_mut()
            .filter_map(Option::take)
            .collect();
    }
    Ok(())
}

async fn left_room(
    state: &AppState,
    req: &SyncRequest<'_>,
    m: &MembershipRow,
    since: i64,
    upto: i64,
    account_data: Vec<Value>,
) -> Result<Value, Error> {
    // Nothing after the leave is theirs to see.
    let end = m.stream_ordering.min(upto);
    let Timeline {
        rows,
        limited,
        prev_batch,
    } = timeline(state, req, m, since, end).await?;
    let start_snapshot = match rows.first() {
        Some(first) => first.state_before.or(first.state_after),
        None => state.storage.snapshot_at(&m.room_id, end).await?,
    };
    let since_snapshot = if since > 0 {
        state.storage.snapshot_at(&m.room_id, since).await?
    } else {
        None
    };
    // The room's state only for a user who was joined until this leave or ban: one banned
    // or rejecting an invite without ever joining learns no more than a stranger.
    let was_joined = crate::rooms::visibility::joined_until(state, &m.event_id, req.user)
        .await?
        .is_some();
    let state_rows = if was_joined && (limited || since == 0) {
        state_section(
            state,
            req,
            start_snapshot,
            since_snapshot,
            since == 0,
            &rows,
        )
        .await?
    } else {
        Vec::new()
    };
    let prev_batch = prev_batch
        .or_else(|| rows.first().map(token_before))
        .unwrap_or_else(|| format!("s{end}"));
    Ok(json!({
        "timeline": { "events": format(state, req, &rows).await?, "limited": limited, "prev_batch": prev_batch },
        "state": { "events": format(state, req, &state_rows).await? },
        "account_data": { "events": account_data },
    }))
}

/// Stripped state for an invite or knock: the room's name, avatar, join rules, create event,
/// canonical alias, encryption and topic, plus the membership event itself.
pub(crate) async fn stripped_state(
    state: &AppState,
    m: &MembershipRow,
) -> Result<Vec<Value>, Error> {
    // An invite into a room held elsewhere: what the inviting server sent.
    if let Some(stripped) = state
        .storage
        .remote_invite_by_event(&m.room_id, &m.event_id)
        .await?
    {
        let mut events: Vec<Value> = serde_json::from_str(&stripped).unwrap_or_default();
        if let Some(row) = state.storage.get_event(&m.event_id).await? {
            let pdu: Value = row.parse_pdu().map_err(Error::internal)?;
            events.push(json!({
                "type": row.event_type,
                "state_key": row.state_key,
                "content": pdu["content"],
                "sender": row.sender,
                "event_id": row.event_id,
                "origin_server_ts": row.origin_server_ts,
            }));
        }
        return Ok(events);
    }
    let current = state.storage.current_state(&m.room_id).await?;
    let mut ids: Vec<String> = crate::rooms::STRIPPED_STATE_TYPES
        .iter()
        .filter_map(|t| current.get(&(t.to_string(), String::new())).cloned())
        .collect();
    ids.push(m.event_id.clone());
    let rows = state.storage.get_events(&ids).await?;
    let mut out = Vec::new();
    for row in rows {
        let pdu: Value = row.parse_pdu().map_err(Error::internal)?;
        let mut stripped = json!({
            "type": row.event_type,
            "state_key": row.state_key,
            "content": pdu["content"],
            "sender": row.sender,
        });
        if row.event_id == m.event_id {
            stripped["event_id"] = row.event_id.clone().into();
            stripped["origin_server_ts"] = row.origin_server_ts.into();
        }
        out.push(stripped);
    }
    Ok(out)
}

/// Member counts and up to five heroes (other members, for naming unnamed rooms).
async fn summary(state: &AppState, user: &UserId, room_id: &str) -> Result<Value, Error> {
    let members = state.storage.room_members(room_id).await?;
    let joined = members.iter().filter(|(_, m, _)| m == "join").count();
    let invited = members.iter().filter(|(_, m, _)| m == "invite").count();
    let heroes: Vec<&str> = members
        .iter()
        .filter(|(u, m, _)| u != user.as_str() && (m == "join" || m == "invite"))
        .map(|(u, _, _)| u.as_str())
        .take(5)
        .collect();
    Ok(json!({
        "m.heroes": heroes,
        "m.joined_member_count": joined,
        "m.invited_member_count": invited,
    }))
}

/// The room's ephemeral events for this sync: `m.typing` if the typing list changed (or the
/// room is new to the client and someone types), and `m.receipt` with the receipts that
/// moved (all of them for a fresh room). Private receipts go only to their owner.
async fn ephemeral(
    state: &AppState,
    req: &SyncRequest<'_>,
    m: &MembershipRow,
    fresh: bool,
    upto: i64,
    moved: &[std::sync::Arc<myelin_storage::ReceiptRow>],
) -> Result<Vec<SyncEvent>, Error> {
    let mut events = Vec::new();
    let check = req.filter.ephemeral();
    if !check.allows_room(&m.room_id) || check.limit == Some(0) {
        return Ok(events);
    }
    let wants_typing = check.allows_type("m.typing");
    let wants_receipts = check.allows_type("m.receipt");
    let typing = if !wants_typing {
        None
    } else if fresh {
        Some(state.typing.current(&m.room_id)).filter(|users| !users.is_empty())
    } else {
        state.typing.changed_since(&m.room_id, req.since_typing)
    };
    // `senders`/`not_senders` pick the users an ephemeral event reports (who types, whose
    // receipts): those are its senders.
    let by_sender = check.filters_senders();
    let typing = typing.map(|mut users| {
        if by_sender {
            users.retain(|u| check.allows_sender(u));
        }
        users
    });
    if let Some(user_ids) = typing.filter(|users| !(fresh && users.is_empty())) {
        events.push(SyncEvent::Value(
            json!({ "type": "m.typing", "content": { "user_ids": user_ids } }),
        ));
    }
    if !wants_receipts || check.limit == Some(events.len()) {
        return Ok(events);
    }
    let viewer = req.user.as_str();
    // Private receipts are their owner's alone; everything else every member sees alike.
    let visible = |r: &myelin_storage::ReceiptRow| {
        (r.receipt_type != "m.read.private" || r.user_id == viewer)
            && (!by_sender || check.allows_sender(&r.user_id))
    };
    // Your own delivered watermark tells you nothing. It is left out where the receipts are
    // formatted for you alone; where they are shared with the room it may come along, but
    // never on its own (so it does not wake you).
    let own_delivered = |r: &myelin_storage::ReceiptRow| {
        r.receipt_type == delivery::DELIVERED && r.user_id == viewer
    };
    if fresh {
        let rows = state.storage.receipts_for_room(&m.room_id, upto).await?;
        let rows = rows.iter().filter(|r| visible(r) && !own_delivered(r));
        if let Some(event) = receipt_event(rows) {
            events.push(SyncEvent::Value(event));
        }
        return Ok(events);
    }
    let in_room: Vec<&myelin_storage::ReceiptRow> = moved
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| r.room_id == m.room_id)
        .collect();
    let own_private = in_room
        .iter()
        .any(|r| r.receipt_type == "m.read.private" && r.user_id == viewer);
    if own_private || by_sender {
        // Rare: formatted for this viewer alone.
        let rows = in_room
            .iter()
            .copied()
            .filter(|r| visible(r) && !own_delivered(r));
        if let Some(event) = receipt_event(rows) {
            events.push(SyncEvent::Value(event));
        }
    } else if in_room
        .iter()
        .any(|r| r.receipt_type != "m.read.private" && !own_delivered(r))
    {
        // The same for every member woken by these receipts: serialised once.
        let key = (m.room_id.clone(), req.since.unwrap_or(0), upto);
        let shared = state.shared_receipts(key, || {
            receipt_event(
                in_room
                    .iter()
                    .copied()
                    .filter(|r| r.receipt_type != "m.read.private"),
            )
        });
        if let Some(json) = shared {
            events.push(SyncEvent::Raw(json));
        }
    }
    Ok(events)
}

/// An `m.receipt` event of `receipts`, or `None` if there are none.
pub(crate) fn receipt_event<'a>(
    receipts: impl Iterator<Item = &'a myelin_storage::ReceiptRow>,
) -> Option<Value> {
    let mut content = Map::new();
    for r in receipts {
        let mut receipt = json!({ "ts": r.ts });
        if let Some(thread) = &r.thread_id {
            receipt["thread_id"] = thread.clone().into();
        }
        let by_event = content
            .entry(r.event_id.clone())
            .or_insert_with(|| json!({}));
        by_event[&r.receipt_type][&r.user_id] = receipt;
    }
    (!content.is_empty()).then(|| json!({ "type": "m.receipt", "content": content }))
}

/// Member events (as of `snapshot`) of the senders in `timeline` that are neither in the
/// timeline nor already in `have`.
async fn sender_members(
    state: &AppState,
    snapshot: Option<i64>,
    timeline: &[EventRow],
    have: &[EventRow],
) -> Result<Vec<EventRow>, Error> {
    let Some(snapshot) = snapshot else {
        return Ok(Vec::new());
    };
    let map = state.snapshot(snapshot).await?;
    let known: HashSet<&str> = timeline
        .iter()
        .chain(have.iter())
        .map(|r| r.event_id.as_str())
        .collect();
    let mut ids: Vec<String> = timeline
        .iter()
        .filter_map(|r| {
            map.get(&("m.room.member".to_owned(), r.sender.clone()))
                .cloned()
        })
        .filter(|id| !known.contains(id.as_str()))
        .collect();
    ids.sort();
    ids.dedup();
    Ok(state.storage.get_events(&ids).await?)
}
