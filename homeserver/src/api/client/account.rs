//! The account itself: `whoami`, password change, deactivation.
//!
//! <https://spec.matrix.org/latest/client-server-api/#account-registration-and-management>

use axum::{extract::State, http::StatusCode};
use ruma::api::client::account::{
    change_password, deactivate, get_3pids, whoami, ThirdPartyIdRemovalStatus,
};

use crate::{
    api::ruma::Ruma,
    auth::hash_password,
    error::{Error, Result},
    uia, AppState,
};

/// GET /_matrix/client/v3/account/whoami
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3accountwhoami>
pub async fn whoami(
    _: State<AppState>,
    req: Ruma<whoami::v3::Request>,
) -> Result<whoami::v3::Response> {
    let sender = req.sender();
    let mut response = whoami::v3::Response::new(sender.user_id.clone(), false);
    response.device_id = Some(sender.device_id.clone());
    Ok(response)
}

/// POST /_matrix/client/v3/account/password
///
/// Requires UIA with the current password. Other devices are logged out unless the client
/// sends `logout_devices: false`.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3accountpassword>
pub async fn change_password(
    State(state): State<AppState>,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let sender = req.sender();
    uia::authorize(
        &state,
        req.body.auth.as_ref(),
        &[&[uia::PASSWORD]],
        Some(&sender.user_id),
    )
    .await?;
    if req.body.new_password.is_empty() {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_WEAK_PASSWORD",
            "Password must not be empty",
        ));
    }
    let hash = hash_password(req.body.new_password.clone()).await?;
    state
        .storage
        .set_password_hash(sender.user_id.as_str(), &hash)
        .await?;
    if req.body.logout_devices
        && state
            .storage
            .delete_other_devices(sender.user_id.as_str(), Some(sender.device_id.as_str()))
            .await?
    {
        crate::e2ee::announce_device_list_change(&state, sender.user_id.as_str(), None).await;
    }
    if req.body.logout_devices {
        state
            .sliding
            .forget_user(sender.user_id.as_str(), Some(sender.device_id.as_str()));
    }
    Ok(change_password::v3::Response::new())
}

/// POST /_matrix/client/v3/account/deactivate
///
/// Requires UIA with the password. The user leaves every room and rejects every pending
/// invite (as Synapse does); the account can never log in again and its user ID is never
/// given to anyone else.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3accountdeactivate>
pub async fn deactivate(
    State(state): State<AppState>,
    req: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response> {
    let sender = req.sender();
    uia::authorize(
        &state,
        req.body.auth.as_ref(),
        &[&[uia::PASSWORD]],
        Some(&sender.user_id),
    )
    .await?;
    // Leave every room (and reject every invite, withdraw every knock) first, while the
    // account still works: a crash in between leaves it usable, and deactivating again
    // finishes the job. A join that slips in meanwhile from another device is left by the
    // second pass, once no token is valid.
    super::membership::leave_all_rooms(&state, &sender.user_id).await?;
    state
        .storage
        .deactivate_user(sender.user_id.as_str())
        .await?;
    super::membership::leave_all_rooms(&state, &sender.user_id).await?;
    state.sliding.forget_user(sender.user_id.as_str(), None);
    crate::e2ee::announce_device_list_change(&state, sender.user_id.as_str(), None).await;
    tracing::info!(user_id = %sender.user_id, "deactivated account");
    Ok(deactivate::v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    ))
}

/// GET /_matrix/client/v3/account/3pid
///
/// Myelin binds no email addresses or phone numbers to accounts (there is no identity server
/// integration, and `/capabilities` says `m.3pid_changes` is off), so every account has none.
/// Element's settings page asks for the list and shows it empty. The list is written out
/// (ruma's type leaves an empty one out, and Synapse's clients read `threepids` as an array).
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3account3pid>
pub async fn get_3pids(
    State(_state): State<AppState>,
    _req: Ruma<get_3pids::v3::Request>,
) -> Result<axum::Json<serde_json::Value>> {
    Ok(axum::Json(serde_json::json!({ "threepids": [] })))
}
