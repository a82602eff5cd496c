//! Authenticating requests from other servers: [`ServerRequest`] is the extractor of every
//! federation endpoint that needs it. It reads the body (bounded like client bodies), checks
//! the X-Matrix header is addressed to this server, fetches the origin's key (cached) and
//! verifies the signature over method, URI and body; anything else is 401 `M_UNAUTHORIZED`.

use axum::extract::FromRequest;
use myelin_federation::request_auth::{self, RequestAuthError};
use ruma::OwnedServerName;

use super::keys::verify_key;
use crate::{error::Error, AppState};

/// An authenticated request from another server: who sent it, and its body.
pub struct ServerRequest {
    pub origin: OwnedServerName,
    pub parts: http::request::Parts,
    pub body: bytes::Bytes,
}

impl FromRequest<AppState> for ServerRequest {
    type Rejection = Error;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let auth =
            request_auth::read_authorization(&parts.headers, &state.server_name).map_err(|e| {
                match e {
                    RequestAuthError::Missing => {
                        Error::unauthorized("This endpoint needs an X-Matrix Authorization header")
                    }
                    other => Error::unauthorized(other.to_string()),
                }
            })?;
        if !state.federation.allows(&auth.origin) {
            return Err(Error::forbidden(format!(
                "Federation with {} is not allowed here",
                auth.origin
            )));
        }
        let body = crate::api::ruma::read_body(
            body,
            &parts.headers,
            state.config.max_json_body_bytes,
            std::time::Duration::from_secs(state.config.body_read_timeout_seconds),
        )
        .await?;
        let key = verify_key(state, &auth.origin, auth.key.as_str())
            .await?
            .ok_or_else(|| {
                Error::unauthorized(format!("{} has no current key {}", auth.origin, auth.key))
            })?;
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let signed = http::Request::builder()
            .method(parts.method.clone())
            .uri(path_and_query)
            .body(body.to_vec())
            .map_err(|e| Error::unauthorized(e.to_string()))?;
        request_auth::verify(&auth, &signed, &state.server_name, &key)
            .map_err(|e| Error::unauthorized(e.to_string()))?;
        // The peer is up: if we were backing off from it, try again now.
        super::sender::reset(state, auth.origin.as_str());
        Ok(ServerRequest {
            origin: auth.origin,
            parts,
            body,
        })
    }
}
