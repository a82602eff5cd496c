//! PDUs (persistent data units): building a new event, and reading a stored one.
//!
//! <https://spec.matrix.org/latest/server-server-api/#pdus>
//!
//! Building follows the spec's order:
//! 1. Assemble the event's fields (`type`, `content`, `sender`, `prev_events`, `auth_events`,
//!    `depth`, `origin_server_ts`, `room_id` unless this is a v12 create event).
//! 2. Add the content hash and sign the redacted event with the server key
//!    (ruma's `hash_and_sign_event`).
//! 3. The event ID is `$` + the reference hash; for a v12 `m.room.create` the room ID is `!` +
//!    the same hash.
//!
//! [`Pdu`] is the parsed view of a stored PDU that authorization and state resolution read.

use ruma::{
    canonical_json::redact,
    events::TimelineEventType,
    room_version_rules::{RoomIdFormatVersion, RoomVersionRules},
    serde::Raw,
    signatures::{hash_and_sign_event, reference_hash},
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt, UserId,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::keys::ServerSigningKey;

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// Why an event could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(RoomVersionId),
    #[error("event is larger than 64 KiB")]
    TooLarge,
    #[error("event content must be a JSON object")]
    ContentNotObject,
    #[error("malformed event: {0}")]
    Malformed(String),
}

/// The rules of a room version, or an error for versions we do not implement.
pub fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules, PduError> {
    version
        .rules()
        .ok_or_else(|| PduError::UnsupportedRoomVersion(version.clone()))
}

/// What a new event says, before it is placed in the DAG.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: CanonicalJsonObject,
    /// For `m.room.redaction`: the event being redacted.
    pub redacts: Option<OwnedEventId>,
}

/// Where a new event goes: its room, sender, parents and auth events.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    pub rules: &'a RoomVersionRules,
    /// `None` only for the `m.room.create` event of a room version whose room ID is derived
    /// from that event.
    pub room_id: Option<&'a RoomId>,
    pub sender: &'a UserId,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
}

/// A built, hashed and signed event.
#[derive(Debug, Clone)]
pub struct BuiltEvent {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    /// The full PDU as it is stored and sent to other servers.
    pub pdu: CanonicalJsonObject,
}

fn int(n: u64) -> Result<CanonicalJsonValue, PduError> {
    UInt::new(n)
        .map(|u| CanonicalJsonValue::Integer(u.into()))
        .ok_or_else(|| PduError::Malformed("integer out of range".into()))
}

fn ids(ids: &[OwnedEventId]) -> CanonicalJsonValue {
    CanonicalJsonValue::Array(
        ids.iter()
            .map(|id| CanonicalJsonValue::String(id.to_string()))
            .collect(),
    )
}

/// Builds, hashes and signs a new event.
pub fn build_event(
    event: NewEvent,
    place: Placement<'_>,
    server_name: &str,
    key: &ServerSigningKey,
) -> Result<BuiltEvent, PduError> {
    let rules = place.rules;
    let is_create = event.event_type == "m.room.create" && event.state_key.as_deref() == Some("");
    let derived_room_id = is_create && rules.room_id_format == RoomIdFormatVersion::V2;

    let mut content = event.content;
    if let Some(redacts) = &event.redacts {
        // Since v11 `redacts` lives in the content; it stays at the top level too, for
        // servers and clients that read it there.
        if rules.redaction.content_field_redacts {
            content.insert(
                "redacts".into(),
                CanonicalJsonValue::String(redacts.to_string()),
            );
        }
    }

    let mut pdu = CanonicalJsonObject::new();
    pdu.insert(
        "type".into(),
        CanonicalJsonValue::String(event.event_type.clone()),
    );
    pdu.insert("content".into(), CanonicalJsonValue::Object(content));
    pdu.insert(
        "sender".into(),
        CanonicalJsonValue::String(place.sender.to_string()),
    );
    pdu.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(place.origin_server_ts.0.into()),
    );
    pdu.insert("depth".into(), int(place.depth)?);
    pdu.insert("prev_events".into(), ids(&place.prev_events));
    pdu.insert("auth_events".into(), ids(&place.auth_events));
    if let Some(state_key) = &event.state_key {
        pdu.insert(
            "state_key".into(),
            CanonicalJsonValue::String(state_key.clone()),
        );
    }
    if let Some(redacts) = &event.redacts {
        pdu.insert(
            "redacts".into(),
            CanonicalJsonValue::String(redacts.to_string()),
        );
    }
    match (derived_room_id, place.room_id) {
        (true, _) => {}
        (false, Some(room_id)) => {
            pdu.insert(
                "room_id".into(),
                CanonicalJsonValue::String(room_id.to_string()),
            );
        }
        (false, None) => return Err(PduError::Malformed("room_id is required".into())),
    }

    hash_and_sign_event(server_name, key.key_pair(), &mut pdu, &rules.redaction).map_err(|e| {
        match e {
            ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
            e => PduError::Malformed(e.to_string()),
        }
    })?;
    let hash = reference_hash(&pdu, rules).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
        e => PduError::Malformed(e.to_string()),
    })?;
    let size = serde_json::to_vec(&pdu)
        .map_err(|e| PduError::Malformed(e.to_string()))?
        .len();
    if size > MAX_PDU_BYTES {
        return Err(PduError::TooLarge);
    }
    let event_id =
        EventId::parse(format!("${hash}")).map_err(|e| PduError::Malformed(e.to_string()))?;
    let room_id = match place.room_id {
        Some(room_id) if !derived_room_id => room_id.to_owned(),
        _ => RoomId::new_v2(&hash).map_err(|e| PduError::Malformed(e.to_string()))?,
    };
    Ok(BuiltEvent {
        event_id,
        room_id,
        pdu,
    })
}

/// The redacted form of a stored PDU, per the room version's redaction algorithm.
pub fn redact_pdu(
    pdu: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<CanonicalJsonObject, PduError> {
    redact(pdu.clone(), &rules.redaction, None).map_err(|e| PduError::Malformed(e.to_string()))
}

/// A stored PDU, parsed into the fields authorization and state resolution read.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    pub rejected: bool,
}

fn field<'a>(pdu: &'a CanonicalJsonObject, name: &str) -> Result<&'a CanonicalJsonValue, PduError> {
    pdu.get(name)
        .ok_or_else(|| PduError::Malformed(format!("missing {name}")))
}

fn string<'a>(pdu: &'a CanonicalJsonObject, name: &str) -> Result<&'a str, PduError> {
    match field(pdu, name)? {
        CanonicalJsonValue::String(s) => Ok(s),
        _ => Err(PduError::Malformed(format!("{name} is not a string"))),
    }
}

fn event_ids(pdu: &CanonicalJsonObject, name: &str) -> Result<Vec<OwnedEventId>, PduError> {
    match field(pdu, name)? {
        CanonicalJsonValue::Array(items) => items
            .iter()
            .map(|item| match item {
                CanonicalJsonValue::String(s) => {
                    EventId::parse(s).map_err(|e| PduError::Malformed(e.to_string()))
                }
                _ => Err(PduError::Malformed(format!("{name} holds a non-string"))),
            })
            .collect(),
        _ => Err(PduError::Malformed(format!("{name} is not an array"))),
    }
}

impl Pdu {
    /// Parses a stored PDU. `room_id` is passed in because v12 create events do not carry it.
    pub fn from_canonical(
        event_id: OwnedEventId,
        room_id: OwnedRoomId,
        pdu: &CanonicalJsonObject,
    ) -> Result<Pdu, PduError> {
        let content = match field(pdu, "content")? {
            CanonicalJsonValue::Object(_) => {
                let text = serde_json::to_string(field(pdu, "content")?)
                    .map_err(|e| PduError::Malformed(e.to_string()))?;
                RawJsonValue::from_string(text).map_err(|e| PduError::Malformed(e.to_string()))?
            }
            _ => return Err(PduError::ContentNotObject),
        };
        let ts = match field(pdu, "origin_server_ts")? {
            CanonicalJsonValue::Integer(i) => u64::try_from(i64::from(*i))
                .ok()
                .and_then(UInt::new)
                .ok_or_else(|| PduError::Malformed("origin_server_ts is negative".into()))?,
            _ => {
                return Err(PduError::Malformed(
                    "origin_server_ts is not an integer".into(),
                ))
            }
        };
        let depth = match field(pdu, "depth")? {
            CanonicalJsonValue::Integer(i) => u64::try_from(i64::from(*i)).unwrap_or(0),
            _ => return Err(PduError::Malformed("depth is not an integer".into())),
        };
        let state_key = match pdu.get("state_key") {
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            Some(_) => return Err(PduError::Malformed("state_key is not a string".into())),
            None => None,
        };
        // `redacts` is top-level before v11 and in content since; accept either.
        let redacts = match pdu.get("redacts") {
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            _ => match pdu.get("content") {
                Some(CanonicalJsonValue::Object(c)) => match c.get("redacts") {
                    Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            },
        };
        Ok(Pdu {
            event_id,
            room_id,
            sender: UserId::parse(string(pdu, "sender")?)
                .map_err(|e| PduError::Malformed(e.to_string()))?,
            origin_server_ts: MilliSecondsSinceUnixEpoch(ts),
            kind: TimelineEventType::from(string(pdu, "type")?),
            content,
            state_key,
            prev_events: event_ids(pdu, "prev_events")?,
            auth_events: event_ids(pdu, "auth_events")?,
            redacts: redacts
                .map(|s| EventId::parse(s).map_err(|e| PduError::Malformed(e.to_string())))
                .transpose()?,
            depth,
            rejected: false,
        })
    }

    /// The content, deserialised leniently.
    pub fn content_json(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or_default()
    }

    /// The content as a typed, unvalidated value.
    pub fn content_raw<T>(&self) -> Raw<T> {
        Raw::from_json(self.content.clone())
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &OwnedEventId {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        // A create event whose room ID is derived from its own event ID (v12: `!` + the same
        // reference hash) has no `room_id` field, and the authorization rules reject a v12
        // create event that has one, so report none.
        let room_derived_from_this_event = self.kind == TimelineEventType::RoomCreate
            && self.state_key.as_deref() == Some("")
            && self.room_id.strip_sigil() == &self.event_id.as_str()[1..];
        (!room_derived_from_this_event).then_some(&self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &OwnedEventId> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &OwnedEventId> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&OwnedEventId> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// Builds and signs our event from a template another server made for us (`make_join`,
/// `make_leave`, `make_knock`): its type, state key, content, room, sender, parents, auth
/// events and depth are taken as given; the time is ours.
pub fn build_from_template(
    template: &CanonicalJsonObject,
    rules: &RoomVersionRules,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    server_name: &str,
    key: &ServerSigningKey,
) -> Result<BuiltEvent, PduError> {
    let content = match field(template, "content")? {
        CanonicalJsonValue::Object(c) => c.clone(),
        _ => return Err(PduError::ContentNotObject),
    };
    let room_id = RoomId::parse(string(template, "room_id")?)
        .map_err(|e| PduError::Malformed(e.to_string()))?;
    let sender = UserId::parse(string(template, "sender")?)
        .map_err(|e| PduError::Malformed(e.to_string()))?;
    let depth = match field(template, "depth")? {
        CanonicalJsonValue::Integer(i) => u64::try_from(i64::from(*i))
            .map_err(|_| PduError::Malformed("depth is negative".into()))?,
        _ => return Err(PduError::Malformed("depth is not an integer".into())),
    };
    let state_key = match template.get("state_key") {
        Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    build_event(
        NewEvent {
            event_type: string(template, "type")?.to_owned(),
            state_key,
            content,
            redacts: None,
        },
        Placement {
            rules,
            room_id: Some(&room_id),
            sender: &sender,
            prev_events: event_ids(template, "prev_events")?,
            auth_events: event_ids(template, "auth_events")?,
            depth,
            origin_server_ts,
        },
        server_name,
        key,
    )
}
