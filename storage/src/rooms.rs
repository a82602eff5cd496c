//! Rooms: events, the DAG's edges and forward extremities, state snapshots, current state,
//! memberships, transaction IDs and aliases.
//!
//! [`Storage::persist_event`] is the only way an event enters the database: one transaction
//! that allocates the stream position, writes the event, moves the forward
//! extremities, records the state snapshot after it and updates current state and
//! membership. Deciding whether the event is allowed happens before, in the homeserver.

use std::collections::HashMap;

use sqlx::{any::AnyRow, Any, AssertSqlSafe, Row, Transaction};

use crate::{pdu_form, Backend, Error, Result, Storage};

/// A room as stored.
#[derive(Debug, Clone)]
pub struct RoomRow {
    pub room_id: String,
    pub room_version: String,
    pub creator: String,
    pub is_public: bool,
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub event_id: String,
    pub room_id: String,
    pub stream_ordering: Option<i64>,
    pub depth: i64,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub origin_server_ts: i64,
    pub pdu: String,
    pub state_before: Option<i64>,
    pub state_after: Option<i64>,
    pub rejected: bool,
    pub redacted_by: Option<String>,
    /// For a state event written since migration 0015: the event it replaced (`Some("")`:
    /// none). `None` when not recorded (messages, older rows).
    pub replaces_state: Option<String>,
}

pub(crate) const EVENT_COLUMNS: &str =
    "event_id, room_id, stream_ordering, depth, event_type, state_key, sender, \
     origin_server_ts, pdu, state_before, state_after, rejected_reason, redacted_by, \
     replaces_state";

pub(crate) fn event_from_row(row: &AnyRow) -> Result<EventRow> {
    let mut event = EventRow {
        event_id: row.try_get("event_id")?,
        room_id: row.try_get("room_id")?,
        stream_ordering: row.try_get("stream_ordering")?,
        depth: row.try_get("depth")?,
        event_type: row.try_get("event_type")?,
        state_key: row.try_get("state_key")?,
        sender: row.try_get("sender")?,
        origin_server_ts: row.try_get("origin_server_ts")?,
        pdu: String::new(),
        state_before: row.try_get("state_before")?,
        state_after: row.try_get("state_after")?,
        rejected: row
            .try_get::<Option<String>, _>("rejected_reason")?
            .is_some(),
        redacted_by: row.try_get("redacted_by")?,
        replaces_state: row.try_get("replaces_state")?,
    };
    let stored: String = row.try_get("pdu")?;
    event.pdu = pdu_form::restore(&stored, event.pdu_columns())?;
    Ok(event)
}

impl EventRow {
    /// The PDU parsed as `T` (see [`pdu_form::parse_stored`]): every reader of a stored PDU
    /// goes through here, so no event an older server accepted is refused for its depth.
    pub fn parse_pdu<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        pdu_form::parse_stored(&self.pdu)
    }

    fn pdu_columns(&self) -> pdu_form::Columns<'_> {
        pdu_form::Columns {
            room_id: &self.room_id,
            sender: &self.sender,
            event_type: &self.event_type,
            origin_server_ts: self.origin_server_ts,
            depth: self.depth,
        }
    }
}

/// `$1, $2, …, $n`, for an `IN (…)` list.
pub(crate) fn placeholders(n: usize) -> String {
    placeholders_from(1, n)
}

/// The length an `IN (…)` list of `n` values is padded to (repeating its last value): a
/// power of two, so that lists of every length share a few statements. Each distinct
/// statement is prepared once per connection and kept in its statement cache; one per list
/// length made a cold server prepare (and evict) a statement for almost every read.
pub(crate) fn padded_len(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// `$first, …, $(first + n - 1)`: an `IN (…)` list after `first - 1` other parameters.
pub(crate) fn placeholders_from(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($1, …, $cols), ($cols+1, …), …`: the `VALUES` list of a multi-row insert.
pub(crate) fn value_rows(rows: usize, cols: usize) -> String {
    value_rows_from(1, rows, cols)
}

/// [`value_rows`] whose first placeholder is `$first`.
pub(crate) fn value_rows_from(first: usize, rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders_from(first + r * cols, cols)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a batch is plain messages: no state, membership, redaction or new room, so
/// that it writes only events, push actions, relations and the extremities (see
/// `persist_plain_messages`).
fn plain_messages(events: &[NewEvent<'_>]) -> bool {
    events.first().is_some_and(|e| e.state_before.is_some())
        && events.iter().all(|e| {
            e.state_key.is_none()
                && e.membership.is_none()
                && e.redacts.is_none()
                && e.new_room.is_none()
                && e.state_delta.is_empty()
                && e.current_delta.is_none()
        })
}

/// Sets one entry of a room's current state and, for a member event, the target's
/// membership row.
async fn set_current(
    tx: &mut Transaction<'static, Any>,
    room_id: &str,
    event_type: &str,
    state_key: &str,
    event_id: &str,
    membership: Option<&str>,
    position: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO current_state (room_id, event_type, state_key, event_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET event_id = excluded.event_id",
    )
    .bind(room_id)
    .bind(event_type)
    .bind(state_key)
    .bind(event_id)
    .execute(&mut **tx)
    .await?;
    if let (Some(membership), "m.room.member") = (membership, event_type) {
        // `stream_ordering` is where the membership last *changed*: a `join` -> `join` event
        // (a new display name or avatar) keeps the join's position, so sync does not take the
        // room for newly joined (and device lists do not take it for a new shared room).
        // `event_id` is always the latest.
        sqlx::query(
            "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_ordering, forgotten)
             VALUES ($1, $2, $3, $4, $5, 0)
             ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,
                event_id = excluded.event_id, forgotten = 0,
                stream_ordering = CASE
                    WHEN room_memberships.membership = 'join' AND excluded.membership = 'join'
                    THEN room_memberships.stream_ordering
                    ELSE excluded.stream_ordering END",
        )
        .bind(room_id)
        .bind(state_key)
        .bind(membership)
        .bind(event_id)
        .bind(position)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Removes one key from a room's current state (and, for a member, the membership row).
async fn unset_current(
    tx: &mut Transaction<'static, Any>,
    room_id: &str,
    event_type: &str,
    state_key: &str,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3",
    )
    .bind(room_id)
    .bind(event_type)
    .bind(state_key)
    .execute(&mut **tx)
    .await?;
    if event_type == "m.room.member" {
        sqlx::query("DELETE FROM room_memberships WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(state_key)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The thread an event counts in for unread counts: its thread root, or `main`.
fn thread_of<'a>(event: &NewEvent<'a>) -> &'a str {
    match event.relates_to {
        Some(("m.thread", root)) => root,
        _ => "main",
    }
}

/// A state map: (event type, state key) → event ID.
pub type StateMap = HashMap<(String, String), String>;

/// An event to persist, already built, signed and authorised.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub depth: i64,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub sender: &'a str,
    pub origin_server_ts: i64,
    pub pdu: &'a str,
    pub prev_events: &'a [String],
    /// The snapshot of the state the event was placed on; `None` for a room's create event.
    pub state_before: Option<i64>,
    /// Entries `(type, state key, event ID)` that the state the event was placed on has on
    /// top of `state_before` (written as snapshots first, in order): for an event placed on a
    /// resolved state, the difference the resolution made; for the join to a room on another
    /// server, the whole state it was given (with `state_before` `None`). Only the first
    /// event of a batch may have any. Usually empty.
    pub state_delta: &'a [(&'a str, &'a str, &'a str)],
    /// When the room's current state is not simply the state after this event upserted into
    /// the current one (a remote event on a fork, a state resolution), exactly what changes in
    /// it: these rows replace `current_state` and membership rows, and the event's own entry
    /// is not upserted unless listed. `None`: the usual upsert.
    pub current_delta: Option<&'a [CurrentChange<'a>]>,
    /// For `m.room.member` events: the target's new membership.
    pub membership: Option<&'a str>,
    /// `(user, device, txn_id)` for a client send with a transaction ID.
    pub txn: Option<(&'a str, &'a str, &'a str)>,
    /// For a room's create event: inserts the room (and its alias) in the same transaction.
    pub new_room: Option<NewRoom<'a>>,
    /// For a state event: the event it replaces in the state it is placed on (`""`: none),
    /// when the writer knows it (stored, see migration 0015).
    pub replaces_state: Option<&'a str>,
    /// `(rel_type, parent event ID)` from the content's `m.relates_to`.
    pub relates_to: Option<(&'a str, &'a str)>,
    /// For a redaction the homeserver decided to apply: `(target event ID, the target's
    /// redacted PDU)`. The target is rewritten in the same transaction, so a stored redaction
    /// never leaves its target unredacted.
    pub redacts: Option<(&'a str, &'a str)>,
    /// The local users this event notifies or highlights (see `push.rs`), stored with it.
    pub push_actions: &'a [crate::NewPushAction],
    /// For a room's join rule or history visibility event: the new value, copied onto the
    /// room's row for the user directory (migration 0017).
    pub room_setting: Option<RoomSetting<'a>>,
    /// The event's searchable text, `(key, text)` (`content.body`, …), for the search index
    /// (see `search.rs`); `None` for events nobody can search.
    pub search: Option<(&'a str, &'a str)>,
}

/// One entry of a room's current state set by [`NewEvent::current_delta`].
#[derive(Debug, Clone, Copy)]
pub struct CurrentChange<'a> {
    pub event_type: &'a str,
    pub state_key: &'a str,
    /// `None`: the key left the state (state resolution dropped the only event that set it).
    pub event_id: Option<&'a str>,
    /// For `m.room.member`: the membership the event gives its target.
    pub membership: Option<&'a str>,
}

/// A room setting kept on the room's row, as the homeserver read it from a state event
/// (`""` when the event has no valid value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomSetting<'a> {
    JoinRule(&'a str),
    HistoryVisibility(&'a str),
}

/// A room created by the transaction that writes its create event.
#[derive(Debug, Clone, Copy)]
pub struct NewRoom<'a> {
    pub version: &'a str,
    pub creator: &'a str,
    /// An alias for the room, taken in the same transaction (a taken one fails the whole
    /// creation with [`Error::UniqueViolation`]).
    pub alias: Option<&'a str>,
    /// Published in the room directory.
    pub public: bool,
    /// For an upgrade: the room this one replaces. Its aliases and directory entry move to
    /// the new room in the same transaction, and it is marked as still to be finished
    /// (tombstone, power levels) until [`Storage::finish_upgrade`].
    pub replaces: Option<&'a str>,
}

/// Where a persisted event landed.
#[derive(Debug, Clone, Copy)]
pub struct Persisted {
    pub stream_ordering: i64,
    pub state_after: i64,
}

/// A position in a room's topological order: between events, as `/messages` tokens name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologicalPosition {
    pub depth: i64,
    pub stream: i64,
}

/// Which way `/messages` walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Backward,
    Forward,
}

impl Storage {
    /// Takes the next stream position inside `tx`. The returned guard keeps it in flight
    /// (readers stop below it) until it is dropped, after the transaction has finished.
    pub(crate) async fn next_stream_position(
        &self,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<crate::stream::InFlight<'_>> {
        self.next_stream_positions(tx, 1).await
    }

    /// Hands out `n` ascending stream positions in one round trip and keeps them in flight,
    /// like [`Self::next_stream_position`]. The tracker hears of the positions *before* the
    /// database hands them out (a reservation), so no reader can see a later position commit
    /// while one of these is still unknown to it (see `stream.rs`).
    pub(crate) async fn next_stream_positions(
        &self,
        conn: &mut sqlx::AnyConnection,
        n: usize,
    ) -> Result<crate::stream::InFlight<'_>> {
        let count = i64::try_from(n).map_err(|_| Error::Corrupt("batch too large".into()))?;
        if count < 1 {
            return Err(Error::Corrupt("no stream position asked for".into()));
        }
        let reservation = self.stream.reserve();
        let positions: Vec<i64> = match self.backend {
            Backend::Postgres => sqlx::query(
                "SELECT nextval('stream_positions') AS position FROM generate_series(1, $1::bigint)",
            )
            .bind(count)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| row.try_get("position"))
            .collect::<std::result::Result<_, _>>()?,
            Backend::Sqlite => {
                // The counter row is locked by BEGIN IMMEDIATE, so the range is ours.
                let row = sqlx::query("UPDATE stream_positions SET position = position + $1 WHERE id = 1 RETURNING position")
                    .bind(count)
                    .fetch_one(&mut *conn)
                    .await?;
                let last: i64 = row.try_get("position")?;
                (last - count + 1..=last).collect()
            }
        };
        if positions.len() != n {
            return Err(Error::Corrupt(
                "the database handed out too few stream positions".into(),
            ));
        }
        Ok(reservation.fill(positions))
    }

    /// The highest stream position handed out so far.
    pub async fn current_stream_position(&self) -> Result<i64> {
        let row = match self.backend {
            Backend::Postgres => {
                sqlx::query("SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS position FROM stream_positions")
                    .fetch_one(&self.pool)
                    .await?
            }
            Backend::Sqlite => sqlx::query("SELECT position FROM stream_positions WHERE id = 1").fetch_one(&self.pool).await?,
        };
        Ok(row.try_get("position")?)
    }

    /// Persists an authorised event in one transaction (see the module docs).
    pub async fn persist_event(&self, event: &NewEvent<'_>, now: i64) -> Result<Persisted> {
        let mut persisted = self
            .persist_events(std::slice::from_ref(event), now)
            .await?;
        persisted
            .pop()
            .ok_or_else(|| Error::Corrupt("persisting one event returned nothing".into()))
    }

    /// Persists a chain of authorised events of one room in one transaction: a group commit.
    /// Each event after the first is placed on the one before it, so its `state_before` is
    /// taken from that event's state after (its own field must be `None`). The statements are
    /// multi-row where they can be, so a batch of N sends costs a handful of round trips and
    /// one commit (one fsync) instead of N of each.
    ///
    /// Returns where each event landed, in order; stream positions ascend along the chain.
    pub async fn persist_events(
        &self,
        events: &[NewEvent<'_>],
        now: i64,
    ) -> Result<Vec<Persisted>> {
        let Some(first) = events.first() else {
            return Ok(Vec::new());
        };
        let room_id = first.room_id;
        if events.iter().any(|e| e.room_id != room_id) {
            return Err(Error::Corrupt("a batch spans several rooms".into()));
        }
        // The stored form of each PDU, made before the transaction opens.
        let stored_pdus = events
            .iter()
            .map(|event| {
                pdu_form::strip(
                    event.pdu,
                    pdu_form::Columns {
                        room_id,
                        sender: event.sender,
                        event_type: event.event_type,
                        origin_server_ts: event.origin_server_ts,
                        depth: event.depth,
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // A transaction ID is the sender's (the key of `find_txns`).
        if events
            .iter()
            .any(|e| e.txn.is_some_and(|(user, _, _)| user != e.sender))
        {
            return Err(Error::Corrupt(
                "a transaction ID of another user than the sender".into(),
            ));
        }
        // Each event's push row, `(thread, recipients)`, encoded once for the insert and the
        // cache of recent rows.
        let push_rows: Vec<Option<(&str, String)>> = events
            .iter()
            .map(|e| {
                (!e.push_actions.is_empty())
                    .then(|| {
                        Ok((
                            thread_of(e),
                            crate::push::encode_recipients(e.push_actions)?,
                        ))
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?;
        // Each event's folded searchable text, made before the transaction opens.
        let search_rows: Vec<Option<crate::search::IndexedText>> = events
            .iter()
            .map(|e| {
                e.search
                    .and_then(|(key, text)| crate::search::IndexedText::new(key, text))
            })
            .collect();
        let (in_flight, placed, checkpoint_due) =
            if self.backend == Backend::Postgres && plain_messages(events) {
                self.persist_plain_messages(events, &stored_pdus, &push_rows, &search_rows, now)
                    .await?
            } else {
                self.persist_in_transaction(events, &stored_pdus, &push_rows, &search_rows, now)
                    .await?
            };
        let positions = in_flight.positions().to_vec();
        if let Some(snapshot) = checkpoint_due {
            self.spawn_checkpoint(snapshot);
        }
        // Committed, and the positions are still in flight: tell the cache (see `recent.rs`).
        for event in events {
            if let Some((target, redacted)) = event.redacts {
                self.recent.redact(target, redacted, event.event_id);
            }
        }
        let recent_push_rows = positions
            .iter()
            .zip(push_rows)
            .filter_map(|(position, row)| {
                let (thread, recipients) = row?;
                Some(crate::push::RecentPushRow {
                    stream_ordering: *position,
                    thread_id: thread.to_owned(),
                    recipients,
                })
            })
            .collect();
        self.recent.add_events(
            room_id,
            events
                .iter()
                .zip(&positions)
                .zip(&placed)
                .map(|((event, position), (before, after))| EventRow {
                    event_id: event.event_id.to_owned(),
                    room_id: room_id.to_owned(),
                    stream_ordering: Some(*position),
                    depth: event.depth,
                    event_type: event.event_type.to_owned(),
                    state_key: event.state_key.map(str::to_owned),
                    sender: event.sender.to_owned(),
                    origin_server_ts: event.origin_server_ts,
                    pdu: event.pdu.to_owned(),
                    state_before: *before,
                    state_after: Some(*after),
                    rejected: false,
                    redacted_by: None,
                    replaces_state: event.replaces_state.map(str::to_owned),
                })
                .collect(),
            recent_push_rows,
        );
        if events
            .iter()
            .any(|e| matches!(e.relates_to, Some(("m.thread", _))))
        {
            self.thread_replied(room_id);
        }
        for (event, position) in events.iter().zip(&positions) {
            if crate::BUMP_EVENT_TYPES.contains(&event.event_type) {
                self.facts.bumped(room_id, *position);
            }
            if let (Some(user), Some(_)) = (event.state_key, event.membership) {
                self.recent.memberships_changed(user);
                self.recent.room_members_changed(room_id);
                self.recent.membership_changed_at(*position);
            }
            for change in event.current_delta.unwrap_or_default() {
                if change.event_type == "m.room.member" {
                    self.recent.memberships_changed(change.state_key);
                    self.recent.room_members_changed(room_id);
                    self.recent.membership_changed_at(*position);
                }
            }
        }
        Ok(positions
            .into_iter()
            .zip(placed)
            .map(|(stream_ordering, (_, state_after))| Persisted {
                stream_ordering,
                state_after,
            })
            .collect())
    }

    /// [`Self::persist_events`] for a batch of plain messages on PostgreSQL (see
    /// [`plain_messages`]): the stream positions, then one statement that inserts the events,
    /// their push actions and relations and moves the room's extremities. A single statement
    /// commits on its own, so the batch costs two round trips instead of seven (`BEGIN`,
    /// positions, events, push actions, the extremities read and write, `COMMIT`): most of
    /// what a send cost PostgreSQL and Myelin was those round trips, not the writing.
    async fn persist_plain_messages(
        &self,
        events: &[NewEvent<'_>],
        stored_pdus: &[String],
        push_rows: &[Option<(&str, String)>],
        search_rows: &[Option<crate::search::IndexedText>],
        now: i64,
    ) -> Result<(
        crate::stream::InFlight<'_>,
        Vec<(Option<i64>, i64)>,
        Option<i64>,
    )> {
        let first = &events[0];
        let room_id = first.room_id;
        let state = first.state_before.ok_or_else(|| {
            Error::Corrupt("a non-state event needs the state it is placed on".into())
        })?;
        let mut conn = self.pool.acquire().await?;
        let in_flight = self.next_stream_positions(&mut conn, events.len()).await?;
        let positions = in_flight.positions().to_vec();

        let pushed = push_rows.iter().filter(|r| r.is_some()).count();
        let related = events.iter().filter(|e| e.relates_to.is_some()).count();
        let edges: Vec<&str> = events
            .iter()
            .flat_map(|e| e.prev_events.iter().map(String::as_str))
            .collect();
        let tips: Vec<&str> = events
            .iter()
            .map(|e| e.event_id)
            .filter(|id| !edges.contains(id))
            .collect();
        let json =
            |ids: &[&str]| serde_json::to_string(ids).map_err(|e| Error::Corrupt(e.to_string()));
        let (tips, prevs) = (json(&tips)?, json(&edges)?);

        let mut next = 1;
        let mut take = |rows: usize, cols: usize| {
            let sql = value_rows_from(next, rows, cols);
            next += rows * cols;
            sql
        };
        let mut sql = format!(
            "WITH ev AS (INSERT INTO events (event_id, room_id, stream_ordering, depth, event_type,
                             state_key, sender, origin_server_ts, pdu, state_before, state_after,
                             txn_device, txn_id, txn_hash)
                         VALUES {})",
            take(events.len(), 14)
        );
        if pushed > 0 {
            sql.push_str(&format!(
                ", pe AS (INSERT INTO push_events (stream_ordering, room_id, event_id, thread_id,
                                                   recipients, ts)
                          VALUES {})",
                take(pushed, 6)
            ));
        }
        if related > 0 {
            sql.push_str(&format!(
                ", rel AS (INSERT INTO event_relations (event_id, relates_to, rel_type, event_type,
                                                       stream_ordering)
                           VALUES {})",
                take(related, 5)
            ));
        }
        let replies: Vec<(&str, i64)> = events
            .iter()
            .zip(&positions)
            .filter_map(|(e, p)| match e.relates_to {
                Some(("m.thread", root)) => Some((root, *p)),
                _ => None,
            })
            .collect();
        let threads = crate::threads::aggregate(&replies);
        if !threads.is_empty() {
            let (cte, params) = crate::threads::upsert_cte(next, threads.len());
            sql.push_str(&cte);
            next += params;
        }
        let searchable = search_rows.iter().filter(|r| r.is_some()).count();
        if searchable > 0 {
            let (cte, params) = crate::search::insert_cte(next, searchable);
            sql.push_str(&cte);
            next += params;
        }
        let (room, tips_param, prevs_param) = (next, next + 1, next + 2);
        sql.push_str(&format!(
            " INSERT INTO room_extremities AS x (room_id, event_ids) VALUES (${room}, ${tips_param})
              ON CONFLICT (room_id) DO UPDATE SET event_ids = (
                  SELECT COALESCE(json_agg(s.id), '[]')::text FROM (
                      SELECT o.id FROM json_array_elements_text(x.event_ids::json) AS o(id)
                      WHERE o.id NOT IN (SELECT json_array_elements_text(${prevs_param}::json))
                      UNION SELECT json_array_elements_text(${tips_param}::json)
                  ) AS s(id))"
        ));

        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
        for ((event, position), stored_pdu) in events.iter().zip(&positions).zip(stored_pdus) {
            query = query
                .bind(event.event_id)
                .bind(room_id)
                .bind(*position)
                .bind(event.depth)
                .bind(event.event_type)
                .bind(event.state_key)
                .bind(event.sender)
                .bind(event.origin_server_ts)
                .bind(stored_pdu.as_str())
                .bind(state)
                .bind(state)
                .bind(event.txn.map(|(_, device, _)| device))
                .bind(event.txn.map(|(_, _, txn_id)| txn_id))
                .bind(
                    event
                        .txn
                        .map(|(user, device, txn_id)| txn_hash(user, device, txn_id)),
                );
        }
        for ((event, position), row) in events.iter().zip(&positions).zip(push_rows) {
            if let Some((thread, recipients)) = row {
                query = query
                    .bind(*position)
                    .bind(room_id)
                    .bind(event.event_id)
                    .bind(*thread)
                    .bind(recipients.as_str())
                    .bind(now);
            }
        }
        for (event, position) in events.iter().zip(&positions) {
            if let Some((rel_type, parent)) = event.relates_to {
                query = query
                    .bind(event.event_id)
                    .bind(parent)
                    .bind(rel_type)
                    .bind(event.event_type)
                    .bind(*position);
            }
        }
        for (root, latest, count) in &threads {
            query = query.bind(*root).bind(room_id).bind(*latest).bind(*count);
        }
        for ((event, position), text) in events.iter().zip(&positions).zip(search_rows) {
            if let Some(text) = text {
                query = query
                    .bind(*position)
                    .bind(event.event_id)
                    .bind(room_id)
                    .bind(text.key.as_str())
                    .bind(text.word_count)
                    .bind(text.words.as_str())
                    .bind(state);
            }
        }
        query
            .bind(room_id)
            .bind(tips)
            .bind(prevs)
            .execute(&mut *conn)
            .await?;
        Ok((in_flight, vec![(Some(state), state); events.len()], None))
    }

    /// [`Self::persist_events`] in a transaction of several statements: any batch.
    async fn persist_in_transaction(
        &self,
        events: &[NewEvent<'_>],
        stored_pdus: &[String],
        push_rows: &[Option<(&str, String)>],
        search_rows: &[Option<crate::search::IndexedText>],
        now: i64,
    ) -> Result<(
        crate::stream::InFlight<'_>,
        Vec<(Option<i64>, i64)>,
        Option<i64>,
    )> {
        let first = &events[0];
        let room_id = first.room_id;
        let mut tx = self.begin_write().await?;
        if let Some(room) = first.new_room {
            // The room's settings are copied from its own events from now on (migration 0017).
            sqlx::query("INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts, directory_indexed) VALUES ($1, $2, $3, $4, $5, 1)")
                .bind(room_id)
                .bind(room.version)
                .bind(room.creator)
                .bind(i64::from(room.public))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if let Some(old) = room.replaces {
                sqlx::query("UPDATE room_aliases SET room_id = $2 WHERE room_id = $1")
                    .bind(old)
                    .bind(room_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE rooms SET is_public = 0, upgrade_pending = $2 WHERE room_id = $1",
                )
                .bind(old)
                .bind(room_id)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(alias) = room.alias {
                sqlx::query("INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)")
                    .bind(alias)
                    .bind(room_id)
                    .bind(room.creator)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let in_flight = self.next_stream_positions(&mut tx, events.len()).await?;
        let positions = in_flight.positions().to_vec();

        // 1. State snapshots: one row per state event, each built on the one before (see
        //    `state.rs`); a non-state event points at the snapshot it was placed on.
        if events
            .iter()
            .skip(1)
            .any(|e| e.state_before.is_some() || !e.state_delta.is_empty())
        {
            return Err(Error::Corrupt(
                "only the first event of a chain names its state".into(),
            ));
        }
        let delta = first.state_delta;
        let changes: Vec<(&str, &str, &str)> = delta
            .iter()
            .copied()
            .chain(
                events
                    .iter()
                    .filter_map(|e| e.state_key.map(|k| (e.event_type, k, e.event_id))),
            )
            .collect();
        let (snapshots, checkpoint_due) = self
            .write_state_changes(&mut tx, room_id, first.state_before, &changes)
            .await?;
        let mut snapshots = snapshots.into_iter();
        // The state the first event is placed on: after the delta, if there is one.
        let base = match delta.len() {
            0 => first.state_before,
            n => snapshots.nth(n - 1),
        };
        let mut placed = Vec::with_capacity(events.len());
        let mut previous_after: Option<i64> = base;
        for event in events {
            let before = previous_after;
            let after = match (event.state_key, before) {
                (Some(_), _) => snapshots
                    .next()
                    .ok_or_else(|| Error::Corrupt("a state event without a snapshot".into()))?,
                (None, Some(before)) => before,
                (None, None) => {
                    return Err(Error::Corrupt(
                        "a non-state event needs the state it is placed on".into(),
                    ))
                }
            };
            placed.push((before, after));
            previous_after = Some(after);
        }

        // 2. The events, one multi-row insert.
        let sql = format!(
            "INSERT INTO events (event_id, room_id, stream_ordering, depth, event_type, state_key, sender,
                                 origin_server_ts, pdu, state_before, state_after, txn_device, txn_id, txn_hash,
                                 replaces_state)
             VALUES {}",
            value_rows(events.len(), 15)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
        for (((event, position), (before, after)), stored_pdu) in
            events.iter().zip(&positions).zip(&placed).zip(stored_pdus)
        {
            query = query
                .bind(event.event_id)
                .bind(room_id)
                .bind(*position)
                .bind(event.depth)
                .bind(event.event_type)
                .bind(event.state_key)
                .bind(event.sender)
                .bind(event.origin_server_ts)
                .bind(stored_pdu.as_str())
                .bind(*before)
                .bind(*after)
                .bind(event.txn.map(|(_, device, _)| device))
                .bind(event.txn.map(|(_, _, txn_id)| txn_id))
                .bind(
                    event
                        .txn
                        .map(|(user, device, txn_id)| txn_hash(user, device, txn_id)),
                )
                .bind(event.replaces_state.filter(|_| event.state_key.is_some()));
        }
        query.execute(&mut *tx).await?;

        // 2b. Push actions, in the event's transaction: counts never miss an event that was
        //     stored, nor count one that was not.
        let rows: Vec<(i64, &str, &str, &str)> = events
            .iter()
            .zip(&positions)
            .zip(push_rows)
            .filter_map(|((event, position), row)| {
                let (thread, recipients) = row.as_ref()?;
                Some((*position, event.event_id, *thread, recipients.as_str()))
            })
            .collect();
        if !rows.is_empty() {
            crate::push::insert_push_rows(&mut tx, room_id, &rows, now).await?;
        }

        // 3. The DAG: the forward extremities move to the chain's tips. (The edges
        //    themselves are the PDUs' `prev_events`; no query needs them as rows.) The room's
        //    set is one row (migration 0013), read and rewritten in place.
        let edges: Vec<(&str, &str)> = events
            .iter()
            .flat_map(|e| e.prev_events.iter().map(move |p| (e.event_id, p.as_str())))
            .collect();
        let lock = if self.backend == Backend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let sql = format!("SELECT event_ids FROM room_extremities WHERE room_id = $1{lock}");
        let current: Option<String> = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
            .bind(room_id)
            .fetch_optional(&mut *tx)
            .await?;
        let mut extremities: Vec<String> = match current {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| Error::Corrupt(format!("room_extremities of {room_id}: {e}")))?,
            None => Vec::new(),
        };
        extremities.retain(|id| !edges.iter().any(|(_, p)| p == id));
        for event in events {
            let id = event.event_id;
            if !edges.iter().any(|(_, p)| *p == id) && !extremities.iter().any(|e| e == id) {
                extremities.push(id.to_owned());
            }
        }
        let extremities =
            serde_json::to_string(&extremities).map_err(|e| Error::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO room_extremities (room_id, event_ids) VALUES ($1, $2)
             ON CONFLICT (room_id) DO UPDATE SET event_ids = excluded.event_ids",
        )
        .bind(room_id)
        .bind(extremities)
        .execute(&mut *tx)
        .await?;

        // 4. Current state, memberships and relations (rare; one statement each).
        for (event, position) in events.iter().zip(&positions) {
            if let Some(changes) = event.current_delta {
                for change in changes {
                    match change.event_id {
                        Some(event_id) => {
                            set_current(
                                &mut tx,
                                room_id,
                                change.event_type,
                                change.state_key,
                                event_id,
                                change.membership,
                                *position,
                            )
                            .await?
                        }
                        None => {
                            unset_current(&mut tx, room_id, change.event_type, change.state_key)
                                .await?
                        }
                    }
                }
            } else if let Some(state_key) = event.state_key {
                let membership = event
                    .membership
                    .filter(|_| event.event_type == "m.room.member");
                set_current(
                    &mut tx,
                    room_id,
                    event.event_type,
                    state_key,
                    event.event_id,
                    membership,
                    *position,
                )
                .await?;
            }
            if let Some((rel_type, parent)) = event.relates_to {
                sqlx::query(
                    "INSERT INTO event_relations (event_id, relates_to, rel_type, event_type, stream_ordering)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(event.event_id)
                .bind(parent)
                .bind(rel_type)
                .bind(event.event_type)
                .bind(*position)
                .execute(&mut *tx)
                .await?;
            }
        }

        // 4a. Threads (see `threads.rs`) and the search index (see `search.rs`).
        let replies: Vec<(&str, i64)> = events
            .iter()
            .zip(&positions)
            .filter_map(|(e, p)| match e.relates_to {
                Some(("m.thread", root)) => Some((root, *p)),
                _ => None,
            })
            .collect();
        if !replies.is_empty() {
            crate::threads::add_replies(&mut tx, room_id, &replies).await?;
        }
        let indexed: Vec<(&str, i64, Option<i64>, &crate::search::IndexedText)> = events
            .iter()
            .zip(&positions)
            .zip(&placed)
            .zip(search_rows)
            .filter_map(|(((event, position), (before, _)), text)| {
                Some((event.event_id, *position, *before, text.as_ref()?))
            })
            .collect();
        if !indexed.is_empty() {
            crate::search::insert_rows(&mut tx, self.backend, room_id, &indexed).await?;
        }

        // 4b. The user directory: a changed room setting and changed memberships change who
        //     counts as being in a public room (see `directory.rs`).
        let mut setting_changed = false;
        for event in events {
            let (column, value) = match event.room_setting {
                Some(RoomSetting::JoinRule(value)) => ("join_rule", value),
                Some(RoomSetting::HistoryVisibility(value)) => ("history_visibility", value),
                None => continue,
            };
            let sql = format!("UPDATE rooms SET {column} = $2 WHERE room_id = $1");
            sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(room_id)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            setting_changed = true;
        }
        if setting_changed {
            crate::directory::refresh_room_members(&mut tx, room_id).await?;
        }
        let members_changed: Vec<&str> = events
            .iter()
            .filter(|e| e.membership.is_some() && e.event_type == "m.room.member")
            .filter_map(|e| e.state_key)
            .collect();
        if !members_changed.is_empty() {
            crate::directory::refresh_public_flags(&mut tx, &members_changed).await?;
        }

        // 5. Redactions: the redacted event's stored PDU is replaced by its redacted form.
        for event in events {
            if let Some((target, redacted)) = event.redacts {
                let Some(row) = sqlx::query(
                    "SELECT room_id, sender, event_type, origin_server_ts, depth FROM events WHERE event_id = $1",
                )
                .bind(target)
                .fetch_optional(&mut *tx)
                .await?
                else {
                    continue;
                };
                let (room, sender, event_type): (String, String, String) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                let stored = pdu_form::strip(
                    redacted,
                    pdu_form::Columns {
                        room_id: &room,
                        sender: &sender,
                        event_type: &event_type,
                        origin_server_ts: row.try_get(3)?,
                        depth: row.try_get(4)?,
                    },
                )?;
                crate::search::delete_row(&mut tx, target).await?;
                sqlx::query(
                    "UPDATE events SET pdu = $2, redacted_by = $3 WHERE event_id = $1 AND redacted_by IS NULL",
                )
                .bind(target)
                .bind(stored)
                .bind(event.event_id)
                .execute(&mut *tx)
                .await?;
                crate::threads::reply_redacted(&mut tx, target).await?;
            }
        }

        tx.commit().await?;
        Ok((in_flight, placed, checkpoint_due))
    }

    pub async fn get_room(&self, room_id: &str) -> Result<Option<RoomRow>> {
        let row = sqlx::query(
            "SELECT room_id, room_version, creator, is_public FROM rooms WHERE room_id = $1",
        )
        .bind(room_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(RoomRow {
                room_id: row.try_get("room_id")?,
                room_version: row.try_get("room_version")?,
                creator: row.try_get("creator")?,
                is_public: row.try_get::<i64, _>("is_public")? != 0,
            })
        })
        .transpose()
    }

    pub async fn set_room_public(&self, room_id: &str, public: bool) -> Result<()> {
        sqlx::query("UPDATE rooms SET is_public = $2 WHERE room_id = $1")
            .bind(room_id)
            .bind(i64::from(public))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The room's forward extremities with their depths, deepest (then newest) first.
    pub async fn forward_extremities(
        &self,
        room_id: &str,
    ) -> Result<Vec<(String, i64, Option<i64>)>> {
        let current: Option<String> =
            sqlx::query_scalar("SELECT event_ids FROM room_extremities WHERE room_id = $1")
                .bind(room_id)
                .fetch_optional(&self.pool)
                .await?;
        let ids: Vec<String> = match current {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| Error::Corrupt(format!("room_extremities of {room_id}: {e}")))?,
            None => return Ok(Vec::new()),
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT event_id, depth, state_after FROM events WHERE event_id IN ({})
             ORDER BY depth DESC, stream_ordering DESC",
            placeholders_from(1, ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
        for id in &ids {
            query = query.bind(id.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("event_id")?,
                    row.try_get("depth")?,
                    row.try_get("state_after")?,
                ))
            })
            .collect()
    }

    /// The room's current state.
    pub async fn current_state(&self, room_id: &str) -> Result<StateMap> {
        let rows = sqlx::query(
            "SELECT event_type, state_key, event_id FROM current_state WHERE room_id = $1",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    (row.try_get("event_type")?, row.try_get("state_key")?),
                    row.try_get("event_id")?,
                ))
            })
            .collect()
    }

    /// The event of one `(type, state key)` in the room's current state.
    pub async fn current_state_event(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT event_id FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3",
        )
        .bind(room_id)
        .bind(event_type)
        .bind(state_key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok(row.try_get("event_id")?)).transpose()
    }

    /// The current state events of `room_id` under `keys` (`(type, state_key)`), those that
    /// exist, in one statement.
    pub async fn current_state_events(
        &self,
        room_id: &str,
        keys: &[(&str, &str)],
    ) -> Result<Vec<EventRow>> {
        let mut out = Vec::new();
        // Two parameters a key, after the room.
        for chunk in keys.chunks(400) {
            let wanted = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(event_type = ${} AND state_key = ${})",
                        2 + 2 * i,
                        3 + 2 * i
                    )
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN
                 (SELECT event_id FROM current_state WHERE room_id = $1 AND ({wanted}))"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(room_id);
            for (event_type, state_key) in chunk {
                query = query.bind(*event_type).bind(*state_key);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(event_from_row(&row)?);
            }
        }
        Ok(out)
    }

    pub async fn get_event(&self, event_id: &str) -> Result<Option<EventRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1"
        )))
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    /// Events by ID, in no particular order; missing ones are left out.
    pub async fn get_events(&self, event_ids: &[String]) -> Result<Vec<EventRow>> {
        let mut out = Vec::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(128) {
            let padded = padded_len(chunk.len());
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN ({})",
                placeholders(padded)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for i in 0..padded {
                query = query.bind(&chunk[i.min(chunk.len() - 1)]);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(event_from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Up to `limit` events of a room from position `from` in topological order (depth, then
    /// stream), walking `dir`, not reaching position `to`. A position lies just before the event
    /// with the same `(depth, stream)`: walking backward from it excludes that event, walking
    /// forward includes it, so a page's `start` and `end` bracket exactly its events.
    /// Rejected and outlier events are skipped.
    pub async fn room_events_topological(
        &self,
        room_id: &str,
        from: TopologicalPosition,
        to: Option<TopologicalPosition>,
        dir: Direction,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        // First within a window of depths next to `from`, then, if that did not fill the page,
        // without it. Depths are dense (an event is one deeper than its deepest parent), so
        // the window usually holds the page. It bounds what a bad plan can cost: with stale or
        // averaged statistics (a room that grew since the last ANALYZE, or a big room outside
        // the most-common-values list) PostgreSQL estimates a handful of rows and reads and
        // sorts *every* event before `from` instead of walking the index (50 ms a page in a
        // room of 100,000 events, growing with the room).
        let window = limit.saturating_mul(2).saturating_add(50);
        let bounded = match dir {
            // From the end of the room (`from` is the largest position) the window ends at the
            // room's deepest event.
            Direction::Backward => from.depth.checked_sub(window).map(|_| {
                let least = match self.backend {
                    Backend::Postgres => "LEAST",
                    Backend::Sqlite => "min",
                };
                let deepest = "(SELECT max(depth) + 1 FROM events WHERE room_id = $1)";
                (
                    format!("AND depth > {least}($2, COALESCE({deepest}, $2)) - $W"),
                    window,
                )
            }),
            Direction::Forward => Some((
                "AND depth < $W".to_owned(),
                from.depth.saturating_add(window),
            )),
        };
        if let Some((clause, bound)) = bounded {
            let rows = self
                .topological_page(room_id, from, to, dir, limit, Some((&clause, bound)))
                .await?;
            // A full page from the window is the first `limit` events of the whole walk:
            // every event inside the window comes before every event outside it.
            if rows.len() as i64 >= limit {
                return Ok(rows);
            }
        }
        self.topological_page(room_id, from, to, dir, limit, None)
            .await
    }

    /// One statement of [`Storage::room_events_topological`], with `window` (a clause on the
    /// parameter `$W` and its value) or without.
    async fn topological_page(
        &self,
        room_id: &str,
        from: TopologicalPosition,
        to: Option<TopologicalPosition>,
        dir: Direction,
        limit: i64,
        window: Option<(&str, i64)>,
    ) -> Result<Vec<EventRow>> {
        let (cmp, order, to_cmp) = match dir {
            Direction::Backward => ("<", "DESC", ">="),
            Direction::Forward => (">=", "ASC", "<"),
        };
        let to_clause = if to.is_some() {
            format!("AND (depth, stream_ordering) {to_cmp} ($5, $6)")
        } else {
            String::new()
        };
        let window_param = if to.is_some() { "$7" } else { "$5" };
        let window_clause = window.map_or(String::new(), |(clause, _)| {
            clause.replace("$W", window_param)
        });
        // Row-value comparison keeps the page boundary exact when depths repeat.
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE room_id = $1 AND stream_ordering IS NOT NULL AND rejected_reason IS NULL
               AND (depth, stream_ordering) {cmp} ($2, $3) {to_clause} {window_clause}
             ORDER BY depth {order}, stream_ordering {order} LIMIT $4"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(room_id)
            .bind(from.depth)
            .bind(from.stream)
            .bind(limit);
        if let Some(to) = to {
            query = query.bind(to.depth).bind(to.stream);
        }
        if let Some((_, value)) = window {
            query = query.bind(value);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    /// The topological position just after the newest event of the room at or before stream
    /// position `stream` (to turn a stream token into a `/messages` position).
    pub async fn topological_at_stream(
        &self,
        room_id: &str,
        stream: i64,
    ) -> Result<Option<TopologicalPosition>> {
        let row = sqlx::query(
            "SELECT depth, stream_ordering FROM events WHERE room_id = $1 AND stream_ordering <= $2
             ORDER BY stream_ordering DESC LIMIT 1",
        )
        .bind(room_id)
        .bind(stream)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(TopologicalPosition {
                depth: row.try_get("depth")?,
                stream: row.try_get("stream_ordering")?,
            })
        })
        .transpose()
    }

    /// `(membership, event_id)` of a user in a room.
    pub async fn membership(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT membership, event_id FROM room_memberships WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((row.try_get("membership")?, row.try_get("event_id")?)))
            .transpose()
    }

    /// Rooms where the user's membership is `membership`.
    pub async fn rooms_for_user(&self, user_id: &str, membership: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT room_id FROM room_memberships WHERE user_id = $1 AND membership = $2 ORDER BY stream_ordering",
        )
        .bind(user_id)
        .bind(membership)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get("room_id")?)).collect()
    }

    /// `(user_id, membership, event_id)` of every member row of a room.
    /// Shared (cached in memory): a busy room's member list is read by every member's sync.
    pub async fn room_members(
        &self,
        room_id: &str,
    ) -> Result<std::sync::Arc<Vec<(String, String, String)>>> {
        let generation = match self.recent.room_members(room_id) {
            Ok(rows) => return Ok(rows),
            Err(generation) => generation,
        };
        let rows = sqlx::query("SELECT user_id, membership, event_id FROM room_memberships WHERE room_id = $1 ORDER BY user_id")
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?;
        let rows = std::sync::Arc::new(
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get("user_id")?,
                        row.try_get("membership")?,
                        row.try_get("event_id")?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
        );
        self.recent
            .store_room_members(room_id, generation, rows.clone());
        Ok(rows)
    }

    /// Marks a left room as forgotten by the user.
    pub async fn forget_room(&self, room_id: &str, user_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE room_memberships SET forgotten = 1 WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        self.recent.memberships_changed(user_id);
        Ok(())
    }

    /// The events that client transactions produced, in one round trip:
    /// `(user, device, txn_id) → event_id` for those that exist.
    pub async fn find_txns(
        &self,
        txns: &[(String, String, String)],
    ) -> Result<HashMap<(String, String, String), String>> {
        let mut found = HashMap::new();
        for chunk in txns.chunks(100) {
            // By hash (every row since migration 0009), then by the whole key (rows from
            // before, which have no hash); a hash that matches another key is dropped below.
            let sql = format!(
                "SELECT sender AS user_id, txn_device AS device_id, txn_id, event_id FROM events
                 WHERE txn_hash IN ({})
                 UNION ALL
                 SELECT sender AS user_id, txn_device AS device_id, txn_id, event_id FROM events
                 WHERE txn_id IS NOT NULL AND txn_hash IS NULL AND (sender, txn_device, txn_id) IN ({})",
                placeholders(chunk.len()),
                value_rows_from(chunk.len() + 1, chunk.len(), 3)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for (user, device, txn_id) in chunk {
                query = query.bind(txn_hash(user, device, txn_id));
            }
            for (user, device, txn_id) in chunk {
                query = query.bind(user).bind(device).bind(txn_id);
            }
            for row in query.fetch_all(&self.pool).await? {
                let key: (String, String, String) = (
                    row.try_get("user_id")?,
                    row.try_get("device_id")?,
                    row.try_get::<Option<String>, _>("txn_id")?
                        .unwrap_or_default(),
                );
                if chunk.contains(&key) {
                    found.insert(key, row.try_get("event_id")?);
                }
            }
        }
        Ok(found)
    }

    /// `event_id → (device_id, txn_id)` for those of `event_ids` sent with a transaction ID.
    pub async fn txns_for_events(
        &self,
        event_ids: &[String],
    ) -> Result<HashMap<String, (String, String)>> {
        let mut out = HashMap::new();
        for chunk in event_ids.chunks(100) {
            let sql = format!(
                "SELECT event_id, txn_device AS device_id, txn_id FROM events
                 WHERE event_id IN ({}) AND txn_id IS NOT NULL",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.insert(
                    row.try_get("event_id")?,
                    (row.try_get("device_id")?, row.try_get("txn_id")?),
                );
            }
        }
        Ok(out)
    }

    /// The old room of an upgrade is finished (tombstone and power levels sent).
    pub async fn finish_upgrade(&self, old_room_id: &str) -> Result<()> {
        sqlx::query("UPDATE rooms SET upgrade_pending = NULL WHERE room_id = $1")
            .bind(old_room_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Upgrades whose old room a stopped server did not finish: `(old room, new room)`.
    pub async fn pending_upgrades(&self) -> Result<Vec<(String, String)>> {
        sqlx::query("SELECT room_id, upgrade_pending FROM rooms WHERE upgrade_pending IS NOT NULL")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("room_id")?, row.try_get("upgrade_pending")?)))
            .collect()
    }

    pub async fn create_alias(
        &self,
        alias: &str,
        room_id: &str,
        creator: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)")
            .bind(alias)
            .bind(room_id)
            .bind(creator)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `(room_id, creator)` of an alias.
    pub async fn resolve_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("room_id")?, r.try_get("creator")?)))
            .transpose()
    }

    pub async fn delete_alias(&self, alias: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn aliases_for_room(&self, room_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("alias")?)).collect()
    }

    /// Events of `room_id` relating to `parent`, optionally of one relation and event type,
    /// paged by stream position (exclusive `from`, newest first when walking backward).
    /// Relations exist only within a room: an event elsewhere naming `parent` is not one. A
    /// redacted event relates to nothing (redaction strips its `m.relates_to`): a removed
    /// reaction is neither listed nor counted.
    #[allow(clippy::too_many_arguments)]
    pub async fn relations(
        &self,
        room_id: &str,
        parent: &str,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: Option<i64>,
        dir: Direction,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let (cmp, order, start) = match dir {
            Direction::Backward => ("<", "DESC", i64::MAX),
            Direction::Forward => (">", "ASC", 0),
        };
        let sql = format!(
            "SELECT {cols} FROM event_relations r JOIN events e ON e.event_id = r.event_id
             WHERE r.relates_to = $1 AND ($2 = '' OR r.rel_type = $2) AND ($3 = '' OR r.event_type = $3)
               AND r.stream_ordering {cmp} $4 AND e.rejected_reason IS NULL AND e.redacted_by IS NULL AND e.room_id = $6
             ORDER BY r.stream_ordering {order} LIMIT $5",
            cols = EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ")
        );
        let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(parent)
            .bind(rel_type.unwrap_or(""))
            .bind(event_type.unwrap_or(""))
            .bind(from.unwrap_or(start))
            .bind(limit)
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Up to `limit` events of `room_id` in timeline order of `origin_server_ts` from `ts`:
    /// at or after it (`forward`) or at or before it, nearest first; rejected events and
    /// outliers are left out. For `timestamp_to_event`, which checks visibility on these.
    pub async fn events_near_ts(
        &self,
        room_id: &str,
        ts: i64,
        forward: bool,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let (cmp, order) = if forward {
            (">=", "ASC")
        } else {
            ("<=", "DESC")
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE room_id = $1 AND origin_server_ts {cmp} $2 AND stream_ordering IS NOT NULL
               AND rejected_reason IS NULL
             ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(room_id)
            .bind(ts)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Rooms published in the directory.
    pub async fn public_rooms(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY created_ts")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("room_id")?)).collect()
    }
}

/// The key of a client transaction's retry lookup (`events.txn_hash`): the first 8 bytes of
/// SHA-256 over the sender, device and transaction ID, each ended by a 0 byte. Not unique (nor
/// meant to be): [`Storage::find_txns`] compares the rows it finds with the whole key.
fn txn_hash(user: &str, device: &str, txn_id: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in [user, device, txn_id] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}
