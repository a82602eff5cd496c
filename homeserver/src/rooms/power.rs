//! Reading power levels from a room's current state, for the checks the authorization rules
//! leave to the server (who may redact someone else's event).
//!
//! <https://spec.matrix.org/latest/client-server-api/#mroompower_levels>

use ruma::{room_version_rules::RoomVersionRules, RoomId, UserId};
use serde_json::Value;

use crate::{error::Error, AppState};

/// An action gated by a power level.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    Redact,
    Invite,
    /// Sending a state event of this type.
    State(&'a str),
}

/// Whether `user` may perform `action` in the room now.
pub async fn has_level(
    state: &AppState,
    room_id: &RoomId,
    user: &UserId,
    action: Action<'_>,
) -> Result<bool, Error> {
    let (_, rules) = super::room_rules(state, room_id).await?;
    let create = if rules.authorization.explicitly_privilege_room_creators {
        super::current_state_pdu(state, room_id.as_str(), "m.room.create", "").await?
    } else {
        None
    };
    let levels =
        super::current_state_pdu(state, room_id.as_str(), "m.room.power_levels", "").await?;
    Ok(allows(
        &rules,
        create.as_ref(),
        levels.as_ref().map(|l| &l["content"]),
        user.as_str(),
        action,
    ))
}

/// Whether `user` may perform `action`, given the room's create event and the content of its
/// power levels (both as JSON; `None` when the room has none). Pure: the write pipeline asks
/// it with the state it holds, [`has_level`] with the state it reads.
pub fn allows(
    rules: &RoomVersionRules,
    create: Option<&Value>,
    levels: Option<&Value>,
    user: &str,
    action: Action<'_>,
) -> bool {
    if rules.authorization.explicitly_privilege_room_creators {
        if let Some(create) = create {
            let is_creator = create["sender"].as_str() == Some(user)
                || create["content"]["additional_creators"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(user)));
            if is_creator {
                return true;
            }
        }
    }
    let Some(content) = levels else {
        // Without power levels only the creator may act (handled above for v12; the rules
        // give the creator 100 in older versions).
        return false;
    };
    let int = |v: &Value, default: i64| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(default)
    };
    let user_level = int(&content["users"][user], int(&content["users_default"], 0));
    let needed = match action {
        Action::Redact => int(&content["redact"], 50),
        Action::Invite => int(&content["invite"], 0),
        Action::State(event_type) => int(
            &content["events"][event_type],
            int(&content["state_default"], 50),
        ),
    };
    user_level >= needed
}
