//! Account data, global and per room, and room tags (per-room `m.tag` account data).
//!
//! <https://spec.matrix.org/latest/client-server-api/#client-config>

use axum::{extract::State, http::StatusCode};
use ruma::{
    api::client::{
        config::{
            get_global_account_data, get_room_account_data, set_global_account_data,
            set_room_account_data,
        },
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
    UserId,
};

use serde_json::Value;

use crate::{
    api::ruma::Ruma,
    auth::now_ms,
    error::{Error, Result},
    push::rules::PUSH_RULES,
    AppState,
};

/// Account data types the server manages itself; clients may not write them directly.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

/// Clients may write any account data type but the server-managed ones, and only objects.
fn check_writable(data_type: &str, content: &str) -> Result<()> {
    if SERVER_MANAGED.contains(&data_type) {
        return Err(Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("{data_type} is managed by the server and cannot be set through this API"),
        ));
    }
    if !content.trim_start().starts_with('{') {
        return Err(Error::bad_json(
            "Account data content must be a JSON object",
        ));
    }
    Ok(())
}

fn check_own(sender: &UserId, target: &UserId) -> Result<()> {
    if sender != target {
        return Err(Error::forbidden(
            "You cannot access another user's account data",
        ));
    }
    Ok(())
}

/// Writes account data and wakes the user's waiting syncs, which report it. (Every write
/// request runs to its end even if the client hangs up, `api::run_to_completion`, so the
/// wake-up after the commit is never skipped.)
pub(crate) async fn write_account_data(
    state: &AppState,
    user_id: &UserId,
    room_id: Option<&ruma::RoomId>,
    data_type: &str,
    content: &str,
) -> Result<()> {
    state
        .storage
        .set_account_data(
            user_id.as_str(),
            room_id.map(|r| r.as_str()),
            data_type,
            content,
            now_ms(),
        )
        .await?;
    state.notifier.notify([user_id.as_str()]);
    Ok(())
}

/// GET /_matrix/client/v3/user/{userId}/account_data/{type}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3useruseridaccount_datatype>
pub async fn get_global_account_data(
    State(state): State<AppState>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response> {
    let user_id = &req.sender().user_id;
    check_own(user_id, &req.body.user_id)?;
    let data_type = req.body.event_type.to_string();
    let content = if data_type == PUSH_RULES {
        // The rules exist for every user, stored or not (as in Synapse).
        let rules = state.push_rules.get(&state, user_id).await?;
        crate::push::rules::account_data_content(&rules)?
    } else {
        state
            .storage
            .get_account_data(user_id.as_str(), None, &data_type)
            .await?
            .ok_or_else(|| Error::not_found("Account data not found"))?
    };
    let raw = serde_json::value::RawValue::from_string(content).map_err(Error::internal)?;
    Ok(get_global_account_data::v3::Response::new(Raw::from_json(
        raw,
    )))
}

/// PUT /_matrix/client/v3/user/{userId}/account_data/{type}
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3useruseridaccount_datatype>
pub async fn set_global_account_data(
    State(state): State<AppState>,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    let user_id = &req.sender().user_id;
    check_own(user_id, &req.body.user_id)?;
    let data_type = req.body.event_type.to_string();
    let content = req.body.data.json().get();
    check_writable(&data_type, content)?;
    write_account_data(&state, user_id, None, &data_type, content).await?;
    Ok(set_global_account_data::v3::Response::new())
}

/// Per-room account data needs a room the user is or was in.
async fn check_room(state: &AppState, user_id: &UserId, room_id: &ruma::RoomId) -> Result<()> {
    if state
        .storage
        .membership(room_id.as_str(), user_id.as_str())
        .await?
        .is_none()
    {
        return Err(Error::forbidden("You are not a member of this room"));
    }
    Ok(())
}

/// GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3useruseridroomsroomidaccount_datatype>
pub async fn get_room_account_data(
    State(state): State<AppState>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response> {
    let user_id = &req.sender().user_id;
    check_own(user_id, &req.body.user_id)?;
    let content = state
        .storage
        .get_account_data(
            user_id.as_str(),
            Some(req.body.room_id.as_str()),
            &req.body.event_type.to_string(),
        )
        .await?
        .ok_or_else(|| Error::not_found("Account data not found"))?;
    let raw = serde_json::value::RawValue::from_string(content).map_err(Error::internal)?;
    Ok(get_room_account_data::v3::Response::new(Raw::from_json(
        raw,
    )))
}

/// PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3useruseridroomsroomidaccount_datatype>
pub async fn set_room_account_data(
    State(state): State<AppState>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    let user_id = &req.sender().user_id;
    check_own(user_id, &req.body.user_id)?;
    check_room(&state, user_id, &req.body.room_id).await?;
    let data_type = req.body.event_type.to_string();
    let content = req.body.data.json().get();
    check_writable(&data_type, content)?;
    write_account_data(
        &state,
        user_id,
        Some(&req.body.room_id),
        &data_type,
        content,
    )
    .await?;
    Ok(set_room_account_data::v3::Response::new())
}

/// The room's `m.tag` account data as a JSON object of tags.
async fn load_tags(
    state: &AppState,
    user_id: &UserId,
    room_id: &ruma::RoomId,
) -> Result<serde_json::Map<String, Value>> {
    let stored = state
        .storage
        .get_account_data(user_id.as_str(), Some(room_id.as_str()), "m.tag")
        .await?;
    let value: Value = match stored {
        Some(text) => serde_json::from_str(&text).map_err(Error::internal)?,
        None => Value::Null,
    };
    Ok(value["tags"].as_object().cloned().unwrap_or_default())
}

async fn store_tags(
    state: &AppState,
    user_id: &UserId,
    room_id: &ruma::RoomId,
    tags: serde_json::Map<String, Value>,
) -> Result<()> {
    let content = serde_json::json!({ "tags": tags }).to_string();
    write_account_data(state, user_id, Some(room_id), "m.tag", &content).await
}

/// GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3useruseridroomsroomidtags>
pub async fn get_tags(
    State(state): State<AppState>,
    req: Ruma<get_tags::v3::Request>,
) -> Result<get_tags::v3::Response> {
    let user_id = &req.sender().user_id;
    check_own(user_id, &req.body.user_id)?;
    let tags = load_tags(&state, user_id, &req.body.room_id).await?;
    let tags = serde_json::from_value(Value::Object(tags)).map_err(Error::internal)?;
    Ok(get_tags::v3::Response::new(tags))
}

/// PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3useruseridroomsroomidtagstag>
pub async fn create_tag(
    State(state): State<AppState>,
    req: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response> {
    let user_id = &req.sender().user_id;
    check_own(user_id, &req.body.user_id)?;
    check_room(&state, user_id, &req.body.room_id).await?;
    let mut tags = load_tags(&state, user_id, &req.body.room_id).await?;
    let info = serde_json::to_value(&req.body.tag_info).map_err(Error::internal)?;
    tags.insert(req.body.tag.clone(), info);
    store_tags(&state, user_id, &req.body.room_id, tags).await?;
    Ok(create_tag::v3::Response::new())
}

/// DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}
///
/// <https://spec.matrix.org/latest/client-server-api/#delete_matrixclientv3useruseridroomsroomidtagstag>
pub async fn delete_tag(
    State(state): State<AppState>,
    req: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response> {
    let user_id = &req.sender().user_id;
    check_own(user_id, &req.body.user_id)?;
    let mut tags = load_tags(&state, user_id, &req.body.room_id).await?;
    tags.remove(&req.body.tag);
    store_tags(&state, user_id, &req.body.room_id, tags).await?;
    Ok(delete_tag::v3::Response::new())
}
