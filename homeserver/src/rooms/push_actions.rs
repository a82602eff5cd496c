//! Step 4b of the write pipeline: whom a placed event notifies. The push rules of every
//! joined local member but the sender (and of the target of an invite) are evaluated with
//! `push::eval`, from what the room's head already holds: members, power levels, and the
//! display names a rule asks for (cached in the head). The result goes into the event's
//! transaction (`push_events`).
//!
//! Runs before the head moves past the event, so an error here refuses the send and leaves
//! the head as it was.

use myelin_storage::NewPushAction;
use ruma::{events::TimelineEventType, OwnedUserId};
use serde_json::Value;

use super::{parse_row, Prepared, RoomHead};
use crate::{
    error::Error,
    push::eval::{self, Member, RoomContext},
    AppState,
};

/// The push actions of `prepared` (placed on `head`, not yet applied to it).
pub(super) async fn evaluate(
    state: &AppState,
    room_id: &ruma::RoomId,
    head: &mut RoomHead,
    prepared: &Prepared,
) -> Result<Vec<NewPushAction>, Error> {
    let server = state.server_name.as_str();
    let is_local = |user: &str| user.split_once(':').is_some_and(|(_, s)| s == server);
    let mut users: Vec<OwnedUserId> = head
        .members
        .iter()
        .filter(|(user, membership)| {
            membership.as_str() == "join" && **user != prepared.sender && is_local(user)
        })
        .filter_map(|(user, _)| OwnedUserId::try_from(user.as_str()).ok())
        .collect();
    let member_count = head
        .members
        .values()
        .filter(|m| m.as_str() == "join")
        .count() as u64;
    // An invite is for its target, who is not joined yet (`.m.rule.invite_for_me`).
    if let (Some(m), Some(target)) = (&prepared.membership, &prepared.state_key) {
        if m == "invite" && *target != prepared.sender && is_local(target) {
            if let Ok(target) = OwnedUserId::try_from(target.as_str()) {
                if !users.contains(&target) {
                    users.push(target);
                }
            }
        }
    }
    if users.is_empty() {
        return Ok(Vec::new());
    }

    let power_levels = power_levels(state, head).await?;
    let mut members = Vec::with_capacity(users.len());
    let mut wants_names = Vec::new();
    for user_id in &users {
        let (rules, server_default) = state.push_rules.get_for_evaluation(state, user_id).await?;
        if eval::uses_display_name(&rules) {
            wants_names.push(user_id.as_str().to_owned());
        }
        members.push(Member {
            user_id,
            rules,
            server_default,
            display_name: String::new(),
        });
    }
    if !wants_names.is_empty() {
        let names = display_names(state, head, &wants_names).await?;
        for member in &mut members {
            if let Some((_, name)) = names.iter().find(|(u, _)| u == member.user_id.as_str()) {
                member.display_name = name.clone();
            }
        }
    }
    eval::evaluate(
        &prepared.pdu_json,
        RoomContext {
            room_id,
            member_count,
            power_levels,
        },
        members,
    )
    .await
}

/// The room's power levels as push conditions read them, cached in the head until a power
/// levels or create event replaces them ([`forget`]).
async fn power_levels(
    state: &AppState,
    head: &mut RoomHead,
) -> Result<Option<ruma::push::PushConditionPowerLevelsCtx>, Error> {
    if let Some(ctx) = &head.push_power {
        return Ok(Some(ctx.clone()));
    }
    let key = |t: &str| head.current.get(&(t.to_owned(), String::new())).cloned();
    let (Some(pl_id), Some(create_id)) = (key("m.room.power_levels"), key("m.room.create")) else {
        return Ok(None);
    };
    let missing: Vec<String> = [&pl_id, &create_id]
        .into_iter()
        .filter(|id| !head.pdus.contains_key(id.as_str()))
        .cloned()
        .collect();
    let mut loaded = std::collections::HashMap::new();
    if !missing.is_empty() {
        for row in state.storage.get_events(&missing).await? {
            let pdu = parse_row(&row)?;
            loaded.insert(pdu.event_id.to_string(), pdu);
        }
    }
    let get = |id: &str| head.pdus.get(id).or_else(|| loaded.get(id));
    let (Some(pl), Some(create)) = (get(&pl_id), get(&create_id)) else {
        return Ok(None);
    };
    let content: Value = serde_json::from_str(pl.content.get()).unwrap_or(Value::Null);
    let create_content: Value = serde_json::from_str(create.content.get()).unwrap_or(Value::Null);
    let mut creators = vec![create.sender.clone()];
    if let Some(more) = create_content["additional_creators"].as_array() {
        creators.extend(
            more.iter()
                .filter_map(|u| u.as_str())
                .filter_map(|u| ruma::OwnedUserId::try_from(u).ok()),
        );
    }
    let ctx = eval::power_levels(&content, &head.rules.authorization, creators);
    head.push_power = Some(ctx.clone());
    Ok(Some(ctx))
}

/// Display names of `users` in the room (empty for none), from the head's cache or their
/// current member events.
async fn display_names(
    state: &AppState,
    head: &mut RoomHead,
    users: &[String],
) -> Result<Vec<(String, String)>, Error> {
    let missing: Vec<(String, String)> = users
        .iter()
        .filter(|u| !head.display_names.contains_key(*u))
        .filter_map(|u| {
            let id = head.current.get(&("m.room.member".to_owned(), u.clone()))?;
            Some((u.clone(), id.clone()))
        })
        .collect();
    if !missing.is_empty() {
        let ids: Vec<String> = missing.iter().map(|(_, id)| id.clone()).collect();
        for row in state.storage.get_events(&ids).await? {
            let pdu = parse_row(&row)?;
            if let Some(user) = &pdu.state_key {
                head.display_names
                    .insert(user.clone(), display_name_of(pdu.content.get()));
            }
        }
    }
    Ok(users
        .iter()
        .map(|u| {
            (
                u.clone(),
                head.display_names.get(u).cloned().unwrap_or_default(),
            )
        })
        .collect())
}

fn display_name_of(member_content: &str) -> String {
    serde_json::from_str::<Value>(member_content)
        .ok()
        .and_then(|c| c["displayname"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What a placed state event makes stale in the head's push caches.
pub(super) fn forget(head: &mut RoomHead, kind: &TimelineEventType, state_key: &str) {
    match kind {
        TimelineEventType::RoomPowerLevels | TimelineEventType::RoomCreate => {
            head.push_power = None;
        }
        TimelineEventType::RoomMember => {
            head.display_names.remove(state_key);
        }
        _ => {}
    }
}
