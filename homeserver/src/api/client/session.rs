//! Login and logout.
//!
//! <https://spec.matrix.org/latest/client-server-api/#login>

use axum::{extract::State, http::StatusCode};
use ruma::api::client::{
    session::{
        get_login_token,
        get_login_types::{
            self,
            v3::{LoginType, PasswordLoginType, TokenLoginType},
        },
        login::{self, v3::LoginInfo},
        logout, logout_all, refresh_token,
    },
    uiaa::UserIdentifier,
};

use crate::{
    api::ruma::Ruma,
    auth::{hash_token, new_access_token, new_device_id, now_ms, verify_password},
    e2ee::announce_device_list_change,
    error::{Error, Result},
    uia::{self, resolve_user},
    AppState,
};

/// GET /_matrix/client/v3/login
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3login>
pub async fn get_login_types(
    State(state): State<AppState>,
    _: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response> {
    let mut types = vec![LoginType::Password(PasswordLoginType::new())];
    if state.config.login_get_token_enabled {
        let mut token = TokenLoginType::new();
        token.get_login_token = true;
        types.push(LoginType::Token(token));
    }
    Ok(get_login_types::v3::Response::new(types))
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
    let password = match &body.login_info {
        LoginInfo::Password(password) => password,
        LoginInfo::Token(token) if state.config.login_get_token_enabled => {
            let user = state
                .storage
                .take_login_token(&hash_token(&token.token), now_ms())
                .await?
                .ok_or_else(|| Error::forbidden("Invalid or expired login token"))?;
            let user_id = ruma::OwnedUserId::try_from(user).map_err(Error::internal)?;
            let active = state
                .storage
                .get_user(user_id.as_str())
                .await?
                .is_some_and(|u| !u.deactivated);
            if !active {
                return Err(Error::forbidden("Invalid or expired login token"));
            }
            return finish_login(&state, &req, user_id).await;
        }
        _ => {
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Unknown login type",
            ))
        }
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

    finish_login(&state, &req, user_id).await
}

/// Logs the checked user in: the device, its access token and (when asked) a refresh token.
async fn finish_login(
    state: &AppState,
    req: &Ruma<login::v3::Request>,
    user_id: ruma::OwnedUserId,
) -> Result<login::v3::Response> {
    let body = &req.body;
    let device_id = body.device_id.clone().unwrap_or_else(new_device_id);
    let session = start_session(
        state,
        user_id.as_str(),
        device_id.as_str(),
        body.initial_device_display_name.as_deref(),
        &req.client_ip.to_string(),
        body.refresh_token,
    )
    .await?;
    if session.new_device {
        announce_device_list_change(state, user_id.as_str(), Some(device_id.as_str())).await;
    }
    tracing::info!(%user_id, %device_id, "logged in");
    let mut response = login::v3::Response::new(user_id, session.access_token, device_id);
    response.refresh_token = session.refresh_token;
    response.expires_in = session.expires_in;
    Ok(response)
}

/// A new session of a device, as login and registration hand it out.
pub(crate) struct Session {
    pub access_token: String,
    /// Only when the client asked for one (then the access token expires).
    pub refresh_token: Option<String>,
    pub expires_in: Option<std::time::Duration>,
    pub new_device: bool,
}

/// Creates (or takes over) a device with a new access token and, if `refreshable`, a refresh
/// token, the access token then living `refreshable_access_token_lifetime_seconds`.
pub(crate) async fn start_session(
    state: &AppState,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
    ip: &str,
    refreshable: bool,
) -> Result<Session> {
    let now = now_ms();
    let access_token = new_access_token();
    let lifetime =
        std::time::Duration::from_secs(state.config.refreshable_access_token_lifetime_seconds);
    let refresh_token = refreshable.then(new_access_token);
    let refresh_hash = refresh_token.as_deref().map(hash_token);
    let expires_ts = now.saturating_add(lifetime.as_millis() as i64);
    let new_device = state
        .storage
        .create_device_with_tokens(
            user_id,
            device_id,
            display_name,
            Some(ip),
            Some(&hash_token(&access_token)),
            refresh_hash.as_deref().map(|hash| (hash, expires_ts)),
            now,
        )
        .await?;
    Ok(Session {
        access_token,
        expires_in: refresh_token.as_ref().map(|_| lifetime),
        refresh_token,
        new_device,
    })
}

/// POST /_matrix/client/v3/refresh
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3refresh>
///
/// A new access token and refresh token for a refresh token. The old refresh token works
/// until the new refresh token or access token is used (so a lost response can be retried),
/// then never again: 401 `M_UNKNOWN_TOKEN`.
pub async fn refresh(
    State(state): State<AppState>,
    req: Ruma<refresh_token::v3::Request>,
) -> Result<refresh_token::v3::Response> {
    let now = now_ms();
    let lifetime =
        std::time::Duration::from_secs(state.config.refreshable_access_token_lifetime_seconds);
    let (access, refresh) = (new_access_token(), new_access_token());
    state
        .storage
        .refresh(
            &hash_token(&req.body.refresh_token),
            &hash_token(&access),
            &hash_token(&refresh),
            now.saturating_add(lifetime.as_millis() as i64),
            now,
        )
        .await?
        .ok_or_else(Error::unknown_token)?;
    let mut response = refresh_token::v3::Response::new(access);
    response.refresh_token = Some(refresh);
    response.expires_in_ms = Some(lifetime);
    Ok(response)
}

/// How long a login token from `/login/get_token` lives.
const LOGIN_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

/// POST /_matrix/client/v1/login/get_token
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv1loginget_token>
///
/// A single-use token, valid two minutes, to log in another device with `m.login.token`,
/// after the user re-enters their password. Off unless `login_get_token_enabled` (as in
/// Synapse): 404 `M_UNRECOGNIZED` then.
pub async fn get_login_token(
    State(state): State<AppState>,
    req: Ruma<get_login_token::v1::Request>,
) -> Result<get_login_token::v1::Response> {
    if !state.config.login_get_token_enabled {
        return Err(Error::new(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "Login tokens are not enabled on this server",
        ));
    }
    let sender = req.sender();
    uia::authorize(
        &state,
        req.body.auth.as_ref(),
        &[&[uia::PASSWORD]],
        Some(&sender.user_id),
    )
    .await?;
    let token = new_access_token();
    let now = now_ms();
    state
        .storage
        .add_login_token(
            &hash_token(&token),
            sender.user_id.as_str(),
            now + LOGIN_TOKEN_LIFETIME.as_millis() as i64,
            now,
        )
        .await?;
    Ok(get_login_token::v1::Response::new(
        LOGIN_TOKEN_LIFETIME,
        token,
    ))
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
        announce_device_list_change(
            &state,
            sender.user_id.as_str(),
            Some(sender.device_id.as_str()),
        )
        .await;
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
        announce_device_list_change(&state, user, None).await;
    }
    state.sliding.forget_user(user, None);
    Ok(logout_all::v3::Response::new())
}
