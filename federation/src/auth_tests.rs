//! Authorization rule fixtures: each row builds a small room the way a homeserver does, adds one
//! event and says whether the spec's authorization rules allow it.
//!
//! <https://spec.matrix.org/latest/server-server-api/#authorisation-rules>,
//! <https://spec.matrix.org/latest/rooms/v10/#authorization-rules>,
//! <https://spec.matrix.org/latest/rooms/v11/#authorization-rules>,
//! <https://spec.matrix.org/latest/rooms/v12/#authorization-rules>.
//!
//! The room: `m.room.create` by @alice (v12: no `room_id`, the room ID is `!` + its reference
//! hash, and alice as creator outranks every power level), alice's join, `m.room.power_levels`
//! (v10/v11: alice at 100; v12: creators must not be listed), `m.room.join_rules`,
//! `m.room.history_visibility`. Every event's `auth_events` are chosen with [`auth_types`] from
//! the current state, `prev_events` is the previous event and depth increases by one. Each event
//! of the fixture is itself checked with [`check`] before it is added, so the room is one a
//! homeserver would have accepted.

use std::collections::HashMap;

use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    RoomId, RoomVersionId, UInt, UserId,
};
use serde_json::{json, Value};

use crate::{
    auth::{auth_types, check},
    keys::ServerSigningKey,
    pdu::{build_event, rules_for, NewEvent, Pdu, Placement},
};

const SERVER: &str = "example.org";
const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const CAROL: &str = "@carol:example.org";

const PUBLIC: &str = "public";
const INVITE: &str = "invite";
const KNOCK: &str = "knock";
const KNOCK_RESTRICTED: &str = "knock_restricted";

/// The content of an event to add; power levels depend on the room version.
#[derive(Debug, Clone)]
enum Content {
    Json(Value),
    /// `m.room.power_levels` as a homeserver writes it: the defaults below, alice at 100 in
    /// v10/v11 (never listed in v12), plus `users` and the top-level fields in `extra`.
    PowerLevels {
        users: Vec<(&'static str, i64)>,
        extra: Value,
    },
}

#[derive(Debug, Clone)]
struct Ev {
    sender: &'static str,
    kind: &'static str,
    state_key: Option<&'static str>,
    content: Content,
    /// For redactions: the index of the setup event being redacted.
    redacts: Option<usize>,
}

fn ev(
    sender: &'static str,
    kind: &'static str,
    state_key: Option<&'static str>,
    content: Value,
) -> Ev {
    Ev {
        sender,
        kind,
        state_key,
        content: Content::Json(content),
        redacts: None,
    }
}

/// `sender` sets `target`'s membership.
fn member(sender: &'static str, target: &'static str, membership: &str) -> Ev {
    ev(
        sender,
        "m.room.member",
        Some(target),
        json!({ "membership": membership }),
    )
}

fn join(user: &'static str) -> Ev {
    member(user, user, "join")
}

fn leave(user: &'static str) -> Ev {
    member(user, user, "leave")
}

fn knock(user: &'static str) -> Ev {
    member(user, user, "knock")
}

fn state(sender: &'static str, kind: &'static str, content: Value) -> Ev {
    ev(sender, kind, Some(""), content)
}

fn message(sender: &'static str) -> Ev {
    ev(
        sender,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "hello" }),
    )
}

/// `sender` redacts the setup event at `index`.
fn redact(sender: &'static str, index: usize) -> Ev {
    Ev {
        redacts: Some(index),
        ..ev(sender, "m.room.redaction", None, json!({}))
    }
}

fn power(sender: &'static str, users: &[(&'static str, i64)], extra: Value) -> Ev {
    Ev {
        content: Content::PowerLevels {
            users: users.to_vec(),
            extra,
        },
        ..state(sender, "m.room.power_levels", json!({}))
    }
}

/// The `events` map with `m.room.power_levels` lowered to 50, so that a user at 50 may send
/// power levels at all and the users-map rules are what decides.
fn pl_events_at_50() -> Value {
    json!({ "events": { "m.room.power_levels": 50, "m.room.history_visibility": 100 } })
}

fn power_levels_content(version: &RoomVersionId, users: &[(&str, i64)], extra: &Value) -> Value {
    let mut users_map = serde_json::Map::new();
    if *version != RoomVersionId::V12 {
        users_map.insert(ALICE.into(), json!(100));
    }
    for (user, level) in users {
        users_map.insert((*user).into(), json!(level));
    }
    let mut content = json!({
        "users": users_map,
        "users_default": 0,
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "events": { "m.room.power_levels": 100, "m.room.history_visibility": 100 },
    });
    for (k, v) in extra.as_object().expect("extra is an object") {
        content[k] = v.clone();
    }
    content
}

fn create_content(version: &RoomVersionId) -> Value {
    // v1–v10: "If content has no `creator` property, reject"; v11 dropped the property.
    if *version == RoomVersionId::V10 {
        json!({ "creator": ALICE, "room_version": version.as_str() })
    } else {
        json!({ "room_version": version.as_str() })
    }
}

fn join_rules_content(join_rule: &str) -> Value {
    if join_rule == KNOCK_RESTRICTED {
        json!({ "join_rule": join_rule, "allow": [] })
    } else {
        json!({ "join_rule": join_rule })
    }
}

fn canonical(value: Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value).unwrap() {
        CanonicalJsonValue::Object(object) => object,
        other => panic!("not an object: {other:?}"),
    }
}

/// A room and its current state, kept as a homeserver keeps it.
struct Room {
    version: RoomVersionId,
    rules: RoomVersionRules,
    key: ServerSigningKey,
    room_id: Option<OwnedRoomId>,
    events: HashMap<OwnedEventId, Pdu>,
    state: HashMap<(StateEventType, String), OwnedEventId>,
    last: Option<OwnedEventId>,
    depth: u64,
}

impl Room {
    /// create, alice's join, power levels, join rules, history visibility.
    fn new(version: &RoomVersionId, join_rule: &str) -> Room {
        let mut room = Room {
            version: version.clone(),
            rules: rules_for(version).unwrap(),
            key: ServerSigningKey::generate(),
            room_id: None,
            events: HashMap::new(),
            state: HashMap::new(),
            last: None,
            depth: 0,
        };
        let base = [
            state(ALICE, "m.room.create", create_content(version)),
            join(ALICE),
            power(ALICE, &[], json!({})),
            state(ALICE, "m.room.join_rules", join_rules_content(join_rule)),
            state(
                ALICE,
                "m.room.history_visibility",
                json!({ "history_visibility": "shared" }),
            ),
        ];
        for event in base {
            let pdu = room.build(&event, &[]);
            room.add(pdu)
                .unwrap_or_else(|e| panic!("v{version}: base room event {event:?} denied: {e}"));
        }
        room
    }

    /// Builds `event` on the current state, without adding it.
    fn build(&self, event: &Ev, setup: &[OwnedEventId]) -> Pdu {
        let content = match &event.content {
            Content::Json(value) => value.clone(),
            Content::PowerLevels { users, extra } => {
                power_levels_content(&self.version, users, extra)
            }
        };
        let raw = serde_json::value::to_raw_value(&content).unwrap();
        let sender = UserId::parse(event.sender).unwrap();
        let kind = TimelineEventType::from(event.kind);
        let auth_events = auth_types(
            &self.rules.authorization,
            &kind,
            &sender,
            event.state_key,
            &raw,
        )
        .unwrap()
        .into_iter()
        .filter_map(|key| self.state.get(&key).cloned())
        .collect();
        let legacy_room = RoomId::parse(format!("!fixture:{SERVER}")).unwrap();
        // The first create event of a v1–v11 room is given a fresh room ID; every other event
        // goes in this room.
        let room_id: Option<&RoomId> = match &self.room_id {
            Some(room_id) => Some(room_id),
            None if self.version == RoomVersionId::V12 => None,
            None => Some(&legacy_room),
        };
        let built = build_event(
            NewEvent {
                event_type: event.kind.to_owned(),
                state_key: event.state_key.map(str::to_owned),
                content: canonical(content),
                redacts: event.redacts.map(|i| setup[i].clone()),
            },
            Placement {
                rules: &self.rules,
                room_id,
                sender: &sender,
                prev_events: self.last.iter().cloned().collect(),
                auth_events,
                depth: self.depth + 1,
                origin_server_ts: MilliSecondsSinceUnixEpoch(
                    UInt::new(1_700_000_000_000 + self.depth).unwrap(),
                ),
            },
            SERVER,
            &self.key,
        )
        .unwrap();
        Pdu::from_canonical(built.event_id, built.room_id, &built.pdu).unwrap()
    }

    /// The authorization rules, against the event's auth events and the current state.
    fn check(&self, pdu: &Pdu) -> Result<(), String> {
        check(
            &self.rules.authorization,
            pdu,
            |id| self.events.get(id),
            |kind, state_key| {
                self.state
                    .get(&(kind.clone(), state_key.to_owned()))
                    .and_then(|id| self.events.get(id))
            },
        )
    }

    /// Checks `pdu` and, if allowed, appends it to the room and its state.
    fn add(&mut self, pdu: Pdu) -> Result<OwnedEventId, String> {
        self.check(&pdu)?;
        let id = pdu.event_id.clone();
        if self.room_id.is_none() {
            self.room_id = Some(pdu.room_id.clone());
        }
        if let Some(state_key) = &pdu.state_key {
            self.state.insert(
                (
                    StateEventType::from(pdu.kind.to_string()),
                    state_key.clone(),
                ),
                id.clone(),
            );
        }
        self.events.insert(id.clone(), pdu);
        self.last = Some(id.clone());
        self.depth += 1;
        Ok(id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Allow,
    /// Denied; the reason contains this text (so a row cannot pass by failing for another reason).
    Deny(&'static str),
}
use Outcome::*;

/// (what, join rule, setup events (each must be allowed), event, outcome in v10 and v11,
/// outcome in v12)
type Case = (&'static str, &'static str, Vec<Ev>, Ev, Outcome, Outcome);

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // --- m.room.member, membership join -------------------------------------------------
        // "If the join_rule is public, allow."
        ("join to a public room", PUBLIC, vec![], join(BOB), Allow, Allow),
        // "If the join_rule is invite or knock then allow if membership state is invite or join."
        // "Otherwise, reject."
        ("join to an invite-only room without an invite", INVITE, vec![], join(BOB),
            Deny("not `public`"), Deny("not `public`")),
        ("join after an invite", INVITE, vec![member(ALICE, BOB, "invite")], join(BOB), Allow, Allow),
        // "If the sender does not match state_key, reject."
        ("join on someone else's behalf", PUBLIC, vec![], member(ALICE, BOB, "join"),
            Deny("must match target"), Deny("must match target")),
        // "If the sender is banned, reject."
        ("banned user joins a public room", PUBLIC, vec![member(ALICE, BOB, "ban")], join(BOB),
            Deny("banned"), Deny("banned")),
        ("join while knocking on a knock room", KNOCK, vec![knock(BOB)], join(BOB),
            Deny("not `public`"), Deny("not `public`")),

        // --- membership invite --------------------------------------------------------------
        // "If the sender's power level is greater than or equal to the invite level, allow."
        ("invite by alice", INVITE, vec![], member(ALICE, BOB, "invite"), Allow, Allow),
        ("invite by a power-0 member at invite level 0", PUBLIC, vec![join(BOB)],
            member(BOB, CAROL, "invite"), Allow, Allow),
        ("invite by a power-0 member at invite level 50", PUBLIC,
            vec![join(BOB), power(ALICE, &[], json!({ "invite": 50 }))],
            member(BOB, CAROL, "invite"),
            Deny("enough power to invite"), Deny("enough power to invite")),
        // "If the sender's current membership state is not join, reject."
        ("invite by a non-member", INVITE, vec![], member(BOB, CAROL, "invite"),
            Deny("sender is not joined"), Deny("sender is not joined")),
        // "If target user's current membership state is join or ban, reject."
        ("invite of a joined user", PUBLIC, vec![join(BOB)], member(ALICE, BOB, "invite"),
            Deny("joined or banned"), Deny("joined or banned")),
        ("invite of a banned user", PUBLIC, vec![member(ALICE, BOB, "ban")], member(ALICE, BOB, "invite"),
            Deny("joined or banned"), Deny("joined or banned")),

        // --- membership leave ---------------------------------------------------------------
        // "If the sender matches state_key, allow if and only if that user's current membership
        // state is invite, join, or knock."
        ("leave by a member", PUBLIC, vec![join(BOB)], leave(BOB), Allow, Allow),
        ("leave by a non-member", PUBLIC, vec![], leave(BOB),
            Deny("cannot leave"), Deny("cannot leave")),
        ("rejecting an invite", INVITE, vec![member(ALICE, BOB, "invite")], leave(BOB), Allow, Allow),
        ("rescinding a knock", KNOCK, vec![knock(BOB)], leave(BOB), Allow, Allow),
        // "If the sender's power level is greater than or equal to the kick level, and the target
        // user's power level is less than the sender's power level, allow."
        ("kick by alice (100, kick 50)", PUBLIC, vec![join(BOB)], member(ALICE, BOB, "leave"), Allow, Allow),
        ("kick by a power-0 member", PUBLIC, vec![join(BOB), join(CAROL)], member(BOB, CAROL, "leave"),
            Deny("enough power to kick"), Deny("enough power to kick")),
        // v12: "the room creators ... have infinite power level", so alice outranks bob at 100.
        ("kick of a user at alice's own level (100)", PUBLIC,
            vec![join(BOB), power(ALICE, &[(BOB, 100)], json!({}))], member(ALICE, BOB, "leave"),
            Deny("enough power to kick"), Allow),
        // "If the target user's current membership state is ban, and the sender's power level is
        // less than the ban level, reject."
        ("unban by alice", PUBLIC, vec![member(ALICE, BOB, "ban")], member(ALICE, BOB, "leave"), Allow, Allow),
        ("unban by a power-0 member", PUBLIC, vec![join(CAROL), member(ALICE, BOB, "ban")],
            member(CAROL, BOB, "leave"), Deny("enough power to unban"), Deny("enough power to unban")),

        // --- membership ban -----------------------------------------------------------------
        // "If the sender's power level is greater than or equal to the ban level, and the target
        // user's power level is less than the sender's power level, allow."
        ("ban by alice", PUBLIC, vec![join(BOB)], member(ALICE, BOB, "ban"), Allow, Allow),
        ("ban of a non-member by alice", PUBLIC, vec![], member(ALICE, BOB, "ban"), Allow, Allow),
        ("ban by a power-0 member", PUBLIC, vec![join(BOB), join(CAROL)], member(BOB, CAROL, "ban"),
            Deny("enough power to ban"), Deny("enough power to ban")),

        // --- membership knock (v7+; knock_restricted since v10) ------------------------------
        // "If the join_rule is anything other than knock or knock_restricted, reject."
        ("knock on a public room", PUBLIC, vec![], knock(BOB), Deny("knocking is not allowed"), Deny("knocking is not allowed")),
        ("knock on an invite-only room", INVITE, vec![], knock(BOB), Deny("knocking is not allowed"), Deny("knocking is not allowed")),
        ("knock on a knock room", KNOCK, vec![], knock(BOB), Allow, Allow),
        ("knock on a knock_restricted room", KNOCK_RESTRICTED, vec![], knock(BOB), Allow, Allow),
        // "If sender does not match state_key, reject."
        ("knock on someone else's behalf", KNOCK, vec![], member(ALICE, BOB, "knock"),
            Deny("sender does not match"), Deny("sender does not match")),
        // "If the sender's current membership is not ban, invite, or join, allow."
        ("knock by an invited user", KNOCK, vec![member(ALICE, BOB, "invite")], knock(BOB),
            Deny("banned, invited or joined"), Deny("banned, invited or joined")),

        // --- any other event: sender must be joined ------------------------------------------
        // "If the sender's current membership state is not join, reject."
        ("message from a non-member", PUBLIC, vec![], message(BOB), Deny("not `join`"), Deny("not `join`")),
        ("message from a member", PUBLIC, vec![join(BOB)], message(BOB), Allow, Allow),
        ("message from a user who left", PUBLIC, vec![join(BOB), leave(BOB)], message(BOB),
            Deny("not `join`"), Deny("not `join`")),
        ("message from an invited user", INVITE, vec![member(ALICE, BOB, "invite")], message(BOB),
            Deny("not `join`"), Deny("not `join`")),

        // --- event power levels -----------------------------------------------------------------
        // "If the event type's required power level is greater than the sender's power level,
        // reject." (m.room.name is not in `events`, so state_default 50 applies.)
        ("m.room.name by a power-0 member (state_default 50)", PUBLIC, vec![join(BOB)],
            state(BOB, "m.room.name", json!({ "name": "Bob's" })),
            Deny("enough power to send event"), Deny("enough power to send event")),
        ("m.room.name by a member promoted to 50", PUBLIC,
            vec![join(BOB), power(ALICE, &[(BOB, 50)], json!({}))],
            state(BOB, "m.room.name", json!({ "name": "Bob's" })), Allow, Allow),
        ("m.room.name by alice", PUBLIC, vec![], state(ALICE, "m.room.name", json!({ "name": "A" })), Allow, Allow),
        // "If the event has a state_key that starts with an @ and does not match the sender,
        // reject."
        ("state event keyed by another user's ID", PUBLIC, vec![join(BOB)],
            ev(ALICE, "org.example.profile", Some(BOB), json!({})),
            Deny("another user's ID"), Deny("another user's ID")),

        // --- m.room.power_levels ------------------------------------------------------------
        // "For each entry being changed in, or removed from, the users property, other than the
        // sender's own entry: if the current value is greater than or equal to the sender's
        // current power level, reject."
        ("lowering another user's power from the sender's own level", PUBLIC,
            vec![join(BOB), join(CAROL), power(ALICE, &[(BOB, 50), (CAROL, 50)], pl_events_at_50())],
            power(BOB, &[(BOB, 50), (CAROL, 0)], pl_events_at_50()),
            Deny("`@carol:example.org`'s"), Deny("`@carol:example.org`'s")),
        ("lowering a lower user's power", PUBLIC,
            vec![join(BOB), join(CAROL), power(ALICE, &[(BOB, 50), (CAROL, 25)], pl_events_at_50())],
            power(BOB, &[(BOB, 50), (CAROL, 0)], pl_events_at_50()), Allow, Allow),
        // "For each entry being added to, or changed in, the users property: if the new value is
        // greater than the sender's current power level, reject."
        ("raising own power above own level", PUBLIC,
            vec![join(BOB), power(ALICE, &[(BOB, 50)], pl_events_at_50())],
            power(BOB, &[(BOB, 100)], pl_events_at_50()),
            Deny("`@bob:example.org`'s"), Deny("`@bob:example.org`'s")),
        ("lowering own power", PUBLIC,
            vec![join(BOB), power(ALICE, &[(BOB, 50)], pl_events_at_50())],
            power(BOB, &[(BOB, 10)], pl_events_at_50()), Allow, Allow),
        // "For the properties users_default, events_default, state_default, ban, redact, kick,
        // invite ...: if the new value is higher than the sender's current power level, reject."
        ("raising state_default above own level", PUBLIC,
            vec![join(BOB), power(ALICE, &[(BOB, 50)], pl_events_at_50())],
            power(BOB, &[(BOB, 50)], json!({ "state_default": 75, "events": { "m.room.power_levels": 50, "m.room.history_visibility": 100 } })),
            Deny("`state_default`"), Deny("`state_default`")),
        ("power levels by a power-0 member (m.room.power_levels needs 100)", PUBLIC, vec![join(BOB)],
            power(BOB, &[(BOB, 100)], json!({})),
            Deny("enough power to send event"), Deny("enough power to send event")),
        // v12: "If the users property in content contains the sender of the m.room.create event
        // or any of the additional_creators ..., reject."
        ("power levels that list the creator", PUBLIC, vec![],
            state(ALICE, "m.room.power_levels", json!({ "users": { ALICE: 100 }, "state_default": 50,
                "events": { "m.room.power_levels": 100, "m.room.history_visibility": 100 } })),
            Allow, Deny("creator user IDs are not allowed")),

        // --- m.room.redaction -------------------------------------------------------------------
        // Since room version 3 the authorization rules have no redaction rule (v1/v2 had rule 11:
        // "If type is m.room.redaction: if the sender's power level is greater than or equal to
        // the redact level, allow; if the domain of the event_id of the event being redacted is
        // the same as the domain of the event_id of the m.room.redaction, allow; otherwise,
        // reject"). rooms/v3 "Handling redactions": "While redactions are always accepted by the
        // authorization rules for events, they should not be sent to clients until ... the
        // server applies the redaction if ... the power level of the redaction event's sender is
        // greater than or equal to the redact level [or] the domain of the redaction event's
        // sender matches that of the original event's sender." So in v10–v12 the redact level is
        // not an auth rule: a power-0 member's redaction of alice's event is *accepted*, and the
        // server must not *apply* it. Only the ordinary event-type level can deny it.
        ("redaction of own event by a power-0 member", PUBLIC, vec![join(BOB), message(BOB)],
            redact(BOB, 1), Allow, Allow),
        ("redaction of alice's event by a power-0 member (redact 50): accepted, not applied",
            PUBLIC, vec![join(BOB), message(ALICE)], redact(BOB, 1), Allow, Allow),
        ("redaction by a power-0 member when events[m.room.redaction] is 50", PUBLIC,
            vec![join(BOB), message(ALICE), power(ALICE, &[], json!({ "events": {
                "m.room.power_levels": 100, "m.room.history_visibility": 100, "m.room.redaction": 50 } }))],
            redact(BOB, 1),
            Deny("enough power to send event"), Deny("enough power to send event")),
        ("redaction by a non-member", PUBLIC, vec![message(ALICE)], redact(BOB, 0),
            Deny("not `join`"), Deny("not `join`")),

        // --- m.room.create ----------------------------------------------------------------------
        // "If it has any prev_events, reject."
        ("a second m.room.create", PUBLIC, vec![join(BOB)],
            state(ALICE, "m.room.create", json!({ "creator": ALICE, "room_version": "10" })),
            Deny("cannot have previous events"), Deny("cannot have previous events")),
    ]
}

#[test]
fn authorization_rules_table() {
    let mut failures = Vec::new();
    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        for (what, join_rule, setup, event, v10_v11, v12) in cases() {
            let expected = if version == RoomVersionId::V12 {
                v12
            } else {
                v10_v11
            };
            let mut room = Room::new(&version, join_rule);
            let mut setup_ids = Vec::new();
            for (i, step) in setup.iter().enumerate() {
                let pdu = room.build(step, &setup_ids);
                let id = room.add(pdu).unwrap_or_else(|e| {
                    panic!("v{version} {what}: setup step {i} ({step:?}) denied: {e}")
                });
                setup_ids.push(id);
            }
            let pdu = room.build(&event, &setup_ids);
            let result = room.check(&pdu);
            let ok = match (expected, &result) {
                (Allow, Ok(())) => true,
                (Deny(reason), Err(e)) => e.contains(reason),
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "v{version} {what}: expected {expected:?}, got {result:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The state-independent rules for `m.room.create` (it has no auth events), per version.
#[test]
fn create_event_table() {
    #[rustfmt::skip]
    let cases: Vec<(&str, RoomVersionId, Option<&str>, Value, Outcome)> = vec![
        ("v10 create with creator", RoomVersionId::V10, Some("!r:example.org"),
            json!({ "creator": ALICE, "room_version": "10" }), Allow),
        // v1–v10: "If content has no creator property, reject."
        ("v10 create without creator", RoomVersionId::V10, Some("!r:example.org"),
            json!({ "room_version": "10" }), Deny("missing `creator`")),
        // v11 removed that rule: the creator is the sender.
        ("v11 create without creator", RoomVersionId::V11, Some("!r:example.org"),
            json!({ "room_version": "11" }), Allow),
        // v1–v11: "If the domain of the room_id does not match the domain of the sender, reject."
        ("v10 create in another server's room ID", RoomVersionId::V10, Some("!r:other.org"),
            json!({ "creator": ALICE, "room_version": "10" }), Deny("server name does not match")),
        ("v11 create in another server's room ID", RoomVersionId::V11, Some("!r:other.org"),
            json!({ "room_version": "11" }), Deny("server name does not match")),
        // v12: "If the create event has a room_id property, reject." Our builder leaves it out.
        ("v12 create", RoomVersionId::V12, None, json!({ "room_version": "12" }), Allow),
        // v12: "If the additional_creators property is present and is not an array of strings
        // where each string passes the same user ID validation applied to sender, reject."
        ("v12 create with additional_creators", RoomVersionId::V12, None,
            json!({ "room_version": "12", "additional_creators": [BOB] }), Allow),
        ("v12 create with an invalid additional creator", RoomVersionId::V12, None,
            json!({ "room_version": "12", "additional_creators": ["bob"] }), Deny("additional_creators")),
        ("v11 ignores additional_creators", RoomVersionId::V11, Some("!r:example.org"),
            json!({ "room_version": "11", "additional_creators": ["bob"] }), Allow),
    ];
    let key = ServerSigningKey::generate();
    let alice = UserId::parse(ALICE).unwrap();
    for (what, version, room_id, content, expected) in cases {
        let rules = rules_for(&version).unwrap();
        let room_id = room_id.map(|r| RoomId::parse(r).unwrap());
        let built = build_event(
            NewEvent {
                event_type: "m.room.create".into(),
                state_key: Some(String::new()),
                content: canonical(content),
                redacts: None,
            },
            Placement {
                rules: &rules,
                room_id: room_id.as_deref(),
                sender: &alice,
                prev_events: vec![],
                auth_events: vec![],
                depth: 1,
                origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(1).unwrap()),
            },
            SERVER,
            &key,
        )
        .unwrap();
        let pdu = Pdu::from_canonical(built.event_id, built.room_id, &built.pdu).unwrap();
        let result = check(&rules.authorization, &pdu, |_| None, |_, _| None);
        match expected {
            Allow => assert_eq!(result, Ok(()), "{what}"),
            Deny(reason) => assert!(
                result.as_ref().is_err_and(|e| e.contains(reason)),
                "{what}: expected a denial containing {reason:?}, got {result:?}"
            ),
        }
    }
}

type StateKey = (StateEventType, String);
/// (what, sender, type, state_key, content, the state it must cite besides v1–v11's create)
type SelectionCase = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Value,
    Vec<StateKey>,
);

/// Auth event selection: which state a new event must cite
/// (<https://spec.matrix.org/latest/server-server-api/#auth-events-selection>). v12 drops the
/// create event, whose ID is the room ID.
#[test]
fn auth_events_selection_table() {
    let create = (StateEventType::RoomCreate, String::new());
    let power = (StateEventType::RoomPowerLevels, String::new());
    let join_rules = (StateEventType::RoomJoinRules, String::new());
    let member = |u: &str| (StateEventType::RoomMember, u.to_owned());
    #[rustfmt::skip]
    let cases: Vec<SelectionCase> = vec![
        ("message", BOB, "m.room.message", None, json!({}),
            vec![power.clone(), member(BOB)]),
        ("own join", BOB, "m.room.member", Some(BOB), json!({ "membership": "join" }),
            vec![power.clone(), member(BOB), join_rules.clone()]),
        ("invite", ALICE, "m.room.member", Some(BOB), json!({ "membership": "invite" }),
            vec![power.clone(), member(ALICE), member(BOB), join_rules.clone()]),
        ("kick", ALICE, "m.room.member", Some(BOB), json!({ "membership": "leave" }),
            vec![power.clone(), member(ALICE), member(BOB)]),
        ("knock", BOB, "m.room.member", Some(BOB), json!({ "membership": "knock" }),
            vec![power.clone(), member(BOB), join_rules.clone()]),
        ("create", ALICE, "m.room.create", Some(""), json!({}), vec![]),
    ];
    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        let rules = rules_for(&version).unwrap();
        for (what, sender, kind, state_key, content, expected) in cases.clone() {
            let mut expected = expected;
            if version != RoomVersionId::V12 && kind != "m.room.create" {
                expected.push(create.clone());
            }
            let raw = serde_json::value::to_raw_value(&content).unwrap();
            let mut got = auth_types(
                &rules.authorization,
                &TimelineEventType::from(kind),
                &UserId::parse(sender).unwrap(),
                state_key,
                &raw,
            )
            .unwrap();
            got.sort();
            expected.sort();
            assert_eq!(got, expected, "v{version} {what}");
        }
    }
}

/// The state-independent rules on `auth_events` themselves.
#[test]
fn auth_events_must_be_exactly_the_selected_ones() {
    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        let mut room = Room::new(&version, PUBLIC);
        let bob_join = room.build(&join(BOB), &[]);
        room.add(bob_join).unwrap();
        let mut pdu = room.build(&message(BOB), &[]);
        let join_rules_id = room.state[&(StateEventType::RoomJoinRules, String::new())].clone();
        let power_id = room.state[&(StateEventType::RoomPowerLevels, String::new())].clone();

        // "If there are entries whose type and state_key don't match those specified by the auth
        // events selection algorithm, reject."
        let mut extra = pdu.clone();
        extra.auth_events.push(join_rules_id);
        let result = room.check(&extra);
        assert!(
            result
                .as_ref()
                .is_err_and(|e| e.contains("unexpected auth event")),
            "v{version}: {result:?}"
        );

        // "If there are duplicate entries for a given type and state_key pair, reject."
        let mut duplicate = pdu.clone();
        duplicate.auth_events.push(power_id);
        let result = room.check(&duplicate);
        assert!(
            result
                .as_ref()
                .is_err_and(|e| e.contains("duplicate auth event")),
            "v{version}: {result:?}"
        );

        // An auth event we do not have.
        let mut unknown = pdu.clone();
        unknown
            .auth_events
            .push(OwnedEventId::try_from("$unknown").unwrap());
        assert!(room.check(&unknown).is_err(), "v{version}");

        // "If there are entries which were themselves rejected ..., reject."
        let power_pdu = room.events.get_mut(&pdu.auth_events[0]).unwrap();
        assert_eq!(power_pdu.kind, TimelineEventType::RoomPowerLevels);
        power_pdu.rejected = true;
        let result = room.check(&pdu);
        assert!(
            result
                .as_ref()
                .is_err_and(|e| e.contains("rejected auth event")),
            "v{version}: {result:?}"
        );
        room.events.get_mut(&pdu.auth_events[0]).unwrap().rejected = false;

        // v1–v11: "If there is no m.room.create event among the entries, reject." v12 instead
        // finds the create event from the room ID, so leaving it out is the rule.
        let create_id = room.state[&(StateEventType::RoomCreate, String::new())].clone();
        let cites_create = pdu.auth_events.contains(&create_id);
        assert_eq!(cites_create, version != RoomVersionId::V12, "v{version}");
        if cites_create {
            pdu.auth_events.retain(|id| *id != create_id);
            let result = room.check(&pdu);
            assert!(
                result
                    .as_ref()
                    .is_err_and(|e| e.contains("no `m.room.create`")),
                "v{version}: {result:?}"
            );
        } else {
            // v12: auth events selection no longer lists the create event (its ID is the room
            // ID), so citing it is an "entry whose type and state_key don't match those specified
            // by the auth events selection algorithm": reject. (ruma reports it as "not in the
            // same room", a check it makes first: the v12 create event has no `room_id`.)
            pdu.auth_events.push(create_id);
            let result = room.check(&pdu);
            assert!(
                result
                    .as_ref()
                    .is_err_and(|e| e.contains("not in the same room")
                        || e.contains("unexpected auth event")),
                "v{version}: {result:?}"
            );
        }
    }
}

/// State resolution where two forks meet (<https://spec.matrix.org/latest/rooms/v2/#state-resolution>):
/// from one public room, alice makes it invite-only on one fork while bob joins on the other.
/// Power events are applied first, so the resolved state is invite-only and bob's join, no
/// longer allowed by it, is not in it, whichever fork is listed first. States that agree
/// resolve to themselves; the conflicted subgraph of two events that do not cite each other
/// is just them.
#[test]
fn forks_resolve_power_events_first() {
    use std::collections::HashSet;

    use crate::state_resolution::{conflicted_subgraph, resolve, State};

    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        let room = Room::new(&version, PUBLIC);
        let invite_only = room.build(
            &state(ALICE, "m.room.join_rules", join_rules_content(INVITE)),
            &[],
        );
        let bob_joins = room.build(&join(BOB), &[]);
        let mut events = room.events.clone();
        events.insert(invite_only.event_id.clone(), invite_only.clone());
        events.insert(bob_joins.event_id.clone(), bob_joins.clone());
        let base: State = room
            .state
            .iter()
            .map(|((t, k), id)| ((t.to_string(), k.clone()), id.to_string()))
            .collect();
        let with = |pdu: &Pdu| {
            let mut s = base.clone();
            s.insert(
                (pdu.kind.to_string(), pdu.state_key.clone().unwrap()),
                pdu.event_id.to_string(),
            );
            s
        };
        let (fork_a, fork_b) = (with(&invite_only), with(&bob_joins));
        let chain = |s: &State| -> HashSet<OwnedEventId> {
            let mut out = HashSet::new();
            let mut todo: Vec<OwnedEventId> = s
                .values()
                .map(|id| OwnedEventId::try_from(id.as_str()).unwrap())
                .collect();
            while let Some(id) = todo.pop() {
                for parent in &events[&id].auth_events {
                    if out.insert(parent.clone()) {
                        todo.push(parent.clone());
                    }
                }
            }
            out
        };
        for order in [[&fork_a, &fork_b], [&fork_b, &fork_a]] {
            let chains = order.iter().map(|s| chain(s)).collect();
            let resolved = resolve(&room.rules, &order, chains, &events).unwrap();
            assert_eq!(
                resolved[&("m.room.join_rules".to_owned(), String::new())],
                invite_only.event_id.to_string(),
                "v{version}"
            );
            assert!(
                !resolved.contains_key(&("m.room.member".to_owned(), BOB.to_owned())),
                "v{version}: bob's join survived: {resolved:?}"
            );
        }
        let same = resolve(&room.rules, &[&fork_a, &fork_a], vec![], &HashMap::new()).unwrap();
        assert_eq!(same, fork_a);
        let subgraph = conflicted_subgraph(&[&invite_only.event_id, &bob_joins.event_id], |id| {
            events.get(id)
        });
        assert_eq!(
            subgraph,
            [invite_only.event_id.clone(), bob_joins.event_id.clone()]
                .into_iter()
                .collect()
        );
    }
}
