//! The room service: the one write pipeline every event goes through, and the reads that
//! interpret stored events (state, visibility, client format).
//!
//! Write pipeline ([`send`]):
//! 1. queue the send on its room and take the room's lock (sends into one room are
//!    serialised, so the DAG stays linear and nothing is lost; different rooms never share a
//!    lock). Whoever holds the lock writes every send queued on the room so far, as one batch
//!    (group commit): under load, the senders queued behind one commit share the next one;
//! 2. place each event: `prev_events` = the forward extremities (for the second event of a
//!    batch, the first), `depth` = one more than theirs, `auth_events` chosen from current
//!    state by the room version's rules;
//! 3. build, hash and sign it (federation crate);
//! 4. check the authorization rules against its auth events and the current state; an event
//!    refused here is answered at once and leaves the batch; then evaluate the push rules of
//!    the room's local members for it (`push_actions.rs`);
//! 5. persist the batch in one transaction (storage assigns the stream positions); only then
//!    is any send of the batch answered;
//! 6. notify waiters.
//!
//! Events received from other servers are queued on the same writer and go through steps
//! 4-6 too, after the checks of receipt (`remote.rs`).

pub mod create;
pub mod format;
pub mod power;
pub mod profile;
mod push_actions;
pub mod remote;
pub mod summary;
pub mod threads;
pub mod upgrade;
pub mod visibility;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use axum::http::StatusCode;
use myelin_federation::{
    auth,
    pdu::{build_event, rules_for, NewEvent, Pdu, PduError, Placement},
};
use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId,
    RoomId, RoomVersionId, UInt, UserId,
};

use crate::{auth::now_ms, error::Error, AppState};

/// What the write pipeline needs to know about a room's head: its rules, forward
/// extremities, the state after them, and the parsed state events the authorization rules
/// read. Every send reads it and only the pipeline changes it, under the room's lock, so it is
/// kept in memory instead of being re-read from storage for each event. (With several server
/// processes writing one room, the head will have to be revalidated inside the transaction.)
pub struct RoomHead {
    rules: RoomVersionRules,
    /// `(event ID, depth)` of the forward extremities.
    extremities: Vec<(OwnedEventId, i64)>,
    state_after: Option<i64>,
    /// What the current state holds on top of the snapshot `state_after` when forks were
    /// merged by state resolution (received events): `(type, state key, event ID)`. The next
    /// event placed on the head writes these first (`NewEvent::state_delta`). Usually empty.
    pending: Vec<(String, String, String)>,
    current: myelin_storage::StateMap,
    /// Parsed state events the authorization rules read, filled as they ask for them and
    /// kept only while current (see [`RoomHead::remember`]); at most [`MAX_HEAD_PDUS`], so a
    /// room's head does not grow with every state event ever written into it.
    pdus: HashMap<String, Pdu>,
    /// Current membership of every user with a member event, for waking sync waiters.
    members: HashMap<String, String>,
    /// The power levels as push conditions read them (`push_actions.rs`); `None` until
    /// needed, and again when a power levels or create event is placed.
    push_power: Option<ruma::push::PushConditionPowerLevelsCtx>,
    /// Members' display names, loaded only for members with a rule that reads them; an
    /// entry is dropped when the member's event changes.
    display_names: HashMap<String, String>,
    /// The other servers with a joined member, which our events are sent to; `None` until
    /// needed and again after any membership change.
    remote_servers: Option<Vec<String>>,
}

impl RoomHead {
    async fn load(state: &AppState, room_id: &RoomId) -> Result<RoomHead, Error> {
        let (_, rules) = room_rules(state, room_id).await?;
        let extremities = state.storage.forward_extremities(room_id.as_str()).await?;
        let state_after = extremities.first().and_then(|(_, _, s)| *s);
        let extremities: Vec<(OwnedEventId, i64)> = extremities
            .into_iter()
            .take(20)
            .map(|(id, depth, _)| {
                OwnedEventId::try_from(id)
                    .map(|id| (id, depth))
                    .map_err(Error::internal)
            })
            .collect::<Result<_, _>>()?;
        let current = state.storage.current_state(room_id.as_str()).await?;
        // With several tips the current state (their resolution) may differ from the newest
        // tip's snapshot.
        let pending = match state_after {
            Some(snapshot) if extremities.len() > 1 => {
                let after = state.snapshot(snapshot).await?;
                current
                    .iter()
                    .filter(|(k, v)| after.get(*k) != Some(*v))
                    .map(|((t, k), v)| (t.clone(), k.clone(), v.clone()))
                    .collect()
            }
            _ => Vec::new(),
        };
        let members = state
            .storage
            .room_members(room_id.as_str())
            .await?
            .iter()
            .map(|(user, membership, _)| (user.clone(), membership.clone()))
            .collect();
        Ok(RoomHead {
            rules,
            extremities,
            state_after,
            pending,
            current,
            pdus: HashMap::new(),
            members,
            push_power: None,
            display_names: HashMap::new(),
            remote_servers: None,
        })
    }

    /// The other servers with a joined member (see [`RoomHead::remote_servers`]).
    fn remote_servers(&mut self, ours: &str) -> &[String] {
        let members = &self.members;
        self.remote_servers.get_or_insert_with(|| {
            crate::federation::sender::other_servers(
                ours,
                members
                    .iter()
                    .filter(|(_, m)| m.as_str() == "join")
                    .map(|(user, _)| user.as_str()),
            )
        })
    }

    /// Keeps a parsed state event that became current, in place of the one it replaced.
    /// Only the types the authorization rules read are kept (a name or topic never is), and
    /// past [`MAX_HEAD_PDUS`] the parsed events are dropped: the next send that needs one
    /// reads it from storage again.
    fn remember(&mut self, replaced: Option<&str>, pdu: Pdu) {
        if let Some(old) = replaced {
            self.pdus.remove(old);
        }
        if !AUTH_TYPES.contains(&pdu.kind.to_string().as_str()) {
            return;
        }
        if self.pdus.len() >= MAX_HEAD_PDUS {
            self.pdus.clear();
        }
        self.pdus.insert(pdu.event_id.to_string(), pdu);
    }

    /// Users whose syncs care about a new event in this room.
    fn interested(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, m)| matches!(m.as_str(), "join" | "invite" | "knock"))
            .map(|(u, _)| u.as_str())
    }
}

/// The state (with an empty state key) shown with an invite or knock: the spec's
/// recommended stripped state.
pub const STRIPPED_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.name",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// The state event types the authorization rules read (and so the only ones a head keeps
/// parsed).
const AUTH_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.member",
    "m.room.third_party_invite",
];

/// Most parsed state events a head keeps (member events of a big room would otherwise all
/// stay in memory).
const MAX_HEAD_PDUS: usize = 256;

/// How long a room's slot (and its cached head) is kept after its last send.
pub const IDLE_SLOT: std::time::Duration = std::time::Duration::from_secs(600);

/// Most sends one commit writes. Bounds the transaction; further queued sends go into the
/// next one.
const MAX_BATCH: usize = 64;

/// A send waiting in its room's queue, with where its answer goes.
struct Job {
    sender: OwnedUserId,
    send: Send,
    reply: oneshot::Sender<Result<OwnedEventId, Error>>,
}

/// One room's write side: the queue of sends and the lock that guards its cached
/// [`RoomHead`] (loaded on first use).
#[derive(Default)]
pub struct RoomSlot {
    /// Sends waiting for a writer. A std mutex: held only to push or take, never across an
    /// await.
    queue: Mutex<Vec<Job>>,
    /// Events received from other servers, waiting for the writer like sends (a std mutex,
    /// as above).
    remote: Mutex<Vec<remote::RemoteJob>>,
    /// The room's write lock. Its holder writes every queued send, so a sender that gets the
    /// lock may find its send already written by the holder before it.
    head: Arc<tokio::sync::Mutex<Option<RoomHead>>>,
    /// When the slot was last handed out, for evicting idle rooms (a std mutex: held only
    /// to read or set it).
    last_used: Mutex<Option<std::time::Instant>>,
}

impl RoomSlot {
    /// Takes the room's write lock (for writes outside the queue, e.g. a create event).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Option<RoomHead>> {
        self.head.lock().await
    }

    fn push(&self, job: Job) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job);
    }

    fn push_remote(&self, job: remote::RemoteJob) {
        self.remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job);
    }

    fn take_remote(&self) -> Vec<remote::RemoteJob> {
        std::mem::take(&mut *self.remote.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn take(&self) -> Vec<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = queue.len().min(MAX_BATCH);
        queue.drain(..n).collect()
    }
}

/// Per-room write slots. The outer std mutex is held only to find or insert a room's entry.
#[derive(Default)]
pub struct RoomLocks {
    locks: Mutex<HashMap<OwnedRoomId, Arc<RoomSlot>>>,
}

impl RoomLocks {
    pub fn get(&self, room_id: &RoomId) -> Arc<RoomSlot> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        let slot = map.entry(room_id.to_owned()).or_default().clone();
        *slot.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        slot
    }

    /// Forgets the slots (and cached heads) of rooms with no send for `idle`, so memory does
    /// not grow with every room ever written to. Safe because a head is only a copy: the next
    /// send reloads it from storage under a fresh lock. A slot still referenced (a writer
    /// holds it, or a sender is queued on it) or whose lock is held is kept; `get` takes the
    /// map's lock, so no new reference appears while this looks.
    pub fn evict_idle(&self, idle: std::time::Duration) -> usize {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, slot| {
            let recently = slot
                .last_used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|t| t.elapsed() < idle);
            recently
                || Arc::strong_count(slot) > 1
                || Arc::strong_count(&slot.head) > 1
                || slot.head.try_lock().is_err()
        });
        before - map.len()
    }

    /// How many rooms have a slot (for tests).
    pub fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the cached head (after a change made outside the pipeline, e.g. a redaction
    /// rewriting a stored state event); the next send reloads it.
    pub async fn invalidate(&self, room_id: &RoomId) {
        *self.get(room_id).lock().await = None;
    }
}

/// What a client sends: an event of a type with content, optionally a state key.
#[derive(Debug, Clone)]
pub struct Send {
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: CanonicalJsonObject,
    pub redacts: Option<OwnedEventId>,
    /// `(device_id, txn_id)` for idempotent client sends.
    pub txn: Option<(String, String)>,
}

impl Send {
    pub fn message(event_type: &str, content: CanonicalJsonObject) -> Self {
        Send {
            event_type: event_type.to_owned(),
            state_key: None,
            content,
            redacts: None,
            txn: None,
        }
    }
    pub fn state(event_type: &str, state_key: &str, content: CanonicalJsonObject) -> Self {
        Send {
            event_type: event_type.to_owned(),
            state_key: Some(state_key.to_owned()),
            content,
            redacts: None,
            txn: None,
        }
    }
}

fn pdu_error(e: PduError) -> Error {
    match e {
        PduError::TooLarge => Error::too_large("Event is larger than 64 KiB"),
        PduError::ContentNotObject => Error::bad_json("Event content must be a JSON object"),
        PduError::UnsupportedRoomVersion(v) => Error::new(
            StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
            format!("Room version {v} is not supported"),
        ),
        PduError::Malformed(m) => Error::bad_json(m),
    }
}

/// Parses a stored event row into a [`Pdu`].
pub fn parse_row(row: &myelin_storage::EventRow) -> Result<Pdu, Error> {
    let object: CanonicalJsonObject = row
        .parse_pdu()
        .map_err(|e| Error::internal(format!("stored PDU {}: {e}", row.event_id)))?;
    let mut pdu = Pdu::from_canonical(
        OwnedEventId::try_from(row.event_id.as_str()).map_err(Error::internal)?,
        OwnedRoomId::try_from(row.room_id.as_str()).map_err(Error::internal)?,
        &object,
    )
    .map_err(|e| Error::internal(format!("stored PDU {}: {e}", row.event_id)))?;
    pdu.rejected = row.rejected;
    Ok(pdu)
}

/// The PDU of one `(type, state key)` in the room's current state, as JSON.
pub async fn current_state_pdu(
    state: &AppState,
    room_id: &str,
    event_type: &str,
    state_key: &str,
) -> Result<Option<serde_json::Value>, Error> {
    let Some(event_id) = state
        .storage
        .current_state_event(room_id, event_type, state_key)
        .await?
    else {
        return Ok(None);
    };
    let Some(row) = state.storage.get_event(&event_id).await? else {
        return Ok(None);
    };
    Ok(Some(row.parse_pdu().map_err(Error::internal)?))
}

/// The room version and its rules, or 404 if the room is unknown here.
pub async fn room_rules(
    state: &AppState,
    room_id: &RoomId,
) -> Result<(RoomVersionId, RoomVersionRules), Error> {
    let version = match state.room_versions.get(&room_id.to_owned()) {
        Some(version) => version,
        None => {
            let room = state
                .storage
                .get_room(room_id.as_str())
                .await?
                .ok_or_else(|| Error::not_found("Room not found"))?;
            let version =
                RoomVersionId::try_from(room.room_version.as_str()).map_err(Error::internal)?;
            state
                .room_versions
                .insert(room_id.to_owned(), version.clone());
            version
        }
    };
    let rules = rules_for(&version).map_err(Error::internal)?;
    Ok((version, rules))
}

/// Builds, authorises and persists an event sent by a local user into an existing room.
/// Returns the new event's ID once it is committed.
pub async fn send(
    state: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    send: Send,
) -> Result<OwnedEventId, Error> {
    let slot = state.room_locks.get(room_id);
    let (reply, answer) = oneshot::channel();
    slot.push(Job {
        sender: sender.to_owned(),
        send,
        reply,
    });
    run_writer(state, room_id, slot).await;
    answer
        .await
        .map_err(|_| Error::internal("the room writer stopped"))?
}

/// Takes the room's lock and, in a task of its own (so that a client hanging up cannot stop a
/// batch half-way, between commit and moving the head, say), writes everything queued on the
/// room: local sends in batches, received events one by one. Returns once the writer is
/// started; a job's answer comes through its channel (the writer before us may already have
/// written it, and then this one finds the queues empty).
pub(super) async fn run_writer(state: &AppState, room_id: &RoomId, slot: Arc<RoomSlot>) {
    let guard = slot.head.clone().lock_owned().await;
    let state = state.clone();
    let room_id = room_id.to_owned();
    tokio::spawn(async move {
        let mut guard = guard;
        // Write until the queues are empty: a job queued behind a batch is either written by
        // this loop or its sender is still waiting for the lock and will write it.
        loop {
            let jobs = slot.take();
            let received = slot.take_remote();
            if jobs.is_empty() && received.is_empty() {
                break;
            }
            if !jobs.is_empty() {
                write_batch(&state, &room_id, &mut guard, jobs).await;
            }
            if !received.is_empty() {
                write_received_batch(&state, &room_id, &mut guard, received).await;
            }
        }
    });
}

/// The room's cached head, loaded from storage first if the writer has none (at its first
/// write, or after a failed commit dropped it).
async fn loaded_head<'a>(
    state: &AppState,
    room_id: &RoomId,
    guard: &'a mut Option<RoomHead>,
) -> Result<&'a mut RoomHead, Error> {
    if guard.is_none() {
        *guard = Some(RoomHead::load(state, room_id).await?);
    }
    guard
        .as_mut()
        .ok_or_else(|| Error::internal("no room head"))
}

/// Wakes the tasks of the other servers in the room, and of any whose user one of `targets`
/// is (e.g. a kick), for events committed at `(since, position]`: once that is safe to read,
/// because a destination's task reads up to the safe position, and woken before the batch
/// is safe (another room's commit still open below it) it would find nothing new and sleep
/// past it.
fn forward(state: &AppState, head: &mut RoomHead, targets: &[String], since: i64, position: i64) {
    let ours = state.server_name.as_str();
    let mut servers = head.remote_servers(ours).to_vec();
    for target in targets {
        if let Some((_, server)) = target.split_once(':') {
            if server != ours && !servers.iter().any(|s| s == server) {
                servers.push(server.to_owned());
            }
        }
    }
    if servers.is_empty() {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        state.storage.wait_safe(position).await;
        crate::federation::sender::wake(&state, &servers, since).await;
    });
}

/// Writes the events received for the room (see `remote.rs`), in order, and answers each.
/// A run of events that extend the head one after another without changing state (the
/// messages of a busy room) is checked against the head and committed together, as local
/// sends are; any other event is written alone.
async fn write_received_batch(
    state: &AppState,
    room_id: &RoomId,
    guard: &mut Option<RoomHead>,
    jobs: Vec<remote::RemoteJob>,
) {
    // Which are stored already: one read for the whole batch.
    let ids: Vec<String> = jobs
        .iter()
        .map(|j| j.incoming.event_id.to_string())
        .collect();
    let known: HashSet<String> = match state.storage.get_events(&ids).await {
        Ok(rows) => rows.into_iter().map(|r| r.event_id).collect(),
        Err(e) => {
            let e = Error::from(e);
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut run: Vec<(Prepared, remote::RemoteJob)> = Vec::new();
    for job in jobs {
        if known.contains(job.incoming.event_id.as_str()) {
            let _ = job.reply.send(Ok(job.incoming.event_id.clone()));
            continue;
        }
        let head = match loaded_head(state, room_id, guard).await {
            Ok(head) => head,
            Err(e) => {
                let _ = job.reply.send(Err(e));
                continue;
            }
        };
        let repeated = run.iter().any(|(p, _)| p.event_id == job.incoming.event_id);
        if !repeated && remote::extends_head(head, &job.incoming, state.server_name.as_str()) {
            match remote::place_received(state, room_id, head, &job.incoming).await {
                Ok(prepared) => {
                    run.push((prepared, job));
                    if run.len() == MAX_BATCH {
                        commit_received(state, room_id, guard, std::mem::take(&mut run)).await;
                    }
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
            continue;
        }
        commit_received(state, room_id, guard, std::mem::take(&mut run)).await;
        write_received(state, room_id, guard, job).await;
    }
    commit_received(state, room_id, guard, run).await;
}

/// Commits a run of received events placed by [`remote::place_received`] and answers them.
async fn commit_received(
    state: &AppState,
    room_id: &RoomId,
    guard: &mut Option<RoomHead>,
    run: Vec<(Prepared, remote::RemoteJob)>,
) {
    if run.is_empty() {
        return;
    }
    let Some(head) = guard.as_mut() else {
        return;
    };
    let events: Vec<&Prepared> = run.iter().map(|(p, _)| p).collect();
    let result = commit(state, room_id, head, &events, &[], false).await;
    drop(events);
    if result.is_err() {
        // The head was moved along the run in memory; reload it.
        *guard = None;
    }
    for (p, job) in run {
        let _ = job.reply.send(result.clone().map(|()| p.event_id));
    }
}

/// Writes one received event (see `remote.rs`) and answers it.
async fn write_received(
    state: &AppState,
    room_id: &RoomId,
    guard: &mut Option<RoomHead>,
    job: remote::RemoteJob,
) {
    let head = match loaded_head(state, room_id, guard).await {
        Ok(head) => head,
        Err(e) => {
            let _ = job.reply.send(Err(e));
            return;
        }
    };
    match remote::write_remote(state, room_id, head, &job).await {
        Ok((event_id, position, targets)) => {
            if position > 0 {
                state.notify_when_safe(
                    position,
                    head.interested().chain(targets.iter().map(String::as_str)),
                );
                // Our own events that took this path (an invite the invitee's server signed)
                // go to the other servers like any.
                if job.incoming.pdu.sender.server_name() == state.server_name.as_str() {
                    forward(state, head, &targets, position - 1, position);
                }
            }
            let _ = job.reply.send(Ok(event_id));
        }
        Err(e) => {
            // The head may have been moved in memory before a failed commit: reload it.
            if matches!(e, Error::Internal(_)) {
                *guard = None;
            }
            let _ = job.reply.send(Err(e));
        }
    }
}

/// An event built and authorised, waiting for its batch's commit.
struct Prepared {
    event_id: OwnedEventId,
    depth: i64,
    event_type: String,
    state_key: Option<String>,
    sender: String,
    origin_server_ts: i64,
    pdu_json: String,
    prev_events: Vec<String>,
    membership: Option<String>,
    relates_to: Option<(String, String)>,
    txn: Option<(String, String, String)>,
    /// For a redaction: `(target event ID, the target's redacted PDU)`, rewritten in the same
    /// transaction as the redaction is stored. `None` if the target was redacted before.
    redacts: Option<(String, String)>,
    /// The local users the event notifies or highlights (`push_actions.rs`).
    push_actions: Vec<myelin_storage::NewPushAction>,
    /// For a state event: the event it replaced in the head's state (`""`: none), stored so
    /// that readers need not look it up (migration 0015).
    replaces_state: Option<String>,
    /// A join rule or history visibility, copied onto the room's row (migration 0017).
    room_setting: Option<(SettingKind, String)>,
    /// The searchable text `(key, text)` (see [`searchable_text`]).
    search: Option<(&'static str, String)>,
}

/// The event types whose text message search finds, and the content field it reads: as in
/// Synapse, the body of messages and the name and topic of rooms. Encrypted events are not
/// searchable (the server cannot read them).
pub const SEARCHABLE: [(&str, &str); 3] = [
    ("m.room.message", "content.body"),
    ("m.room.name", "content.name"),
    ("m.room.topic", "content.topic"),
];

/// The search key and text of an event of `event_type` with `content`, if it has any.
pub fn searchable_text(
    event_type: &str,
    state_key: Option<&str>,
    content: &serde_json::Value,
) -> Option<(&'static str, String)> {
    let (_, key) = SEARCHABLE.iter().find(|(t, _)| *t == event_type)?;
    // The name and topic are the room's only as state events with an empty state key.
    if event_type != "m.room.message" && state_key != Some("") {
        return None;
    }
    let field = key.strip_prefix("content.")?;
    Some((key, content.get(field)?.as_str()?.to_owned()))
}

/// Which room setting a [`Prepared`] event sets.
#[derive(Debug, Clone, Copy)]
enum SettingKind {
    JoinRule,
    HistoryVisibility,
}

impl Prepared {
    fn new(
        built: &myelin_federation::pdu::BuiltEvent,
        pdu: &Pdu,
        prev_events: &[OwnedEventId],
        txn: Option<(String, String, String)>,
    ) -> Result<Prepared, Error> {
        let content = pdu.content_json();
        let membership = if pdu.kind == TimelineEventType::RoomMember {
            content
                .get("membership")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        } else {
            None
        };
        let relation = &content["m.relates_to"];
        let relates_to = match (relation["rel_type"].as_str(), relation["event_id"].as_str()) {
            (Some(rel_type), Some(parent)) if pdu.state_key.is_none() => {
                Some((rel_type.to_owned(), parent.to_owned()))
            }
            _ => None,
        };
        let setting = |key: &str| content[key].as_str().unwrap_or_default().to_owned();
        let room_setting = match (&pdu.kind, pdu.state_key.as_deref()) {
            (TimelineEventType::RoomJoinRules, Some("")) => {
                Some((SettingKind::JoinRule, setting("join_rule")))
            }
            (TimelineEventType::RoomHistoryVisibility, Some("")) => Some((
                SettingKind::HistoryVisibility,
                setting("history_visibility"),
            )),
            _ => None,
        };
        Ok(Prepared {
            event_id: built.event_id.clone(),
            depth: pdu.depth as i64,
            event_type: pdu.kind.to_string(),
            state_key: pdu.state_key.clone(),
            sender: pdu.sender.to_string(),
            origin_server_ts: u64::from(pdu.origin_server_ts.0) as i64,
            pdu_json: serde_json::to_string(&built.pdu).map_err(Error::internal)?,
            prev_events: prev_events.iter().map(|e| e.to_string()).collect(),
            membership,
            relates_to,
            txn,
            redacts: None,
            push_actions: Vec::new(),
            // A room's create event replaces nothing; `place` sets it for other state events.
            replaces_state: pdu.state_key.is_some().then(String::new),
            room_setting,
            search: searchable_text(
                pdu.kind.to_string().as_str(),
                pdu.state_key.as_deref(),
                &content,
            ),
        })
    }

    fn row<'a>(
        &'a self,
        room_id: &'a str,
        state_before: Option<i64>,
    ) -> myelin_storage::NewEvent<'a> {
        myelin_storage::NewEvent {
            event_id: self.event_id.as_str(),
            room_id,
            depth: self.depth,
            event_type: &self.event_type,
            state_key: self.state_key.as_deref(),
            sender: &self.sender,
            origin_server_ts: self.origin_server_ts,
            pdu: &self.pdu_json,
            prev_events: &self.prev_events,
            state_before,
            state_delta: &[],
            current_delta: None,
            membership: self.membership.as_deref(),
            txn: self
                .txn
                .as_ref()
                .map(|(u, d, t)| (u.as_str(), d.as_str(), t.as_str())),
            new_room: None,
            replaces_state: self.replaces_state.as_deref(),
            relates_to: self
                .relates_to
                .as_ref()
                .map(|(r, p)| (r.as_str(), p.as_str())),
            redacts: self
                .redacts
                .as_ref()
                .map(|(target, redacted)| (target.as_str(), redacted.as_str())),
            push_actions: &self.push_actions,
            search: self
                .search
                .as_ref()
                .map(|(key, text)| (*key, text.as_str())),
            room_setting: self.room_setting.as_ref().map(|(kind, value)| match kind {
                SettingKind::JoinRule => myelin_storage::RoomSetting::JoinRule(value),
                SettingKind::HistoryVisibility => {
                    myelin_storage::RoomSetting::HistoryVisibility(value)
                }
            }),
        }
    }
}

/// Writes one batch of queued sends (steps 2-6 of the module docs) and answers each of them.
async fn write_batch(
    state: &AppState,
    room_id: &RoomId,
    guard: &mut Option<RoomHead>,
    jobs: Vec<Job>,
) {
    let head = match loaded_head(state, room_id, guard).await {
        Ok(head) => head,
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut prepared: Vec<(Prepared, oneshot::Sender<Result<OwnedEventId, Error>>)> = Vec::new();
    // Retries of a transaction that is in this very batch: answered with its event.
    let mut followers: Vec<(usize, oneshot::Sender<Result<OwnedEventId, Error>>)> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    // Retries of transactions already committed, looked up for the whole batch at once.
    let keys: Vec<(String, String, String)> = jobs
        .iter()
        .filter_map(|job| {
            job.send
                .txn
                .as_ref()
                .map(|(d, t)| (job.sender.to_string(), d.clone(), t.clone()))
        })
        .collect();
    let committed = if keys.is_empty() {
        Ok(HashMap::new())
    } else {
        state.storage.find_txns(&keys).await
    };
    let committed = match committed {
        Ok(committed) => committed,
        Err(e) => {
            let e = Error::from(e);
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    for job in jobs {
        let txn = job
            .send
            .txn
            .as_ref()
            .map(|(d, t)| (job.sender.to_string(), d.clone(), t.clone()));
        if let Some(key) = &txn {
            if let Some(i) = prepared
                .iter()
                .position(|(p, _)| p.txn.as_ref() == Some(key))
            {
                followers.push((i, job.reply));
                continue;
            }
            // A retried client transaction returns the event it created the first time.
            if let Some(event_id) = committed.get(key) {
                let _ = job
                    .reply
                    .send(OwnedEventId::try_from(event_id.as_str()).map_err(Error::internal));
                continue;
            }
        }
        match place(state, room_id, head, &job.sender, job.send, txn).await {
            Ok((event, target)) => {
                targets.extend(target);
                prepared.push((event, job.reply));
            }
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    if prepared.is_empty() {
        return;
    }
    let events: Vec<&Prepared> = prepared.iter().map(|(p, _)| p).collect();
    let result = commit(state, room_id, head, &events, &targets, true).await;
    drop(events);
    match result {
        Ok(()) => {
            let ids: Vec<OwnedEventId> = prepared.iter().map(|(p, _)| p.event_id.clone()).collect();
            for (p, reply) in prepared {
                let _ = reply.send(Ok(p.event_id));
            }
            for (i, reply) in followers {
                let _ = reply.send(Ok(ids[i].clone()));
            }
        }
        Err(e) => {
            // The head was moved along the batch in memory; reload it on the next send.
            *guard = None;
            for (_, reply) in prepared {
                let _ = reply.send(Err(e.clone()));
            }
            for (_, reply) in followers {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Commits `events`, placed one after another on the head (in memory) since its last
/// commit, in one transaction (one flush), then catches the head's snapshot up and tells
/// who needs to know: sync waiters (the room's members and `targets`), pushers and, when
/// `to_servers` (our users' events), the other servers in the room. On an error nothing is
/// stored and the caller must drop the head, which is ahead of storage.
async fn commit(
    state: &AppState,
    room_id: &RoomId,
    head: &mut RoomHead,
    events: &[&Prepared],
    targets: &[String],
    to_servers: bool,
) -> Result<(), Error> {
    let pending: Vec<(&str, &str, &str)> = head
        .pending
        .iter()
        .map(|(t, k, e)| (t.as_str(), k.as_str(), e.as_str()))
        .collect();
    let rows: Vec<myelin_storage::NewEvent<'_>> = events
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut row = p.row(
                room_id.as_str(),
                if i == 0 { head.state_after } else { None },
            );
            if i == 0 {
                row.state_delta = &pending;
            }
            row
        })
        .collect();
    let result = state.storage.persist_events(&rows, now_ms()).await;
    drop(rows);
    drop(pending);
    let persisted = result?;
    head.pending.clear();
    head.state_after = persisted.last().map(|p| p.state_after).or(head.state_after);
    // A redacted state event is re-read (redacted) when the rules next need it; an auth
    // check later in this batch may have cached the original meanwhile.
    for p in events {
        if let Some((target, _)) = &p.redacts {
            head.pdus.remove(target);
            // Events formatted for sync that carry the original as `prev_content` are
            // formatted again.
            format::forget_replaced(state, target);
        }
    }
    let position = persisted.last().map_or(0, |p| p.stream_ordering);
    state.notify_when_safe(
        position,
        head.interested().chain(targets.iter().map(String::as_str)),
    );
    if to_servers {
        let since = persisted.first().map_or(0, |p| p.stream_ordering) - 1;
        forward(state, head, targets, since, position);
    }
    crate::push::sender::wake_when_safe(state, position, notified_users(events.iter().copied()));
    Ok(())
}

/// Steps 2-4 for one send: places the event on the head, builds, signs and authorises it,
/// then moves the (in-memory) head past it. Returns the event and, for a membership change,
/// the user it targets.
async fn place(
    state: &AppState,
    room_id: &RoomId,
    head: &mut RoomHead,
    sender: &UserId,
    mut send: Send,
    txn: Option<(String, String, String)>,
) -> Result<(Prepared, Option<String>), Error> {
    let rules = head.rules.clone();
    let is_redaction = send.event_type == "m.room.redaction" && send.state_key.is_none();
    if is_redaction && send.redacts.is_none() {
        // Sent through `/send`: the target is named in the content (as room version 11 puts
        // it), whatever the room version; the event is then built like one from `/redact`.
        send.redacts = match send.content.get("redacts") {
            Some(ruma::CanonicalJsonValue::String(id)) => Some(
                OwnedEventId::try_from(id.as_str())
                    .map_err(|_| Error::bad_json("redacts is not an event ID"))?,
            ),
            _ => return Err(Error::bad_json("A redaction needs redacts")),
        };
    }
    let depth = head.extremities.iter().map(|(_, d)| *d).max().unwrap_or(0) + 1;
    // Local sends are serialised per room, so there is one extremity; should federation
    // leave several, the newest one's state is the base until state resolution lands.
    let prev_events: Vec<OwnedEventId> =
        head.extremities.iter().map(|(id, _)| id.clone()).collect();

    let auth_ids = auth_event_ids(head, sender, &send)?;
    let id_of = |key: (String, String)| head.current.get(&key).cloned();
    // The create event is always needed by the checks, even in room versions (12+) where it
    // is not cited in `auth_events` because the room ID names it.
    let mut needed = auth_ids.clone();
    needed.extend(id_of(("m.room.create".to_owned(), String::new())));
    let mut missing: Vec<String> = needed
        .iter()
        .filter(|id| !head.pdus.contains_key(id.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        if head.pdus.len() + missing.len() > MAX_HEAD_PDUS {
            // Start over rather than grow with every member who ever sent.
            head.pdus.clear();
            missing = needed.clone();
        }
        for row in state.storage.get_events(&missing).await? {
            let pdu = parse_row(&row)?;
            head.pdus.insert(pdu.event_id.to_string(), pdu);
        }
    }
    let mut auth_events: Vec<OwnedEventId> = auth_ids
        .iter()
        .map(|id| OwnedEventId::try_from(id.as_str()).map_err(Error::internal))
        .collect::<Result<_, _>>()?;
    auth_events.sort();
    auth_events.dedup();

    let now = now_ms();
    let built = build_event(
        NewEvent {
            event_type: send.event_type.clone(),
            state_key: send.state_key.clone(),
            content: send.content,
            redacts: send.redacts.clone(),
        },
        Placement {
            rules: &rules,
            room_id: Some(room_id),
            sender,
            prev_events: prev_events.clone(),
            auth_events,
            depth: depth as u64,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(now as u64).unwrap_or_default()),
        },
        state.server_name.as_str(),
        &state.signing_key,
    )
    .map_err(pdu_error)?;
    let pdu = Pdu::from_canonical(built.event_id.clone(), built.room_id.clone(), &built.pdu)
        .map_err(pdu_error)?;

    {
        let pdus = &head.pdus;
        let current = &head.current;
        auth::check(
            &rules.authorization,
            &pdu,
            |id| pdus.get(id.as_str()),
            |t: &StateEventType, k: &str| current.get(&(t.to_string(), k.to_owned())).and_then(|id| pdus.get(id)),
        )
        .map_err(|reason| {
            tracing::debug!(%reason, event_type = %send.event_type, "event refused by the authorization rules");
            Error::forbidden(format!("Event not allowed: {reason}"))
        })?;
    }
    let mut prepared = Prepared::new(&built, &pdu, &prev_events, txn)?;
    if is_redaction {
        prepared.redacts = redaction(state, room_id, head, sender, send.redacts.as_deref()).await?;
    }

    prepared.push_actions = push_actions::evaluate(state, room_id, head, &prepared).await?;

    // Move the head past the event. Until the batch commits this is ahead of storage; if the
    // commit fails, the writer drops the head.
    head.extremities = vec![(built.event_id.clone(), depth)];
    let mut target = None;
    if let Some(state_key) = &pdu.state_key {
        push_actions::forget(head, &pdu.kind, state_key);
        let replaced = head.current.insert(
            (pdu.kind.to_string(), state_key.clone()),
            built.event_id.to_string(),
        );
        prepared.replaces_state = Some(replaced.clone().unwrap_or_default());
        if pdu.kind == TimelineEventType::RoomMember {
            head.members.insert(
                state_key.clone(),
                prepared.membership.clone().unwrap_or_default(),
            );
            head.remote_servers = None;
            target = Some(state_key.clone());
        }
        head.remember(replaced.as_deref(), pdu);
    }
    Ok((prepared, target))
}

/// The current events a new event of `sender` must cite as `auth_events`, by the room
/// version's rules.
fn auth_event_ids(head: &RoomHead, sender: &UserId, send: &Send) -> Result<Vec<String>, Error> {
    let content_raw = serde_json::value::to_raw_value(&send.content).map_err(Error::internal)?;
    let kind = TimelineEventType::from(send.event_type.as_str());
    let types = auth::auth_types(
        &head.rules.authorization,
        &kind,
        sender,
        send.state_key.as_deref(),
        &content_raw,
    )
    .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
    Ok(types
        .iter()
        .filter_map(|(t, k)| head.current.get(&(t.to_string(), k.clone())).cloned())
        .collect())
}

/// A template of `send` by `sender` (a user of another server) placed on the room's head, as
/// `make_join` / `make_leave` / `make_knock` answer it: the other server fills in the time,
/// hashes and signs it. Refused (403) if the authorization rules would not allow it now.
pub async fn template(
    state: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    send: Send,
) -> Result<(RoomVersionId, CanonicalJsonObject), Error> {
    let (version, _) = room_rules(state, room_id).await?;
    let slot = state.room_locks.get(room_id);
    let mut guard = slot.lock().await;
    let head = loaded_head(state, room_id, &mut guard).await?;
    let auth_ids = auth_event_ids(head, sender, &send)?;
    let depth = head.extremities.iter().map(|(_, d)| *d).max().unwrap_or(0) + 1;
    let mut object = serde_json::json!({
        "type": send.event_type,
        "room_id": room_id,
        "sender": sender,
        "origin": sender.server_name(),
        "origin_server_ts": now_ms(),
        "content": send.content,
        "depth": depth,
        "prev_events": head.extremities.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>(),
        "auth_events": auth_ids,
    });
    if let Some(key) = &send.state_key {
        object["state_key"] = key.clone().into();
    }
    let object = match ruma::CanonicalJsonValue::try_from(object) {
        Ok(ruma::CanonicalJsonValue::Object(o)) => o,
        _ => return Err(Error::internal("template is not an object")),
    };
    // Would the rules allow it on the current state? (Checked again when it comes back.)
    let placeholder = OwnedEventId::try_from("$template").map_err(Error::internal)?;
    let pdu = Pdu::from_canonical(placeholder, room_id.to_owned(), &object).map_err(pdu_error)?;
    // The member events the rules read: the sender's, the target's, and for a restricted
    // join the authorising member's.
    let authoriser = object
        .get("content")
        .and_then(|c| match c {
            ruma::CanonicalJsonValue::Object(c) => c.get("join_authorised_via_users_server"),
            _ => None,
        })
        .and_then(|a| match a {
            ruma::CanonicalJsonValue::String(a) => Some(a.clone()),
            _ => None,
        });
    let mut wanted: Vec<String> = Vec::new();
    for ((t, k), id) in &head.current {
        let member = t == "m.room.member"
            && (k == sender.as_str()
                || Some(k) == send.state_key.as_ref()
                || Some(k) == authoriser.as_ref());
        if member || (AUTH_TYPES.contains(&t.as_str()) && t != "m.room.member") {
            wanted.push(id.clone());
        }
    }
    let mut pdus = HashMap::new();
    for row in state.storage.get_events(&wanted).await? {
        pdus.insert(row.event_id.clone(), parse_row(&row)?);
    }
    let current = &head.current;
    auth::check_state(
        &head.rules.authorization,
        &pdu,
        |t: &StateEventType, k: &str| {
            current
                .get(&(t.to_string(), k.to_owned()))
                .and_then(|id| pdus.get(id))
        },
    )
    .map_err(|reason| Error::forbidden(format!("Not allowed: {reason}")))?;
    Ok((version, object))
}

/// The checks a redaction needs beyond the authorization rules, and what it rewrites: the
/// target must be an event of this room, and redacting someone else's event needs the
/// `redact` power level (the rules of room versions 3+ leave that to the server). Returns
/// `(target, redacted PDU)` to rewrite in the redaction's transaction, or `None` if the target
/// was redacted before. Every redaction takes this path, from `/redact` or `/send`.
async fn redaction(
    state: &AppState,
    room_id: &RoomId,
    head: &RoomHead,
    sender: &UserId,
    target: Option<&ruma::EventId>,
) -> Result<Option<(String, String)>, Error> {
    let target = target.ok_or_else(|| Error::bad_json("A redaction needs redacts"))?;
    let row = state
        .storage
        .get_event(target.as_str())
        .await?
        .filter(|row| row.room_id == room_id.as_str())
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if row.sender != sender.as_str() {
        let content_of = |event_type: &str| -> Option<serde_json::Value> {
            let id = head.current.get(&(event_type.to_owned(), String::new()))?;
            let pdu = head.pdus.get(id)?;
            Some(serde_json::json!({
                "sender": pdu.sender,
                "content": serde_json::from_str::<serde_json::Value>(pdu.content.get()).ok()?,
            }))
        };
        let create = content_of("m.room.create");
        let levels = content_of("m.room.power_levels");
        if !power::allows(
            &head.rules,
            create.as_ref(),
            levels.as_ref().map(|l| &l["content"]),
            sender.as_str(),
            power::Action::Redact,
        ) {
            return Err(Error::forbidden("You may not redact other users' events"));
        }
    }
    if row.redacted_by.is_some() {
        return Ok(None);
    }
    let original: CanonicalJsonObject = row.parse_pdu().map_err(Error::internal)?;
    let redacted =
        myelin_federation::pdu::redact_pdu(&original, &head.rules).map_err(Error::internal)?;
    let text = serde_json::to_string(&redacted).map_err(Error::internal)?;
    Ok(Some((row.event_id, text)))
}

/// Writes a new room in one transaction: its create event (`built`, already checked) and then
/// every event of its creation (`sends`, in order, all from `creator`), each placed, built
/// and authorised on the room's head as it grows. Either the whole room is committed, with
/// its alias and directory entry, or nothing is: a refused event, a taken alias (400
/// `M_ROOM_IN_USE`) or a failed commit leaves no room behind.
pub(crate) async fn write_new_room(
    state: &AppState,
    built: &myelin_federation::pdu::BuiltEvent,
    create_pdu: Pdu,
    new_room: myelin_storage::NewRoom<'_>,
    creator: &UserId,
    sends: Vec<Send>,
) -> Result<(), Error> {
    let room_id = built.room_id.clone();
    let slot = state.room_locks.get(&room_id);
    let mut guard = slot.lock().await;
    let version = RoomVersionId::try_from(new_room.version).map_err(Error::internal)?;
    let create_id = built.event_id.to_string();
    let mut head = RoomHead {
        rules: rules_for(&version).map_err(Error::internal)?,
        extremities: vec![(built.event_id.clone(), create_pdu.depth as i64)],
        state_after: None,
        pending: Vec::new(),
        current: [(
            ("m.room.create".to_owned(), String::new()),
            create_id.clone(),
        )]
        .into_iter()
        .collect(),
        pdus: HashMap::new(),
        members: HashMap::new(),
        push_power: None,
        display_names: HashMap::new(),
        remote_servers: None,
    };
    let mut prepared = vec![Prepared::new(built, &create_pdu, &[], None)?];
    head.pdus.insert(create_id, create_pdu);
    let mut targets = Vec::new();
    for send in sends {
        let (event, target) = place(state, &room_id, &mut head, creator, send, None).await?;
        targets.extend(target);
        prepared.push(event);
    }
    let rows: Vec<myelin_storage::NewEvent<'_>> = prepared
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut row = p.row(room_id.as_str(), None);
            if i == 0 {
                row.new_room = Some(new_room);
            }
            row
        })
        .collect();
    let persisted = state
        .storage
        .persist_events(&rows, now_ms())
        .await
        .map_err(|e| match e {
            // Room and event IDs are new; only the alias can be taken.
            myelin_storage::Error::UniqueViolation => Error::new(
                StatusCode::BAD_REQUEST,
                "M_ROOM_IN_USE",
                "Room alias already taken",
            ),
            e => e.into(),
        })?;
    head.state_after = persisted.last().map(|p| p.state_after);
    let position = persisted.last().map_or(0, |p| p.stream_ordering);
    state.notify_when_safe(
        position,
        head.interested().chain(targets.iter().map(String::as_str)),
    );
    crate::push::sender::wake_when_safe(state, position, notified_users(prepared.iter()));
    *guard = Some(head);
    Ok(())
}

/// The local users a batch of events notifies (whose pushers have work), each once.
fn notified_users<'a>(events: impl Iterator<Item = &'a Prepared>) -> Vec<String> {
    let mut users: Vec<String> = events
        .flat_map(|p| p.push_actions.iter())
        .filter(|a| a.notify)
        .map(|a| a.user_id.clone())
        .collect();
    users.sort_unstable();
    users.dedup();
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_room_slots_are_evicted_unless_in_use() {
        let locks = RoomLocks::default();
        let a: OwnedRoomId = "!a:x".try_into().unwrap();
        let b: OwnedRoomId = "!b:x".try_into().unwrap();
        drop(locks.get(&a));
        let held = locks.get(&b);
        assert_eq!(locks.len(), 2);
        // Used just now: kept.
        assert_eq!(locks.evict_idle(std::time::Duration::from_secs(60)), 0);
        // Idle: the unused one goes, the one still held stays.
        assert_eq!(locks.evict_idle(std::time::Duration::ZERO), 1);
        assert_eq!(locks.len(), 1);
        drop(held);
        assert_eq!(locks.evict_idle(std::time::Duration::ZERO), 1);
        assert!(locks.is_empty());
    }
}
