//! Push actions (migrations 0010, 0014): which local users an event notifies or highlights,
//! written with the event (`persist_events`) as one `push_events` row, and what follows from
//! them: unread counts, `/notifications`, the pusher's queue, and the bounding of the table.
//!
//! A row's `recipients` is JSON: the users it notifies or highlights, grouped by the actions
//! their rules chose (see [`encode_recipients`]). Every read is for one user: it loads where
//! the user has read up to in each of their rooms ([`RoomReads`]), scans those rooms' rows
//! after that position (the `(room_id, stream_ordering)` index), and picks the user's group
//! out of each row.
//!
//! A row is *read* for a user when their newest `m.read` or `m.read.private` receipt in its
//! room, unthreaded or of the row's thread, is at or after it in the stream (without a
//! receipt: when their join is). The receipts are not copied here, so a receipt clears counts
//! in the receipt's own transaction and nothing can disagree after a restart.
//!
//! Unread counts are kept per process in [`CountCache`] for the rooms a sync counted (the
//! rooms it answers with). The next count of a room reads nothing from the database when
//! the cache of recent changes (`recent.rs`) shows that the user's read receipts there did
//! not move since and holds the rows that arrived since: then the cached read positions and
//! counts stand, plus what the new rows say. Rows at or below a safe stream position never
//! change but by deletion of read ones, so the entry is a cache of what the rows say; it
//! shares `recent.rs`'s assumption of one writing process (several need that cache to learn
//! of each other's receipts and events first; until then each would count from the
//! database, which is where every miss goes).

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::{Any, Row, Transaction};

use crate::{
    rooms::{placeholders_from, value_rows},
    Error, Result, Storage,
};

/// What the push rules of one user decided for a new event (only events that notify or
/// highlight have one).
#[derive(Debug, Clone)]
pub struct NewPushAction {
    pub user_id: String,
    pub notify: bool,
    pub highlight: bool,
    /// The matched rule's actions, as JSON.
    pub actions: String,
}

/// Unread counts of one thread (`"main"` for the main timeline) of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadCount {
    pub room_id: String,
    pub thread_id: String,
    pub notifications: i64,
    pub highlights: i64,
}

/// One row of `/notifications`.
#[derive(Debug, Clone)]
pub struct NotificationRow {
    pub stream_ordering: i64,
    pub room_id: String,
    pub event_id: String,
    pub actions: String,
    pub ts: i64,
    pub read: bool,
}

/// One notification due to a pusher.
#[derive(Debug, Clone)]
pub struct PendingPush {
    pub stream_ordering: i64,
    pub room_id: String,
    pub event_id: String,
    /// The matched rule's actions, as JSON (the tweaks are sent to the gateway).
    pub actions: String,
    pub highlight: bool,
}

/// Events per insert statement (6 parameters each).
const INSERT_CHUNK: usize = 500;
/// Rooms per scanning statement (2 parameters each).
const SCAN_ROOMS: usize = 200;
/// Rows per room and round when a read stops at a limit (`pending_pushes`, `notifications`).
const SCAN_ROWS: i64 = 500;
/// Cached (user, room) entries before the cache starts over: a few hundred bytes each, so at
/// most some tens of MiB.
const CACHE_ENTRIES: usize = 100_000;

/// Read rows are kept this long for `/notifications`, then deleted.
pub const READ_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
/// Every row is deleted after this long, read or not (as Synapse does).
pub const RETENTION_MS: i64 = 30 * 24 * 60 * 60 * 1000;

// ---------------------------------------------------------------------------------------------
// The recipients column

/// One group of the `recipients` JSON, as read.
#[derive(Deserialize)]
struct Group<'a> {
    #[serde(borrow)]
    a: &'a RawValue,
    n: u8,
    h: u8,
    #[serde(borrow)]
    u: Vec<Cow<'a, str>>,
}

/// What an event's row says for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recipient<'a> {
    pub notify: bool,
    pub highlight: bool,
    /// The actions, as JSON.
    pub actions: &'a str,
}

/// The `recipients` JSON of one event: its actions grouped by equal outcome, in the order the
/// users came. Fails only if an action list is not JSON (the pipeline makes them with serde).
pub(crate) fn encode_recipients(actions: &[NewPushAction]) -> Result<String> {
    let mut groups: Vec<(&NewPushAction, Vec<&str>)> = Vec::new();
    for action in actions {
        match groups.iter_mut().find(|(first, _)| {
            first.actions == action.actions
                && first.notify == action.notify
                && first.highlight == action.highlight
        }) {
            Some((_, users)) => users.push(&action.user_id),
            None => groups.push((action, vec![&action.user_id])),
        }
    }
    let mut out = String::from("[");
    for (i, (first, users)) in groups.iter().enumerate() {
        let raw: &RawValue = serde_json::from_str(&first.actions)
            .map_err(|e| Error::Corrupt(format!("push actions are not JSON: {e}")))?;
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"a\":");
        out.push_str(raw.get());
        out.push_str(&format!(
            ",\"n\":{},\"h\":{},\"u\":",
            u8::from(first.notify),
            u8::from(first.highlight)
        ));
        out.push_str(&serde_json::to_string(users).map_err(|e| Error::Corrupt(e.to_string()))?);
        out.push('}');
    }
    out.push(']');
    Ok(out)
}

/// What `recipients` says for `user`, if they are among them.
pub(crate) fn recipient<'a>(recipients: &'a str, user: &str) -> Result<Option<Recipient<'a>>> {
    // Most rows of a user's rooms are not theirs (their own messages, say): a user ID that
    // JSON writes as is must appear quoted in the text, or the row is not theirs.
    if !user.contains(['"', '\\']) && !user.chars().any(char::is_control) {
        let quoted = format!("\"{user}\"");
        if !recipients.contains(&quoted) {
            return Ok(None);
        }
    }
    let groups: Vec<Group<'a>> = serde_json::from_str(recipients)
        .map_err(|e| Error::Corrupt(format!("push_events.recipients: {e}")))?;
    Ok(groups
        .into_iter()
        .find(|g| g.u.iter().any(|u| u == user))
        .map(|g| Recipient {
            notify: g.n != 0,
            highlight: g.h != 0,
            actions: g.a.get(),
        }))
}

// ---------------------------------------------------------------------------------------------
// Where a user has read up to

/// Where one user has read up to in one room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoomReads {
    /// The newest unthreaded `m.read` / `m.read.private` receipt's event position.
    pub unthreaded: Option<i64>,
    /// The newest threaded receipt's event position, per thread (`main` among them).
    pub threads: BTreeMap<String, i64>,
    /// The user's join, while joined.
    pub join: Option<i64>,
}

impl RoomReads {
    /// The position up to which a row of `thread` is read: the newest receipt covering it;
    /// without one, the join (as Synapse counts: what came before joining, the invite among
    /// it, is not unread once they are in the room); 0 if neither.
    pub fn upto(&self, thread: &str) -> i64 {
        let receipt = match (self.unthreaded, self.threads.get(thread)) {
            (Some(a), Some(b)) => Some(a.max(*b)),
            (a, b) => a.or(b.copied()),
        };
        receipt.or(self.join).unwrap_or(0)
    }

    /// The lowest [`upto`](Self::upto) of any thread: rows at or below it are read.
    pub fn lowest(&self) -> i64 {
        let base = self.unthreaded.or(self.join).unwrap_or(0);
        self.threads
            .keys()
            .map(|t| self.upto(t))
            .fold(base, i64::min)
    }

    /// Whether a row of `thread` at `position` is read.
    pub fn is_read(&self, thread: &str, position: i64) -> bool {
        position <= self.upto(thread)
    }
}

/// A row of `push_events`.
#[derive(Debug, Clone)]
struct PushRow {
    stream_ordering: i64,
    room_id: String,
    event_id: String,
    thread_id: String,
    recipients: String,
    ts: i64,
}

/// Adds what `rows` (of one room) say for `user` to `counts` (per thread: notifications,
/// highlights): rows that notify or highlight the user and are not read.
pub(crate) fn count_rows<'r>(
    rows: impl IntoIterator<Item = (i64, &'r str, &'r str)>,
    user: &str,
    reads: &RoomReads,
    counts: &mut BTreeMap<String, (i64, i64)>,
) -> Result<()> {
    for (position, thread, recipients) in rows {
        if reads.is_read(thread, position) {
            continue;
        }
        if let Some(r) = recipient(recipients, user)? {
            if r.notify || r.highlight {
                let entry = counts.entry(thread.to_owned()).or_default();
                entry.0 += i64::from(r.notify);
                entry.1 += i64::from(r.highlight);
            }
        }
    }
    Ok(())
}

/// Unread counts of one user in one room, as far as `scanned_upto`, from `reads`.
#[derive(Debug, Clone)]
struct CachedCounts {
    reads: RoomReads,
    scanned_upto: i64,
    counts: BTreeMap<String, (i64, i64)>,
}

/// Per-process cache of unread counts for rooms with unread rows (see the module
/// documentation). Starts over when it holds [`CACHE_ENTRIES`].
#[derive(Debug, Default)]
pub(crate) struct CountCache {
    rooms: Mutex<HashMap<(String, String), CachedCounts>>,
}

impl CountCache {
    fn get(&self, user: &str, room: &str) -> Option<CachedCounts> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.get(&(user.to_owned(), room.to_owned())).cloned()
    }

    fn put(&self, user: &str, room: &str, entry: CachedCounts) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if rooms.len() >= CACHE_ENTRIES {
            rooms.clear();
        }
        let key = (user.to_owned(), room.to_owned());
        match rooms.get(&key) {
            // A concurrent count at a later position already went further.
            Some(old) if old.reads == entry.reads && old.scanned_upto > entry.scanned_upto => {}
            _ => {
                rooms.insert(key, entry);
            }
        }
    }
}

/// Inserts the push rows of a batch of events: `(position, event ID, thread, recipients)`
/// (see [`encode_recipients`]), one per event that notifies or highlights anyone.
pub(crate) async fn insert_push_rows(
    tx: &mut Transaction<'static, Any>,
    room_id: &str,
    rows: &[(i64, &str, &str, &str)],
    now: i64,
) -> Result<()> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO push_events (stream_ordering, room_id, event_id, thread_id, recipients, ts)
             VALUES {}",
            value_rows(chunk.len(), 6)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for (position, event_id, thread_id, recipients) in chunk {
            query = query
                .bind(*position)
                .bind(room_id)
                .bind(*event_id)
                .bind(*thread_id)
                .bind(*recipients)
                .bind(now);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// What the cache of recent changes keeps of a new `push_events` row (see `recent.rs`):
/// enough to count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecentPushRow {
    pub stream_ordering: i64,
    pub thread_id: String,
    pub recipients: String,
}

/// Which of the user's rooms a read looks at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rooms {
    /// Joined or invited to (what a pusher sends).
    JoinedOrInvited,
    /// Every room they have a membership in (`/notifications`).
    All,
}

impl Storage {
    /// Where `user` has read up to in each of their rooms that `which` selects.
    async fn room_reads(&self, user: &str, which: Rooms) -> Result<BTreeMap<String, RoomReads>> {
        Ok(self.room_reads_and_invites(user, which).await?.0)
    }

    /// [`Self::room_reads`], and how many rooms the user is invited to.
    async fn room_reads_and_invites(
        &self,
        user: &str,
        which: Rooms,
    ) -> Result<(BTreeMap<String, RoomReads>, i64)> {
        let rows = sqlx::query(
            "SELECT room_id, membership, stream_ordering FROM room_memberships WHERE user_id = $1",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        let mut reads = BTreeMap::new();
        let mut invites = 0;
        for row in &rows {
            let membership: String = row.try_get("membership")?;
            invites += i64::from(membership == "invite");
            let wanted = match which {
                Rooms::JoinedOrInvited => membership == "join" || membership == "invite",
                Rooms::All => true,
            };
            if wanted {
                let room_id: String = row.try_get("room_id")?;
                let join = (membership == "join")
                    .then(|| row.try_get::<i64, _>("stream_ordering"))
                    .transpose()?;
                reads.insert(
                    room_id,
                    RoomReads {
                        join,
                        ..RoomReads::default()
                    },
                );
            }
        }
        self.read_receipt_positions(user, &mut reads).await?;
        Ok((reads, invites))
    }

    /// Fills in `reads` where `user` has read up to, by their newest `m.read` or
    /// `m.read.private` receipt in each room and thread.
    async fn read_receipt_positions(
        &self,
        user: &str,
        reads: &mut BTreeMap<String, RoomReads>,
    ) -> Result<()> {
        let rooms: Vec<String> = reads.keys().cloned().collect();
        for chunk in rooms.chunks(SCAN_ROOMS) {
            let sql = format!(
                "SELECT r.room_id, r.thread_id, MAX(e.stream_ordering) AS position
                 FROM receipts r JOIN events e ON e.event_id = r.event_id
                 WHERE r.user_id = $1 AND r.room_id IN ({})
                   AND r.receipt_type IN ('m.read', 'm.read.private')
                 GROUP BY r.room_id, r.thread_id",
                placeholders_from(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(user);
            for room in chunk {
                query = query.bind(room.as_str());
            }
            for row in query.fetch_all(&self.pool).await? {
                let room_id: String = row.try_get("room_id")?;
                let thread: String = row.try_get("thread_id")?;
                let Some(position) = row.try_get::<Option<i64>, _>("position")? else {
                    continue;
                };
                if let Some(reads) = reads.get_mut(&room_id) {
                    if thread.is_empty() {
                        reads.unthreaded = Some(position);
                    } else {
                        reads.threads.insert(thread, position);
                    }
                }
            }
        }
        Ok(())
    }

    /// The rows of each `(room, after)` range below `before`, in stream order (newest first
    /// if `newest_first`), at most `per_room` of each room. Rooms come back in any order.
    async fn scan_push_events(
        &self,
        ranges: &[(&str, i64)],
        before: i64,
        newest_first: bool,
        per_room: i64,
    ) -> Result<Vec<PushRow>> {
        let order = if newest_first { "DESC" } else { "ASC" };
        let mut out = Vec::new();
        for chunk in ranges.chunks(SCAN_ROOMS) {
            let sql = (0..chunk.len())
                .map(|i| {
                    let room = 3 + 2 * i;
                    format!(
                        "SELECT * FROM (SELECT stream_ordering, room_id, event_id, thread_id,
                                               recipients, ts
                                        FROM push_events
                                        WHERE room_id = ${room} AND stream_ordering > ${after}
                                          AND stream_ordering < $1
                                        ORDER BY stream_ordering {order} LIMIT $2) AS q{i}",
                        after = room + 1
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(before)
                .bind(per_room);
            for (room, after) in chunk {
                query = query.bind(*room).bind(*after);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(PushRow {
                    stream_ordering: row.try_get("stream_ordering")?,
                    room_id: row.try_get("room_id")?,
                    event_id: row.try_get("event_id")?,
                    thread_id: row.try_get("thread_id")?,
                    recipients: row.try_get("recipients")?,
                    ts: row.try_get("ts")?,
                });
            }
        }
        Ok(out)
    }

    /// The user's unread counts at stream position `upto`, per room and thread, for rooms
    /// and threads with any (a room missing from the answer has none), in the rooms `joined`
    /// names, `(room, position of the join)`. The caller has read the memberships already (a
    /// sync has them), so the counts agree with the memberships it answers with.
    ///
    /// In the common case (a sync woken by a new message in a room counted before) this
    /// reads nothing from the database: the read positions come from the [`CountCache`]
    /// entry as long as the cache of recent changes saw no read receipt of the user's in the
    /// room since, and the new rows from that cache too (see `recent.rs`).
    pub async fn unread_counts_in(
        &self,
        user_id: &str,
        upto: i64,
        joined: &[(&str, i64)],
    ) -> Result<Vec<UnreadCount>> {
        let mut reads: BTreeMap<String, RoomReads> = BTreeMap::new();
        let mut unknown: BTreeMap<String, RoomReads> = BTreeMap::new();
        for (room, join) in joined {
            match self.counts.get(user_id, room) {
                Some(c)
                    if c.reads.join == Some(*join)
                        && c.scanned_upto <= upto
                        && self.recent.read_receipts_unmoved_since(
                            user_id,
                            room,
                            c.scanned_upto,
                        ) =>
                {
                    reads.insert(room.to_string(), c.reads);
                }
                _ => {
                    let reads = RoomReads {
                        join: Some(*join),
                        ..RoomReads::default()
                    };
                    unknown.insert(room.to_string(), reads);
                }
            }
        }
        if !unknown.is_empty() {
            self.read_receipt_positions(user_id, &mut unknown).await?;
            reads.append(&mut unknown);
        }
        self.unread_counts_with(user_id, upto, &reads).await
    }

    /// [`Self::unread_counts_in`] in the rooms of `reads` (the joined ones count).
    async fn unread_counts_with(
        &self,
        user_id: &str,
        upto: i64,
        reads: &BTreeMap<String, RoomReads>,
    ) -> Result<Vec<UnreadCount>> {
        let mut counts: BTreeMap<&str, BTreeMap<String, (i64, i64)>> = BTreeMap::new();
        let mut ranges: Vec<(&str, i64)> = Vec::new();
        let mut from_cache: Vec<&str> = Vec::new();
        // Rows per room, from memory where the cache of recent changes has them.
        let mut scanned: BTreeMap<&str, usize> = BTreeMap::new();
        let reads: BTreeMap<&str, &RoomReads> = reads
            .iter()
            .filter(|(_, r)| r.join.is_some())
            .map(|(room, r)| (room.as_str(), r))
            .collect();
        for (&room, &room_reads) in &reads {
            let (after, mut base) = match self.counts.get(user_id, room) {
                Some(c) if c.reads == *room_reads && c.scanned_upto <= upto => {
                    from_cache.push(room);
                    (c.scanned_upto, c.counts)
                }
                _ => (room_reads.lowest(), BTreeMap::new()),
            };
            if after < upto {
                match self.recent.push_rows(room, after, upto) {
                    Some(rows) => {
                        count_rows(
                            rows.iter().map(|r| {
                                (
                                    r.stream_ordering,
                                    r.thread_id.as_str(),
                                    r.recipients.as_str(),
                                )
                            }),
                            user_id,
                            room_reads,
                            &mut base,
                        )?;
                        scanned.insert(room, rows.len());
                    }
                    None => ranges.push((room, after)),
                }
            }
            counts.insert(room, base);
        }
        let rows = self
            .scan_push_events(&ranges, upto.saturating_add(1), false, i64::MAX)
            .await?;
        let mut by_room: BTreeMap<&str, Vec<&PushRow>> = BTreeMap::new();
        for row in &rows {
            by_room.entry(row.room_id.as_str()).or_default().push(row);
        }
        for (room, room_rows) in &by_room {
            let (Some(room_reads), Some(room_counts)) =
                (reads.get(room).copied(), counts.get_mut(*room))
            else {
                continue;
            };
            count_rows(
                room_rows.iter().map(|r| {
                    (
                        r.stream_ordering,
                        r.thread_id.as_str(),
                        r.recipients.as_str(),
                    )
                }),
                user_id,
                room_reads,
                room_counts,
            )?;
            scanned.insert(room, room_rows.len());
        }
        // Remember every room counted: the next count of it reads nothing but what is new.
        // (Only rooms a sync answers with are counted, so idle rooms take no entry but at an
        // initial sync.)
        for (&room, &room_reads) in &reads {
            let unchanged = from_cache.contains(&room) && !scanned.contains_key(room);
            if !unchanged {
                self.counts.put(
                    user_id,
                    room,
                    CachedCounts {
                        reads: room_reads.clone(),
                        scanned_upto: upto,
                        counts: counts.get(room).cloned().unwrap_or_default(),
                    },
                );
            }
        }
        let mut out = Vec::new();
        for (room, threads) in counts {
            for (thread, (notifications, highlights)) in threads {
                if notifications > 0 || highlights > 0 {
                    out.push(UnreadCount {
                        room_id: room.to_owned(),
                        thread_id: thread,
                        notifications,
                        highlights,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The user's notifications, newest first, before stream position `before` (all when
    /// `None`), at most `limit`, only highlights if asked.
    pub async fn notifications(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: i64,
        only_highlight: bool,
    ) -> Result<Vec<NotificationRow>> {
        let reads = self.room_reads(user_id, Rooms::All).await?;
        let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut before = before.unwrap_or(i64::MAX);
        while out.len() < limit {
            let ranges: Vec<(&str, i64)> = reads.keys().map(|r| (r.as_str(), 0)).collect();
            let mut rows = self
                .scan_push_events(&ranges, before, true, SCAN_ROWS)
                .await?;
            if rows.is_empty() {
                break;
            }
            rows.sort_by_key(|r| std::cmp::Reverse(r.stream_ordering));
            // Complete down to the highest last row of a room that hit its limit.
            let floor = complete_floor(&rows, SCAN_ROWS, true);
            for row in &rows {
                if floor.is_some_and(|f| row.stream_ordering < f) || out.len() >= limit {
                    break;
                }
                let Some(r) = recipient(&row.recipients, user_id)? else {
                    continue;
                };
                let wanted = if only_highlight {
                    r.highlight
                } else {
                    r.notify || r.highlight
                };
                if !wanted {
                    continue;
                }
                let read = reads
                    .get(&row.room_id)
                    .is_some_and(|reads| reads.is_read(&row.thread_id, row.stream_ordering));
                out.push(NotificationRow {
                    stream_ordering: row.stream_ordering,
                    room_id: row.room_id.clone(),
                    event_id: row.event_id.clone(),
                    actions: r.actions.to_owned(),
                    ts: row.ts,
                    read,
                });
            }
            match floor {
                Some(f) => before = f,
                None => break,
            }
        }
        Ok(out)
    }

    /// The user's unread notifying push actions after stream position `after`, up to `upto`,
    /// in stream order, at most `limit`.
    pub async fn pending_pushes(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<PendingPush>> {
        let reads = self.room_reads(user_id, Rooms::JoinedOrInvited).await?;
        self.pending_pushes_with(user_id, after, upto, limit, &reads)
            .await
    }

    /// What a pusher does each round: [`Self::pending_pushes`], and the badge
    /// ([`Self::badge_count`]) when there is something to send or `badge_anyway`, from one
    /// reading of where the user has read up to.
    pub async fn pending_pushes_and_badge(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
        limit: i64,
        badge_anyway: bool,
    ) -> Result<(Vec<PendingPush>, Option<i64>)> {
        let (reads, invites) = self
            .room_reads_and_invites(user_id, Rooms::JoinedOrInvited)
            .await?;
        let due = self
            .pending_pushes_with(user_id, after, upto, limit, &reads)
            .await?;
        let badge = if due.is_empty() && !badge_anyway {
            None
        } else {
            Some(self.badge_with(user_id, upto, &reads, invites).await?)
        };
        Ok((due, badge))
    }

    async fn pending_pushes_with(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
        limit: i64,
        reads: &BTreeMap<String, RoomReads>,
    ) -> Result<Vec<PendingPush>> {
        let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut after = after;
        while out.len() < limit && after < upto {
            let ranges: Vec<(&str, i64)> = reads
                .iter()
                .map(|(room, r)| (room.as_str(), after.max(r.lowest())))
                .filter(|(_, from)| *from < upto)
                .collect();
            let mut rows = self
                .scan_push_events(&ranges, upto.saturating_add(1), false, SCAN_ROWS)
                .await?;
            if rows.is_empty() {
                break;
            }
            rows.sort_by_key(|r| r.stream_ordering);
            let ceiling = complete_floor(&rows, SCAN_ROWS, false);
            for row in &rows {
                if ceiling.is_some_and(|c| row.stream_ordering > c) || out.len() >= limit {
                    break;
                }
                let Some(r) = recipient(&row.recipients, user_id)? else {
                    continue;
                };
                let unread = !reads
                    .get(&row.room_id)
                    .is_some_and(|reads| reads.is_read(&row.thread_id, row.stream_ordering));
                if r.notify && unread {
                    out.push(PendingPush {
                        stream_ordering: row.stream_ordering,
                        room_id: row.room_id.clone(),
                        event_id: row.event_id.clone(),
                        actions: r.actions.to_owned(),
                        highlight: r.highlight,
                    });
                }
            }
            match ceiling {
                Some(c) => after = c,
                None => break,
            }
        }
        Ok(out)
    }

    /// The badge a user's devices show, as Synapse counts it by default: the rooms with
    /// unread notifications at `upto`, plus the rooms they are invited to.
    pub async fn badge_count(&self, user_id: &str, upto: i64) -> Result<i64> {
        let (reads, invites) = self
            .room_reads_and_invites(user_id, Rooms::JoinedOrInvited)
            .await?;
        self.badge_with(user_id, upto, &reads, invites).await
    }

    async fn badge_with(
        &self,
        user_id: &str,
        upto: i64,
        reads: &BTreeMap<String, RoomReads>,
        invites: i64,
    ) -> Result<i64> {
        let counts = self.unread_counts_with(user_id, upto, reads).await?;
        let mut rooms: Vec<&str> = counts
            .iter()
            .filter(|c| c.notifications > 0)
            .map(|c| c.room_id.as_str())
            .collect();
        rooms.dedup();
        Ok(rooms.len() as i64 + invites)
    }

    /// Keeps `push_events` bounded: deletes rows older than [`READ_RETENTION_MS`] that every
    /// recipient has read (or whose room they are no longer joined to), and every row older
    /// than [`RETENTION_MS`]. Returns how many.
    pub async fn prune_push_actions(&self, now: i64) -> Result<u64> {
        let mut deleted = sqlx::query("DELETE FROM push_events WHERE ts < $1")
            .bind(now - RETENTION_MS)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let rooms: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT room_id FROM push_events WHERE ts < $1")
                .bind(now - READ_RETENTION_MS)
                .fetch_all(&self.pool)
                .await?;
        for room in rooms {
            deleted += self
                .prune_read_in_room(&room, now - READ_RETENTION_MS)
                .await?;
        }
        Ok(deleted)
    }

    /// Deletes the rows of `room` older than `cutoff` that every recipient has read.
    async fn prune_read_in_room(&self, room: &str, cutoff: i64) -> Result<u64> {
        let rows = sqlx::query(
            "SELECT stream_ordering, thread_id, recipients FROM push_events
             WHERE room_id = $1 AND ts < $2",
        )
        .bind(room)
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        // Where each joined member has read up to in this room.
        let mut reads: HashMap<String, RoomReads> = HashMap::new();
        for row in sqlx::query(
            "SELECT user_id, stream_ordering FROM room_memberships
             WHERE room_id = $1 AND membership = 'join'",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await?
        {
            reads.insert(
                row.try_get("user_id")?,
                RoomReads {
                    join: Some(row.try_get("stream_ordering")?),
                    ..RoomReads::default()
                },
            );
        }
        for row in sqlx::query(
            "SELECT r.user_id, r.thread_id, MAX(e.stream_ordering) AS position
             FROM receipts r JOIN events e ON e.event_id = r.event_id
             WHERE r.room_id = $1 AND r.receipt_type IN ('m.read', 'm.read.private')
             GROUP BY r.user_id, r.thread_id",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await?
        {
            let user: String = row.try_get("user_id")?;
            let thread: String = row.try_get("thread_id")?;
            let Some(position) = row.try_get::<Option<i64>, _>("position")? else {
                continue;
            };
            if let Some(r) = reads.get_mut(&user) {
                if thread.is_empty() {
                    r.unthreaded = Some(position);
                } else {
                    r.threads.insert(thread, position);
                }
            }
        }
        let mut done = Vec::new();
        for row in &rows {
            let position: i64 = row.try_get("stream_ordering")?;
            let thread: String = row.try_get("thread_id")?;
            let recipients: String = row.try_get("recipients")?;
            let groups: Vec<Group<'_>> = serde_json::from_str(&recipients)
                .map_err(|e| Error::Corrupt(format!("push_events.recipients: {e}")))?;
            let all_read = groups.iter().flat_map(|g| g.u.iter()).all(|user| {
                reads
                    .get(user.as_ref())
                    .is_none_or(|r| r.is_read(&thread, position))
            });
            if all_read {
                done.push(position);
            }
        }
        let mut deleted = 0;
        for chunk in done.chunks(INSERT_CHUNK) {
            let sql = format!(
                "DELETE FROM push_events WHERE stream_ordering IN ({})",
                placeholders_from(1, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for position in chunk {
                query = query.bind(*position);
            }
            deleted += query.execute(&self.pool).await?.rows_affected();
        }
        Ok(deleted)
    }
}

/// For rows of several rooms sorted in the scan's order, each room limited to `per_room`:
/// the position up to which the merged list is complete. A room that returned `per_room`
/// rows may have more beyond its last one, so nothing past the nearest such last row is
/// certain. `None` when no room hit its limit (the list is complete).
fn complete_floor(rows: &[PushRow], per_room: i64, newest_first: bool) -> Option<i64> {
    let mut per: HashMap<&str, (i64, i64)> = HashMap::new();
    for row in rows {
        let entry = per.entry(row.room_id.as_str()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = row.stream_ordering;
    }
    let limited = per
        .values()
        .filter(|(n, _)| *n >= per_room)
        .map(|(_, last)| *last);
    if newest_first {
        limited.max()
    } else {
        limited.min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(user: &str, actions: &str, notify: bool, highlight: bool) -> NewPushAction {
        NewPushAction {
            user_id: user.into(),
            notify,
            highlight,
            actions: actions.into(),
        }
    }

    #[test]
    fn recipients_round_trip_grouped_by_outcome() {
        let encoded = encode_recipients(&[
            action("@a:x", r#"["notify"]"#, true, false),
            action(
                "@b:x",
                r#"["notify",{"set_tweak":"highlight"}]"#,
                true,
                true,
            ),
            action("@c:x", r#"["notify"]"#, true, false),
        ])
        .unwrap();
        let groups: serde_json::Value = serde_json::from_str(&encoded).unwrap();
        assert_eq!(groups.as_array().unwrap().len(), 2, "{encoded}");
        assert_eq!(
            recipient(&encoded, "@c:x").unwrap(),
            Some(Recipient {
                notify: true,
                highlight: false,
                actions: r#"["notify"]"#
            })
        );
        let b = recipient(&encoded, "@b:x").unwrap().unwrap();
        assert!(b.notify && b.highlight);
        assert_eq!(recipient(&encoded, "@d:x").unwrap(), None);
        // A prefix of a recipient's ID is not a recipient.
        assert_eq!(recipient(&encoded, "@a:").unwrap(), None);
    }

    #[test]
    fn user_ids_that_json_escapes_are_found() {
        let odd = "@we\"ird\\:x";
        let encoded = encode_recipients(&[action(odd, r#"["notify"]"#, true, false)]).unwrap();
        assert!(recipient(&encoded, odd).unwrap().is_some());
        assert!(recipient(&encoded, "@weird:x").unwrap().is_none());
    }

    #[test]
    fn bad_actions_are_refused() {
        assert!(encode_recipients(&[action("@a:x", "not json", true, false)]).is_err());
    }

    #[test]
    fn read_positions_follow_receipts_then_the_join() {
        let mut reads = RoomReads {
            join: Some(10),
            ..RoomReads::default()
        };
        assert_eq!(reads.upto("main"), 10);
        assert_eq!(reads.lowest(), 10);
        // A threaded receipt covers its thread only, even below the join.
        reads.threads.insert("$t".into(), 7);
        assert_eq!(reads.upto("$t"), 7);
        assert_eq!(reads.upto("main"), 10);
        assert_eq!(reads.lowest(), 7);
        // An unthreaded receipt covers every thread.
        reads.unthreaded = Some(20);
        assert_eq!(reads.upto("$t"), 20);
        assert_eq!(reads.upto("main"), 20);
        assert_eq!(reads.lowest(), 20);
        reads.threads.insert("main".into(), 30);
        assert_eq!(reads.upto("main"), 30);
        assert_eq!(reads.lowest(), 20);
        assert_eq!(RoomReads::default().upto("main"), 0);
    }

    #[test]
    fn counts_skip_read_rows_and_other_users() {
        let mine = encode_recipients(&[
            action("@me:x", r#"["notify"]"#, true, false),
            action("@you:x", r#"["notify"]"#, true, false),
        ])
        .unwrap();
        let highlight = encode_recipients(&[action(
            "@me:x",
            r#"["notify",{"set_tweak":"highlight"}]"#,
            true,
            true,
        )])
        .unwrap();
        let theirs = encode_recipients(&[action("@you:x", r#"["notify"]"#, true, false)]).unwrap();
        let reads = RoomReads {
            unthreaded: Some(2),
            threads: [("$t".to_owned(), 5)].into(),
            join: Some(1),
        };
        let rows = [
            (1, "main", mine.as_str()),      // read
            (2, "main", mine.as_str()),      // read (the receipt's own event)
            (3, "main", mine.as_str()),      // unread
            (4, "$t", mine.as_str()),        // read by the thread receipt
            (6, "$t", highlight.as_str()),   // unread, highlight
            (7, "main", theirs.as_str()),    // not mine
            (8, "main", highlight.as_str()), // unread, highlight
        ];
        let mut counts = BTreeMap::new();
        count_rows(rows, "@me:x", &reads, &mut counts).unwrap();
        assert_eq!(counts.get("main"), Some(&(2, 1)));
        assert_eq!(counts.get("$t"), Some(&(1, 1)));
        // Counting in two steps (as the cache does) gives the same.
        let mut stepwise = BTreeMap::new();
        count_rows(rows[..4].iter().copied(), "@me:x", &reads, &mut stepwise).unwrap();
        count_rows(rows[4..].iter().copied(), "@me:x", &reads, &mut stepwise).unwrap();
        assert_eq!(stepwise, counts);
    }

    fn row(room: &str, position: i64) -> PushRow {
        PushRow {
            stream_ordering: position,
            room_id: room.into(),
            event_id: format!("${position}"),
            thread_id: "main".into(),
            recipients: "[]".into(),
            ts: 0,
        }
    }

    #[test]
    fn a_limited_scan_is_complete_up_to_the_nearest_limited_room() {
        // Oldest first, 2 rows a room: room a stopped at 3, b at 5; c had only one.
        let rows = [
            row("a", 1),
            row("b", 2),
            row("a", 3),
            row("c", 4),
            row("b", 5),
        ];
        assert_eq!(complete_floor(&rows, 2, false), Some(3));
        assert_eq!(complete_floor(&rows, 3, false), None);
        // Newest first: a stopped at 8, b at 6.
        let rows = [
            row("a", 9),
            row("a", 8),
            row("b", 7),
            row("b", 6),
            row("c", 1),
        ];
        assert_eq!(complete_floor(&rows, 2, true), Some(8));
    }
}
