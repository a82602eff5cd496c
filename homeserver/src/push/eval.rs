//! Evaluating push rules for a new event, once per local member, in the write pipeline.
//!
//! <https://spec.matrix.org/latest/client-server-api/#push-rules>
//!
//! The pipeline (`rooms::place`) calls [`evaluate`] for each event it has placed, with what
//! its in-memory room head already knows: the members, the member count, the power levels.
//! The event is flattened once and one [`PushConditionRoomCtx`] is reused for every member
//! (only the user and display name change), so the cost per member is the walk over that
//! member's rules. The answer is the `event_push_actions` rows, stored in the event's own
//! transaction.

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
    pub display_name: String,
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
    let mut out = Vec::new();
    for member in members {
        ctx.user_id = member.user_id.to_owned();
        ctx.user_display_name = member.display_name;
        if let Some(action) = decide(&member.rules, &flat, &ctx).await? {
            out.push(action);
        }
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
