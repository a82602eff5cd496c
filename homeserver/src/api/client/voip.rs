//! Voice over IP: TURN server credentials.
//!
//! <https://spec.matrix.org/latest/client-server-api/#voice-over-ip>

use axum::{extract::State, response::IntoResponse, Json};
use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use ruma::api::client::voip::get_turn_server_info;
use serde_json::json;
use sha1::Sha1;

use crate::{api::ruma::Ruma, auth::now_ms, error::Result, AppState};

/// GET /_matrix/client/v3/voip/turnServer
///
/// With `voip.turn_uris` and `voip.turn_shared_secret` configured: time-limited credentials
/// in the TURN REST API scheme coturn checks with `use-auth-secret` (the one Synapse uses):
/// the username is `<expiry in seconds since the epoch>:<user ID>`, the password the base64 of
/// HMAC-SHA1 of the username keyed with the shared secret, and `ttl` their lifetime.
///
/// Without them, 200 with an empty object, as Synapse answers when no TURN server is
/// configured. The spec's response has every field required, but clients (matrix-js-sdk, which
/// Element Web asks at every start and then every minute) read the missing `uris` as "no TURN
/// server" and fall back to STUN or direct connections; a 404 would instead be logged as a
/// failure and retried. ruma's response type cannot be empty, hence the raw JSON.
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3voipturnserver>
pub async fn get_turn_server_info(
    State(state): State<AppState>,
    req: Ruma<get_turn_server_info::v3::Request>,
) -> Result<impl IntoResponse> {
    let voip = &state.config.voip;
    let (false, Some(secret)) = (voip.turn_uris.is_empty(), &voip.turn_shared_secret) else {
        return Ok(Json(json!({})));
    };
    let lifetime = voip.turn_user_lifetime;
    let expires = (now_ms() / 1000).max(0) as u64 + lifetime;
    let (username, password) = turn_credentials(secret, &req.sender().user_id, expires);
    Ok(Json(json!({
        "username": username,
        "password": password,
        "uris": voip.turn_uris,
        "ttl": lifetime,
    })))
}

/// The TURN REST API credentials of `user` valid until `expires` (seconds since the epoch).
fn turn_credentials(secret: &str, user: &ruma::UserId, expires: u64) -> (String, String) {
    let username = format!("{expires}:{user}");
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    let password = STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_coturns_rest_api_scheme() {
        // Computed independently: python3 -c "import hmac,hashlib,base64;print(base64.b64encode(
        // hmac.new(b'north', b'1700000000:@alice:example.org', hashlib.sha1).digest()).decode())"
        let user = ruma::user_id!("@alice:example.org");
        let (username, password) = turn_credentials("north", user, 1_700_000_000);
        assert_eq!(username, "1700000000:@alice:example.org");
        assert_eq!(password, EXPECTED);
    }

    const EXPECTED: &str = "b7c/MWmorxmLryRFjaJYkUW5nOo=";
}
