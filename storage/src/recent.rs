//! What changed recently on the stream, kept in memory so that sync can answer "what is new
//! for this user since position N" mostly without the database.
//!
//! When one message lands in a 200-member room, 200 waiting syncs wake at once. Each needs
//! the room's new events, the user's memberships, whether their account data or any
//! receipt moved, and for unread counts the event's push row and whether their read receipt
//! moved. Read from the database that is ~7 queries per member, 1,400 for one message; read
//! from here it is none: the new events and push rows are shared by every waiter.
//!
//! The invariant that makes this safe: **an entry is added after its transaction commits but
//! before its stream position stops being in flight** (the writers in `rooms.rs`, `sync.rs` and
//! `accounts.rs` call in here between `commit()` and the end of their
//! [`crate::stream::InFlight`] guard). A reader never looks past
//! [`crate::Storage::safe_stream_position`], so whenever it reads a range `(after, upto]`,
//! every change in that range is already here. Each part of the cache also knows its *floor*:
//! the position at or below which it may be missing changes (start-up, eviction). A read that
//! reaches below the floor goes to the database.
//!
//! Like the room heads and the stream tracker, this assumes one server process writes the
//! database; several processes will need to share change notifications first.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use crate::{
    push::RecentPushRow,
    rooms::EventRow,
    sync::{MembershipRow, ReceiptRow},
};

/// Events kept per room: enough for a sync's timeline in the common case.
const EVENTS_PER_ROOM: usize = 50;
/// Events kept in all (~1 KiB each typically).
const MAX_EVENTS: usize = 50_000;
/// Bytes of events kept in all: an event may be up to 64 KiB, so the count alone would allow
/// three gigabytes.
const MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

/// The memory an event row holds, roughly: its strings plus the struct.
fn event_bytes(event: &EventRow) -> usize {
    event.event_id.len()
        + event.room_id.len()
        + event.event_type.len()
        + event.state_key.as_ref().map_or(0, String::len)
        + event.sender.len()
        + event.pdu.len()
        + event.redacted_by.as_ref().map_or(0, String::len)
        + std::mem::size_of::<EventRow>()
}
/// The memory a push row holds, roughly.
fn push_row_bytes(row: &RecentPushRow) -> usize {
    row.thread_id.len() + row.recipients.len() + std::mem::size_of::<RecentPushRow>()
}
/// `(user, room)` pairs whose last read-receipt move is remembered, before the map starts
/// over (~100 bytes each).
const MAX_READ_RECEIPTS: usize = 100_000;
/// Receipt moves kept (~200 bytes each). Delivered receipts move once per member per
/// message, so a 200-member room adds 200 per message.
const MAX_RECEIPTS: usize = 20_000;

/// The newest events of one room.
#[derive(Debug, Default)]
struct RoomTail {
    /// Every event of the room above this position is in `events`.
    floor: i64,
    /// Ascending by stream position.
    events: VecDeque<EventRow>,
    /// The `push_events` rows of those events, ascending: every row of the room above
    /// `floor` is here too (a row is written in its event's transaction and added with it).
    push: VecDeque<Arc<RecentPushRow>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Nothing is known at or below this position (it was written before start-up).
    floor: i64,
    /// The floor of rooms without a tail: raised when a tail is dropped to save memory.
    absent_rooms_floor: i64,
    rooms: HashMap<String, RoomTail>,
    events: usize,
    /// The sum of [`event_bytes`] over the events kept (a redaction's shrinking is ignored
    /// until the next drop).
    event_bytes: usize,
    /// The last position at which each user's account data changed.
    account_data: HashMap<String, i64>,
    /// Receipt moves, ascending by position (several may share one: a batch).
    receipts: Receipts,
    /// The last position at which each `(user, room)`'s `m.read` or `m.read.private`
    /// receipt (any thread) moved, for unread counts to know their read positions hold.
    read_receipts: HashMap<(String, String), i64>,
    /// Moves at or below this position may be missing from `read_receipts` (it starts over
    /// when full).
    read_receipts_floor: i64,
    /// Each user's memberships, as read from the database (see [`Generational`]).
    memberships: Generational<Vec<MembershipRow>>,
    /// The last position at which any membership changed (any room).
    last_membership: i64,
    /// The last position at which any device list changed (or a notice was written).
    last_device_list: i64,
    /// The last position of a to-device message to each user (recorded before commit: a
    /// rolled-back write only costs a needless read).
    to_device: HashMap<String, i64>,
    /// Up to where each `(user, device)` inbox is known to be acknowledged (emptied).
    to_device_acked: HashMap<(String, String), i64>,
    /// One-time key counts and unused fallback key types per `(user, device)`, with one
    /// generation for all: any key write clears them.
    key_counts: (u64, HashMap<(String, String), KeyCounts>),
    /// Each room's member rows `(user, membership, event ID)` (see [`Generational`]).
    room_members: Generational<RoomMembers>,
}

/// Recent receipt moves, each marked with the position of the move that superseded it (the
/// next move of the same `(room, user, type, thread)`), so that a reader can take the latest
/// move per key in a range without hashing every row.
#[derive(Debug, Default)]
struct Receipts {
    /// `(position, receipt, superseded at)`, ascending by position.
    moves: VecDeque<(i64, Arc<ReceiptRow>, Option<i64>)>,
    /// The sequence number of `moves[0]`; each move gets the next one.
    first_seq: u64,
    /// The sequence number of each key's latest move.
    latest: HashMap<ReceiptKey, u64>,
    /// Moves at or below this position may have been dropped.
    floor: i64,
}

/// What a receipt move replaces: `(room, user, type, thread)`.
type ReceiptKey = (String, String, String, String);

impl Receipts {
    fn key(row: &ReceiptRow) -> ReceiptKey {
        (
            row.room_id.clone(),
            row.user_id.clone(),
            row.receipt_type.clone(),
            row.thread_id.clone().unwrap_or_default(),
        )
    }

    fn push(&mut self, position: i64, row: &ReceiptRow) {
        let key = Self::key(row);
        let seq = self.first_seq + self.moves.len() as u64;
        if let Some(&previous) = self.latest.get(&key) {
            if let Some(entry) = previous
                .checked_sub(self.first_seq)
                .and_then(|i| self.moves.get_mut(i as usize))
            {
                if entry.0 == position {
                    // The same write moved it twice: the later row replaces the earlier.
                    entry.1 = Arc::new(row.clone());
                    return;
                }
                entry.2 = Some(position);
            }
        }
        self.latest.insert(key, seq);
        self.moves
            .push_back((position, Arc::new(row.clone()), None));
        while self.moves.len() > MAX_RECEIPTS {
            let Some((dropped, row, _)) = self.moves.pop_front() else {
                break;
            };
            let key = Self::key(&row);
            if self.latest.get(&key) == Some(&self.first_seq) {
                self.latest.remove(&key);
            }
            self.first_seq += 1;
            self.floor = self.floor.max(dropped);
        }
    }
}

/// Values read from the database per key, each with a generation that a write bumps (after
/// its commit): a reader takes the generation before it reads and stores what it read only if
/// the generation has not moved, so a read that raced a write is never kept.
#[derive(Debug)]
struct Generational<V> {
    entries: HashMap<String, (u64, Option<V>)>,
}

impl<V> Default for Generational<V> {
    fn default() -> Self {
        Generational {
            entries: HashMap::new(),
        }
    }
}

impl<V: Clone> Generational<V> {
    /// The cached value, or the generation to hand back to [`Self::store`].
    fn get(&self, key: &str) -> Result<V, u64> {
        match self.entries.get(key) {
            Some((_, Some(value))) => Ok(value.clone()),
            Some((generation, None)) => Err(*generation),
            None => Err(0),
        }
    }

    fn store(&mut self, key: &str, generation: u64, value: V) {
        let entry = self.entries.entry(key.to_owned()).or_insert((0, None));
        if entry.0 == generation {
            entry.1 = Some(value);
        }
    }

    fn invalidate(&mut self, key: &str) {
        let entry = self.entries.entry(key.to_owned()).or_insert((0, None));
        entry.0 += 1;
        entry.1 = None;
    }
}

/// One-time key counts per algorithm, and the algorithms of unused fallback keys.
pub(crate) type KeyCounts = (std::collections::BTreeMap<String, u64>, Vec<String>);

/// `(user_id, membership, event_id)` of every member row of a room.
pub(crate) type RoomMembers = std::sync::Arc<Vec<(String, String, String)>>;

/// See the module docs. A std mutex: every operation is a short map update.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    inner: Mutex<Inner>,
}

impl Recent {
    pub(crate) fn starting_at(position: i64) -> Self {
        Recent {
            inner: Mutex::new(Inner {
                floor: position,
                absent_rooms_floor: position,
                read_receipts_floor: position,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records committed events (ascending positions, one room) and their push rows.
    pub(crate) fn add_events(
        &self,
        room_id: &str,
        events: Vec<EventRow>,
        push_rows: Vec<RecentPushRow>,
    ) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let floor = inner.absent_rooms_floor;
        let tail = inner
            .rooms
            .entry(room_id.to_owned())
            .or_insert_with(|| RoomTail {
                floor,
                events: VecDeque::new(),
                push: VecDeque::new(),
            });
        for event in events {
            inner.event_bytes += event_bytes(&event);
            tail.events.push_back(event);
            inner.events += 1;
        }
        for row in push_rows {
            inner.event_bytes += push_row_bytes(&row);
            tail.push.push_back(Arc::new(row));
        }
        while tail.events.len() > EVENTS_PER_ROOM {
            if let Some(old) = tail.events.pop_front() {
                tail.floor = tail.floor.max(old.stream_ordering.unwrap_or(0));
                inner.events -= 1;
                inner.event_bytes = inner.event_bytes.saturating_sub(event_bytes(&old));
            }
        }
        while tail
            .push
            .front()
            .is_some_and(|row| row.stream_ordering <= tail.floor)
        {
            if let Some(old) = tail.push.pop_front() {
                inner.event_bytes = inner.event_bytes.saturating_sub(push_row_bytes(&old));
            }
        }
        if inner.events > MAX_EVENTS || inner.event_bytes > MAX_EVENT_BYTES {
            // Drop every tail; rooms start again from the highest position dropped.
            for (_, tail) in inner.rooms.drain() {
                if let Some(last) = tail.events.back() {
                    inner.absent_rooms_floor = inner
                        .absent_rooms_floor
                        .max(last.stream_ordering.unwrap_or(0));
                }
            }
            inner.events = 0;
            inner.event_bytes = 0;
        }
    }

    /// Up to `limit` of the room's events with `after < position <= upto`, newest first; `None`
    /// when some of that range may be missing here.
    pub(crate) fn room_events(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Option<Vec<EventRow>> {
        let inner = self.lock();
        match inner.rooms.get(room_id) {
            Some(tail) if after >= tail.floor => Some(
                tail.events
                    .iter()
                    .rev()
                    .filter(|e| {
                        let p = e.stream_ordering.unwrap_or(0);
                        p > after && p <= upto
                    })
                    .take(limit)
                    .cloned()
                    .collect(),
            ),
            None if after >= inner.absent_rooms_floor => Some(Vec::new()),
            _ => None,
        }
    }

    /// The room's `push_events` rows with `after < position <= upto`, ascending; `None` when
    /// some of that range may be missing here.
    pub(crate) fn push_rows(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
    ) -> Option<Vec<Arc<RecentPushRow>>> {
        let inner = self.lock();
        match inner.rooms.get(room_id) {
            Some(tail) if after >= tail.floor => Some(
                tail.push
                    .iter()
                    .filter(|r| r.stream_ordering > after && r.stream_ordering <= upto)
                    .cloned()
                    .collect(),
            ),
            None if after >= inner.absent_rooms_floor => Some(Vec::new()),
            _ => None,
        }
    }

    /// Applies a redaction to a cached event.
    pub(crate) fn redact(&self, event_id: &str, redacted_pdu: &str, redacted_by: &str) {
        let mut inner = self.lock();
        for tail in inner.rooms.values_mut() {
            if let Some(event) = tail.events.iter_mut().find(|e| e.event_id == event_id) {
                event.pdu = redacted_pdu.to_owned();
                event.redacted_by = Some(redacted_by.to_owned());
                return;
            }
        }
    }

    pub(crate) fn account_data_changed(&self, user_id: &str, position: i64) {
        let mut inner = self.lock();
        let last = inner.account_data.entry(user_id.to_owned()).or_default();
        *last = (*last).max(position);
    }

    /// Whether the user's account data is known not to have changed in `(after, ∞)`.
    pub(crate) fn account_data_unchanged_since(&self, user_id: &str, after: i64) -> bool {
        let inner = self.lock();
        after >= inner.floor && inner.account_data.get(user_id).is_none_or(|&p| p <= after)
    }

    /// Receipts written at `position` (after their commit, before the position leaves
    /// flight).
    pub(crate) fn receipts_moved(&self, position: i64, rows: &[ReceiptRow]) {
        let mut inner = self.lock();
        for row in rows {
            inner.receipts.push(position, row);
            if row.receipt_type == "m.read" || row.receipt_type == "m.read.private" {
                if inner.read_receipts.len() >= MAX_READ_RECEIPTS {
                    // Start over: what was forgotten moved at or below this position.
                    inner.read_receipts.clear();
                    inner.read_receipts_floor = inner.read_receipts_floor.max(position);
                }
                let last = inner
                    .read_receipts
                    .entry((row.user_id.clone(), row.room_id.clone()))
                    .or_default();
                *last = (*last).max(position);
            }
        }
    }

    /// Whether the user's `m.read` / `m.read.private` receipts in the room (any thread) are
    /// known not to have moved in `(after, ∞)`.
    pub(crate) fn read_receipts_unmoved_since(
        &self,
        user_id: &str,
        room_id: &str,
        after: i64,
    ) -> bool {
        let inner = self.lock();
        after >= inner.floor
            && after >= inner.read_receipts_floor
            && inner
                .read_receipts
                .get(&(user_id.to_owned(), room_id.to_owned()))
                .is_none_or(|&p| p <= after)
    }

    /// The receipts that moved in `(after, upto]`, the latest move of each
    /// `(room, user, type, thread)` only; `None` if that reaches below what is kept.
    pub(crate) fn receipts_in_range(&self, after: i64, upto: i64) -> Option<Vec<Arc<ReceiptRow>>> {
        let inner = self.lock();
        if after < inner.floor || after < inner.receipts.floor {
            return None;
        }
        let mut rows: Vec<Arc<ReceiptRow>> = inner
            .receipts
            .moves
            .iter()
            .rev()
            .skip_while(|(position, _, _)| *position > upto)
            .take_while(|(position, _, _)| *position > after)
            // A move superseded within the range is left out: the later one is in it.
            .filter(|(_, _, superseded)| superseded.is_none_or(|p| p > upto))
            .map(|(_, r, _)| r.clone())
            .collect();
        rows.reverse();
        Some(rows)
    }

    /// The user's cached memberships, or the generation to hand back to
    /// [`Self::store_memberships`] after reading them from the database.
    pub(crate) fn memberships(&self, user_id: &str) -> Result<Vec<MembershipRow>, u64> {
        self.lock().memberships.get(user_id)
    }

    /// Stores memberships read from the database, unless they changed since the read began.
    pub(crate) fn store_memberships(&self, user_id: &str, generation: u64, rows: &[MembershipRow]) {
        self.lock()
            .memberships
            .store(user_id, generation, rows.to_vec());
    }

    pub(crate) fn membership_changed_at(&self, position: i64) {
        let mut inner = self.lock();
        inner.last_membership = inner.last_membership.max(position);
    }

    pub(crate) fn device_list_changed_at(&self, position: i64) {
        let mut inner = self.lock();
        inner.last_device_list = inner.last_device_list.max(position);
    }

    /// Whether no device list and no membership is known to have changed in `(after, ∞)`:
    /// then nobody's `device_lists` section can have anything.
    pub(crate) fn device_lists_unchanged_since(&self, after: i64) -> bool {
        let inner = self.lock();
        after >= inner.floor && inner.last_device_list <= after && inner.last_membership <= after
    }

    pub(crate) fn to_device_sent(&self, user_id: &str, position: i64) {
        let mut inner = self.lock();
        let last = inner.to_device.entry(user_id.to_owned()).or_default();
        *last = (*last).max(position);
    }

    /// Whether the user's devices are known to have no message in `(after, ∞)`.
    pub(crate) fn to_device_none_since(&self, user_id: &str, after: i64) -> bool {
        let inner = self.lock();
        after >= inner.floor && inner.to_device.get(user_id).is_none_or(|&p| p <= after)
    }

    /// Whether the device's inbox may hold messages to acknowledge.
    pub(crate) fn to_device_ack_needed(&self, user_id: &str, device_id: &str) -> bool {
        let inner = self.lock();
        match inner
            .to_device_acked
            .get(&(user_id.to_owned(), device_id.to_owned()))
        {
            // Never emptied since start-up: older messages may wait in the database.
            None => true,
            Some(&acked) => inner.to_device.get(user_id).is_some_and(|&p| p > acked),
        }
    }

    /// The device's inbox holds nothing at or below `upto` any more.
    pub(crate) fn to_device_acked(&self, user_id: &str, device_id: &str, upto: i64) {
        let mut inner = self.lock();
        let acked = inner
            .to_device_acked
            .entry((user_id.to_owned(), device_id.to_owned()))
            .or_default();
        *acked = (*acked).max(upto);
    }

    /// Cached key counts, or the generation to hand back to [`Self::store_key_counts`].
    pub(crate) fn key_counts(&self, user_id: &str, device_id: &str) -> Result<KeyCounts, u64> {
        let inner = self.lock();
        inner
            .key_counts
            .1
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .cloned()
            .ok_or(inner.key_counts.0)
    }

    pub(crate) fn store_key_counts(
        &self,
        user_id: &str,
        device_id: &str,
        generation: u64,
        counts: &KeyCounts,
    ) {
        let mut inner = self.lock();
        if inner.key_counts.0 == generation {
            if inner.key_counts.1.len() >= 100_000 {
                inner.key_counts.1.clear();
            }
            inner
                .key_counts
                .1
                .insert((user_id.to_owned(), device_id.to_owned()), counts.clone());
        }
    }

    /// Some one-time or fallback keys changed (upload, claim, device deletion).
    pub(crate) fn key_counts_changed(&self) {
        let mut inner = self.lock();
        inner.key_counts.0 += 1;
        inner.key_counts.1.clear();
    }

    /// The room's cached member rows, or the generation to hand back to
    /// [`Self::store_room_members`].
    pub(crate) fn room_members(&self, room_id: &str) -> Result<RoomMembers, u64> {
        self.lock().room_members.get(room_id)
    }

    /// Stores a room's member rows read from the database, unless they changed meanwhile.
    pub(crate) fn store_room_members(&self, room_id: &str, generation: u64, rows: RoomMembers) {
        self.lock().room_members.store(room_id, generation, rows);
    }

    /// Forgets a room's member rows after a membership change in it.
    pub(crate) fn room_members_changed(&self, room_id: &str) {
        self.lock().room_members.invalidate(room_id);
    }

    /// Forgets a user's memberships after a change to them.
    pub(crate) fn memberships_changed(&self, user_id: &str) {
        self.lock().memberships.invalidate(user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64) -> EventRow {
        EventRow {
            event_id: format!("$e{position}"),
            room_id: "!r:x".into(),
            stream_ordering: Some(position),
            depth: position,
            event_type: "m.room.message".into(),
            state_key: None,
            sender: "@a:x".into(),
            origin_server_ts: 0,
            pdu: "{}".into(),
            state_before: Some(1),
            state_after: Some(1),
            rejected: false,
            redacted_by: None,
            replaces_state: None,
        }
    }

    fn positions(events: &[EventRow]) -> Vec<i64> {
        events.iter().filter_map(|e| e.stream_ordering).collect()
    }

    #[test]
    fn room_events_are_served_only_above_the_floor() {
        let recent = Recent::starting_at(10);
        // Below the start-up floor nothing is known.
        assert!(recent.room_events("!r:x", 5, 20, 10).is_none());
        // A room with no events since start-up has none.
        assert_eq!(
            recent.room_events("!r:x", 10, 20, 10).map(|e| e.len()),
            Some(0)
        );
        recent.add_events("!r:x", vec![event(11), event(12), event(14)], Vec::new());
        let got = recent.room_events("!r:x", 10, 13, 10).unwrap();
        assert_eq!(
            positions(&got),
            vec![12, 11],
            "newest first, capped at upto"
        );
        let got = recent.room_events("!r:x", 11, 20, 1).unwrap();
        assert_eq!(positions(&got), vec![14], "limit keeps the newest");
    }

    #[test]
    fn eviction_raises_the_floor() {
        let recent = Recent::starting_at(0);
        let events: Vec<EventRow> = (1..=(EVENTS_PER_ROOM as i64 + 5)).map(event).collect();
        recent.add_events("!r:x", events, Vec::new());
        assert!(recent.room_events("!r:x", 0, 100, 10).is_none());
        assert!(recent.room_events("!r:x", 4, 100, 10).is_none());
        let got = recent.room_events("!r:x", 5, 100, 100).unwrap();
        assert_eq!(got.len(), EVENTS_PER_ROOM);
    }

    #[test]
    fn large_events_are_bounded_by_bytes() {
        let recent = Recent::starting_at(0);
        // 64 KiB events in many rooms: far fewer than MAX_EVENTS, but more bytes than allowed.
        let rooms = MAX_EVENT_BYTES / (64 * 1024) + 10;
        for i in 0..rooms as i64 {
            let mut row = event(i + 1);
            row.pdu = "x".repeat(64 * 1024);
            recent.add_events(&format!("!r{i}:x"), vec![row], Vec::new());
            let inner = recent.lock();
            assert!(inner.event_bytes <= MAX_EVENT_BYTES + 128 * 1024);
        }
        // Dropped tails are read from the database again, never answered wrongly.
        assert!(recent.room_events("!r0:x", 0, i64::MAX, 10).is_none());
    }

    #[test]
    fn account_data_and_receipts_know_what_did_not_change() {
        let recent = Recent::starting_at(10);
        assert!(!recent.account_data_unchanged_since("@a:x", 9));
        assert!(recent.account_data_unchanged_since("@a:x", 10));
        recent.account_data_changed("@a:x", 15);
        assert!(!recent.account_data_unchanged_since("@a:x", 14));
        assert!(recent.account_data_unchanged_since("@a:x", 15));
        assert!(recent.account_data_unchanged_since("@b:x", 12));
    }

    fn receipt(user: &str, event: &str) -> ReceiptRow {
        ReceiptRow {
            room_id: "!r:x".into(),
            user_id: user.into(),
            receipt_type: "m.read".into(),
            thread_id: None,
            event_id: event.into(),
            ts: 1,
        }
    }

    #[test]
    fn receipts_are_served_from_memory_above_the_floor_latest_move_only() {
        let recent = Recent::starting_at(10);
        assert_eq!(recent.receipts_in_range(9, 20), None);
        assert_eq!(recent.receipts_in_range(10, 20), Some(Vec::new()));
        recent.receipts_moved(12, &[receipt("@a:x", "$1"), receipt("@b:x", "$1")]);
        recent.receipts_moved(14, &[receipt("@a:x", "$2")]);
        let users = |rows: Vec<Arc<ReceiptRow>>| -> Vec<(String, String)> {
            rows.into_iter()
                .map(|r| (r.user_id.clone(), r.event_id.clone()))
                .collect()
        };
        assert_eq!(
            users(recent.receipts_in_range(10, 20).unwrap()),
            vec![("@b:x".into(), "$1".into()), ("@a:x".into(), "$2".into())]
        );
        // A range ending before the later move sees the earlier one.
        assert_eq!(
            users(recent.receipts_in_range(10, 13).unwrap()),
            vec![("@a:x".into(), "$1".into()), ("@b:x".into(), "$1".into())]
        );
        assert!(recent.receipts_in_range(14, 20).unwrap().is_empty());
    }

    #[test]
    fn a_key_moved_twice_at_one_position_keeps_the_later_row() {
        let recent = Recent::starting_at(0);
        recent.receipts_moved(5, &[receipt("@a:x", "$1"), receipt("@a:x", "$2")]);
        let rows = recent.receipts_in_range(0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_id, "$2");
    }

    #[test]
    fn dropping_old_receipts_raises_their_floor() {
        let recent = Recent::starting_at(0);
        for position in 1..=(MAX_RECEIPTS as i64 + 1) {
            recent.receipts_moved(position, &[receipt("@a:x", "$e")]);
        }
        assert_eq!(recent.receipts_in_range(0, i64::MAX), None);
        assert_eq!(
            recent.receipts_in_range(1, i64::MAX).map(|r| r.len()),
            Some(1)
        );
    }

    fn push_row(position: i64) -> RecentPushRow {
        RecentPushRow {
            stream_ordering: position,
            thread_id: "main".into(),
            recipients: "[]".into(),
        }
    }

    #[test]
    fn push_rows_are_served_only_above_the_room_floor() {
        let recent = Recent::starting_at(10);
        assert!(recent.push_rows("!r:x", 9, 20).is_none(), "before start-up");
        assert_eq!(recent.push_rows("!r:x", 10, 20), Some(Vec::new()));
        let events = (11..=10 + EVENTS_PER_ROOM as i64 + 2).map(event).collect();
        // Rows of the first two events and the last: the first two fall out with their events.
        let last = 10 + EVENTS_PER_ROOM as i64 + 2;
        recent.add_events(
            "!r:x",
            events,
            vec![push_row(11), push_row(12), push_row(last)],
        );
        assert!(
            recent.push_rows("!r:x", 11, last).is_none(),
            "below the floor"
        );
        let got = recent.push_rows("!r:x", 12, last).unwrap();
        assert_eq!(
            got.iter().map(|r| r.stream_ordering).collect::<Vec<_>>(),
            vec![last]
        );
        assert!(recent.push_rows("!r:x", 12, last - 1).unwrap().is_empty());
        assert_eq!(
            recent.lock().rooms["!r:x"].push.len(),
            1,
            "evicted rows are dropped"
        );
    }

    #[test]
    fn read_receipt_moves_are_known_per_user_and_room() {
        let recent = Recent::starting_at(10);
        assert!(
            !recent.read_receipts_unmoved_since("@a:x", "!r:x", 9),
            "before start-up"
        );
        assert!(recent.read_receipts_unmoved_since("@a:x", "!r:x", 10));
        let mut private = receipt("@a:x", "$1");
        private.receipt_type = "m.read.private".into();
        private.thread_id = Some("$root".into());
        recent.receipts_moved(12, &[private]);
        let mut delivered = receipt("@b:x", "$1");
        delivered.receipt_type = "m.delivered".into();
        recent.receipts_moved(13, &[delivered]);
        assert!(!recent.read_receipts_unmoved_since("@a:x", "!r:x", 11));
        assert!(recent.read_receipts_unmoved_since("@a:x", "!r:x", 12));
        assert!(recent.read_receipts_unmoved_since("@a:x", "!other:x", 11));
        assert!(
            recent.read_receipts_unmoved_since("@b:x", "!r:x", 10),
            "other receipt types do not move read positions"
        );
    }

    #[test]
    fn a_full_read_receipt_map_starts_over_above_a_floor() {
        let recent = Recent::starting_at(0);
        for i in 0..MAX_READ_RECEIPTS as i64 {
            recent.receipts_moved(i + 1, &[receipt(&format!("@u{i}:x"), "$e")]);
        }
        assert!(!recent.read_receipts_unmoved_since("@u0:x", "!r:x", 0));
        recent.receipts_moved(MAX_READ_RECEIPTS as i64 + 1, &[receipt("@new:x", "$e")]);
        // @u0's move was forgotten: below the new floor nothing is known.
        assert!(!recent.read_receipts_unmoved_since("@u0:x", "!r:x", 5));
        assert!(recent.read_receipts_unmoved_since("@u0:x", "!r:x", MAX_READ_RECEIPTS as i64 + 1));
    }

    #[test]
    fn to_device_acknowledgements_are_skipped_only_when_nothing_arrived() {
        let recent = Recent::starting_at(10);
        assert!(
            recent.to_device_ack_needed("@a:x", "D"),
            "unknown since start-up"
        );
        recent.to_device_acked("@a:x", "D", 12);
        assert!(!recent.to_device_ack_needed("@a:x", "D"));
        recent.to_device_sent("@a:x", 13);
        assert!(recent.to_device_ack_needed("@a:x", "D"));
        assert!(!recent.to_device_none_since("@a:x", 12));
        assert!(recent.to_device_none_since("@a:x", 13));
        recent.to_device_acked("@a:x", "D", 13);
        assert!(!recent.to_device_ack_needed("@a:x", "D"));
    }

    #[test]
    fn device_lists_follow_memberships_and_device_changes() {
        let recent = Recent::starting_at(10);
        assert!(!recent.device_lists_unchanged_since(9));
        assert!(recent.device_lists_unchanged_since(10));
        recent.membership_changed_at(11);
        assert!(!recent.device_lists_unchanged_since(10));
        recent.device_list_changed_at(12);
        assert!(!recent.device_lists_unchanged_since(11));
        assert!(recent.device_lists_unchanged_since(12));
    }

    #[test]
    fn a_read_racing_a_change_is_not_stored() {
        let recent = Recent::starting_at(0);
        let generation = recent.memberships("@a:x").unwrap_err();
        recent.memberships_changed("@a:x"); // a write lands while the read is in progress
        recent.store_memberships("@a:x", generation, &[]);
        assert!(recent.memberships("@a:x").is_err(), "stale read was stored");
        let generation = recent.memberships("@a:x").unwrap_err();
        recent.store_memberships("@a:x", generation, &[]);
        assert_eq!(recent.memberships("@a:x").unwrap().len(), 0);
    }
}
