//! A sync response as the engine builds it, written out as JSON once per transport.
//!
//! The joined rooms' events are [`SyncEvent`]s, whose bytes are shared by every member of a
//! room (see [`crate::rooms::format`]); everything else is a plain JSON value. The response
//! is written straight to bytes: a `serde_json::Value` cannot hold pre-serialised JSON, and
//! turning the shared bytes back into values for every member is the work this type avoids.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::rooms::format::SyncEvent;
use myelin_storage::EventRow;

/// A `/sync` response (or WebSocket frame).
#[derive(Debug)]
pub struct SyncResponse {
    pub next_batch: String,
    /// `rooms.join`, in the order the rooms were computed.
    pub join: Vec<(String, JoinedRoom)>,
    /// Every other top-level field (`presence`, `account_data`, `to_device`, ...), with
    /// `rooms` holding only the `invite`, `knock` and `leave` sections. Always an object.
    pub rest: Value,
    /// The filter's `event_fields`: joined rooms' timeline and state events are cut down to
    /// these paths when written (the engine keeps them whole, since the delivered receipt
    /// needs their IDs and senders).
    pub event_fields: Option<Vec<Vec<String>>>,
}

/// One room of `rooms.join`.
#[derive(Debug)]
pub struct JoinedRoom {
    pub timeline: Vec<SyncEvent>,
    pub limited: bool,
    pub prev_batch: String,
    pub state: Vec<SyncEvent>,
    pub account_data: Vec<Value>,
    /// Typing and receipts (receipts may be shared bytes, see [`SyncEvent::Raw`]).
    pub ephemeral: Vec<SyncEvent>,
    /// Only when the members changed (or the room is new to the client).
    pub summary: Option<Value>,
    /// The timeline and state rows until they are formatted (for all rooms at once).
    pub rows: Option<(Vec<EventRow>, Vec<EventRow>)>,
    /// `{notification_count, highlight_count}`, at the response's position.
    pub unread_notifications: Value,
    /// Per thread root, when the filter asks for it (and there are any).
    pub unread_thread_notifications: Option<Value>,
}

/// Appends `value` as JSON. Serialising into memory fails only for maps with non-string
/// keys, which no caller has.
pub(crate) fn write_value(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(&mut *out, value).expect("JSON values serialise into memory");
}

fn write_events(out: &mut Vec<u8>, events: &[SyncEvent]) {
    out.extend_from_slice(br#"{"events":"#);
    write_event_list(out, events, None);
    out.push(b'}');
}

/// `[event, ...]`, each cut down to `fields` if given (rare: written, parsed, projected).
fn write_event_list(out: &mut Vec<u8>, events: &[SyncEvent], fields: Option<&[Vec<String>]>) {
    out.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match fields {
            None => event.write_json(out),
            Some(paths) => {
                let mut whole = Vec::new();
                event.write_json(&mut whole);
                let value: Value = serde_json::from_slice(&whole).unwrap_or_default();
                write_value(out, &super::filter::project(&value, paths));
            }
        }
    }
    out.push(b']');
}

impl JoinedRoom {
    fn write_json(&self, out: &mut Vec<u8>, fields: Option<&[Vec<String>]>) {
        out.extend_from_slice(br#"{"timeline":{"events":"#);
        write_event_list(out, &self.timeline, fields);
        out.extend_from_slice(br#","limited":"#);
        out.extend_from_slice(if self.limited { b"true" } else { b"false" });
        out.extend_from_slice(br#","prev_batch":"#);
        write_value(out, &self.prev_batch);
        out.extend_from_slice(br#"},"state":{"events":"#);
        write_event_list(out, &self.state, fields);
        out.push(b'}');
        out.extend_from_slice(br#","account_data":{"events":"#);
        write_value(out, &self.account_data);
        out.extend_from_slice(br#"},"ephemeral":"#);
        write_events(out, &self.ephemeral);
        if let Some(summary) = &self.summary {
            out.extend_from_slice(br#","summary":"#);
            write_value(out, summary);
        }
        out.extend_from_slice(br#","unread_notifications":"#);
        write_value(out, &self.unread_notifications);
        if let Some(threads) = &self.unread_thread_notifications {
            out.extend_from_slice(br#","unread_thread_notifications":"#);
            write_value(out, threads);
        }
        out.push(b'}');
    }
}

impl SyncResponse {
    /// A response with nothing in it but its token.
    pub fn empty(next_batch: String) -> SyncResponse {
        SyncResponse {
            next_batch,
            join: Vec::new(),
            rest: Value::Object(Map::new()),
            event_fields: None,
        }
    }

    /// Whether the response carries nothing a waiting client should be woken for (the key
    /// counts sent with every response do not count).
    pub fn is_empty(&self) -> bool {
        let none = |v: &Value| v.as_array().is_none_or(Vec::is_empty);
        let other_rooms_empty = self.rest["rooms"].as_object().is_none_or(|rooms| {
            rooms
                .values()
                .all(|section| section.as_object().is_none_or(Map::is_empty))
        });
        self.join.is_empty()
            && other_rooms_empty
            && none(&self.rest["account_data"]["events"])
            && none(&self.rest["presence"]["events"])
            && super::e2ee::is_empty(&self.rest)
    }

    /// The response as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(br#"{"next_batch":"#);
        write_value(&mut out, &self.next_batch);
        let rest = self.rest.as_object();
        for (key, value) in rest.into_iter().flatten() {
            if key == "rooms" || key == "next_batch" {
                continue;
            }
            out.push(b',');
            write_value(&mut out, key);
            out.push(b':');
            write_value(&mut out, value);
        }
        let other_rooms = self.rest["rooms"]
            .as_object()
            .filter(|rooms| !rooms.is_empty());
        if !self.join.is_empty() || other_rooms.is_some() {
            out.extend_from_slice(br#","rooms":{"#);
            let mut first = true;
            if !self.join.is_empty() {
                out.extend_from_slice(br#""join":{"#);
                for (i, (room_id, room)) in self.join.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_value(&mut out, room_id);
                    out.push(b':');
                    room.write_json(&mut out, self.event_fields.as_deref());
                }
                out.push(b'}');
                first = false;
            }
            for (section, rooms) in other_rooms.into_iter().flatten() {
                if !first {
                    out.push(b',');
                }
                first = false;
                write_value(&mut out, section);
                out.push(b':');
                write_value(&mut out, rooms);
            }
            out.push(b'}');
        }
        out.push(b'}');
        out
    }

    /// For each joined room, the newest event in the timeline from someone other than `user`
    /// (what the delivered receipt records): room ID, event ID, and its stream position if
    /// known.
    pub fn newest_from_others(&self, user: &str) -> Vec<(String, String, Option<i64>)> {
        self.join
            .iter()
            .filter_map(|(room_id, room)| {
                let event = room
                    .timeline
                    .iter()
                    .rev()
                    .find(|e| e.sender().is_some_and(|s| s != user))?;
                Some((
                    room_id.clone(),
                    event.event_id()?.to_owned(),
                    event.position(),
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(response: &SyncResponse) -> Value {
        serde_json::from_slice(&response.to_json()).expect("valid JSON")
    }

    #[test]
    fn an_empty_response_is_its_token() {
        let response = SyncResponse::empty("s1_0_0".into());
        assert!(response.is_empty());
        assert_eq!(parsed(&response), json!({ "next_batch": "s1_0_0" }));
    }

    #[test]
    fn joined_rooms_and_other_sections_are_written_side_by_side() {
        let mut response = SyncResponse::empty("s9_1_2".into());
        response.rest["rooms"] =
            json!({ "invite": { "!i:x": { "invite_state": { "events": [] } } } });
        response.rest["device_one_time_keys_count"] = json!({ "signed_curve25519": 0 });
        response.join.push((
            "!j:x".into(),
            JoinedRoom {
                timeline: vec![SyncEvent::Value(
                    json!({ "type": "m.room.message", "event_id": "$e", "sender": "@b:x" }),
                )],
                limited: true,
                prev_batch: "t1_2".into(),
                state: Vec::new(),
                account_data: Vec::new(),
                ephemeral: vec![SyncEvent::Value(
                    json!({ "type": "m.typing", "content": { "user_ids": [] } }),
                )],
                summary: Some(json!({ "m.joined_member_count": 2 })),
                rows: None,
                unread_notifications: json!({ "notification_count": 1, "highlight_count": 0 }),
                unread_thread_notifications: None,
            },
        ));
        assert!(!response.is_empty());
        assert_eq!(
            parsed(&response),
            json!({
                "next_batch": "s9_1_2",
                "device_one_time_keys_count": { "signed_curve25519": 0 },
                "rooms": {
                    "join": { "!j:x": {
                        "timeline": {
                            "events": [{ "type": "m.room.message", "event_id": "$e", "sender": "@b:x" }],
                            "limited": true,
                            "prev_batch": "t1_2"
                        },
                        "state": { "events": [] },
                        "account_data": { "events": [] },
                        "ephemeral": { "events": [{ "type": "m.typing", "content": { "user_ids": [] } }] },
                        "summary": { "m.joined_member_count": 2 },
                        "unread_notifications": { "notification_count": 1, "highlight_count": 0 }
                    } },
                    "invite": { "!i:x": { "invite_state": { "events": [] } } }
                }
            })
        );
        assert_eq!(
            response.newest_from_others("@a:x"),
            vec![("!j:x".to_owned(), "$e".to_owned(), None)]
        );
        assert!(response.newest_from_others("@b:x").is_empty());
    }

    #[test]
    fn key_counts_alone_are_not_news() {
        let mut response = SyncResponse::empty("s1".into());
        response.rest["device_one_time_keys_count"] = json!({ "signed_curve25519": 3 });
        response.rest["rooms"] = json!({});
        assert!(response.is_empty());
        response.rest["to_device"] = json!({ "events": [{ "type": "m.x" }] });
        assert!(!response.is_empty());
    }
}
