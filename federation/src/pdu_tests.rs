//! Fixture tables for building, reading and redacting PDUs.
//!
//! Each table row is one sentence of the spec:
//! <https://spec.matrix.org/latest/server-server-api/#pdus>,
//! <https://spec.matrix.org/latest/server-server-api/#calculating-the-content-hash-for-an-event>,
//! <https://spec.matrix.org/latest/server-server-api/#calculating-the-reference-hash-for-an-event>,
//! <https://spec.matrix.org/latest/rooms/v11/#redactions>.

use ruma::{
    events::TimelineEventType,
    room_version_rules::RoomVersionRules,
    serde::Base64,
    signatures::{
        content_hash, reference_hash, verify_event, PublicKeyMap, PublicKeySet, Verified,
    },
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, RoomId, RoomVersionId, UInt, UserId,
};
use serde_json::json;

use crate::{
    keys::ServerSigningKey,
    pdu::{build_event, redact_pdu, rules_for, BuiltEvent, NewEvent, Pdu, PduError, Placement},
};

const SERVER: &str = "example.org";
const ALICE: &str = "@alice:example.org";
/// A room ID in the v1–v11 format, `!opaque:server`.
const LEGACY_ROOM: &str = "!abcdefgh:example.org";

fn versions() -> [RoomVersionId; 3] {
    [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12]
}

fn obj(value: serde_json::Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value).expect("fixture is canonical JSON") {
        CanonicalJsonValue::Object(object) => object,
        other => panic!("fixture is not an object: {other:?}"),
    }
}

fn event_id(s: &str) -> OwnedEventId {
    EventId::parse(s).unwrap()
}

fn new_event(event_type: &str, state_key: Option<&str>, content: serde_json::Value) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        state_key: state_key.map(str::to_owned),
        content: obj(content),
        redacts: None,
    }
}

fn create_event(version: &RoomVersionId) -> NewEvent {
    // v1–v10 require `creator`; v11 removed it (the sender is the creator). Sending it anyway in
    // v11+ is harmless, but a homeserver does not, so neither do we.
    let content = if *version == RoomVersionId::V10 {
        json!({ "creator": ALICE, "room_version": version.as_str() })
    } else {
        json!({ "room_version": version.as_str() })
    };
    new_event("m.room.create", Some(""), content)
}

/// Builds `event` with fixed parents, depth and timestamp.
fn build(
    rules: &RoomVersionRules,
    room_id: Option<&RoomId>,
    event: NewEvent,
    key: &ServerSigningKey,
) -> Result<BuiltEvent, PduError> {
    let sender = UserId::parse(ALICE).unwrap();
    let is_create = event.event_type == "m.room.create";
    let (prev_events, auth_events) = if is_create {
        (vec![], vec![])
    } else {
        (
            vec![event_id("$prev")],
            vec![event_id("$auth1"), event_id("$auth2")],
        )
    };
    build_event(
        event,
        Placement {
            rules,
            room_id,
            sender: &sender,
            prev_events,
            auth_events,
            depth: if is_create { 1 } else { 7 },
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(1_700_000_000_000).unwrap()),
        },
        SERVER,
        key,
    )
}

fn public_keys(key: &ServerSigningKey) -> PublicKeyMap {
    let mut set = PublicKeySet::new();
    set.insert(
        key.key_id().to_owned(),
        Base64::parse(key.public_key_base64()).unwrap(),
    );
    let mut map = PublicKeyMap::new();
    map.insert(SERVER.to_owned(), set);
    map
}

fn get_str<'a>(object: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match object.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

fn get_obj<'a>(object: &'a CanonicalJsonObject, name: &str) -> &'a CanonicalJsonObject {
    match object.get(name) {
        Some(CanonicalJsonValue::Object(o)) => o,
        other => panic!("{name} is not an object: {other:?}"),
    }
}

/// A room ID for a non-create event of `version`: the legacy form before v12, `!` + a hash since.
fn room_for(version: &RoomVersionId, key: &ServerSigningKey) -> OwnedRoomId {
    let rules = rules_for(version).unwrap();
    if *version == RoomVersionId::V12 {
        build(&rules, None, create_event(version), key)
            .unwrap()
            .room_id
    } else {
        RoomId::parse(LEGACY_ROOM).unwrap()
    }
}

/// "Servers must verify the signatures and hashes of every event": what we build must pass
/// ruma's `verify_event` with our own published key, with a matching content hash, and the event
/// ID must be `$` + the reference hash (room versions 4+).
#[test]
fn built_events_verify_and_are_named_by_their_reference_hash() {
    let key = ServerSigningKey::generate();
    let keys = public_keys(&key);
    let legacy = <&RoomId>::try_from(LEGACY_ROOM).unwrap();
    for version in versions() {
        let rules = rules_for(&version).unwrap();
        let room_id = room_for(&version, &key);
        // v12 create events get their room ID from their own hash; earlier ones are given one.
        let create_room = (version != RoomVersionId::V12).then_some(legacy);
        let cases: [(&str, NewEvent, Option<&RoomId>); 5] = [
            ("create", create_event(&version), create_room),
            (
                "redaction",
                NewEvent {
                    redacts: Some(event_id("$target")),
                    ..new_event("m.room.redaction", None, json!({ "reason": "spam" }))
                },
                Some(&room_id),
            ),
            (
                "message",
                new_event(
                    "m.room.message",
                    None,
                    json!({ "msgtype": "m.text", "body": "hi" }),
                ),
                Some(&room_id),
            ),
            (
                "member",
                new_event(
                    "m.room.member",
                    Some(ALICE),
                    json!({ "membership": "join", "displayname": "Alice" }),
                ),
                Some(&room_id),
            ),
            (
                "state with unicode",
                new_event(
                    "m.room.topic",
                    Some(""),
                    json!({ "topic": "caf\u{e9} \u{1f600}" }),
                ),
                Some(&room_id),
            ),
        ];
        for (what, event, room) in cases {
            let built = build(&rules, room, event, &key).unwrap();
            let pdu = &built.pdu;

            assert_eq!(
                verify_event(&keys, pdu, &rules).unwrap(),
                Verified::All,
                "v{version} {what}: signature and content hash verify"
            );

            let stored_hash = get_str(get_obj(pdu, "hashes"), "sha256").unwrap();
            assert_eq!(
                stored_hash,
                content_hash(pdu).unwrap().encode(),
                "v{version} {what}: hashes.sha256 is the content hash"
            );
            assert!(
                get_obj(get_obj(pdu, "signatures"), SERVER).contains_key(key.key_id()),
                "v{version} {what}: signed under signatures.{SERVER}.{}",
                key.key_id()
            );

            let hash = reference_hash(pdu, &rules).unwrap();
            assert!(built.event_id.as_str().starts_with('$'));
            assert_eq!(
                built.event_id.as_str(),
                format!("${hash}"),
                "v{version} {what}: event ID is $ + reference hash"
            );
            assert!(
                !pdu.contains_key("event_id"),
                "v{version} {what}: the event ID is not part of the PDU in v3+"
            );
        }
    }
}

/// A change to the content breaks the content hash but not the signature (which covers only the
/// redacted event); a change to a field kept by redaction breaks the signature.
#[test]
fn tampering_is_detected() {
    let key = ServerSigningKey::generate();
    let keys = public_keys(&key);
    for version in versions() {
        let rules = rules_for(&version).unwrap();
        let room_id = room_for(&version, &key);
        let built = build(
            &rules,
            Some(&room_id),
            new_event("m.room.message", None, json!({ "body": "hi" })),
            &key,
        )
        .unwrap();

        let mut content_changed = built.pdu.clone();
        content_changed.insert(
            "content".into(),
            CanonicalJsonValue::Object(obj(json!({ "body": "bye" }))),
        );
        assert_eq!(
            verify_event(&keys, &content_changed, &rules).unwrap(),
            Verified::Signatures,
            "v{version}: changed content only fails the content hash"
        );

        let mut depth_changed = built.pdu.clone();
        depth_changed.insert(
            "depth".into(),
            CanonicalJsonValue::Integer(UInt::new(8).unwrap().into()),
        );
        assert!(
            verify_event(&keys, &depth_changed, &rules).is_err(),
            "v{version}: changed depth fails the signature"
        );

        let other_key = ServerSigningKey::generate();
        let mut wrong_keys = public_keys(&other_key);
        // Same key ID, other key material.
        let set = wrong_keys.get_mut(SERVER).unwrap();
        let material = set.remove(other_key.key_id()).unwrap();
        set.insert(key.key_id().to_owned(), material);
        assert!(
            verify_event(&wrong_keys, &built.pdu, &rules).is_err(),
            "v{version}: another key does not verify"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum RoomIdOutcome {
    /// The room ID is the one given, and the PDU carries it as `room_id`.
    Given,
    /// The room ID is `!` + the create event's reference hash, and the PDU has no `room_id`.
    Derived,
    /// Building fails: a room ID is required.
    Missing,
}

/// <https://spec.matrix.org/latest/rooms/v12/#room-ids>: "the room ID is the reference hash of
/// the `m.room.create` event with a `!` sigil"; the create event "has no `room_id`".
#[test]
fn room_id_table() {
    use RoomIdOutcome::*;
    let key = ServerSigningKey::generate();
    let v12_room = room_for(&RoomVersionId::V12, &key);
    let legacy = <&RoomId>::try_from(LEGACY_ROOM).unwrap();
    let message = || new_event("m.room.message", None, json!({ "body": "hi" }));
    #[rustfmt::skip]
    let cases: Vec<(&str, RoomVersionId, NewEvent, Option<&RoomId>, RoomIdOutcome)> = vec![
        ("v10 create keeps the given room ID", RoomVersionId::V10, create_event(&RoomVersionId::V10), Some(legacy), Given),
        ("v11 create keeps the given room ID", RoomVersionId::V11, create_event(&RoomVersionId::V11), Some(legacy), Given),
        ("v10 create needs a room ID", RoomVersionId::V10, create_event(&RoomVersionId::V10), None, Missing),
        ("v12 create derives its room ID", RoomVersionId::V12, create_event(&RoomVersionId::V12), None, Derived),
        ("v12 create ignores a given room ID", RoomVersionId::V12, create_event(&RoomVersionId::V12), Some(legacy), Derived),
        ("v10 message keeps the given room ID", RoomVersionId::V10, message(), Some(legacy), Given),
        ("v11 message keeps the given room ID", RoomVersionId::V11, message(), Some(legacy), Given),
        ("v12 message keeps the given room ID", RoomVersionId::V12, message(), Some(&v12_room), Given),
        ("v12 message needs a room ID", RoomVersionId::V12, message(), None, Missing),
        ("v11 message needs a room ID", RoomVersionId::V11, message(), None, Missing),
    ];
    for (what, version, event, room_id, expected) in cases {
        let rules = rules_for(&version).unwrap();
        let result = build(&rules, room_id, event, &key);
        match expected {
            Given => {
                let built = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                let given = room_id.unwrap();
                assert_eq!(built.room_id, given, "{what}");
                assert_eq!(
                    get_str(&built.pdu, "room_id"),
                    Some(given.as_str()),
                    "{what}"
                );
            }
            Derived => {
                let built = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                let hash = reference_hash(&built.pdu, &rules).unwrap();
                assert_eq!(built.room_id.as_str(), format!("!{hash}"), "{what}");
                assert_eq!(built.event_id.as_str(), format!("${hash}"), "{what}");
                assert_eq!(
                    built.room_id.strip_sigil(),
                    &built.event_id.as_str()[1..],
                    "{what}"
                );
                assert!(built.room_id.server_name().is_none(), "{what}");
                assert!(
                    !built.pdu.contains_key("room_id"),
                    "{what}: no room_id field"
                );
            }
            Missing => assert!(
                matches!(result, Err(PduError::Malformed(_))),
                "{what}: {result:?}"
            ),
        }
    }
}

/// "The maximum size of a PDU is 65536 bytes" (including signatures, in canonical JSON).
#[test]
fn size_limit_table() {
    let key = ServerSigningKey::generate();
    #[rustfmt::skip]
    let cases: [(&str, usize, bool); 4] = [
        ("small content", 10, true),
        ("60 000 bytes of content", 60_000, true),
        ("65 536 bytes of content alone", 65_536, false),
        ("70 000 bytes of content", 70_000, false),
    ];
    for version in versions() {
        let rules = rules_for(&version).unwrap();
        let room_id = room_for(&version, &key);
        for (what, len, fits) in cases {
            let body = "x".repeat(len);
            let result = build(
                &rules,
                Some(&room_id),
                new_event(
                    "m.room.message",
                    None,
                    json!({ "msgtype": "m.text", "body": body }),
                ),
                &key,
            );
            if fits {
                let built = result.unwrap_or_else(|e| panic!("v{version} {what}: {e}"));
                assert!(serde_json::to_vec(&built.pdu).unwrap().len() <= crate::pdu::MAX_PDU_BYTES);
            } else {
                assert!(
                    matches!(result, Err(PduError::TooLarge)),
                    "v{version} {what}: {result:?}"
                );
            }
        }
    }
}

/// What `Pdu::from_canonical` reads back, field by field.
struct Expected {
    kind: &'static str,
    state_key: Option<&'static str>,
    redacts: Option<&'static str>,
}

#[test]
fn from_canonical_round_trips() {
    let key = ServerSigningKey::generate();
    let target = "$target_event";
    for version in versions() {
        let rules = rules_for(&version).unwrap();
        let room_id = room_for(&version, &key);
        let redaction = NewEvent {
            redacts: Some(event_id(target)),
            ..new_event("m.room.redaction", None, json!({ "reason": "spam" }))
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, NewEvent, Expected)> = vec![
            ("message", new_event("m.room.message", None, json!({ "body": "hi" })),
                Expected { kind: "m.room.message", state_key: None, redacts: None }),
            ("member", new_event("m.room.member", Some(ALICE), json!({ "membership": "join" })),
                Expected { kind: "m.room.member", state_key: Some(ALICE), redacts: None }),
            ("empty state key", new_event("m.room.name", Some(""), json!({ "name": "Room" })),
                Expected { kind: "m.room.name", state_key: Some(""), redacts: None }),
            ("redaction", redaction,
                Expected { kind: "m.room.redaction", state_key: None, redacts: Some(target) }),
        ];
        for (what, event, expected) in cases {
            let content = event.content.clone();
            let built = build(&rules, Some(&room_id), event, &key).unwrap();
            let pdu =
                Pdu::from_canonical(built.event_id.clone(), built.room_id.clone(), &built.pdu)
                    .unwrap_or_else(|e| panic!("v{version} {what}: {e}"));
            assert_eq!(pdu.event_id, built.event_id, "v{version} {what}");
            assert_eq!(pdu.room_id, room_id, "v{version} {what}");
            assert_eq!(pdu.sender.as_str(), ALICE, "v{version} {what}");
            assert_eq!(
                pdu.kind,
                TimelineEventType::from(expected.kind),
                "v{version} {what}"
            );
            assert_eq!(
                pdu.state_key.as_deref(),
                expected.state_key,
                "v{version} {what}"
            );
            assert_eq!(
                pdu.prev_events,
                vec![event_id("$prev")],
                "v{version} {what}"
            );
            assert_eq!(
                pdu.auth_events,
                vec![event_id("$auth1"), event_id("$auth2")],
                "v{version} {what}"
            );
            assert_eq!(pdu.depth, 7, "v{version} {what}");
            assert_eq!(
                pdu.origin_server_ts,
                MilliSecondsSinceUnixEpoch(UInt::new(1_700_000_000_000).unwrap())
            );
            assert_eq!(
                pdu.redacts.as_ref().map(|id| id.as_str()),
                expected.redacts,
                "v{version} {what}"
            );
            assert!(!pdu.rejected);

            // The content reads back as built, plus `redacts` in v11+ redactions.
            let mut expected_content = serde_json::to_value(&content).unwrap();
            if expected.redacts.is_some() && rules.redaction.content_field_redacts {
                expected_content["redacts"] = json!(target);
            }
            assert_eq!(pdu.content_json(), expected_content, "v{version} {what}");

            // Where `redacts` is written: top level always (for older readers), and in content
            // since v11 ("moved `redacts` to content", rooms/v11).
            if expected.redacts.is_some() {
                assert_eq!(get_str(&built.pdu, "redacts"), Some(target));
                let in_content = get_str(get_obj(&built.pdu, "content"), "redacts");
                if version == RoomVersionId::V10 {
                    assert_eq!(in_content, None, "v10 keeps redacts at the top level only");
                } else {
                    assert_eq!(
                        in_content,
                        Some(target),
                        "v{version} has redacts in content"
                    );
                }
            }
        }
    }
}

/// `redacts` is read from the top level (v1–v10) or from the content (v11+), whichever is there.
#[test]
fn from_canonical_reads_redacts_from_either_place() {
    let room_id = RoomId::parse(LEGACY_ROOM).unwrap();
    let base = json!({
        "type": "m.room.redaction",
        "sender": ALICE,
        "room_id": LEGACY_ROOM,
        "origin_server_ts": 1,
        "depth": 3,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "content": {},
    });
    #[rustfmt::skip]
    let cases: [(&str, serde_json::Value, Option<&str>); 4] = [
        ("top level", json!({ "redacts": "$top" }), Some("$top")),
        ("content", json!({ "content": { "redacts": "$inner" } }), Some("$inner")),
        ("both: top level wins", json!({ "redacts": "$top", "content": { "redacts": "$inner" } }), Some("$top")),
        ("neither", json!({}), None),
    ];
    for (what, overrides, expected) in cases {
        let mut pdu = base.clone();
        for (k, v) in overrides.as_object().unwrap() {
            pdu[k] = v.clone();
        }
        let parsed = Pdu::from_canonical(event_id("$r"), room_id.clone(), &obj(pdu)).unwrap();
        assert_eq!(
            parsed.redacts.as_ref().map(|id| id.as_str()),
            expected,
            "{what}"
        );
    }
}

#[test]
fn from_canonical_rejects_malformed_pdus() {
    let room_id = RoomId::parse(LEGACY_ROOM).unwrap();
    let base = json!({
        "type": "m.room.message",
        "sender": ALICE,
        "room_id": LEGACY_ROOM,
        "origin_server_ts": 1,
        "depth": 3,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "content": {},
    });
    #[rustfmt::skip]
    let cases: [(&str, &str, Option<serde_json::Value>); 7] = [
        ("content not an object", "content", Some(json!("text"))),
        ("no sender", "sender", None),
        ("sender not a user ID", "sender", Some(json!("alice"))),
        ("no type", "type", None),
        ("prev_events not an array", "prev_events", Some(json!("$p"))),
        ("auth_events holds a number", "auth_events", Some(json!([1]))),
        ("state_key not a string", "state_key", Some(json!(5))),
    ];
    for (what, field, value) in cases {
        let mut pdu = base.clone();
        match value {
            Some(v) => pdu[field] = v,
            None => {
                pdu.as_object_mut().unwrap().remove(field);
            }
        }
        let result = Pdu::from_canonical(event_id("$e"), room_id.clone(), &obj(pdu));
        assert!(result.is_err(), "{what}: {result:?}");
    }
}

/// <https://spec.matrix.org/latest/rooms/v11/#redactions>: content is stripped except for the
/// keys each event type allows; `m.room.member` keeps `membership`.
#[test]
fn redaction_table() {
    let key = ServerSigningKey::generate();
    #[rustfmt::skip]
    let cases: [(&str, NewEvent, serde_json::Value); 4] = [
        ("message content is emptied",
            new_event("m.room.message", None, json!({ "msgtype": "m.text", "body": "secret" })),
            json!({})),
        ("member keeps membership only",
            new_event("m.room.member", Some(ALICE), json!({ "membership": "join", "displayname": "Alice", "avatar_url": "mxc://x/y" })),
            json!({ "membership": "join" })),
        ("join rules keep join_rule",
            new_event("m.room.join_rules", Some(""), json!({ "join_rule": "invite", "extra": true })),
            json!({ "join_rule": "invite" })),
        ("topic is emptied",
            new_event("m.room.topic", Some(""), json!({ "topic": "secret" })),
            json!({})),
    ];
    for version in versions() {
        let rules = rules_for(&version).unwrap();
        let room_id = room_for(&version, &key);
        for (what, event, expected_content) in cases.clone() {
            let built = build(&rules, Some(&room_id), event, &key).unwrap();
            let redacted = redact_pdu(&built.pdu, &rules).unwrap();
            assert_eq!(
                serde_json::to_value(get_obj(&redacted, "content")).unwrap(),
                expected_content,
                "v{version} {what}"
            );
            // Top-level keys the algorithm keeps are still there, and the event still verifies
            // (signatures cover the redacted form), with a content hash mismatch.
            for kept in [
                "type",
                "sender",
                "room_id",
                "depth",
                "prev_events",
                "auth_events",
                "hashes",
                "signatures",
            ] {
                assert!(
                    redacted.contains_key(kept),
                    "v{version} {what}: keeps {kept}"
                );
            }
            if expected_content != serde_json::to_value(get_obj(&built.pdu, "content")).unwrap() {
                assert_eq!(
                    verify_event(&public_keys(&key), &redacted, &rules).unwrap(),
                    Verified::Signatures,
                    "v{version} {what}: redacted event keeps a valid signature"
                );
            }
            // Redaction keeps the reference hash, so the event ID is unchanged.
            assert_eq!(
                format!("${}", reference_hash(&redacted, &rules).unwrap()),
                built.event_id.as_str(),
                "v{version} {what}"
            );
        }
    }
}

#[test]
fn unknown_room_versions_are_refused() {
    let custom = RoomVersionId::try_from("org.example.custom").unwrap();
    assert!(matches!(
        rules_for(&custom),
        Err(PduError::UnsupportedRoomVersion(v)) if v == custom
    ));
    for version in versions() {
        assert!(rules_for(&version).is_ok());
    }
}

/// "The complete event MUST NOT be larger than 65536 bytes, when formatted with the federation
/// event format, including any signatures, and encoded as Canonical JSON." The largest event that
/// builds is exactly 65 536 bytes; one byte more is refused.
#[test]
fn size_limit_is_exact_and_includes_signatures() {
    let key = ServerSigningKey::generate();
    for version in versions() {
        let rules = rules_for(&version).unwrap();
        let room_id = room_for(&version, &key);
        let try_len = |len: usize| {
            build(
                &rules,
                Some(&room_id),
                new_event("m.room.message", None, json!({ "body": "x".repeat(len) })),
                &key,
            )
        };
        // Largest body length that builds, by bisection.
        let (mut fits, mut too_big) = (0usize, crate::pdu::MAX_PDU_BYTES);
        while too_big - fits > 1 {
            let mid = (fits + too_big) / 2;
            match try_len(mid) {
                Ok(_) => fits = mid,
                Err(PduError::TooLarge) => too_big = mid,
                Err(e) => panic!("v{version}: {e}"),
            }
        }
        let largest = try_len(fits).unwrap();
        assert_eq!(
            serde_json::to_vec(&largest.pdu).unwrap().len(),
            crate::pdu::MAX_PDU_BYTES,
            "v{version}: the largest event that builds is exactly at the limit"
        );
        assert!(
            matches!(try_len(fits + 1), Err(PduError::TooLarge)),
            "v{version}"
        );
    }
}

/// What the authorization rules see as an event's `room_id` (ruma's `Event::room_id`): a v12
/// create event has none — "If the create event has a room_id property, reject" — while every
/// other event, and v1–v11 create events, have theirs.
#[test]
fn room_id_seen_by_the_auth_rules() {
    use ruma::state_res::Event as _;
    let key = ServerSigningKey::generate();
    let legacy = RoomId::parse(LEGACY_ROOM).unwrap();
    let v12_room = room_for(&RoomVersionId::V12, &key);
    let message = || new_event("m.room.message", None, json!({ "body": "hi" }));
    #[rustfmt::skip]
    let cases: Vec<(&str, RoomVersionId, NewEvent, Option<&RoomId>, bool)> = vec![
        ("v10 create", RoomVersionId::V10, create_event(&RoomVersionId::V10), Some(&legacy), true),
        ("v11 create", RoomVersionId::V11, create_event(&RoomVersionId::V11), Some(&legacy), true),
        ("v12 create", RoomVersionId::V12, create_event(&RoomVersionId::V12), None, false),
        ("v11 message", RoomVersionId::V11, message(), Some(&legacy), true),
        ("v12 message", RoomVersionId::V12, message(), Some(&v12_room), true),
        ("v12 state event with empty state key", RoomVersionId::V12,
            new_event("m.room.name", Some(""), json!({ "name": "n" })), Some(&v12_room), true),
    ];
    for (what, version, event, room_id, has_room_id) in cases {
        let rules = rules_for(&version).unwrap();
        let built = build(&rules, room_id, event, &key).unwrap();
        assert_eq!(
            built.pdu.contains_key("room_id"),
            has_room_id,
            "{what}: PDU field"
        );
        let pdu = Pdu::from_canonical(built.event_id, built.room_id.clone(), &built.pdu).unwrap();
        assert_eq!(
            pdu.room_id, built.room_id,
            "{what}: the Pdu still knows its room"
        );
        assert_eq!(
            pdu.room_id().map(|r| r.as_str()),
            has_room_id.then_some(built.room_id.as_str()),
            "{what}: Event::room_id"
        );
    }
}

/// "Checks performed on receipt of a PDU", steps 1 and 2
/// (<https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu>):
/// a PDU built by another server reads back with the same event ID and room, its signature
/// and hash check out; a changed content keeps the signature (taken over the redacted form)
/// but not the hash, so it is to be kept redacted; a changed type, sender or parent breaks
/// the signature; the peer's `unsigned` is dropped; oversized parent lists are refused.
#[test]
fn received_pdus_are_read_and_checked() {
    use crate::incoming::{read, signers, verify, Checked};
    let key = ServerSigningKey::generate();
    let keys = public_keys(&key);
    for version in versions() {
        let rules = rules_for(&version).unwrap();
        let room = room_for(&version, &key);
        let built = build(
            &rules,
            Some(&room),
            new_event(
                "m.room.message",
                None,
                json!({ "body": "hi", "msgtype": "m.text" }),
            ),
            &key,
        )
        .unwrap();
        let mut sent = built.pdu.clone();
        sent.insert("unsigned".into(), obj(json!({ "age": 5 })).into());
        let incoming = read(sent, &rules).unwrap();
        assert_eq!(incoming.event_id, built.event_id, "{version}");
        assert_eq!(incoming.room_id, room, "{version}");
        assert!(!incoming.object.contains_key("unsigned"), "{version}");
        let signing: Vec<String> = signers(&incoming.object, &rules)
            .unwrap()
            .into_iter()
            .map(|(server, ids)| format!("{server}={}", ids.join(",")))
            .collect();
        assert_eq!(
            signing,
            vec![format!("{SERVER}={}", key.key_id())],
            "{version}"
        );
        assert_eq!(verify(&incoming.object, &keys, &rules), Ok(Checked::Intact));

        // Content changed on the way: the hash no longer matches.
        let mut tampered = built.pdu.clone();
        tampered.insert(
            "content".into(),
            obj(json!({ "body": "evil", "msgtype": "m.text" })).into(),
        );
        let tampered = read(tampered, &rules).unwrap();
        assert_eq!(
            verify(&tampered.object, &keys, &rules),
            Ok(Checked::Redact),
            "{version}"
        );
        // Fields the signature covers: a forgery.
        for (field, value) in [
            ("type", json!("m.room.topic")),
            ("sender", json!("@mallory:example.org")),
            ("prev_events", json!(["$other"])),
        ] {
            let mut forged = built.pdu.clone();
            forged.insert(field.into(), CanonicalJsonValue::try_from(value).unwrap());
            let forged = read(forged, &rules).unwrap();
            assert!(
                verify(&forged.object, &keys, &rules).is_err(),
                "{version}: changed {field}"
            );
        }
        // Unknown key: not verifiable.
        let stranger = ServerSigningKey::generate();
        assert!(verify(&incoming.object, &public_keys(&stranger), &rules).is_err());
        // Too many parents.
        let mut crowded = built.pdu.clone();
        let many: Vec<serde_json::Value> = (0..21).map(|i| json!(format!("$e{i}"))).collect();
        crowded.insert(
            "prev_events".into(),
            CanonicalJsonValue::try_from(json!(many)).unwrap(),
        );
        assert!(read(crowded, &rules).is_err(), "{version}");
    }
}
