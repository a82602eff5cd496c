//! Filters: what the client asked to see, reduced to the checks the engine makes.
//!
//! <https://spec.matrix.org/latest/client-server-api/#filtering>
//!
//! A sync filter (ruma's [`FilterDefinition`]) has one event filter per part of the response:
//! the timeline, state, ephemeral events and account data of rooms, global account data and
//! presence, each an [`EventCheck`]; plus which rooms, whether left rooms come in an initial
//! sync, lazy-loading and `event_fields`. `/messages` takes one [`EventCheck`] from its
//! `RoomEventFilter`. The checks are plain data, so a waiting sync that asked for nothing
//! special carries no allocation for them.
//!
//! Limits are applied *after* the checks: a timeline filter for messages with `limit: 3`
//! gets the last three messages, however many other events came after them. The reader
//! (sync's timeline, `/messages`) reads in bounded chunks until the limit is filled or a
//! bounded number of events has been looked at. `/context` walks both ways the same way.
//!
//! Two readings where the spec is loose: an ephemeral event's senders are the users it
//! reports (who types, whose receipt), so `room.ephemeral.senders` picks those; and
//! `room.state.limit` is not applied, as in Synapse: cutting the state at an arbitrary entry
//! would leave a client with a room it cannot render (state is already bounded by
//! `types`/`not_types` and lazy-loading).

use myelin_storage::EventRow;
use ruma::api::client::filter::{
    Filter, FilterDefinition, LazyLoadOptions, RoomEventFilter, UrlFilter,
};
use serde_json::{Map, Value};

/// Timeline events per room when the filter gives no limit (Synapse's default).
const DEFAULT_TIMELINE_LIMIT: i64 = 10;
/// The most timeline events per room a filter may ask for.
const MAX_TIMELINE_LIMIT: i64 = 1000;

/// The checks of one `EventFilter` / `RoomEventFilter`. Lists are short (a client names a
/// handful of types or users), so they are vectors searched in order.
#[derive(Debug, Clone, Default)]
pub struct EventCheck {
    types: Option<Vec<String>>,
    not_types: Vec<String>,
    senders: Option<Vec<String>>,
    not_senders: Vec<String>,
    rooms: Option<Vec<String>>,
    not_rooms: Vec<String>,
    /// `Some(true)`: only events whose content has a `url` string; `Some(false)`: only
    /// events without one.
    contains_url: Option<bool>,
    /// The filter's own `limit`, if any.
    pub limit: Option<usize>,
}

/// Event type patterns allow a trailing `*`.
fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

fn limit(l: Option<ruma::UInt>) -> Option<usize> {
    l.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX))
}

impl EventCheck {
    /// From an `EventFilter` (global account data, presence).
    pub fn from_event_filter(f: &Filter) -> EventCheck {
        EventCheck {
            types: f.types.clone(),
            not_types: f.not_types.clone(),
            senders: f
                .senders
                .as_ref()
                .map(|s| s.iter().map(ToString::to_string).collect()),
            not_senders: f.not_senders.iter().map(ToString::to_string).collect(),
            limit: limit(f.limit),
            ..EventCheck::default()
        }
    }

    /// From a `RoomEventFilter` (a room's timeline, state, ephemeral events and account
    /// data; `/messages` and `/context`).
    pub fn from_room_event_filter(f: &RoomEventFilter) -> EventCheck {
        EventCheck {
            types: f.types.clone(),
            not_types: f.not_types.clone(),
            senders: f
                .senders
                .as_ref()
                .map(|s| s.iter().map(ToString::to_string).collect()),
            not_senders: f.not_senders.iter().map(ToString::to_string).collect(),
            rooms: f
                .rooms
                .as_ref()
                .map(|r| r.iter().map(ToString::to_string).collect()),
            not_rooms: f.not_rooms.iter().map(ToString::to_string).collect(),
            contains_url: f.url_filter.map(|u| u == UrlFilter::EventsWithUrl),
            limit: limit(f.limit),
        }
    }

    /// Whether every event passes (the limit aside): readers then take the fast path.
    pub fn passes_everything(&self) -> bool {
        self.types.is_none()
            && self.not_types.is_empty()
            && self.senders.is_none()
            && self.not_senders.is_empty()
            && self.rooms.is_none()
            && self.not_rooms.is_empty()
            && self.contains_url.is_none()
    }

    /// Whether `senders` or `not_senders` is set.
    pub fn filters_senders(&self) -> bool {
        self.senders.is_some() || !self.not_senders.is_empty()
    }

    /// Whether `types` or `not_types` is set.
    pub fn filters_types(&self) -> bool {
        self.types.is_some() || !self.not_types.is_empty()
    }

    /// `not_*` wins over the allow list, as the spec says.
    pub fn allows_type(&self, event_type: &str) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.iter().any(|p| type_matches(p, event_type)))
            && !self.not_types.iter().any(|p| type_matches(p, event_type))
    }

    pub fn allows_sender(&self, sender: &str) -> bool {
        self.senders
            .as_ref()
            .is_none_or(|s| s.iter().any(|u| u == sender))
            && !self.not_senders.iter().any(|u| u == sender)
    }

    pub fn allows_room(&self, room_id: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|id| id == room_id))
            && !self.not_rooms.iter().any(|id| id == room_id)
    }

    /// Type, sender, room and `contains_url` of a stored event. The PDU is parsed only when
    /// the filter asks about URLs.
    pub fn allows_event(&self, row: &EventRow) -> bool {
        self.allows_type(&row.event_type)
            && self.allows_sender(&row.sender)
            && self.allows_room(&row.room_id)
            && self.contains_url.is_none_or(|wanted| {
                let has_url = row
                    .parse_pdu::<Value>()
                    .is_ok_and(|pdu| pdu["content"]["url"].is_string());
                has_url == wanted
            })
    }

    /// Type and `sender` of an event given as JSON (presence, account data), then the limit.
    pub fn apply(&self, events: Vec<Value>) -> Vec<Value> {
        let mut events: Vec<Value> = events
            .into_iter()
            .filter(|e| {
                self.allows_type(e["type"].as_str().unwrap_or(""))
                    && ((self.senders.is_none() && self.not_senders.is_empty())
                        || self.allows_sender(e["sender"].as_str().unwrap_or("")))
            })
            .collect();
        if let Some(limit) = self.limit {
            events.truncate(limit);
        }
        events
    }
}

/// The filter parts other than the timeline limit, lazy-loading and rooms: boxed, and only
/// when the filter has any (most syncs carry none while they wait).
#[derive(Debug, Clone, Default)]
struct Parts {
    timeline: EventCheck,
    state: EventCheck,
    ephemeral: EventCheck,
    room_account_data: EventCheck,
    account_data: EventCheck,
    presence: EventCheck,
    event_fields: Option<Vec<Vec<String>>>,
}

/// What passes when a filter says nothing.
static NO_CHECK: EventCheck = EventCheck {
    types: None,
    not_types: Vec::new(),
    senders: None,
    not_senders: Vec::new(),
    rooms: None,
    not_rooms: Vec::new(),
    contains_url: None,
    limit: None,
};

#[derive(Debug, Clone)]
pub struct SyncFilter {
    pub timeline_limit: i64,
    pub lazy_load_members: bool,
    /// With lazy-loading: send member events the device already has, too.
    pub include_redundant_members: bool,
    pub include_leave: bool,
    /// `room.timeline.unread_thread_notifications`: counts per thread in
    /// `unread_thread_notifications`, the main timeline's alone in `unread_notifications`.
    pub unread_thread_notifications: bool,
    rooms: Option<Vec<String>>,
    not_rooms: Vec<String>,
    parts: Option<Box<Parts>>,
}

impl Default for SyncFilter {
    fn default() -> Self {
        SyncFilter::from_definition(&FilterDefinition::default())
    }
}

impl SyncFilter {
    pub fn from_definition(def: &FilterDefinition) -> SyncFilter {
        let room = &def.room;
        let parts = Parts {
            timeline: EventCheck::from_room_event_filter(&room.timeline),
            state: EventCheck::from_room_event_filter(&room.state),
            ephemeral: EventCheck::from_room_event_filter(&room.ephemeral),
            room_account_data: EventCheck::from_room_event_filter(&room.account_data),
            account_data: EventCheck::from_event_filter(&def.account_data),
            presence: EventCheck::from_event_filter(&def.presence),
            event_fields: def
                .event_fields
                .as_ref()
                .map(|fields| fields.iter().map(|f| parse_field_path(f)).collect()),
        };
        let trivial = [
            &parts.timeline,
            &parts.state,
            &parts.ephemeral,
            &parts.room_account_data,
            &parts.account_data,
            &parts.presence,
        ]
        .iter()
        .all(|c| c.passes_everything())
            && [
                &parts.state,
                &parts.ephemeral,
                &parts.room_account_data,
                &parts.account_data,
                &parts.presence,
            ]
            .iter()
            .all(|c| c.limit.is_none())
            && parts.event_fields.is_none();
        SyncFilter {
            timeline_limit: room
                .timeline
                .limit
                .map(|l| u64::from(l).min(MAX_TIMELINE_LIMIT as u64) as i64)
                .unwrap_or(DEFAULT_TIMELINE_LIMIT)
                .clamp(1, MAX_TIMELINE_LIMIT),
            lazy_load_members: !room.state.lazy_load_options.is_disabled()
                || !room.timeline.lazy_load_options.is_disabled(),
            include_redundant_members: [
                room.state.lazy_load_options,
                room.timeline.lazy_load_options,
            ]
            .iter()
            .any(|o| {
                matches!(
                    o,
                    LazyLoadOptions::Enabled {
                        include_redundant_members: true
                    }
                )
            }),
            include_leave: room.include_leave,
            unread_thread_notifications: room.timeline.unread_thread_notifications,
            rooms: room
                .rooms
                .as_ref()
                .map(|r| r.iter().map(|id| id.to_string()).collect()),
            not_rooms: room.not_rooms.iter().map(|id| id.to_string()).collect(),
            parts: (!trivial).then(|| Box::new(parts)),
        }
    }

    /// The room filter's `rooms` / `not_rooms`, applied before everything else.
    pub fn wants_room(&self, room_id: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|id| id == room_id))
            && !self.not_rooms.iter().any(|id| id == room_id)
    }

    fn part(&self, pick: impl Fn(&Parts) -> &EventCheck) -> &EventCheck {
        self.parts.as_deref().map_or(&NO_CHECK, pick)
    }

    /// `room.timeline` (its `limit` is [`Self::timeline_limit`]).
    pub fn timeline(&self) -> &EventCheck {
        self.part(|p| &p.timeline)
    }

    /// `room.state`.
    pub fn state(&self) -> &EventCheck {
        self.part(|p| &p.state)
    }

    /// `room.ephemeral`.
    pub fn ephemeral(&self) -> &EventCheck {
        self.part(|p| &p.ephemeral)
    }

    /// `room.account_data`.
    pub fn room_account_data(&self) -> &EventCheck {
        self.part(|p| &p.room_account_data)
    }

    /// The top-level `account_data` (global account data).
    pub fn account_data(&self) -> &EventCheck {
        self.part(|p| &p.account_data)
    }

    /// `presence`.
    pub fn presence(&self) -> &EventCheck {
        self.part(|p| &p.presence)
    }

    /// `event_fields`, parsed into paths.
    pub fn event_fields(&self) -> Option<&[Vec<String>]> {
        self.parts.as_deref()?.event_fields.as_deref()
    }

    pub fn wants_account_data(&self, data_type: &str) -> bool {
        self.account_data().allows_type(data_type)
    }
}

/// Splits a dot-separated property path (`content.m\.relates_to`) into its names: `.`
/// separates, `\.` is a literal dot and `\\` a literal backslash.
///
/// <https://spec.matrix.org/latest/appendices/#dot-separated-property-paths>
pub fn parse_field_path(path: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut name = String::new();
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('.' | '\\')) => name.push(escaped),
                Some(other) => {
                    name.push('\\');
                    name.push(other);
                }
                None => name.push('\\'),
            },
            '.' => names.push(std::mem::take(&mut name)),
            other => name.push(other),
        }
    }
    names.push(name);
    names
}

/// The event with only the fields named by `paths` (`event_fields`). A path through a value
/// that is not an object selects nothing.
pub fn project(event: &Value, paths: &[Vec<String>]) -> Value {
    fn copy(src: &Value, dst: &mut Map<String, Value>, path: &[String]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let Some(value) = src.get(first) else {
            return;
        };
        if rest.is_empty() {
            dst.insert(first.clone(), value.clone());
            return;
        }
        if !value.is_object() {
            return;
        }
        let entry = dst
            .entry(first.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(inner) = entry {
            copy(value, inner, rest);
        }
    }
    let mut out = Map::new();
    for path in paths {
        copy(event, &mut out, path);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(value: Value) -> SyncFilter {
        SyncFilter::from_definition(&serde_json::from_value(value).unwrap())
    }

    #[test]
    fn limits_and_types() {
        let f = filter(json!({
            "room": {
                "timeline": { "limit": 5, "not_types": ["m.room.member"] },
                "state": { "lazy_load_members": true },
                "not_rooms": ["!a:x"]
            },
            "account_data": { "types": ["m.direct", "im.vector.*"] }
        }));
        assert_eq!(f.timeline_limit, 5);
        assert!(f.lazy_load_members);
        assert!(!f.wants_room("!a:x") && f.wants_room("!b:x"));
        assert!(f.wants_account_data("im.vector.setting") && f.wants_account_data("m.direct"));
        assert!(!f.wants_account_data("m.other"));
        assert!(!f.timeline().allows_type("m.room.member"));
        assert_eq!(SyncFilter::default().timeline_limit, DEFAULT_TIMELINE_LIMIT);
    }

    #[test]
    fn an_empty_filter_carries_no_checks() {
        assert!(SyncFilter::default().parts.is_none());
        assert!(filter(json!({ "room": { "timeline": { "limit": 3 } } }))
            .parts
            .is_none());
        assert!(filter(json!({ "presence": { "limit": 0 } }))
            .parts
            .is_some());
    }

    #[test]
    fn not_lists_win_and_senders_rooms_are_checked() {
        let check = EventCheck::from_room_event_filter(
            &serde_json::from_value(json!({
                "types": ["m.room.*"],
                "not_types": ["m.room.member"],
                "senders": ["@a:x", "@b:x"],
                "not_senders": ["@b:x"],
                "not_rooms": ["!no:x"],
            }))
            .unwrap(),
        );
        assert!(check.allows_type("m.room.message") && !check.allows_type("m.room.member"));
        assert!(!check.allows_type("m.reaction"));
        assert!(check.allows_sender("@a:x") && !check.allows_sender("@b:x"));
        assert!(!check.allows_sender("@c:x"));
        assert!(check.allows_room("!yes:x") && !check.allows_room("!no:x"));
        let presence = check.apply(vec![
            json!({ "type": "m.room.x", "sender": "@a:x" }),
            json!({ "type": "m.room.x", "sender": "@c:x" }),
        ]);
        assert_eq!(presence.len(), 1);
    }

    #[test]
    fn field_paths_split_on_unescaped_dots() {
        assert_eq!(parse_field_path("content.body"), vec!["content", "body"]);
        assert_eq!(
            parse_field_path(r"content.m\.relates_to"),
            vec!["content", "m.relates_to"]
        );
        assert_eq!(parse_field_path(r"a\\.b"), vec![r"a\", "b"]);
        assert_eq!(parse_field_path(r"a\b"), vec![r"a\b"]);
        assert_eq!(parse_field_path("type"), vec!["type"]);
    }

    #[test]
    fn projection_keeps_only_the_named_fields() {
        let event = json!({
            "type": "m.room.message",
            "event_id": "$e",
            "content": { "body": "hi", "msgtype": "m.text", "m.relates_to": { "rel_type": "x" } },
            "sender": "@a:x"
        });
        let paths: Vec<Vec<String>> = ["type", "content.body", r"content.m\.relates_to", "nope.x"]
            .iter()
            .map(|p| parse_field_path(p))
            .collect();
        assert_eq!(
            project(&event, &paths),
            json!({
                "type": "m.room.message",
                "content": { "body": "hi", "m.relates_to": { "rel_type": "x" } }
            })
        );
        // A path through a non-object selects nothing.
        let paths = vec![parse_field_path("type.x")];
        assert_eq!(project(&event, &paths), json!({}));
    }
}
