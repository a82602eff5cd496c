//! PDUs received from other servers: reading one as the room version says, and checking its
//! signatures and content hash.
//!
//! <https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu>
//!
//! The checks of receipt, in the spec's order; this module does 1 and 2, the homeserver the
//! rest (they need the room's stored events):
//! 1. a valid event of its room version (format, size, bounded `prev_events` and
//!    `auth_events`), its event ID computed from its reference hash;
//! 2. the signatures of every server that must sign it (the sender's; for restricted joins
//!    also the authorising server's); a content hash that does not match means the event is
//!    kept in its redacted form;
//! 3. authorization against its auth events, 4. against the state before it, 5. soft failure
//!    against the current state.

use std::collections::BTreeSet;

use ruma::{
    room_version_rules::{EventIdFormatVersion, RoomIdFormatVersion, RoomVersionRules},
    signatures::{
        reference_hash, required_server_signatures_to_verify_event, verify_event, PublicKeyMap,
        Verified,
    },
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomId,
};

use crate::pdu::{Pdu, PduError, MAX_PDU_BYTES};

/// At most this many `prev_events` (the spec's limit).
pub const MAX_PREV_EVENTS: usize = 20;
/// At most this many `auth_events` (the spec's limit).
pub const MAX_AUTH_EVENTS: usize = 10;

/// A received PDU, read and with its ID computed.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub object: CanonicalJsonObject,
    pub pdu: Pdu,
}

/// Step 1: reads `object` as a PDU of a room with `rules`, computing its event ID. The
/// `unsigned` a peer sent is dropped: it is not covered by the signatures.
pub fn read(
    mut object: CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<Incoming, PduError> {
    object.remove("unsigned");
    let size = serde_json::to_vec(&object)
        .map_err(|e| PduError::Malformed(e.to_string()))?
        .len();
    if size > MAX_PDU_BYTES {
        return Err(PduError::TooLarge);
    }
    for (field, max) in [
        ("prev_events", MAX_PREV_EVENTS),
        ("auth_events", MAX_AUTH_EVENTS),
    ] {
        match object.get(field) {
            Some(CanonicalJsonValue::Array(ids)) if ids.len() <= max => {}
            Some(CanonicalJsonValue::Array(_)) => {
                return Err(PduError::Malformed(format!("more than {max} {field}")))
            }
            _ => return Err(PduError::Malformed(format!("{field} is not an array"))),
        }
    }
    let event_id = match rules.event_id_format {
        EventIdFormatVersion::V1 => match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => {
                EventId::parse(id).map_err(|e| PduError::Malformed(e.to_string()))?
            }
            _ => return Err(PduError::Malformed("event_id is missing".into())),
        },
        _ => {
            let hash = reference_hash(&object, rules).map_err(|e| match e {
                ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
                e => PduError::Malformed(e.to_string()),
            })?;
            EventId::parse(format!("${hash}")).map_err(|e| PduError::Malformed(e.to_string()))?
        }
    };
    let is_create =
        matches!(object.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create");
    let room_id = match (object.get("room_id"), is_create, &rules.room_id_format) {
        (None, true, RoomIdFormatVersion::V2) => {
            RoomId::new_v2(event_id.as_str().trim_start_matches('$'))
                .map_err(|e| PduError::Malformed(e.to_string()))?
        }
        (Some(_), true, RoomIdFormatVersion::V2) => {
            return Err(PduError::Malformed(
                "a create event of this room version has no room_id".into(),
            ))
        }
        (Some(CanonicalJsonValue::String(id)), _, _) => {
            RoomId::parse(id).map_err(|e| PduError::Malformed(e.to_string()))?
        }
        _ => return Err(PduError::Malformed("room_id is missing".into())),
    };
    let pdu = Pdu::from_canonical(event_id.clone(), room_id.clone(), &object)?;
    Ok(Incoming {
        event_id,
        room_id,
        object,
        pdu,
    })
}

/// The servers whose signatures step 2 checks, with the key IDs each signed with.
pub fn signers(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<Vec<(OwnedServerName, Vec<String>)>, PduError> {
    let servers: BTreeSet<OwnedServerName> =
        required_server_signatures_to_verify_event(object, &rules.signatures)
            .map_err(|e| PduError::Malformed(e.to_string()))?;
    let signatures = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(s)) => s,
        _ => return Err(PduError::Malformed("signatures is missing".into())),
    };
    Ok(servers
        .into_iter()
        .map(|server| {
            let keys = match signatures.get(server.as_str()) {
                Some(CanonicalJsonValue::Object(keys)) => keys
                    .keys()
                    .filter(|k| k.starts_with("ed25519:"))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            (server, keys)
        })
        .collect())
}

/// What step 2 found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Signatures and content hash are right.
    Intact,
    /// The signatures are right but the content hash is not: keep the event redacted.
    Redact,
}

/// Step 2: checks the signatures of every required server with `keys` (which must hold the
/// keys [`signers`] named) and the content hash.
pub fn verify(
    object: &CanonicalJsonObject,
    keys: &PublicKeyMap,
    rules: &RoomVersionRules,
) -> Result<Checked, String> {
    match verify_event(keys, object, rules) {
        Ok(Verified::All) => Ok(Checked::Intact),
        Ok(Verified::Signatures) => Ok(Checked::Redact),
        Err(e) => Err(e.to_string()),
    }
}
