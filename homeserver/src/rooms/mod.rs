//! The room service: the one write pipeline every event goes through, and the reads that
//! interpret stored events (state, visibility, client format).
//!
//! Write pipeline ([`RoomService::send`]):
//! 1. take the room's lock (sends into one room are serialised, so the DAG stays linear and
//!    nothing is lost; different rooms never share a lock);
//! 2. place the event: `prev_events` = the forward extremities, `depth` = one more than theirs,
//!    `auth_events` chosen from current state by the room version's rules;
//! 3. build, hash and sign it (federation crate);
//! 4. check the authorization rules against its auth events and the current state;
//! 5. persist it in one transaction (storage assigns its stream position);
//! 6. (with sync) notify waiters.
//!
//! Federation will feed received events into the same steps 4-6.

pub mod create;
pub mod format;
pub mod power;
pub mod summary;
pub mod upgrade;
pub mod visibility;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::http::StatusCode;
use myelin_federation::{
    auth,
    pdu::{build_event, rules_for, NewEvent, Pdu, PduError, Placement},
};
use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId,
    RoomVersionId, UInt, UserId,
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
    current: myelin_storage::StateMap,
    /// Parsed state events, filled as the authorization rules ask for them.
    pdus: HashMap<String, Pdu>,
    /// Current membership of every user with a member event, for waking sync waiters.
    members: HashMap<String, String>,
}

impl RoomHead {
    async fn load(state: &AppState, room_id: &RoomId) -> Result<RoomHead, Error> {
        let (_, rules) = room_rules(state, room_id).await?;
        let extremities = state.storage.forward_extremities(room_id.as_str()).await?;
        let state_after = extremities.first().and_then(|(_, _, s)| *s);
        let extremities = extremities
            .into_iter()
            .take(20)
            .map(|(id, depth, _)| {
                OwnedEventId::try_from(id)
                    .map(|id| (id, depth))
                    .map_err(Error::internal)
            })
            .collect::<Result<_, _>>()?;
        let current = state.storage.current_state(room_id.as_str()).await?;
        let members = state
            .storage
            .room_members(room_id.as_str())
            .await?
            .into_iter()
            .map(|(user, membership, _)| (user, membership))
            .collect();
        Ok(RoomHead {
            rules,
            extremities,
            state_after,
            current,
            pdus: HashMap::new(),
            members,
        })
    }

    /// Users whose syncs care about a new event in this room.
    fn interested(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, m)| matches!(m.as_str(), "join" | "invite" | "knock"))
            .map(|(u, _)| u.as_str())
    }
}

/// Per-room write locks, each guarding the room's cached [`RoomHead`] (loaded on first use).
/// The outer std mutex is held only to find or insert a room's entry.
#[derive(Default)]
pub struct RoomLocks {
    locks: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<Option<RoomHead>>>>>,
}

impl RoomLocks {
    pub fn get(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<Option<RoomHead>>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(room_id.to_owned()).or_default().clone()
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
    let object: CanonicalJsonObject = serde_json::from_str(&row.pdu)
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

/// The room version and its rules, or 404 if the room is unknown here.
pub async fn room_rules(
    state: &AppState,
    room_id: &RoomId,
) -> Result<(RoomVersionId, RoomVersionRules), Error> {
    let room = state
        .storage
        .get_room(room_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room not found"))?;
    let version = RoomVersionId::try_from(room.room_version.as_str()).map_err(Error::internal)?;
    let rules = rules_for(&version).map_err(Error::internal)?;
    Ok((version, rules))
}

/// Builds, authorises and persists an event sent by a local user into an existing room.
/// Returns the new event's ID.
pub async fn send(
    state: &AppState,
    room_id: &RoomId,
    sender: &UserId,
    send: Send,
) -> Result<OwnedEventId, Error> {
    let lock = state.room_locks.get(room_id);
    let mut guard = lock.lock().await;

    // A retried client transaction returns the event it created the first time.
    if let Some((device, txn_id)) = &send.txn {
        if let Some(event_id) = state
            .storage
            .find_txn(sender.as_str(), device, txn_id)
            .await?
        {
            return OwnedEventId::try_from(event_id).map_err(Error::internal);
        }
    }
    if guard.is_none() {
        *guard = Some(RoomHead::load(state, room_id).await?);
    }
    let head = guard.as_mut().expect("loaded above");
    let rules = head.rules.clone();
    let depth = head.extremities.iter().map(|(_, d)| *d).max().unwrap_or(0) + 1;
    // Local sends are serialised per room, so there is one extremity; should federation
    // leave several, the newest one's state is the base until state resolution lands.
    let state_before = head.state_after;
    let prev_events: Vec<OwnedEventId> =
        head.extremities.iter().map(|(id, _)| id.clone()).collect();

    let content_raw = serde_json::value::to_raw_value(&send.content).map_err(Error::internal)?;
    let kind = TimelineEventType::from(send.event_type.as_str());
    let types = auth::auth_types(
        &rules.authorization,
        &kind,
        sender,
        send.state_key.as_deref(),
        &content_raw,
    )
    .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
    let id_of = |key: (String, String)| head.current.get(&key).cloned();
    let auth_ids: Vec<String> = types
        .iter()
        .filter_map(|(t, k)| id_of((t.to_string(), k.clone())))
        .collect();
    // The create event is always needed by the checks, even in room versions (12+) where it
    // is not cited in `auth_events` because the room ID names it.
    let mut needed = auth_ids.clone();
    needed.extend(id_of(("m.room.create".to_owned(), String::new())));
    let missing: Vec<String> = needed
        .iter()
        .filter(|id| !head.pdus.contains_key(id.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
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

    let txn = send
        .txn
        .as_ref()
        .map(|(d, t)| (sender.as_str(), d.as_str(), t.as_str()));
    let persisted = persist(
        state,
        &built,
        &pdu,
        &prev_events,
        state_before,
        None,
        txn,
        now,
    )
    .await?;

    // Move the head, then wake the room's members (and the target of a membership change).
    head.extremities = vec![(built.event_id.clone(), depth)];
    head.state_after = Some(persisted.state_after);
    let mut target = None;
    if let Some(state_key) = &pdu.state_key {
        head.current.insert(
            (pdu.kind.to_string(), state_key.clone()),
            built.event_id.to_string(),
        );
        if pdu.kind == TimelineEventType::RoomMember {
            let membership = pdu.content_json()["membership"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            head.members.insert(state_key.clone(), membership);
            target = Some(state_key.as_str());
        }
        head.pdus.insert(built.event_id.to_string(), pdu.clone());
    }
    state.notifier.notify(head.interested().chain(target));
    Ok(built.event_id)
}

/// Writes an authorised event.
#[allow(clippy::too_many_arguments)]
async fn persist(
    state: &AppState,
    built: &myelin_federation::pdu::BuiltEvent,
    pdu: &Pdu,
    prev_events: &[OwnedEventId],
    state_before: Option<i64>,
    new_room: Option<(&str, &str)>,
    txn: Option<(&str, &str, &str)>,
    now: i64,
) -> Result<myelin_storage::Persisted, Error> {
    let pdu_json = serde_json::to_string(&built.pdu).map_err(Error::internal)?;
    let prev: Vec<String> = prev_events.iter().map(|e| e.to_string()).collect();
    let membership = if pdu.kind == TimelineEventType::RoomMember {
        pdu.content_json()
            .get("membership")
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    } else {
        None
    };
    let kind = pdu.kind.to_string();
    let content = pdu.content_json();
    let relation = &content["m.relates_to"];
    let relates_to = match (relation["rel_type"].as_str(), relation["event_id"].as_str()) {
        (Some(rel_type), Some(parent)) if pdu.state_key.is_none() => Some((rel_type, parent)),
        _ => None,
    };
    let persisted = state
        .storage
        .persist_event(
            &myelin_storage::NewEvent {
                event_id: built.event_id.as_str(),
                room_id: built.room_id.as_str(),
                depth: pdu.depth as i64,
                event_type: &kind,
                state_key: pdu.state_key.as_deref(),
                sender: pdu.sender.as_str(),
                origin_server_ts: u64::from(pdu.origin_server_ts.0) as i64,
                pdu: &pdu_json,
                prev_events: &prev,
                state_before,
                membership: membership.as_deref(),
                txn,
                new_room,
                relates_to,
            },
            now,
        )
        .await?;
    Ok(persisted)
}
