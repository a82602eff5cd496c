//! Turning stored PDUs into the client format: the event without its DAG fields, plus
//! `event_id`, `room_id` and `unsigned` (`age`, the sender device's `transaction_id`,
//! `redacted_because`, and for a state event that replaced another: `prev_content`,
//! `prev_sender`, `replaces_state`, which clients use to say what changed, e.g. "changed
//! their display name").
//!
//! <https://spec.matrix.org/latest/client-server-api/#room-event-format>
//!
//! Sync sends the same event to every member of a room, so for sync an event is formatted
//! once into a [`SharedEvent`]: its JSON up to the `unsigned` object, kept in
//! [`AppState::shared_events`]. Each response then copies those bytes and writes only what
//! differs per viewer (`age`, and the `transaction_id` for the device that sent it).

use std::{collections::HashMap, sync::Arc};

use myelin_storage::EventRow;
use ruma::{DeviceId, UserId};
use serde_json::{Map, Value};

use crate::{auth::now_ms, error::Error, AppState};

/// The fields of a PDU that clients see.
const CLIENT_FIELDS: &[&str] = &[
    "type",
    "content",
    "sender",
    "origin_server_ts",
    "state_key",
    "redacts",
];

fn base(row: &EventRow, now: i64) -> Result<Map<String, Value>, Error> {
    let pdu: Map<String, Value> = row.parse_pdu().map_err(Error::internal)?;
    let mut event = Map::new();
    for field in CLIENT_FIELDS {
        if let Some(value) = pdu.get(*field) {
            event.insert((*field).to_owned(), value.clone());
        }
    }
    event.insert("event_id".into(), Value::String(row.event_id.clone()));
    event.insert("room_id".into(), Value::String(row.room_id.clone()));
    let mut unsigned = Map::new();
    unsigned.insert(
        "age".into(),
        Value::from((now - row.origin_server_ts).max(0)),
    );
    event.insert("unsigned".into(), Value::Object(unsigned));
    Ok(event)
}

/// What a state event replaced: the previous event of its `(type, state_key)` in the state
/// it was placed on.
#[derive(Debug, Clone)]
struct Replaced {
    event_id: String,
    sender: String,
    content: Value,
}

impl Replaced {
    fn insert_into(&self, unsigned: &mut Map<String, Value>) {
        unsigned.insert("prev_content".into(), self.content.clone());
        unsigned.insert("prev_sender".into(), Value::String(self.sender.clone()));
        unsigned.insert(
            "replaces_state".into(),
            Value::String(self.event_id.clone()),
        );
    }
}

/// For each state event among `rows`, by event ID, the state event it replaced (if any):
/// recorded with the event when it was written (migration 0015), else one point lookup of
/// its key in the state it was placed on (all of them in a few statements, never a whole
/// state); then one query for the replaced events.
async fn replaced_states<'a>(
    state: &AppState,
    rows: impl IntoIterator<Item = &'a EventRow>,
) -> Result<HashMap<String, Replaced>, Error> {
    // (event ID, replaced event ID)
    let mut previous: Vec<(String, String)> = Vec::new();
    let mut events = Vec::new();
    let mut requests = Vec::new();
    for row in rows {
        if row.state_key.is_none() {
            continue;
        }
        match &row.replaces_state {
            Some(prev) if prev.is_empty() => {}
            Some(prev) => previous.push((row.event_id.clone(), prev.clone())),
            None => {
                let (Some(state_key), Some(snapshot)) = (&row.state_key, row.state_before) else {
                    continue;
                };
                events.push(row.event_id.clone());
                requests.push((snapshot, row.event_type.clone(), state_key.clone()));
            }
        }
    }
    if !requests.is_empty() {
        previous.extend(
            events
                .into_iter()
                .zip(state.storage.state_lookups(&requests).await?)
                .filter_map(|(event, prev)| Some((event, prev?))),
        );
    }
    if previous.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<String> = previous.iter().map(|(_, p)| p.clone()).collect();
    let found: HashMap<String, EventRow> = state
        .storage
        .get_events(&ids)
        .await?
        .into_iter()
        .map(|r| (r.event_id.clone(), r))
        .collect();
    let mut out = HashMap::new();
    for (event_id, prev_id) in previous {
        let Some(prev) = found.get(&prev_id) else {
            continue;
        };
        // An unreadable replaced event only costs the `prev_content` of the new one.
        let Ok(pdu) = prev.parse_pdu::<Value>() else {
            unreadable(prev, &Error::internal("stored PDU is not readable JSON"));
            continue;
        };
        out.insert(
            event_id,
            Replaced {
                event_id: prev_id,
                sender: prev.sender.clone(),
                content: pdu
                    .get("content")
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Map::new())),
            },
        );
    }
    Ok(out)
}

/// The transaction IDs of the viewer's own events among `rows`, in one query.
async fn own_transaction_ids(
    state: &AppState,
    rows: &[EventRow],
    viewer: Option<(&UserId, &DeviceId)>,
) -> Result<HashMap<String, (String, String)>, Error> {
    let Some((user, _)) = viewer else {
        return Ok(HashMap::new());
    };
    let own: Vec<String> = rows
        .iter()
        .filter(|r| r.sender == user.as_str())
        .map(|r| r.event_id.clone())
        .collect();
    if own.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(state.storage.txns_for_events(&own).await?)
}

/// The transaction ID to show `viewer` for `row`: only the device that sent it sees it.
fn transaction_id_for(
    row: &EventRow,
    viewer: Option<(&UserId, &DeviceId)>,
    txns: &HashMap<String, (String, String)>,
) -> Option<String> {
    let (_, device) = viewer?;
    let (txn_device, txn_id) = txns.get(&row.event_id)?;
    (txn_device == device.as_str()).then(|| txn_id.clone())
}

/// Formats events for `viewer` (the transaction ID is shown only to the device that sent it).
/// An event whose stored JSON cannot be read is left out (and logged) rather than failing
/// the response for every other event in it.
pub async fn client_events(
    state: &AppState,
    rows: &[EventRow],
    viewer: Option<(&UserId, &DeviceId)>,
) -> Result<Vec<Value>, Error> {
    Ok(client_events_aligned(state, rows, viewer)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// Logs a stored event that cannot be formatted; the caller leaves it out of its response.
fn unreadable(row: &EventRow, e: &Error) {
    tracing::warn!(event_id = %row.event_id, room_id = %row.room_id, error = ?e,
        "a stored event cannot be formatted; leaving it out");
}

/// [`client_events`], one entry per row: `None` where the row cannot be formatted. Thread
/// roots carry their thread's summary (`unsigned.m.relations.m.thread`) for the viewer.
pub(crate) async fn client_events_aligned(
    state: &AppState,
    rows: &[EventRow],
    viewer: Option<(&UserId, &DeviceId)>,
) -> Result<Vec<Option<Value>>, Error> {
    let mut out = client_events_unbundled(state, rows, viewer).await?;
    let Some((user, _)) = viewer else {
        return Ok(out);
    };
    let summaries = crate::rooms::threads::summaries(state, rows, user).await?;
    if summaries.is_empty() {
        return Ok(out);
    }
    for (row, event) in rows.iter().zip(out.iter_mut()) {
        if let (Some(summary), Some(event)) = (summaries.get(&row.event_id), event.as_mut()) {
            if let Some(unsigned) = event.get_mut("unsigned").and_then(Value::as_object_mut) {
                unsigned.insert("m.relations".into(), summary.clone());
            }
        }
    }
    Ok(out)
}

/// [`client_events_aligned`] without thread summaries (which are made of events formatted
/// by this).
pub(crate) async fn client_events_unbundled(
    state: &AppState,
    rows: &[EventRow],
    viewer: Option<(&UserId, &DeviceId)>,
) -> Result<Vec<Option<Value>>, Error> {
    let now = now_ms();
    let redaction_ids: Vec<String> = rows.iter().filter_map(|r| r.redacted_by.clone()).collect();
    let redactions: HashMap<String, EventRow> = if redaction_ids.is_empty() {
        HashMap::new()
    } else {
        state
            .storage
            .get_events(&redaction_ids)
            .await?
            .into_iter()
            .map(|r| (r.event_id.clone(), r))
            .collect()
    };
    let txns = own_transaction_ids(state, rows, viewer).await?;
    let replaced = replaced_states(state, rows).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut event = match base(row, now) {
            Ok(event) => event,
            Err(e) => {
                unreadable(row, &e);
                out.push(None);
                continue;
            }
        };
        let unsigned = event
            .get_mut("unsigned")
            .and_then(Value::as_object_mut)
            .expect("base adds unsigned");
        if let Some(replaced) = replaced.get(&row.event_id) {
            replaced.insert_into(unsigned);
        }
        if let Some(txn_id) = transaction_id_for(row, viewer, &txns) {
            unsigned.insert("transaction_id".into(), Value::String(txn_id));
        }
        if let Some(redaction) = row.redacted_by.as_ref().and_then(|id| redactions.get(id)) {
            match base(redaction, now) {
                Ok(because) => {
                    unsigned.insert("redacted_because".into(), Value::Object(because));
                }
                Err(e) => unreadable(redaction, &e),
            }
        }
        out.push(Some(Value::Object(event)));
    }
    Ok(out)
}

/// One event in client format.
pub async fn client_event(
    state: &AppState,
    row: &EventRow,
    viewer: Option<(&UserId, &DeviceId)>,
) -> Result<Value, Error> {
    client_events(state, std::slice::from_ref(row), viewer)
        .await?
        .pop()
        .ok_or_else(|| Error::internal(format!("stored event {} is unreadable", row.event_id)))
}

/// An event in the client format of sync (without `room_id`), serialised once for every
/// viewer: `prefix` is its JSON object up to and including `"unsigned":{"age":`, so a
/// viewer's copy is the prefix, the age, the viewer's own fields and `}}`.
#[derive(Debug)]
pub struct SharedEvent {
    pub event_id: String,
    pub sender: String,
    /// The state event this one replaced, whose content is its `prev_content`: when that
    /// event is redacted, this formatted copy is dropped ([`forget_replaced`]).
    replaces: Option<String>,
    /// The event's stream position.
    pub position: Option<i64>,
    prefix: String,
    /// `unsigned` fields the same for every viewer, each with a leading comma.
    unsigned: String,
}

impl SharedEvent {
    /// The bytes it holds on the heap (what a cache of them is bounded by).
    pub fn heap_size(&self) -> usize {
        self.event_id.len() + self.sender.len() + self.prefix.len() + self.unsigned.len()
    }

    /// Formats a stored event that has not been redacted (a redacted event's `unsigned`
    /// carries the redaction, which is not shared).
    fn new(row: &EventRow, replaced: Option<&Replaced>) -> Result<SharedEvent, Error> {
        let mut unsigned = Map::new();
        if let Some(replaced) = replaced {
            replaced.insert_into(&mut unsigned);
        }
        let mut shared_unsigned = String::new();
        for (key, value) in &unsigned {
            shared_unsigned.push(',');
            shared_unsigned.push_str(&serde_json::to_string(key).map_err(Error::internal)?);
            shared_unsigned.push(':');
            shared_unsigned.push_str(&serde_json::to_string(value).map_err(Error::internal)?);
        }
        let mut event = base(row, 0)?;
        event.remove("room_id");
        event.remove("unsigned");
        let mut prefix = serde_json::to_string(&event).map_err(Error::internal)?;
        // A serialised object always ends with its closing brace; the event is never empty
        // (it has a type and an ID), so a comma separates the last field from `unsigned`.
        prefix.pop();
        prefix.push_str(r#","unsigned":{"age":"#);
        Ok(SharedEvent {
            event_id: row.event_id.clone(),
            sender: row.sender.clone(),
            replaces: replaced.map(|r| r.event_id.clone()),
            position: row.stream_ordering,
            prefix,
            unsigned: shared_unsigned,
        })
    }
}

/// An event of a sync response: either shared bytes plus the viewer's own fields, or (for
/// redacted events) a value formatted for this response alone.
#[derive(Debug)]
pub enum SyncEvent {
    Shared {
        event: Arc<SharedEvent>,
        age: i64,
        transaction_id: Option<String>,
    },
    Value(Value),
    /// JSON serialised once for several responses (a room's receipts, say).
    Raw(Arc<str>),
}

impl SyncEvent {
    pub fn event_id(&self) -> Option<&str> {
        match self {
            SyncEvent::Shared { event, .. } => Some(&event.event_id),
            SyncEvent::Value(v) => v["event_id"].as_str(),
            SyncEvent::Raw(_) => None,
        }
    }

    /// The stream position, when known without a lookup.
    pub fn position(&self) -> Option<i64> {
        match self {
            SyncEvent::Shared { event, .. } => event.position,
            SyncEvent::Value(_) | SyncEvent::Raw(_) => None,
        }
    }

    pub fn sender(&self) -> Option<&str> {
        match self {
            SyncEvent::Shared { event, .. } => Some(&event.sender),
            SyncEvent::Value(v) => v["sender"].as_str(),
            SyncEvent::Raw(_) => None,
        }
    }

    /// Appends the event's JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            SyncEvent::Shared {
                event,
                age,
                transaction_id,
            } => {
                out.extend_from_slice(event.prefix.as_bytes());
                out.extend_from_slice(age.to_string().as_bytes());
                out.extend_from_slice(event.unsigned.as_bytes());
                if let Some(txn_id) = transaction_id {
                    out.extend_from_slice(br#","transaction_id":"#);
                    crate::sync::response::write_value(out, txn_id);
                }
                out.extend_from_slice(b"}}");
            }
            SyncEvent::Value(value) => crate::sync::response::write_value(out, value),
            SyncEvent::Raw(json) => out.extend_from_slice(json.as_bytes()),
        }
    }
}

/// Formats events for a sync response to `viewer`: as [`client_events`] without `room_id`,
/// each formatted once for all viewers.
pub async fn sync_events(
    state: &AppState,
    rows: &[EventRow],
    viewer: (&UserId, &DeviceId),
) -> Result<Vec<SyncEvent>, Error> {
    Ok(sync_events_aligned(state, rows, viewer)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// [`sync_events`] with one entry per row, `None` for a row that cannot be shown: for
/// callers that format the events of many rooms at once and split them again.
pub async fn sync_events_aligned(
    state: &AppState,
    rows: &[EventRow],
    viewer: (&UserId, &DeviceId),
) -> Result<Vec<Option<SyncEvent>>, Error> {
    let now = now_ms();
    // Read before what replaced events say is read: a redaction meanwhile keeps our copies
    // (made from the unredacted content) out of the cache.
    let generation = state.shared_events.generation();
    let txns = own_transaction_ids(state, rows, Some(viewer)).await?;
    // The events already formatted, taken in one look at the cache (held here, so that the
    // cache being cleared meanwhile changes nothing); for state events not formatted yet,
    // what they replaced (a message, the common case, needs no read).
    let cached = state
        .shared_events
        .get_many(rows.iter().map(|r| &r.event_id));
    let unformatted: Vec<&EventRow> = rows
        .iter()
        .filter(|r| r.state_key.is_some() && r.redacted_by.is_none())
        .filter(|r| !cached.contains_key(&r.event_id))
        .collect();
    let replaced = replaced_states(state, unformatted).await?;
    // Redacted events and thread roots are formatted for this viewer alone (a redaction and
    // a thread summary are not shared); both are rare.
    let roots = crate::rooms::threads::roots_among(state, rows).await?;
    let own = |r: &EventRow| r.redacted_by.is_some() || roots.contains(&r.event_id);
    let redacted: Vec<EventRow> = rows.iter().filter(|r| own(r)).cloned().collect();
    let mut redacted = client_events_aligned(state, &redacted, Some(viewer))
        .await?
        .into_iter();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if own(row) {
            let Some(mut value) = redacted.next().flatten() else {
                out.push(None);
                continue;
            };
            if let Some(object) = value.as_object_mut() {
                object.remove("room_id");
            }
            out.push(Some(SyncEvent::Value(value)));
            continue;
        }
        let event = match cached.get(&row.event_id) {
            Some(event) => event.clone(),
            None => match shared_event(state, generation, row, replaced.get(&row.event_id)) {
                Ok(event) => event,
                Err(e) => {
                    unreadable(row, &e);
                    out.push(None);
                    continue;
                }
            },
        };
        out.push(Some(SyncEvent::Shared {
            event,
            age: (now - row.origin_server_ts).max(0),
            transaction_id: transaction_id_for(row, Some(viewer), &txns),
        }));
    }
    Ok(out)
}

/// Formats an unredacted event for sharing and caches it. Redaction sets `redacted_by` on
/// the row, so a cached entry is never used for a redacted event.
fn shared_event(
    state: &AppState,
    generation: u64,
    row: &EventRow,
    replaced: Option<&Replaced>,
) -> Result<Arc<SharedEvent>, Error> {
    let event = Arc::new(SharedEvent::new(row, replaced)?);
    state
        .shared_events
        .insert_if_current(generation, row.event_id.clone(), event.clone());
    Ok(event)
}

/// Called after the state event `redacted` was redacted in storage: formatted events that
/// show its original content as `prev_content` are dropped, so the next sync formats them
/// again from the redacted form (which is what `prev_content` must carry).
pub fn forget_replaced(state: &AppState, redacted: &str) {
    state
        .shared_events
        .remove_where(|event| event.replaces.as_deref() == Some(redacted));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pdu: Value) -> EventRow {
        EventRow {
            event_id: "$abc".into(),
            room_id: "!room:x".into(),
            stream_ordering: Some(7),
            depth: 3,
            event_type: pdu["type"].as_str().unwrap().into(),
            state_key: pdu["state_key"].as_str().map(Into::into),
            sender: pdu["sender"].as_str().unwrap().into(),
            origin_server_ts: 1_000,
            pdu: pdu.to_string(),
            state_before: None,
            state_after: None,
            rejected: false,
            redacted_by: None,
            replaces_state: None,
        }
    }

    fn written(event: &SyncEvent) -> Value {
        let mut out = Vec::new();
        event.write_json(&mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn a_shared_event_reads_as_the_client_format_without_room_id() {
        let pdu = serde_json::json!({
            "type": "m.room.message",
            "sender": "@a:x",
            "room_id": "!room:x",
            "origin_server_ts": 1_000,
            "content": { "body": "hi \"there\" \u{e9}", "msgtype": "m.text" },
            "depth": 3,
            "prev_events": ["$p"],
            "auth_events": ["$q"],
            "hashes": { "sha256": "x" },
            "signatures": {},
        });
        let row = row(pdu);
        let shared = Arc::new(SharedEvent::new(&row, None).unwrap());
        let plain = SyncEvent::Shared {
            event: shared.clone(),
            age: 250,
            transaction_id: None,
        };
        let mut expected = Value::Object(base(&row, 1_250).unwrap());
        expected.as_object_mut().unwrap().remove("room_id");
        assert_eq!(written(&plain), expected);

        let own = SyncEvent::Shared {
            event: shared,
            age: 0,
            transaction_id: Some("t\"1".into()),
        };
        let value = written(&own);
        assert_eq!(
            value["unsigned"],
            serde_json::json!({ "age": 0, "transaction_id": "t\"1" })
        );
        assert_eq!(value["content"], expected["content"]);
        assert!(value.get("prev_events").is_none() && value.get("room_id").is_none());
    }

    #[test]
    fn a_replaced_state_event_says_what_it_replaced_to_every_viewer() {
        let row = row(serde_json::json!({
            "type": "m.room.topic",
            "state_key": "",
            "sender": "@a:x",
            "origin_server_ts": 1_000,
            "content": { "topic": "new" },
        }));
        let replaced = Replaced {
            event_id: "$old".into(),
            sender: "@b:x".into(),
            content: serde_json::json!({ "topic": "old" }),
        };
        let event = SyncEvent::Shared {
            event: Arc::new(SharedEvent::new(&row, Some(&replaced)).unwrap()),
            age: 7,
            transaction_id: Some("t1".into()),
        };
        assert_eq!(
            written(&event)["unsigned"],
            serde_json::json!({
                "age": 7,
                "prev_content": { "topic": "old" },
                "prev_sender": "@b:x",
                "replaces_state": "$old",
                "transaction_id": "t1",
            })
        );
    }

    #[test]
    fn a_state_event_keeps_its_state_key() {
        let row = row(serde_json::json!({
            "type": "m.room.member",
            "state_key": "@a:x",
            "sender": "@a:x",
            "origin_server_ts": 1_000,
            "content": { "membership": "join" },
        }));
        let event = SyncEvent::Shared {
            event: Arc::new(SharedEvent::new(&row, None).unwrap()),
            age: 5,
            transaction_id: None,
        };
        let value = written(&event);
        assert_eq!(value["state_key"], "@a:x");
        assert_eq!(value["event_id"], "$abc");
        assert_eq!(value["unsigned"]["age"], 5);
    }
}
