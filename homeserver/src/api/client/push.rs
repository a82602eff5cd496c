//! Push rules and notifications (pushers come later).
//!
//! <https://spec.matrix.org/latest/client-server-api/#push-rules-api>
//!
//! Every change goes through [`crate::push::rules::PushRules::update`], which stores the
//! whole ruleset as the user's `m.push_rules` account data, so `/sync` reports it.

use std::collections::HashMap;

use axum::extract::State;
use myelin_storage::EventRow;
use ruma::{
    api::client::push::{
        delete_pushrule, get_notifications, get_pushrule, get_pushrule_actions,
        get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pushrule,
        set_pushrule_actions, set_pushrule_enabled,
    },
    push::Action,
    serde::Raw,
    MilliSecondsSinceUnixEpoch, OwnedRoomId, UInt,
};
use serde_json::{value::to_raw_value, Value};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    push::rules,
    rooms::format::client_events_aligned,
    AppState,
};

/// GET /_matrix/client/v3/pushrules/
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3pushrules>
pub async fn get_pushrules_all(
    State(state): State<AppState>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response> {
    let ruleset = state.push_rules.get(&state, &req.sender().user_id).await?;
    Ok(get_pushrules_all::v3::Response::new((*ruleset).clone()))
}

/// GET /_matrix/client/v3/pushrules/global/
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3pushrulesglobal>
pub async fn get_pushrules_global_scope(
    State(state): State<AppState>,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response> {
    let ruleset = state.push_rules.get(&state, &req.sender().user_id).await?;
    Ok(get_pushrules_global_scope::v3::Response::new(
        (*ruleset).clone(),
    ))
}

/// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3pushrulesglobalkindruleid>
pub async fn get_pushrule(
    State(state): State<AppState>,
    req: Ruma<get_pushrule::v3::Request>,
) -> Result<get_pushrule::v3::Response> {
    let ruleset = state.push_rules.get(&state, &req.sender().user_id).await?;
    let rule = rules::find(&ruleset, &req.body.kind, &req.body.rule_id)?;
    Ok(get_pushrule::v3::Response::new(rule))
}

/// PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3pushrulesglobalkindruleid>
pub async fn set_pushrule(
    State(state): State<AppState>,
    req: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response> {
    let user_id = req.sender().user_id.clone();
    let body = req.body;
    state
        .push_rules
        .update(&state, &user_id, |ruleset| {
            rules::insert(
                ruleset,
                body.rule,
                body.before.as_deref(),
                body.after.as_deref(),
            )
        })
        .await?;
    Ok(set_pushrule::v3::Response::new())
}

/// DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
///
/// <https://spec.matrix.org/latest/client-server-api/#delete_matrixclientv3pushrulesglobalkindruleid>
pub async fn delete_pushrule(
    State(state): State<AppState>,
    req: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    let user_id = req.sender().user_id.clone();
    let body = req.body;
    state
        .push_rules
        .update(&state, &user_id, |ruleset| {
            rules::remove(ruleset, &body.kind, &body.rule_id)
        })
        .await?;
    Ok(delete_pushrule::v3::Response::new())
}

/// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3pushrulesglobalkindruleidenabled>
pub async fn get_pushrule_enabled(
    State(state): State<AppState>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let ruleset = state.push_rules.get(&state, &req.sender().user_id).await?;
    let rule = rules::find(&ruleset, &req.body.kind, &req.body.rule_id)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled))
}

/// PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3pushrulesglobalkindruleidenabled>
pub async fn set_pushrule_enabled(
    State(state): State<AppState>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    let user_id = req.sender().user_id.clone();
    let body = req.body;
    state
        .push_rules
        .update(&state, &user_id, |ruleset| {
            rules::set_enabled(ruleset, &body.kind, &body.rule_id, body.enabled)
        })
        .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

/// GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3pushrulesglobalkindruleidactions>
pub async fn get_pushrule_actions(
    State(state): State<AppState>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    let ruleset = state.push_rules.get(&state, &req.sender().user_id).await?;
    let rule = rules::find(&ruleset, &req.body.kind, &req.body.rule_id)?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions))
}

/// PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3pushrulesglobalkindruleidactions>
pub async fn set_pushrule_actions(
    State(state): State<AppState>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    let user_id = req.sender().user_id.clone();
    let body = req.body;
    state
        .push_rules
        .update(&state, &user_id, |ruleset| {
            rules::set_actions(ruleset, &body.kind, &body.rule_id, body.actions)
        })
        .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

/// Most notifications one `/notifications` page holds.
const MAX_NOTIFICATIONS: u64 = 100;

/// GET /_matrix/client/v3/notifications
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3notifications>
///
/// Newest first; `from` is the `next_token` of the page before (a stream position).
pub async fn get_notifications(
    State(state): State<AppState>,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<get_notifications::v3::Response> {
    let sender = req.sender();
    let before = match req.body.from.as_deref() {
        None | Some("") => None,
        Some(from) => Some(
            from.parse::<i64>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| Error::invalid_param("Invalid from token"))?,
        ),
    };
    let limit = req
        .body
        .limit
        .map(u64::from)
        .unwrap_or(20)
        .clamp(1, MAX_NOTIFICATIONS);
    let only_highlight = req.body.only.as_deref() == Some("highlight");
    let rows = state
        .storage
        .notifications(
            sender.user_id.as_str(),
            before,
            limit as i64,
            only_highlight,
        )
        .await?;
    let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
    let mut events: HashMap<String, EventRow> = state
        .storage
        .get_events(&ids)
        .await?
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect();
    let ordered: Vec<EventRow> = rows
        .iter()
        .filter_map(|r| events.remove(&r.event_id))
        .collect();
    let formatted =
        client_events_aligned(&state, &ordered, Some((&sender.user_id, &sender.device_id))).await?;
    let mut formatted: HashMap<&str, Value> = ordered
        .iter()
        .zip(formatted)
        .filter_map(|(row, event)| Some((row.event_id.as_str(), event?)))
        .collect();
    let mut notifications = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(event) = formatted.remove(row.event_id.as_str()) else {
            continue;
        };
        let Ok(room_id) = OwnedRoomId::try_from(row.room_id.as_str()) else {
            continue;
        };
        let actions: Vec<Action> = serde_json::from_str(&row.actions).unwrap_or_default();
        let event = Raw::from_json(to_raw_value(&event).map_err(Error::internal)?);
        notifications.push(get_notifications::v3::Notification::new(
            actions,
            event,
            row.read,
            room_id,
            MilliSecondsSinceUnixEpoch(UInt::new(row.ts.max(0) as u64).unwrap_or_default()),
        ));
    }
    let mut response = get_notifications::v3::Response::new(notifications);
    if rows.len() as u64 == limit {
        response.next_token = rows.last().map(|r| r.stream_ordering.to_string());
    }
    Ok(response)
}
