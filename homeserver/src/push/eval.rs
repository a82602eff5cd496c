//! Evaluating push rules for a new event, once per local member, in the write pipeline.
//!
//! <https://spec.matrix.org/latest/client-server-api/#push-rules>
//!
//! The pipeline (`rooms::place`) calls [`evaluate`] for each event it has placed, with what
//! its in-memory room head already knows: the members, the member count, the power levels.
//! The event is flattened once and one [`PushConditionRoomCtx`] is reused for every member
//! (only the user and display name change), so the cost per member is the walk over that
//! member's rules. The answer is the event's push actions, stored in its own transaction.
//!
//! Most members have the server-default rules, and for them the outcome depends on the member
//! only through conditions whose literal is their user ID (`.m.rule.invite_for_me`,
//! `.m.rule.is_user_mention`; the test `server_default_rules_depend_on_the_user_only_by_id`
//! holds ruma to that). Such a condition can match only if the event's JSON, lowercased,
//! contains the lowercased user ID. So every default-rules member whose ID the event does not
//! contain gets the same outcome, evaluated once ([`Shared`]); the others are evaluated one
//! by one. In a room of 50 a plain message is one evaluation instead of 49.

use std::{collections::BTreeMap, sync::Arc};

use myelin_storage::NewPushAction;
use ruma::{
    power_levels::NotificationPowerLevels,
    push::{
        Action, FlattenedJson, PushCondition, PushConditionPowerLevelsCtx, PushConditionRoomCtx,
        Ruleset,
    },
    room_version_rules::{AuthorizationRules, RoomPowerLevelsRules},
    serde::Raw,
    Int, OwnedUserId, UInt, UserId,
};
use serde_json::Value;

use crate::error::Error;

/// One member to evaluate the event for: their rules, and their display name in the room
/// (asked for only when a rule of theirs reads it, see [`uses_display_name`]).
pub struct Member<'a> {
    pub user_id: &'a UserId,
    pub rules: Arc<Ruleset>,
    /// The rules are exactly `Ruleset::server_default(user_id)`.
    pub server_default: bool,
    pub display_name: String,
}

/// Whom of the server-default members the event may name, and the outcome they share.
struct Shared {
    /// The event's JSON, lowercased; `None` if nothing can be shared for this event (no
    /// member has the default rules, or the JSON has `\u` escapes, which could spell an ID
    /// in a form a substring test cannot see).
    haystack: Option<String>,
    /// The outcome of the first member evaluated for the group, once known.
    outcome: Option<Option<NewPushAction>>,
}

impl Shared {
    fn new(event_json: &str, members: &[Member<'_>]) -> Self {
        let haystack = members
            .iter()
            .any(|m| m.server_default)
            .then(|| event_json.to_lowercase())
            .filter(|h| !h.contains("\\u"));
        Shared {
            haystack,
            outcome: None,
        }
    }

    /// Whether `member`'s outcome is the group's: default rules, and an ID the event cannot
    /// match. IDs that are not plain ASCII, or hold a glob wildcard or a character JSON
    /// escapes (historical user IDs may), are always evaluated on their own.
    fn includes(&self, member: &Member<'_>) -> bool {
        let Some(haystack) = &self.haystack else {
            return false;
        };
        let id = member.user_id.as_str();
        member.server_default
            && id
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"*?\"\\".contains(&b))
            && !haystack.contains(&id.to_ascii_lowercase())
    }
}

/// What the room looks like for this event.
pub struct RoomContext<'a> {
    pub room_id: &'a ruma::RoomId,
    /// Joined members after the event.
    pub member_count: u64,
    pub power_levels: Option<PushConditionPowerLevelsCtx>,
}

/// The push actions of `event_json` (the PDU) for each member.
pub async fn evaluate(
    event_json: &str,
    room: RoomContext<'_>,
    members: Vec<Member<'_>>,
) -> Result<Vec<NewPushAction>, Error> {
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let raw =
        serde_json::value::RawValue::from_string(event_json.to_owned()).map_err(Error::internal)?;
    let flat = FlattenedJson::from_raw(&Raw::<Value>::from_json(raw));
    let mut ctx = PushConditionRoomCtx::new(
        room.room_id.to_owned(),
        UInt::new(room.member_count).unwrap_or(UInt::MAX),
        members[0].user_id.to_owned(),
        String::new(),
    );
    ctx.power_levels = room.power_levels;
    let mut shared = Shared::new(event_json, &members);
    let mut out = Vec::new();
    for member in members {
        let in_group = shared.includes(&member);
        if in_group {
            if let Some(outcome) = &shared.outcome {
                if let Some(action) = outcome {
                    out.push(NewPushAction {
                        user_id: member.user_id.as_str().to_owned(),
                        ..action.clone()
                    });
                }
                continue;
            }
        }
        ctx.user_id = member.user_id.to_owned();
        ctx.user_display_name = member.display_name;
        let action = decide(&member.rules, &flat, &ctx).await?;
        if in_group {
            shared.outcome = Some(action.clone());
        }
        out.extend(action);
    }
    Ok(out)
}

/// The first matching rule's actions as a row, if they notify or highlight.
async fn decide(
    rules: &Ruleset,
    flat: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> Result<Option<NewPushAction>, Error> {
    for rule in rules {
        if rule.applies(flat, ctx).await {
            return row(ctx.user_id.as_str(), rule.actions());
        }
    }
    Ok(None)
}

fn row(user_id: &str, actions: &[Action]) -> Result<Option<NewPushAction>, Error> {
    let notify = actions.iter().any(Action::should_notify);
    let highlight = actions.iter().any(Action::is_highlight);
    if !notify && !highlight {
        return Ok(None);
    }
    Ok(Some(NewPushAction {
        user_id: user_id.to_owned(),
        notify,
        highlight,
        actions: serde_json::to_string(actions).map_err(Error::internal)?,
    }))
}

/// Whether an enabled rule of the set has a `contains_display_name` condition (none of the
/// current server-default rules do; a user's own rule may).
pub fn uses_display_name(rules: &Ruleset) -> bool {
    #[allow(deprecated)]
    let is_name = |c: &PushCondition| matches!(c, PushCondition::ContainsDisplayName);
    rules
        .override_
        .iter()
        .chain(rules.underride.iter())
        .any(|r| r.enabled && r.conditions.iter().any(is_name))
}

/// The power levels as the `sender_notification_permission` condition reads them, from the
/// content of `m.room.power_levels` (lenient: old rooms have string levels) and the room's
/// creators (privileged in room versions 12+).
pub fn power_levels(
    content: &Value,
    authorization: &AuthorizationRules,
    creators: impl IntoIterator<Item = OwnedUserId>,
) -> PushConditionPowerLevelsCtx {
    let level = |v: &Value| -> Option<Int> {
        match v {
            Value::Number(n) => n.as_i64().and_then(Int::new),
            Value::String(s) => s.trim().parse::<i64>().ok().and_then(Int::new),
            _ => None,
        }
    };
    let users: BTreeMap<OwnedUserId, Int> = content["users"]
        .as_object()
        .map(|users| {
            users
                .iter()
                .filter_map(|(u, l)| Some((OwnedUserId::try_from(u.as_str()).ok()?, level(l)?)))
                .collect()
        })
        .unwrap_or_default();
    let users_default = level(&content["users_default"]).unwrap_or_default();
    let mut notifications = NotificationPowerLevels::new();
    if let Some(room) = level(&content["notifications"]["room"]) {
        notifications.room = room;
    }
    PushConditionPowerLevelsCtx::new(
        users,
        users_default,
        notifications,
        RoomPowerLevelsRules::new(authorization, creators),
    )
}

#[cfg(test)]
mod tests {
    use ruma::{room_id, room_version_rules::RoomVersionRules, user_id};
    use serde_json::json;

    use super::*;

    async fn actions(
        rules: &Ruleset,
        event: Value,
        user: &UserId,
        members: u64,
        name: &str,
    ) -> Option<NewPushAction> {
        let raw = serde_json::value::to_raw_value(&event).unwrap();
        let flat = FlattenedJson::from_raw(&Raw::<Value>::from_json(raw));
        let pl = power_levels(
            &json!({ "users": { "@admin:x": 100 }, "notifications": { "room": 50 } }),
            &RoomVersionRules::V11.authorization,
            [],
        );
        let ctx = PushConditionRoomCtx::new(
            room_id!("!r:x").to_owned(),
            UInt::new(members).unwrap(),
            user.to_owned(),
            name.to_owned(),
        )
        .with_power_levels(pl);
        decide(rules, &flat, &ctx).await.unwrap()
    }

    fn message(sender: &str, content: Value) -> Value {
        json!({ "type": "m.room.message", "sender": sender, "room_id": "!r:x", "content": content })
    }

    #[tokio::test]
    async fn default_rules_decide_notify_and_highlight() {
        let bob = user_id!("@bob:x");
        let rules = Ruleset::server_default(bob);
        let text = json!({ "msgtype": "m.text", "body": "hi" });
        // A DM notifies, a group message notifies, neither highlights.
        let dm = actions(&rules, message("@alice:x", text.clone()), bob, 2, "")
            .await
            .unwrap();
        assert!(dm.notify && !dm.highlight);
        let group = actions(&rules, message("@alice:x", text.clone()), bob, 5, "")
            .await
            .unwrap();
        assert!(group.notify && !group.highlight);
        // Own messages never notify.
        assert!(actions(&rules, message("@bob:x", text), bob, 5, "")
            .await
            .is_none());
        // A mention highlights.
        let mention = json!({ "body": "bob!", "m.mentions": { "user_ids": ["@bob:x"] } });
        let m = actions(&rules, message("@alice:x", mention), bob, 5, "")
            .await
            .unwrap();
        assert!(m.notify && m.highlight);
        // @room highlights only from someone allowed to.
        let room = json!({ "body": "all", "m.mentions": { "room": true } });
        assert!(
            actions(&rules, message("@admin:x", room.clone()), bob, 5, "")
                .await
                .unwrap()
                .highlight
        );
        assert!(
            !actions(&rules, message("@alice:x", room), bob, 5, "")
                .await
                .unwrap()
                .highlight
        );
        // Notices do not notify.
        let notice = json!({ "msgtype": "m.notice", "body": "bot" });
        assert!(actions(&rules, message("@alice:x", notice), bob, 5, "")
            .await
            .is_none());
        // Encrypted events notify (by the encrypted rules).
        let enc = json!({ "type": "m.room.encrypted", "sender": "@alice:x", "room_id": "!r:x",
                          "content": { "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x" } });
        assert!(actions(&rules, enc, bob, 5, "").await.unwrap().notify);
    }

    #[tokio::test]
    #[allow(deprecated)] // `contains_display_name` is deprecated, and still to be evaluated
    async fn display_name_rules_are_used_only_when_present() {
        let bob = user_id!("@bob:x");
        let mut rules = Ruleset::server_default(bob);
        assert!(!uses_display_name(&rules));
        rules
            .insert(
                ruma::push::NewPushRule::Override(ruma::push::NewConditionalPushRule::new(
                    "name".into(),
                    vec![PushCondition::ContainsDisplayName],
                    vec![
                        Action::Notify,
                        Action::SetTweak(ruma::push::Tweak::Highlight(true.into())),
                    ],
                )),
                None,
                None,
            )
            .unwrap();
        assert!(uses_display_name(&rules));
        let hello = json!({ "msgtype": "m.text", "body": "hello Bobby" });
        let a = actions(&rules, message("@alice:x", hello), bob, 5, "Bobby")
            .await
            .unwrap();
        assert!(a.highlight);
    }

    /// The sharing in [`evaluate`] is sound only while the server-default rules depend on
    /// the user through literals equal to their ID, in conditions that match only strings
    /// containing that literal. A newer ruma that adds a display-name, thread-subscription or
    /// other per-user condition to the defaults fails here.
    #[test]
    fn server_default_rules_depend_on_the_user_only_by_id() {
        let a = user_id!("@alice:example.org");
        let b = user_id!("@bob:other.test");
        let of_a = serde_json::to_string(&Ruleset::server_default(a)).unwrap();
        let of_b = serde_json::to_string(&Ruleset::server_default(b)).unwrap();
        assert_ne!(of_a, of_b, "the defaults name the user");
        assert_eq!(of_a.replace(a.as_str(), b.as_str()), of_b);
        let defaults = Ruleset::server_default(a);
        for rule in defaults.iter() {
            if let ruma::push::AnyPushRuleRef::Override(r)
            | ruma::push::AnyPushRuleRef::Underride(r) = rule
            {
                for c in &r.conditions {
                    assert!(
                        matches!(
                            c,
                            PushCondition::EventMatch { .. }
                                | PushCondition::EventPropertyIs { .. }
                                | PushCondition::EventPropertyContains { .. }
                                | PushCondition::RoomMemberCount { .. }
                                | PushCondition::SenderNotificationPermission { .. }
                        ),
                        "{} has a condition the sharing does not know: {c:?}",
                        r.rule_id
                    );
                }
            } else {
                panic!("a default rule of a kind the sharing does not know: {rule:?}");
            }
        }
    }

    /// Evaluating a room at once (sharing the outcome of default-rules members the event does
    /// not name) gives each member what evaluating them alone gives.
    #[tokio::test]
    async fn shared_evaluation_equals_evaluation_one_by_one() {
        let mut custom = Ruleset::server_default(user_id!("@dave:x"));
        custom
            .insert(
                ruma::push::NewPushRule::Content(ruma::push::NewPatternedPushRule::new(
                    "lunch".into(),
                    "lunch".into(),
                    vec![
                        Action::Notify,
                        Action::SetTweak(ruma::push::Tweak::Highlight(true.into())),
                    ],
                )),
                None,
                None,
            )
            .unwrap();
        let users: Vec<(OwnedUserId, Ruleset)> = [
            "@bob:x",
            "@carol:x",
            "@erin:x",
            "@k.user:x",
            "@frank:x",
            "@gina:x",
        ]
        .iter()
        .map(|u| {
            let u = OwnedUserId::try_from(*u).unwrap();
            let rules = Ruleset::server_default(&u);
            (u, rules)
        })
        .chain([(OwnedUserId::try_from("@dave:x").unwrap(), custom)])
        .collect();
        let msg = |content: Value| message("@alice:x", content).to_string();
        let events: Vec<(String, &str)> = vec![
            (msg(json!({ "msgtype": "m.text", "body": "hi all" })), "plain"),
            (msg(json!({ "msgtype": "m.text", "body": "lunch?" })), "a custom rule"),
            (msg(json!({ "body": "bob!", "m.mentions": { "user_ids": ["@bob:x"] } })), "mention"),
            (msg(json!({ "body": "x", "m.mentions": { "user_ids": ["@BOB:x"] } })), "mention, other case"),
            (msg(json!({ "body": "all", "m.mentions": { "room": true } })), "room mention"),
            (msg(json!({ "msgtype": "m.notice", "body": "bot" })), "notice"),
            (
                json!({ "type": "m.room.member", "sender": "@alice:x", "room_id": "!r:x",
                        "state_key": "@carol:x", "content": { "membership": "invite" } })
                .to_string(),
                "invite",
            ),
            (
                json!({ "type": "m.room.member", "sender": "@alice:x", "room_id": "!r:x",
                        "state_key": "@CAROL:x", "content": { "membership": "invite" } })
                .to_string(),
                "invite, other case",
            ),
            (
                json!({ "type": "m.room.member", "sender": "@alice:x", "room_id": "!r:x",
                        "state_key": "@\u{212A}.user:x", "content": { "membership": "invite" } })
                .to_string(),
                "invite, Kelvin sign for k",
            ),
            (
                r#"{"type":"m.room.member","sender":"@alice:x","room_id":"!r:x","state_key":"\u0040erin:x","content":{"membership":"invite"}}"#
                    .to_owned(),
                "invite, escaped",
            ),
            (
                r#"{"type":"m.room.message","sender":"@alice:x","room_id":"!r:x","content":{"body":"x","m.mentions":{"user_ids":["@fr\u0061nk:x"]}}}"#
                    .to_owned(),
                "mention, escaped",
            ),
            (
                json!({ "type": "m.reaction", "sender": "@alice:x", "room_id": "!r:x",
                        "content": { "m.relates_to": { "rel_type": "m.annotation", "event_id": "$e", "key": "@gina:x" } } })
                .to_string(),
                "reaction naming a member",
            ),
            (
                json!({ "type": "m.room.encrypted", "sender": "@alice:x", "room_id": "!r:x",
                        "content": { "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x" } })
                .to_string(),
                "encrypted",
            ),
        ];
        for members_in_room in [2u64, 8] {
            for (event, what) in &events {
                let pl = || {
                    Some(power_levels(
                        &json!({ "users": { "@alice:x": 100 } }),
                        &RoomVersionRules::V11.authorization,
                        [],
                    ))
                };
                let members = users
                    .iter()
                    .map(|(u, rules)| Member {
                        user_id: u,
                        rules: Arc::new(rules.clone()),
                        server_default: crate::push::rules::is_server_default(u, rules),
                        display_name: String::new(),
                    })
                    .collect();
                let room = RoomContext {
                    room_id: room_id!("!r:x"),
                    member_count: members_in_room,
                    power_levels: pl(),
                };
                let together = evaluate(event, room, members).await.unwrap();
                let mut alone = Vec::new();
                for (u, rules) in &users {
                    let room = RoomContext {
                        room_id: room_id!("!r:x"),
                        member_count: members_in_room,
                        power_levels: pl(),
                    };
                    let one = vec![Member {
                        user_id: u,
                        rules: Arc::new(rules.clone()),
                        server_default: false,
                        display_name: String::new(),
                    }];
                    alone.extend(evaluate(event, room, one).await.unwrap());
                }
                let show = |v: &[NewPushAction]| {
                    v.iter()
                        .map(|a| {
                            format!("{} {} {} {}", a.user_id, a.notify, a.highlight, a.actions)
                        })
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    show(&together),
                    show(&alone),
                    "{what}, {members_in_room} members"
                );
                // Who stands out: whom an invite notifies (`.m.rule.invite_for_me`, the
                // others' `.m.rule.member_event` does not), who else is highlighted.
                let invite = what.starts_with("invite");
                let highlighted: Vec<&str> = together
                    .iter()
                    .filter(|a| if invite { a.notify } else { a.highlight })
                    .map(|a| a.user_id.as_str())
                    .collect();
                let expected: &[&str] = match *what {
                    "mention" => &["@bob:x"],
                    "a custom rule" => &["@dave:x"],
                    "room mention" => &[
                        "@bob:x",
                        "@carol:x",
                        "@erin:x",
                        "@k.user:x",
                        "@frank:x",
                        "@gina:x",
                        "@dave:x",
                    ],
                    "invite" | "invite, other case" => &["@carol:x"],
                    "invite, Kelvin sign for k" => &["@k.user:x"],
                    "invite, escaped" => &["@erin:x"],
                    "mention, escaped" => &["@frank:x"],
                    _ => &[],
                };
                assert_eq!(highlighted, expected, "{what}, {members_in_room} members");
            }
        }
        // The cases above do exercise both paths: a plain message is shared by all six
        // default members, and a mention singles one out.
        assert!(!crate::push::rules::is_server_default(
            &users[6].0,
            &users[6].1
        ));
    }

    #[test]
    fn power_levels_are_read_leniently() {
        let pl = power_levels(
            &json!({ "users": { "@a:x": "75", "bad": 1 }, "users_default": 10 }),
            &RoomVersionRules::V11.authorization,
            [],
        );
        assert_eq!(pl.users.len(), 1);
        assert_eq!(pl.users_default, Int::from(10));
        assert_eq!(pl.notifications.room, Int::from(50));
    }
}
