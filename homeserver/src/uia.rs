//! User-interactive authentication (UIA), as registration, password change, deactivation and
//! device deletion use it.
//!
//! <https://spec.matrix.org/latest/client-server-api/#user-interactive-authentication-api>
//!
//! 1. A request without `auth` starts a session: 401 with the flows and a session ID.
//! 2. Each request with `auth` completes one stage of that session (or fails it: 401 again,
//!    with an errcode).
//! 3. When the completed stages cover a whole flow, the request goes through.
//!
//! Sessions live in storage, bound to the user they were started for, so one user's session
//! can never authorise another user's request.

use axum::http::StatusCode;
use ruma::{
    api::client::uiaa::{AuthData, UserIdentifier},
    OwnedUserId, UserId,
};
use serde_json::{json, Map, Value};

use crate::{
    auth::{new_opaque_id, now_ms, verify_password},
    error::Error,
    AppState,
};

pub const DUMMY: &str = "m.login.dummy";
pub const PASSWORD: &str = "m.login.password";
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";

/// Sessions older than this are forgotten.
pub const SESSION_LIFETIME_MS: i64 = 30 * 60 * 1000;

/// What a completed UIA yields.
#[derive(Debug, Default)]
pub struct Completed {
    /// The registration token presented, when that stage was completed in this request; the
    /// caller consumes it when the registration actually happens.
    pub registration_token: Option<String>,
}

fn uia_body(
    flows: &[&[&str]],
    completed: &[String],
    session: &str,
    error: Option<(&str, &str)>,
) -> Error {
    let mut body = Map::new();
    let flows: Vec<Value> = flows
        .iter()
        .map(|stages| json!({ "stages": stages }))
        .collect();
    body.insert("flows".into(), Value::Array(flows));
    body.insert("params".into(), json!({}));
    body.insert("session".into(), Value::String(session.to_owned()));
    body.insert("completed".into(), json!(completed));
    if let Some((errcode, message)) = error {
        body.insert("errcode".into(), Value::String(errcode.to_owned()));
        body.insert("error".into(), Value::String(message.to_owned()));
    }
    Error::with_body(StatusCode::UNAUTHORIZED, body)
}

/// Turns a `m.id.user` identifier (a full user ID or a localpart) into a local user ID.
pub fn resolve_user(state: &AppState, user: &str) -> Result<OwnedUserId, Error> {
    let full = if user.starts_with('@') {
        user.to_owned()
    } else {
        format!("@{}:{}", user.to_lowercase(), state.server_name)
    };
    let user_id =
        UserId::parse(&full).map_err(|_| Error::forbidden("Invalid username or password"))?;
    if user_id.server_name() != state.server_name {
        return Err(Error::forbidden("Invalid username or password"));
    }
    Ok(user_id)
}

/// Runs one step of UIA for a request. `user` is the authenticated user for account endpoints
/// (`None` during registration). Returns `Ok` once a flow is complete; otherwise the 401 (or
/// other) error to answer with.
pub async fn authorize(
    state: &AppState,
    auth: Option<&AuthData>,
    flows: &[&[&str]],
    user: Option<&UserId>,
) -> Result<Completed, Error> {
    let now = now_ms();
    let storage = &state.storage;
    let Some(auth) = auth else {
        let session = new_opaque_id();
        storage
            .create_uia_session(&session, user.map(UserId::as_str), now)
            .await?;
        return Err(uia_body(flows, &[], &session, None));
    };

    // A client may complete a single-stage flow without first asking for a session.
    let session = match auth.session() {
        Some(session) => session.to_owned(),
        None => {
            let session = new_opaque_id();
            storage
                .create_uia_session(&session, user.map(UserId::as_str), now)
                .await?;
            session
        }
    };
    let row = storage
        .get_uia_session(&session)
        .await?
        .filter(|row| now - row.created_ts < SESSION_LIFETIME_MS)
        .ok_or_else(|| Error::unknown(StatusCode::BAD_REQUEST, "Unknown or expired UIA session"))?;
    if row.user_id.as_deref() != user.map(UserId::as_str) {
        return Err(Error::forbidden(
            "This UIA session belongs to another request",
        ));
    }
    let mut completed: Vec<String> = serde_json::from_str(&row.completed)
        .map_err(|e| Error::internal(format!("corrupt UIA session: {e}")))?;

    let stage = auth.auth_type().map(|t| t.to_string()).unwrap_or_default();
    if !flows.iter().any(|f| f.contains(&stage.as_str())) {
        return Err(uia_body(
            flows,
            &completed,
            &session,
            Some(("M_UNRECOGNIZED", "Unsupported authentication type")),
        ));
    }
    let mut outcome = Completed::default();
    match auth {
        AuthData::Dummy(_) => {}
        AuthData::Password(password) => {
            let expected = user
                .ok_or_else(|| Error::forbidden("Password authentication is not possible here"))?;
            let UserIdentifier::Matrix(id) = &password.identifier else {
                return Err(Error::forbidden("Only m.id.user identifiers are supported"));
            };
            let claimed = resolve_user(state, &id.user)?;
            if claimed != expected {
                // Another user's credentials never authorise this user's request.
                return Err(Error::forbidden(
                    "The credentials given are not those of the requesting user",
                ));
            }
            let hash = storage
                .get_user(expected.as_str())
                .await?
                .and_then(|u| u.password_hash);
            let ok = match hash {
                Some(hash) => verify_password(password.password.clone(), hash).await?,
                None => false,
            };
            if !ok {
                state.limits.check_failed_login(expected.as_str())?;
                return Err(uia_body(
                    flows,
                    &completed,
                    &session,
                    Some(("M_FORBIDDEN", "Invalid password")),
                ));
            }
        }
        AuthData::RegistrationToken(token) => {
            let valid = storage
                .get_registration_token(&token.token)
                .await?
                .is_some_and(|t| t.is_usable(now));
            if !valid {
                return Err(uia_body(
                    flows,
                    &completed,
                    &session,
                    Some(("M_UNAUTHORIZED", "Invalid registration token")),
                ));
            }
            outcome.registration_token = Some(token.token.clone());
        }
        _ => {
            return Err(uia_body(
                flows,
                &completed,
                &session,
                Some(("M_UNRECOGNIZED", "Unsupported authentication type")),
            ));
        }
    }
    if !completed.contains(&stage) {
        completed.push(stage);
    }
    let done = flows
        .iter()
        .any(|flow| flow.iter().all(|s| completed.iter().any(|c| c == s)));
    if done {
        storage.delete_uia_session(&session).await?;
        Ok(outcome)
    } else {
        let text = serde_json::to_string(&completed).map_err(Error::internal)?;
        storage.set_uia_completed(&session, &text).await?;
        Err(uia_body(flows, &completed, &session, None))
    }
}
