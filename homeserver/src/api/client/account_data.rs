//! Global account data.
//!
//! <https://spec.matrix.org/latest/client-server-api/#client-config>

use axum::{extract::State, http::StatusCode};
use ruma::{
    api::client::config::{get_global_account_data, set_global_account_data},
    serde::Raw,
    UserId,
};

use crate::{
    api::ruma::Ruma,
    auth::now_ms,
    error::{Error, Result},
    AppState,
};

/// Account data types the server manages itself; clients may not write them directly.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

fn check_own(sender: &UserId, target: &UserId) -> Result<()> {
    if sender != target {
        return Err(Error::forbidden(
            "You cannot access another user's account data",
        ));
    }
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
    let content = state
        .storage
        .get_account_data(user_id.as_str(), None, &req.body.event_type.to_string())
        .await?
        .ok_or_else(|| Error::not_found("Account data not found"))?;
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
    if SERVER_MANAGED.contains(&data_type.as_str()) {
        return Err(Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("{data_type} is managed by the server and cannot be set through this API"),
        ));
    }
    let content = req.body.data.json().get();
    if !content.trim_start().starts_with('{') {
        return Err(Error::bad_json(
            "Account data content must be a JSON object",
        ));
    }
    state
        .storage
        .set_account_data(user_id.as_str(), None, &data_type, content, now_ms())
        .await?;
    Ok(set_global_account_data::v3::Response::new())
}
