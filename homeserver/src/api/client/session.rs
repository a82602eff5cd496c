//! Login and logout.
//!
//! <https://spec.matrix.org/latest/client-server-api/#login>

use axum::{extract::State, http::StatusCode};
use ruma::api::client::{
    session::{
        get_login_types::{
            self,
            v3::{LoginType, PasswordLoginType},
        },
        login::{self, v3::LoginInfo},
        logout, logout_all,
    },
    uiaa::UserIdentifier,
};

use crate::{
    api::ruma::Ruma,
    auth::{hash_token, new_access_token, new_device_id, now_ms, verify_password},
    e2ee::announce_device_list_change,
    error::{Error, Result},
    uia::resolve_user,
    AppState,
};

/// GET /_matrix/client/v3/login
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3login>
pub async fn get_login_types(
    _: State<AppState>,
    _: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response> {
    Ok(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
    ]))
}

/// POST /_matrix/client/v3/login
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3login>
pub async fn login(
    State(state): State<AppState>,
    req: Ruma<login::v3::Request>,
) -> Result<login::v3::Response> {
    state.limits.check_login_ip(req.client_ip)?;
    let body = &req.body;
    let LoginInfo::Password(password) = &body.login_info else {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Unknown login type",
        ));
    };
    #[allow(deprecated)]
    // `user` is the pre-r0.4 way of naming the user; some clients still send it.
    let user = match (&password.identifier, &password.user) {
        (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
        (Some(_), _) => return Err(Error::forbidden("Only m.id.user identifiers are supported")),
        (None, Some(user)) => user.clone(),
        (None, None) => return Err(Error::missing_param("Missing identifier")),
    };
    let user_id = resolve_user(&state, &user)?;
    state.limits.check_login_account(user_id.as_str())?;

    let stored = state.storage.get_user(user_id.as_str()).await?;
    let hash = stored
        .filter(|u| !u.deactivated)
        .and_then(|u| u.password_hash);
    let ok = match hash {
        Some(hash) => verify_password(password.password.clone(), hash).await?,
        None => false,
    };
    if !ok {
        state.limits.check_failed_login(user_id.as_str())?;
        return Err(Error::forbidden("Invalid username or password"));
    }

    let device_id = body.device_id.clone().unwrap_or_else(new_device_id);
    let token = new_access_token();
    let new_device = state
        .storage
        .create_device_with_token(
            user_id.as_str(),
            device_id.as_str(),
            body.initial_device_display_name.as_deref(),
            Some(&req.client_ip.to_string()),
            Some(&hash_token(&token)),
            now_ms(),
        )
        .await?;
    if new_device {
        announce_device_list_change(&state, user_id.as_str()).await;
    }
    tracing::info!(%user_id, %device_id, "logged in");
    Ok(login::v3::Response::new(user_id, token, device_id))
}

/// POST /_matrix/client/v3/logout
///
/// Invalidates the access token and deletes its device.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3logout>
pub async fn logout(
    State(state): State<AppState>,
    req: Ruma<logout::v3::Request>,
) -> Result<logout::v3::Response> {
    let sender = req.sender();
    if state
        .storage
        .delete_devices(sender.user_id.as_str(), &[sender.device_id.to_string()])
        .await?
    {
        announce_device_list_change(&state, sender.user_id.as_str()).await;
    }
    state
        .sliding
        .forget_device(sender.user_id.as_str(), sender.device_id.as_str());
    Ok(logout::v3::Response::new())
}

/// POST /_matrix/client/v3/logout/all
///
/// Invalidates every access token of the user and deletes all their devices.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3logoutall>
pub async fn logout_all(
    State(state): State<AppState>,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    let user = req.sender().user_id.as_str();
    if state.storage.delete_other_devices(user, None).await? {
        announce_device_list_change(&state, user).await;
    }
    state.sliding.forget_user(user, None);
    Ok(logout_all::v3::Response::new())
}
