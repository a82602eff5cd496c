//! Account registration.
//!
//! <https://spec.matrix.org/latest/client-server-api/#account-registration-and-management>

use axum::{extract::State, http::StatusCode};
use ruma::{
    api::client::account::{
        check_registration_token_validity, get_username_availability,
        register::{self, RegistrationKind},
    },
    OwnedUserId, UserId,
};

use crate::{
    api::ruma::Ruma,
    auth::{hash_password, new_device_id, now_ms},
    error::{Error, Result},
    uia, AppState,
};

/// Longest user ID the spec allows, in bytes.
const MAX_USER_ID_LEN: usize = 255;

/// Turns a requested username into a user ID on this server, applying the registration rules:
/// lower-cased, only `a-z 0-9 . _ = - / +`, not starting with `_` (reserved for bridges), and a
/// user ID of at most 255 bytes.
pub fn user_id_for_new_username(state: &AppState, username: &str) -> Result<OwnedUserId> {
    let localpart = username.to_lowercase();
    if localpart.is_empty() {
        return Err(Error::invalid_username("Username cannot be empty"));
    }
    if !localpart
        .chars()
        .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
    {
        return Err(Error::invalid_username(
            "Username can only contain the characters a-z, 0-9, or '=_-./+'",
        ));
    }
    if localpart.starts_with('_') {
        return Err(Error::invalid_username("Username may not begin with '_'"));
    }
    let full = format!("@{localpart}:{}", state.server_name);
    if full.len() > MAX_USER_ID_LEN {
        return Err(Error::invalid_username("Username is too long"));
    }
    UserId::parse(&full).map_err(|e| Error::invalid_username(format!("Invalid username: {e}")))
}

/// A free numeric user ID, for registrations that give no username.
async fn generate_user_id(state: &AppState) -> Result<OwnedUserId> {
    use rand::Rng;
    for _ in 0..20 {
        let n: u64 = rand::thread_rng().gen_range(100_000..1_000_000_000);
        let user_id = user_id_for_new_username(state, &n.to_string())?;
        if state.storage.get_user(user_id.as_str()).await?.is_none() {
            return Ok(user_id);
        }
    }
    Err(Error::internal("could not find a free user ID"))
}

/// The UIA flows registration offers, or why it is closed.
fn registration_flows(state: &AppState) -> Result<&'static [&'static [&'static str]]> {
    if state.config.registration_token_required {
        Ok(&[&[uia::REGISTRATION_TOKEN]])
    } else if state.config.registration_open {
        Ok(&[&[uia::DUMMY]])
    } else {
        Err(Error::forbidden("Registration has been disabled"))
    }
}

/// POST /_matrix/client/v3/register, answered by [`register`]. With `inhibit_login` the
/// spec says no `device_id` is returned, but ruma's response type serialises it as `null`;
/// that one case is written out here.
pub async fn register_http(
    state: State<AppState>,
    req: Ruma<register::v3::Request>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let response = register(state, req).await?;
    if response.access_token.is_none() && response.device_id.is_none() {
        return Ok(axum::Json(serde_json::json!({ "user_id": response.user_id })).into_response());
    }
    Ok(crate::api::ruma::RumaResponse(response).into_response())
}

/// POST /_matrix/client/v3/register
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3register>
pub async fn register(
    State(state): State<AppState>,
    req: Ruma<register::v3::Request>,
) -> Result<register::v3::Response> {
    state.limits.check_registration_ip(req.client_ip)?;
    let body = &req.body;
    if body.kind == RegistrationKind::Guest {
        return Err(Error::new(
            StatusCode::FORBIDDEN,
            "M_GUEST_ACCESS_FORBIDDEN",
            "Guest access is disabled",
        ));
    }
    if body.login_type.is_some() {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Application services are not supported",
        ));
    }
    // Check the username before authentication, so that clients learn of a taken or invalid
    // name before they walk the user through the auth stages.
    let requested = match &body.username {
        Some(username) => {
            let user_id = user_id_for_new_username(&state, username)?;
            if state.storage.get_user(user_id.as_str()).await?.is_some() {
                return Err(Error::user_in_use());
            }
            Some(user_id)
        }
        None => None,
    };
    let flows = registration_flows(&state)?;
    let completed = uia::authorize(&state, body.auth.as_ref(), flows, None).await?;
    if let Some(token) = &completed.registration_token {
        if !state
            .storage
            .consume_registration_token(token, now_ms())
            .await?
        {
            return Err(Error::new(
                StatusCode::UNAUTHORIZED,
                "M_UNAUTHORIZED",
                "Registration token is no longer valid",
            ));
        }
    }

    let user_id = match requested {
        Some(user_id) => user_id,
        None => generate_user_id(&state).await?,
    };
    let password_hash = match &body.password {
        Some(password) => Some(hash_password(password.clone()).await?),
        None => None,
    };
    let now = now_ms();
    match state
        .storage
        .create_user(
            user_id.as_str(),
            password_hash.as_deref(),
            false,
            user_id.localpart(),
            now,
        )
        .await
    {
        Err(myelin_storage::Error::UniqueViolation) => return Err(Error::user_in_use()),
        other => other?,
    }
    tracing::info!(%user_id, "registered user");

    let mut response = register::v3::Response::new(user_id.clone());
    if body.inhibit_login {
        return Ok(response);
    }
    let device_id = body.device_id.clone().unwrap_or_else(new_device_id);
    let session = super::session::start_session(
        &state,
        user_id.as_str(),
        device_id.as_str(),
        body.initial_device_display_name.as_deref(),
        &req.client_ip.to_string(),
        body.refresh_token,
    )
    .await?;
    response.access_token = Some(session.access_token);
    response.refresh_token = session.refresh_token;
    response.expires_in = session.expires_in;
    response.device_id = Some(device_id);
    Ok(response)
}

/// GET /_matrix/client/v3/register/available
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3registeravailable>
pub async fn get_username_availability(
    State(state): State<AppState>,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    state.limits.check_registration_ip(req.client_ip)?;
    let user_id = user_id_for_new_username(&state, &req.body.username)?;
    if state.storage.get_user(user_id.as_str()).await?.is_some() {
        return Err(Error::user_in_use());
    }
    Ok(get_username_availability::v3::Response::new(true))
}

/// GET /_matrix/client/v1/register/m.login.registration_token/validity
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1registermloginregistration_tokenvalidity>
pub async fn check_registration_token_validity(
    State(state): State<AppState>,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    state.limits.check_registration_ip(req.client_ip)?;
    if !state.config.registration_token_required {
        return Err(Error::forbidden(
            "Registration tokens are not in use on this server",
        ));
    }
    let now = now_ms();
    let valid = state
        .storage
        .get_registration_token(&req.body.token)
        .await?
        .is_some_and(|t| t.is_usable(now));
    Ok(check_registration_token_validity::v1::Response::new(valid))
}
