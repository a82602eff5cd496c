//! X-Matrix request authentication: every federation request is signed by its origin
//! server's key over the method, URI, origin, destination and JSON body, and every request a
//! server receives is checked against the origin's published key before it is served.
//!
//! The header's grammar, the signed object and the signatures are ruma's
//! (`ruma::api::federation::authentication::XMatrix`); this module fixes how Myelin uses them:
//! the destination named in the header must be this server, and checking is split in two so
//! the homeserver can fetch the origin's key (I/O) between reading the header and verifying.
//!
//! <https://spec.matrix.org/latest/server-server-api/#request-authentication>

use ruma::{
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet},
    ServerName,
};

use crate::keys::ServerSigningKey;

/// Why a request is not (or cannot be) authenticated: all answered 401 `M_UNAUTHORIZED`.
#[derive(Debug, thiserror::Error)]
pub enum RequestAuthError {
    #[error("no X-Matrix Authorization header")]
    Missing,
    #[error("malformed X-Matrix Authorization header: {0}")]
    Malformed(String),
    #[error("the request is addressed to {0}, not this server")]
    WrongDestination(String),
    #[error("the signing key is not a valid base64 ed25519 key")]
    BadKey,
    #[error("the signature does not verify: {0}")]
    BadSignature(String),
    #[error("the request cannot be signed: {0}")]
    Sign(String),
}

/// The `Authorization` header value for `request` from `origin` to `destination`, signed
/// with this server's key. The body must be the exact JSON bytes sent (or empty).
pub fn authorization(
    key: &ServerSigningKey,
    origin: &ServerName,
    destination: &ServerName,
    request: &http::Request<Vec<u8>>,
) -> Result<http::HeaderValue, RequestAuthError> {
    let input = XMatrixSigningInput::new(origin.to_owned(), destination.to_owned(), key.key_pair());
    let signed = XMatrix::sign_http_request(request, input)
        .map_err(|e| RequestAuthError::Sign(e.to_string()))?;
    Ok(http::HeaderValue::from(&signed))
}

/// Reads the X-Matrix header of an incoming request and checks that it is addressed to
/// `this_server` (a header without `destination`, as servers before spec v1.3 send, is
/// accepted). The caller then fetches the key `key` of `origin` and calls [`verify`].
pub fn read_authorization(
    headers: &http::HeaderMap,
    this_server: &ServerName,
) -> Result<XMatrix, RequestAuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(RequestAuthError::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| RequestAuthError::Malformed("not ASCII".to_owned()))?;
    let scheme = value.split_whitespace().next().unwrap_or_default();
    if !scheme.eq_ignore_ascii_case(XMatrix::AUTH_SCHEME) {
        return Err(RequestAuthError::Missing);
    }
    let auth = XMatrix::parse(value).map_err(|e| RequestAuthError::Malformed(e.to_string()))?;
    if let Some(destination) = &auth.destination {
        if destination != this_server {
            return Err(RequestAuthError::WrongDestination(destination.to_string()));
        }
    }
    Ok(auth)
}

/// Verifies the signature of `auth` (from [`read_authorization`]) over `request`, with the
/// origin's public key for `auth.key` as published (unpadded base64).
pub fn verify(
    auth: &XMatrix,
    request: &http::Request<Vec<u8>>,
    this_server: &ServerName,
    origin_key_base64: &str,
) -> Result<(), RequestAuthError> {
    let key = Base64::parse(origin_key_base64).map_err(|_| RequestAuthError::BadKey)?;
    let mut keys = PublicKeySet::new();
    keys.insert(auth.key.to_string(), key);
    let mut map = PublicKeyMap::new();
    map.insert(auth.origin.to_string(), keys);
    auth.verify_http_request(request, this_server, &map)
        .map_err(|e| RequestAuthError::BadSignature(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::server_name;

    fn request(body: &str) -> http::Request<Vec<u8>> {
        http::Request::builder()
            .method("PUT")
            .uri("/_matrix/federation/v1/send/txn1?x=1")
            .body(body.as_bytes().to_vec())
            .unwrap()
    }

    fn signed(
        key: &ServerSigningKey,
        destination: &ServerName,
        body: &str,
    ) -> http::Request<Vec<u8>> {
        let mut req = request(body);
        let header = authorization(key, server_name!("origin.example"), destination, &req).unwrap();
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, header);
        req
    }

    #[test]
    fn a_signed_request_verifies() {
        let key = ServerSigningKey::generate();
        let us = server_name!("dest.example");
        let req = signed(&key, us, r#"{"pdus":[],"edus":[]}"#);
        let auth = read_authorization(req.headers(), us).unwrap();
        assert_eq!(auth.origin.as_str(), "origin.example");
        assert_eq!(auth.key.as_str(), key.key_id());
        verify(&auth, &req, us, &key.public_key_base64()).unwrap();
        // The same with an empty body (a GET).
        let req = signed(&key, us, "");
        let auth = read_authorization(req.headers(), us).unwrap();
        verify(&auth, &req, us, &key.public_key_base64()).unwrap();
    }

    #[test]
    fn tampering_and_misdirection_are_refused() {
        let key = ServerSigningKey::generate();
        let us = server_name!("dest.example");
        let req = signed(&key, us, r#"{"a":1}"#);
        let auth = read_authorization(req.headers(), us).unwrap();

        // Another body, another URI, another key: the signature fails.
        let mut other_body = request(r#"{"a":2}"#);
        *other_body.headers_mut() = req.headers().clone();
        assert!(matches!(
            verify(&auth, &other_body, us, &key.public_key_base64()),
            Err(RequestAuthError::BadSignature(_))
        ));
        let mut other_uri = http::Request::builder()
            .method("PUT")
            .uri("/_matrix/federation/v1/send/txn2")
            .body(br#"{"a":1}"#.to_vec())
            .unwrap();
        *other_uri.headers_mut() = req.headers().clone();
        assert!(verify(&auth, &other_uri, us, &key.public_key_base64()).is_err());
        let stranger = ServerSigningKey::generate();
        assert!(verify(&auth, &req, us, &stranger.public_key_base64()).is_err());
        assert!(matches!(
            verify(&auth, &req, us, "not base64!"),
            Err(RequestAuthError::BadKey)
        ));

        // Addressed to another server.
        assert!(matches!(
            read_authorization(req.headers(), server_name!("elsewhere.example")),
            Err(RequestAuthError::WrongDestination(_))
        ));
    }

    #[test]
    fn missing_and_malformed_headers_are_refused() {
        let us = server_name!("dest.example");
        let mut headers = http::HeaderMap::new();
        assert!(matches!(
            read_authorization(&headers, us),
            Err(RequestAuthError::Missing)
        ));
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer abc"),
        );
        assert!(matches!(
            read_authorization(&headers, us),
            Err(RequestAuthError::Missing)
        ));
        for garbage in [
            "X-Matrix",
            "X-Matrix origin=",
            "X-Matrix origin=\"o.example\",key=\"ed25519:k\"",
            "X-Matrix origin=\"not a name!\",key=\"ed25519:k\",sig=\"dGVzdA\"",
            "X-Matrix origin=\"o.example\",key=\"ed25519:k\",sig=\"***\"",
        ] {
            headers.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_static(garbage),
            );
            assert!(
                matches!(
                    read_authorization(&headers, us),
                    Err(RequestAuthError::Malformed(_))
                ),
                "{garbage}"
            );
        }
        // A header from before spec v1.3, without destination, is read.
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static(
                "X-Matrix origin=\"o.example\",key=\"ed25519:k\",sig=\"dGVzdA\"",
            ),
        );
        let auth = read_authorization(&headers, us).unwrap();
        assert!(auth.destination.is_none());
    }
}
