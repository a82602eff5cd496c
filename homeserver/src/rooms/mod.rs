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

/// Per-room write locks. The outer std mutex is held only to find or insert a room's lock.
#[derive(Default)]
pub struct RoomLocks {
    locks: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
}

impl RoomLocks {
    pub fn get(&self, room_id: &RoomId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(room_id.to_owned()).or_default().clone()
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
    let _guard = lock.lock().await;

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
    let (_, rules) = room_rules(state, room_id).await?;
    let extremities = state.storage.forward_extremities(room_id.as_str()).await?;
    let depth = extremities.iter().map(|(_, d, _)| *d).max().unwrap_or(0) + 1;
    // Local sends are serialised per room, so there is one extremity; should federation
    // leave several, the newest one's state is the base until state resolution lands.
    let state_before = extremities.first().and_then(|(_, _, s)| *s);
    let prev_events: Vec<OwnedEventId> = extremities
        .iter()
        .take(20)
        .map(|(id, _, _)| OwnedEventId::try_from(id.as_str()).map_err(Error::internal))
        .collect::<Result<_, _>>()?;

    let current = state.storage.current_state(room_id.as_str()).await?;
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
    let auth_ids: Vec<String> = types
        .iter()
        .filter_map(|(t, k)| current.get(&(t.to_string(), k.clone())).cloned())
        .collect();
    // The create event is always needed by the checks, even in room versions (12+) where it
    // is not cited in `auth_events` because the room ID names it.
    let mut fetch_ids = auth_ids.clone();
    fetch_ids.extend(
        current
            .get(&("m.room.create".to_owned(), String::new()))
            .cloned(),
    );
    let auth_rows = state.storage.get_events(&fetch_ids).await?;
    let auth_pdus: HashMap<OwnedEventId, Pdu> = auth_rows
        .iter()
        .map(|row| parse_row(row).map(|p| (p.event_id.clone(), p)))
        .collect::<Result<_, _>>()?;
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

    let by_key: HashMap<(String, String), &Pdu> = auth_pdus
        .values()
        .filter_map(|p| {
            p.state_key
                .as_ref()
                .map(|k| ((p.kind.to_string(), k.clone()), p))
        })
        .collect();
    auth::check(
        &rules.authorization,
        &pdu,
        |id| auth_pdus.get(id),
        |t: &StateEventType, k: &str| by_key.get(&(t.to_string(), k.to_owned())).copied(),
    )
    .map_err(|reason| {
        tracing::debug!(%reason, event_type = %send.event_type, "event refused by the authorization rules");
        Error::forbidden(format!("Event not allowed: {reason}"))
    })?;

    persist(
        state,
        &built,
        &pdu,
        &prev_events,
        state_before,
        None,
        send.txn
            .as_ref()
            .map(|(d, t)| (sender.as_str(), d.as_str(), t.as_str())),
        now,
    )
    .await?;
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
    // Wake the room's members (and the target of a membership change) now that it is committed.
    let members = state.storage.room_members(built.room_id.as_str()).await?;
    let target = pdu
        .state_key
        .as_deref()
        .filter(|_| pdu.kind == TimelineEventType::RoomMember);
    state.notifier.notify(
        members
            .iter()
            .filter(|(_, m, _)| matches!(m.as_str(), "join" | "invite" | "knock"))
            .map(|(u, _, _)| u.as_str())
            .chain(target),
    );
    Ok(persisted)
}
