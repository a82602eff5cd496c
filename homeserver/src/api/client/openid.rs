//! OpenID: proving to a third party (an integration manager, a widget) who a user is.
//!
//! <https://spec.matrix.org/latest/client-server-api/#openid>
//! <https://spec.matrix.org/latest/server-server-api/#openid>
//!
//! The client asks for a short-lived token and hands it to the third party, which asks this
//! server (`GET /_matrix/federation/v1/openid/userinfo`) whose it is. The token proves
//! identity only: it is not an access token and opens nothing else.

use std::time::Duration;

use axum::{
    extract::{Query, State},
    Json,
};
use ruma::api::client::account::request_openid_token;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    api::ruma::Ruma,
    auth::{hash_token, new_opaque_id, now_ms},
    error::{Error, Result},
    AppState,
};

/// How long an OpenID token is valid (Synapse: one hour).
const OPENID_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// POST /_matrix/client/v3/user/{userId}/openid/request_token
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3useruseridopenidrequest_token>
pub async fn request_openid_token(
    State(state): State<AppState>,
    req: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response> {
    let sender = &req.sender().user_id;
    if *sender != req.body.user_id {
        return Err(Error::forbidden(
            "You cannot request OpenID tokens for other users",
        ));
    }
    let token = new_opaque_id();
    let now = now_ms();
    let expires = now + OPENID_TOKEN_LIFETIME.as_millis() as i64;
    state
        .storage
        .add_openid_token(&hash_token(&token), sender.as_str(), expires, now)
        .await?;
    Ok(request_openid_token::v3::Response::new(
        token,
        ruma::authentication::TokenType::Bearer,
        state.server_name.clone(),
        OPENID_TOKEN_LIFETIME,
    ))
}

#[derive(Deserialize)]
pub struct UserinfoQuery {
    access_token: Option<String>,
}

/// GET /_matrix/federation/v1/openid/userinfo
///
/// The user an unexpired OpenID token was issued to, as `{"sub": user_id}`; 401
/// `M_UNKNOWN_TOKEN` for any other token. Served beside the client API until the federation
/// listener exists, so third parties that reach the server by its client URL can use it.
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1openiduserinfo>
pub async fn openid_userinfo(
    State(state): State<AppState>,
    Query(query): Query<UserinfoQuery>,
) -> Result<Json<Value>> {
    let unknown = || {
        Error::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Access token unknown or expired",
        )
    };
    let token = query.access_token.ok_or_else(unknown)?;
    let user = state
        .storage
        .openid_token_user(&hash_token(&token), now_ms())
        .await?
        .ok_or_else(unknown)?;
    Ok(Json(json!({ "sub": user })))
}
