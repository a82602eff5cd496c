//! Authorization rules, through ruma's implementation of the spec's algorithm.
//!
//! <https://spec.matrix.org/latest/server-server-api/#authorisation-rules>
//!
//! A locally created event is checked twice before it is stored:
//! 1. the state-independent rules, against the event's own `auth_events`;
//! 2. the state-dependent rules, against the room state the event is placed on.
//!
//! Both are pure functions of their inputs: lookups are closures, so they are tested from
//! fixtures with no database.

use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::AuthorizationRules,
    EventId, OwnedEventId, UserId,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::pdu::Pdu;

/// The `(type, state_key)` pairs whose current events a new event must cite as `auth_events`.
pub fn auth_types(
    rules: &AuthorizationRules,
    kind: &TimelineEventType,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawJsonValue,
) -> Result<Vec<(StateEventType, String)>, String> {
    ruma::state_res::auth_types_for_event(kind, sender, state_key, content, rules)
}

/// Checks `event` against the authorization rules: first against its auth events, then against
/// `state` (the room state it is placed on). Returns the reason on failure.
pub fn check<'a>(
    rules: &AuthorizationRules,
    event: &Pdu,
    auth_event: impl Fn(&EventId) -> Option<&'a Pdu>,
    state: impl Fn(&StateEventType, &str) -> Option<&'a Pdu>,
) -> Result<(), String> {
    ruma::state_res::check_state_independent_auth_rules(rules, event, auth_event)?;
    ruma::state_res::check_state_dependent_auth_rules(rules, event, state)
}

/// Event IDs as a list, for logging.
pub fn describe(ids: &[OwnedEventId]) -> String {
    ids.iter()
        .map(|id| id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The state-independent rules alone: `event` against its own `auth_events` (the first check
/// of a received event).
pub fn check_auth_events<'a>(
    rules: &AuthorizationRules,
    event: &Pdu,
    auth_event: impl Fn(&EventId) -> Option<&'a Pdu>,
) -> Result<(), String> {
    ruma::state_res::check_state_independent_auth_rules(rules, event, auth_event)
}

/// The state-dependent rules alone: `event` against a state (the state before it, or, for the
/// soft-fail check of a received event, the room's current state).
pub fn check_state<'a>(
    rules: &AuthorizationRules,
    event: &Pdu,
    state: impl Fn(&StateEventType, &str) -> Option<&'a Pdu>,
) -> Result<(), String> {
    ruma::state_res::check_state_dependent_auth_rules(rules, event, state)
}
