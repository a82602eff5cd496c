//! Synapse-compatible admin endpoints, so existing tooling (and `myelin-admin`) works:
//! shared-secret registration and registration-token management.
//!
//! <https://element-hq.github.io/synapse/latest/admin_api/register_api.html>
//! <https://element-hq.github.io/synapse/latest/usage/administration/admin_api/registration_tokens.html>

use axum::{
    extract::{ConnectInfo, Path, Request, State},
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha1::Sha1;

use crate::{
    api::{client::user_id_for_new_username, json_body, require_admin},
    auth::{hash_password, hash_token, new_access_token, new_device_id, new_opaque_id, now_ms},
    error::{Error, Result},
    AppState,
};

/// How long a registration nonce stays valid (Synapse: 60 s).
pub const NONCE_LIFETIME_MS: i64 = 60_000;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(
            "/_synapse/admin/v1/register",
            get(get_nonce).post(shared_secret_register),
        )
        .route(
            "/_synapse/admin/v1/registration_tokens",
            get(list_registration_tokens),
        )
        .route(
            "/_synapse/admin/v1/registration_tokens/new",
            post(new_registration_token),
        )
        .route(
            "/_synapse/admin/v1/registration_tokens/{token}",
            get(get_registration_token).delete(delete_registration_token),
        )
        .route("/_synapse/admin/v1/event_reports", get(list_event_reports))
}

#[derive(Deserialize)]
struct ReportsQuery {
    from: Option<i64>,
    limit: Option<i64>,
}

/// GET /_synapse/admin/v1/event_reports
///
/// The stored reports, oldest first, in Synapse's shape (`event_reports`, `next_token`,
/// `total` of this page's kind). Room and user reports carry no `event_id`. The rest of
/// Synapse's report API (filters, details, deletion) comes with the admin API issue.
async fn list_event_reports(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<ReportsQuery>,
    parts: http::request::Parts,
) -> Result<Json<Value>> {
    require_admin(&state, &parts).await?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || query.from.is_some_and(|f| f < 0) {
        return Err(Error::invalid_param(
            "limit must be 1..1000 and from non-negative",
        ));
    }
    let rows = state
        .storage
        .reports(query.from.unwrap_or(0), limit)
        .await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.report_id))
        .flatten();
    let reports: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.report_id,
                "received_ts": r.received_ts,
                "user_id": r.reporter,
                "room_id": r.room_id,
                "event_id": r.event_id,
                "target_user_id": r.target_user_id,
                "reason": r.reason,
                "score": r.score,
            })
        })
        .collect();
    let mut body = json!({ "event_reports": reports, "total": reports.len() });
    if let Some(next) = next {
        body["next_token"] = json!(next);
    }
    Ok(Json(body))
}

fn shared_secret(state: &AppState) -> Result<&str> {
    state
        .config
        .registration_shared_secret
        .as_deref()
        .ok_or_else(|| {
            Error::unknown(
                StatusCode::BAD_REQUEST,
                "Shared secret registration is not enabled",
            )
        })
}

/// GET /_synapse/admin/v1/register
///
/// Hands out a single-use nonce for the registration MAC. Anyone may ask and each answer is
/// a row, so requests are rate-limited per address and expired nonces are deleted as new
/// ones are made.
async fn get_nonce(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> Result<Json<Value>> {
    shared_secret(&state)?;
    state.limits.check_registration_nonce_ip(remote.ip())?;
    let nonce = new_opaque_id();
    let now = now_ms();
    state
        .storage
        .create_registration_nonce(&nonce, now, now - NONCE_LIFETIME_MS)
        .await?;
    Ok(Json(json!({ "nonce": nonce })))
}

#[derive(Deserialize)]
struct SharedSecretRegistration {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    user_type: Option<String>,
    displayname: Option<String>,
    mac: String,
}

/// The MAC the client must send: HMAC-SHA1 keyed with the shared secret over
/// `nonce NUL username NUL password NUL ("admin" | "notadmin") [NUL user_type]`.
fn registration_mac(secret: &str, body: &SharedSecretRegistration) -> Hmac<Sha1> {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body.nonce.as_bytes());
    mac.update(b"\0");
    mac.update(body.username.as_bytes());
    mac.update(b"\0");
    mac.update(body.password.as_bytes());
    mac.update(b"\0");
    mac.update(if body.admin { b"admin" } else { b"notadmin" });
    if let Some(user_type) = &body.user_type {
        mac.update(b"\0");
        mac.update(user_type.as_bytes());
    }
    mac
}

/// POST /_synapse/admin/v1/register
///
/// Creates a user (optionally an admin) on proof of the shared secret.
async fn shared_secret_register(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<Value>> {
    let secret = shared_secret(&state)?.to_owned();
    let body: SharedSecretRegistration = json_body(&state, request).await?;
    let now = now_ms();
    let issued = state.storage.take_registration_nonce(&body.nonce).await?;
    if issued.is_none_or(|ts| now - ts >= NONCE_LIFETIME_MS) {
        return Err(Error::invalid_param("Unrecognised nonce"));
    }
    let given = hex::decode(&body.mac).map_err(|_| Error::forbidden("HMAC incorrect"))?;
    registration_mac(&secret, &body)
        .verify_slice(&given)
        .map_err(|_| Error::forbidden("HMAC incorrect"))?;
    if body.password.is_empty() {
        return Err(Error::invalid_param("Password must not be empty"));
    }

    let user_id = user_id_for_new_username(&state, &body.username)?;
    let hash = hash_password(body.password.clone()).await?;
    let displayname = body.displayname.as_deref().unwrap_or(user_id.localpart());
    match state
        .storage
        .create_user(user_id.as_str(), Some(&hash), body.admin, displayname, now)
        .await
    {
        Err(myelin_storage::Error::UniqueViolation) => return Err(Error::user_in_use()),
        other => other?,
    }
    let device_id = new_device_id();
    let token = new_access_token();
    state
        .storage
        .create_device_with_token(
            user_id.as_str(),
            device_id.as_str(),
            None,
            None,
            Some(&hash_token(&token)),
            now,
        )
        .await?;
    tracing::info!(%user_id, admin = body.admin, "registered user with the shared secret");
    Ok(Json(json!({
        "user_id": user_id,
        "access_token": token,
        "home_server": state.server_name,
        "device_id": device_id,
    })))
}

fn token_json(t: &myelin_storage::RegistrationTokenRow) -> Value {
    json!({
        "token": t.token,
        "uses_allowed": t.uses_allowed,
        "pending": 0,
        "completed": t.completed,
        "expiry_time": t.expiry_ts,
    })
}

/// GET /_synapse/admin/v1/registration_tokens
async fn list_registration_tokens(
    State(state): State<AppState>,
    parts: http::request::Parts,
) -> Result<Json<Value>> {
    require_admin(&state, &parts).await?;
    let tokens = state.storage.list_registration_tokens().await?;
    Ok(Json(
        json!({ "registration_tokens": tokens.iter().map(token_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
struct NewToken {
    token: Option<String>,
    uses_allowed: Option<i64>,
    expiry_time: Option<i64>,
    length: Option<usize>,
}

/// POST /_synapse/admin/v1/registration_tokens/new
async fn new_registration_token(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<Value>> {
    let (parts, body) = request.into_parts();
    require_admin(&state, &parts).await?;
    let body: NewToken = json_body(&state, Request::from_parts(parts, body)).await?;
    let token = match body.token {
        Some(token) => {
            let valid = !token.is_empty()
                && token.len() <= 64
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-'));
            if !valid {
                return Err(Error::invalid_param(
                    "token must be 1-64 characters from [A-Za-z0-9._~-]",
                ));
            }
            token
        }
        None => {
            let length = body.length.unwrap_or(16);
            if !(1..=64).contains(&length) {
                return Err(Error::invalid_param("length must be between 1 and 64"));
            }
            new_opaque_id().chars().cycle().take(length).collect()
        }
    };
    if body.uses_allowed.is_some_and(|n| n < 0) {
        return Err(Error::invalid_param(
            "uses_allowed must be a non-negative integer",
        ));
    }
    let now = now_ms();
    if body.expiry_time.is_some_and(|t| t <= now) {
        return Err(Error::invalid_param("expiry_time must be in the future"));
    }
    let row = myelin_storage::RegistrationTokenRow {
        token,
        uses_allowed: body.uses_allowed,
        completed: 0,
        expiry_ts: body.expiry_time,
    };
    match state.storage.create_registration_token(&row, now).await {
        Err(myelin_storage::Error::UniqueViolation) => {
            return Err(Error::invalid_param("Token already exists"));
        }
        other => other?,
    }
    Ok(Json(token_json(&row)))
}

/// GET /_synapse/admin/v1/registration_tokens/{token}
async fn get_registration_token(
    State(state): State<AppState>,
    Path(token): Path<String>,
    parts: http::request::Parts,
) -> Result<Json<Value>> {
    require_admin(&state, &parts).await?;
    let row = state
        .storage
        .get_registration_token(&token)
        .await?
        .ok_or_else(|| Error::not_found("No such registration token"))?;
    Ok(Json(token_json(&row)))
}

/// DELETE /_synapse/admin/v1/registration_tokens/{token}
async fn delete_registration_token(
    State(state): State<AppState>,
    Path(token): Path<String>,
    parts: http::request::Parts,
) -> Result<Json<Value>> {
    require_admin(&state, &parts).await?;
    if !state.storage.delete_registration_token(&token).await? {
        return Err(Error::not_found("No such registration token"));
    }
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_matches_synapse_definition() {
        // Computed independently: python3 -c "import hmac,hashlib;print(hmac.new(b'secret',
        // b'abc\x00alice\x00pw\x00admin', hashlib.sha1).hexdigest())"
        let body = SharedSecretRegistration {
            nonce: "abc".into(),
            username: "alice".into(),
            password: "pw".into(),
            admin: true,
            user_type: None,
            displayname: None,
            mac: String::new(),
        };
        let mac = hex::encode(registration_mac("secret", &body).finalize().into_bytes());
        assert_eq!(mac, EXPECTED_ADMIN_MAC);
    }

    const EXPECTED_ADMIN_MAC: &str = "dc5ed98b283077684552e3f72d67f26b3366bf58";
}
