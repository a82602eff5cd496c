//! History visibility: which events of a room a user may read.
//!
//! <https://spec.matrix.org/latest/client-server-api/#history-visibility>
//!
//! For each event, the room's `m.room.history_visibility` and the user's membership *at that
//! event* decide:
//! - `world_readable`: anyone;
//! - the user was joined at the event: yes;
//! - `shared`: yes if the user is joined now (a user who left sees history up to their leave);
//! - `invited`: yes if the user was invited at the event;
//! - `joined`: only if joined at the event.
//!
//! A user's own membership events are visible if the membership before or after them allows
//! it, so a user sees their own join, leave and invite.
//!
//! The room *state* a user may read (`/state`, `/members`) is decided by [`readable_state`]:
//! the current state for members and for anyone when the room is `world_readable`, the state
//! at their leave for a former member, nothing for anyone else (a user banned or invited
//! without ever having joined has no more right to the state than a stranger).

use std::collections::HashMap;

use myelin_storage::EventRow;
use ruma::UserId;

use crate::{error::Error, AppState};

/// Which state of a room a user may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadableState {
    /// The current state: the user is joined, or the room is `world_readable`.
    Current,
    /// The state after the user's leave (this snapshot): they were joined until then.
    AtLeave(i64),
}

/// The state `user` may read in `room_id`, as the spec and Synapse decide it: joined users
/// read the current state; a user whose membership is `leave` after having been joined reads
/// it as of their leave; anyone else only if the room is `world_readable` now. 404 for an
/// unknown room, 403 otherwise.
pub async fn readable_state(
    state: &AppState,
    room_id: &str,
    user: &UserId,
) -> Result<ReadableState, Error> {
    if state.storage.get_room(room_id).await?.is_none() {
        return Err(Error::not_found("Room not found"));
    }
    match state.storage.membership(room_id, user.as_str()).await? {
        Some((m, _)) if m == "join" => return Ok(ReadableState::Current),
        Some((m, event_id)) if m == "leave" => {
            if let Some(after) = joined_until(state, &event_id, user).await? {
                return Ok(ReadableState::AtLeave(after));
            }
        }
        _ => {}
    }
    let current = state.storage.current_state(room_id).await?;
    let history = match current.get(&("m.room.history_visibility".to_owned(), String::new())) {
        Some(id) => match state.storage.get_event(id).await? {
            Some(row) => content_field(&row, "history_visibility"),
            None => None,
        },
        None => None,
    };
    if history.as_deref() == Some("world_readable") {
        Ok(ReadableState::Current)
    } else {
        Err(Error::forbidden("You are not a member of this room"))
    }
}

/// If `user` was joined right before their membership event `event_id` (a leave or a ban),
/// the state snapshot after it: what they may still read of the room. `None` for a user
/// who was only invited, knocking or nothing before it.
pub async fn joined_until(
    state: &AppState,
    event_id: &str,
    user: &UserId,
) -> Result<Option<i64>, Error> {
    let Some(row) = state.storage.get_event(event_id).await? else {
        return Ok(None);
    };
    let was_joined = match row.state_before {
        Some(before) => membership_at(state, before, user).await?.as_deref() == Some("join"),
        None => false,
    };
    Ok(row.state_after.filter(|_| was_joined))
}

/// `user`'s membership in the state `snapshot`.
async fn membership_at(
    state: &AppState,
    snapshot: i64,
    user: &UserId,
) -> Result<Option<String>, Error> {
    // One key of the snapshot: one index probe, not the whole state.
    let found = state
        .storage
        .state_lookups(&[(snapshot, "m.room.member".to_owned(), user.to_string())])
        .await?;
    let Some(Some(id)) = found.into_iter().next() else {
        return Ok(None);
    };
    Ok(state
        .storage
        .get_event(&id)
        .await?
        .and_then(|row| content_field(&row, "membership")))
}

/// The history visibility and `user`'s membership at each of `snapshots`: two point lookups
/// per snapshot (in a few statements for all of them) and one read of the events they name,
/// never a whole state, so a page of state events costs what a page of messages does.
/// Snapshots are global, so those of many rooms are decided in one batch.
async fn decide_snapshots(
    state: &AppState,
    user: &UserId,
    snapshots: &[i64],
) -> Result<HashMap<i64, (String, Option<String>)>, Error> {
    let mut todo = snapshots.to_vec();
    todo.sort_unstable();
    todo.dedup();
    let mut decided = HashMap::with_capacity(todo.len());
    if todo.is_empty() {
        return Ok(decided);
    }
    let mut requests = Vec::with_capacity(todo.len() * 2);
    for &snapshot in &todo {
        requests.push((
            snapshot,
            "m.room.history_visibility".to_owned(),
            String::new(),
        ));
        requests.push((snapshot, "m.room.member".to_owned(), user.to_string()));
    }
    let found = state.storage.state_lookups(&requests).await?;
    let mut wanted: Vec<String> = found.iter().flatten().cloned().collect();
    wanted.sort();
    wanted.dedup();
    let rows: HashMap<String, EventRow> = state
        .storage
        .get_events(&wanted)
        .await?
        .into_iter()
        .map(|r| (r.event_id.clone(), r))
        .collect();
    let find = |id: &Option<String>| id.as_ref().and_then(|id| rows.get(id));
    for (snapshot, ids) in todo.iter().zip(found.chunks(2)) {
        let history = find(&ids[0])
            .and_then(|r| content_field(r, "history_visibility"))
            .unwrap_or_else(|| "shared".to_owned());
        let membership = find(&ids[1]).and_then(|r| content_field(r, "membership"));
        decided.insert(*snapshot, (history, membership));
    }
    Ok(decided)
}

/// Decides, in one batch, the `(room, snapshot)` pairs of `wanted` for the checkers of
/// `rooms` (all of one user; pairs of rooms without a checker are skipped).
pub async fn load_many<'a>(
    state: &AppState,
    user: &UserId,
    rooms: &mut HashMap<String, Visibility<'a>>,
    wanted: &[(&str, i64)],
) -> Result<(), Error> {
    let todo: Vec<i64> = wanted
        .iter()
        .filter(|(room, snapshot)| {
            rooms
                .get(*room)
                .is_some_and(|v| !v.decided.contains_key(snapshot))
        })
        .map(|&(_, snapshot)| snapshot)
        .collect();
    let decided = decide_snapshots(state, user, &todo).await?;
    for (room, snapshot) in wanted {
        if let (Some(checker), Some(decision)) = (rooms.get_mut(*room), decided.get(snapshot)) {
            checker.decided.insert(*snapshot, decision.clone());
        }
    }
    Ok(())
}

/// A per-request checker; caches what it decided per snapshot.
pub struct Visibility<'a> {
    state: &'a AppState,
    user: &'a UserId,
    joined_now: bool,
    /// snapshot → (history visibility, user's membership)
    decided: HashMap<i64, (String, Option<String>)>,
}

fn content_field(row: &EventRow, field: &str) -> Option<String> {
    let pdu: serde_json::Value = row.parse_pdu().ok()?;
    pdu.get("content")?.get(field)?.as_str().map(str::to_owned)
}

impl<'a> Visibility<'a> {
    pub async fn new(
        state: &'a AppState,
        user: &'a UserId,
        room_id: &str,
    ) -> Result<Visibility<'a>, Error> {
        let joined_now = state
            .storage
            .membership(room_id, user.as_str())
            .await?
            .is_some_and(|(m, _)| m == "join");
        Ok(Visibility {
            state,
            user,
            joined_now,
            decided: HashMap::new(),
        })
    }

    async fn at_snapshot(&mut self, snapshot: i64) -> Result<(String, Option<String>), Error> {
        if let Some(decided) = self.decided.get(&snapshot) {
            return Ok(decided.clone());
        }
        self.load(&[snapshot]).await?;
        self.decided
            .get(&snapshot)
            .cloned()
            .ok_or_else(|| Error::internal("snapshot visibility not loaded"))
    }

    /// A checker for a room the caller knows `user` is joined to now (no lookup).
    pub fn joined(state: &'a AppState, user: &'a UserId) -> Visibility<'a> {
        Visibility {
            state,
            user,
            joined_now: true,
            decided: HashMap::new(),
        }
    }

    /// Decides the history visibility and the user's membership at each of `snapshots` not
    /// decided yet (see [`decide_snapshots`]).
    async fn load(&mut self, snapshots: &[i64]) -> Result<(), Error> {
        let todo: Vec<i64> = snapshots
            .iter()
            .copied()
            .filter(|s| !self.decided.contains_key(s))
            .collect();
        self.decided
            .extend(decide_snapshots(self.state, self.user, &todo).await?);
        Ok(())
    }

    fn decide(&self, history: &str, membership: Option<&str>) -> bool {
        match (history, membership) {
            ("world_readable", _) => true,
            (_, Some("join")) => true,
            ("shared", _) => self.joined_now,
            ("invited", Some("invite")) => true,
            _ => false,
        }
    }

    /// Whether the user may read an event sent on `snapshot` that is not their own
    /// membership event (the case [`Visibility::allows`] treats apart).
    pub async fn allows_at(&mut self, snapshot: i64) -> Result<bool, Error> {
        let (history, membership) = self.at_snapshot(snapshot).await?;
        Ok(self.decide(&history, membership.as_deref()))
    }

    /// Whether the user may read `row`.
    pub async fn allows(&mut self, row: &EventRow) -> Result<bool, Error> {
        let own_membership = row.event_type == "m.room.member"
            && row.state_key.as_deref() == Some(self.user.as_str());
        // A user's own membership event is visible if the membership before or after it
        // allows it: they see their own leave, and the invite that brought them in.
        let snapshots: Vec<i64> = if own_membership {
            [row.state_before, row.state_after]
                .into_iter()
                .flatten()
                .collect()
        } else {
            row.state_before.or(row.state_after).into_iter().collect()
        };
        for snapshot in snapshots {
            let (history, membership) = self.at_snapshot(snapshot).await?;
            if self.decide(&history, membership.as_deref()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The subset of `rows` the user may read, in the same order.
    pub async fn filter(&mut self, rows: Vec<EventRow>) -> Result<Vec<EventRow>, Error> {
        let snapshots: Vec<i64> = rows
            .iter()
            .flat_map(|r| [r.state_before, r.state_after])
            .flatten()
            .collect();
        self.load(&snapshots).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if self.allows(&row).await? {
                out.push(row);
            }
        }
        Ok(out)
    }
}
