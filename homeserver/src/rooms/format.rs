//! Turning stored PDUs into the client format: the event without its DAG fields, plus
//! `event_id`, `room_id` and `unsigned` (`age`, the sender device's `transaction_id`,
//! `redacted_because`).
//!
//! <https://spec.matrix.org/latest/client-server-api/#room-event-format>

use std::collections::HashMap;

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
    let pdu: Map<String, Value> = serde_json::from_str(&row.pdu).map_err(Error::internal)?;
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

/// Formats events for `viewer` (the transaction ID is shown only to the device that sent it).
pub async fn client_events(
    state: &AppState,
    rows: &[EventRow],
    viewer: Option<(&UserId, &DeviceId)>,
) -> Result<Vec<Value>, Error> {
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
    // Transaction IDs of the viewer's own events, in one query.
    let txns = match viewer {
        Some((user, _)) => {
            let own: Vec<String> = rows
                .iter()
                .filter(|r| r.sender == user.as_str())
                .map(|r| r.event_id.clone())
                .collect();
            if own.is_empty() {
                HashMap::new()
            } else {
                state.storage.txns_for_events(&own).await?
            }
        }
        None => HashMap::new(),
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut event = base(row, now)?;
        let unsigned = event
            .get_mut("unsigned")
            .and_then(Value::as_object_mut)
            .expect("base adds unsigned");
        if let (Some((_, device)), Some((txn_device, txn_id))) = (viewer, txns.get(&row.event_id)) {
            if txn_device == device.as_str() {
                unsigned.insert("transaction_id".into(), Value::String(txn_id.clone()));
            }
        }
        if let Some(redaction) = row.redacted_by.as_ref().and_then(|id| redactions.get(id)) {
            unsigned.insert(
                "redacted_because".into(),
                Value::Object(base(redaction, now)?),
            );
        }
        out.push(Value::Object(event));
    }
    Ok(out)
}

/// One event in client format.
pub async fn client_event(
    state: &AppState,
    row: &EventRow,
    viewer: Option<(&UserId, &DeviceId)>,
) -> Result<Value, Error> {
    Ok(client_events(state, std::slice::from_ref(row), viewer)
        .await?
        .remove(0))
}
