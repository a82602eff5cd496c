//! Requests to other servers: where a server name is reached, and signed GETs and PUTs to
//! it over TLS.
//!
//! Discovery follows the spec's order
//! (<https://spec.matrix.org/latest/server-server-api/#resolving-server-names>): an IP
//! literal, or a name with an explicit port, is reached there directly; otherwise
//! `/.well-known/matrix/server` is asked (cached for a day, an hour after a failure) and its
//! delegated name is reached directly if it has a port or is an IP literal, else on port
//! 8448; with no `.well-known`, the name itself on port 8448. Missing so far: the SRV steps
//! (`_matrix-fed._tcp`, `_matrix._tcp`) between `.well-known` and port 8448.
//!
//! Every connection goes through [`GuardedResolver`], so outbound federation reaches only
//! public addresses unless the operator allows ranges (`federation_ip_range_allowlist`);
//! certificates are checked unless `federation_verify_certificates` is off (tests only).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use myelin_federation::{keys::ServerSigningKey, request_auth, server_policy::ServerPolicy};
use reqwest::Url;
use ruma::{OwnedServerName, ServerName};

use crate::outbound::{blocked_literal, find_blocked, GuardedResolver, IpFilter};

/// How long one request to another server may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a response body read from another server.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// How long a `.well-known` answer (or its absence) is kept.
const WELL_KNOWN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const WELL_KNOWN_FAILURE_TTL: Duration = Duration::from_secs(60 * 60);

/// Why a request to another server failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0} is not an allowed address for federation")]
    Blocked(String),
    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("{server} answered {status}: {body}")]
    Status {
        server: String,
        status: u16,
        body: String,
    },
    #[error("{server} sent an invalid answer: {reason}")]
    BadResponse { server: String, reason: String },
    #[error("cannot sign the request: {0}")]
    Sign(String),
}

/// The client for requests to other servers.
pub struct FederationClient {
    http: reqwest::Client,
    filter: Arc<IpFilter>,
    origin: OwnedServerName,
    key: Arc<ServerSigningKey>,
    /// The operator's allow and deny lists: a denied server is never contacted.
    policy: ServerPolicy,
    /// Server name → ((the authority to connect to, the Host to name), when the answer
    /// expires).
    well_known: Mutex<HashMap<String, (Reached, Instant)>>,
    /// When each server's keys were last fetched: a peer's request naming an unknown key
    /// makes us fetch its keys at most once per [`KEY_REFETCH`], so a stream of requests with
    /// made-up key IDs cannot make us hammer it (or anyone it names).
    key_fetches: Mutex<HashMap<String, Instant>>,
    /// One lock per origin, so one transaction per origin is processed at a time (a retry
    /// waits for the first, then is answered from its record). Never pruned yet: one entry
    /// per server that ever sent us a transaction.
    origin_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Where a server is reached: `(host:port to connect to, the Host header to send)`.
type Reached = (String, String);

/// The least time between two fetches of one server's keys.
pub const KEY_REFETCH: Duration = Duration::from_secs(60);

impl FederationClient {
    pub fn new(
        origin: OwnedServerName,
        key: Arc<ServerSigningKey>,
        allowed_ranges: &[String],
        verify_certificates: bool,
        policy: ServerPolicy,
    ) -> Result<FederationClient, reqwest::Error> {
        let filter = Arc::new(IpFilter::new(allowed_ranges));
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                filter: filter.clone(),
            }))
            // Federation endpoints answer; they do not redirect (well-known is read apart).
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .danger_accept_invalid_certs(!verify_certificates)
            .user_agent(concat!("Myelin/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(FederationClient {
            http,
            filter,
            origin,
            key,
            policy,
            well_known: Mutex::new(HashMap::new()),
            key_fetches: Mutex::new(HashMap::new()),
            origin_locks: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the operator lets us federate with `server` (both directions).
    pub fn allows(&self, server: &ServerName) -> bool {
        self.policy.allows(server.as_str())
    }

    /// This server's name, the origin of its requests.
    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    /// A signed `GET` of `path_and_query` on `destination`, answered with JSON.
    pub async fn get_json(
        &self,
        destination: &ServerName,
        path_and_query: &str,
    ) -> Result<serde_json::Value, FederationError> {
        self.request(destination, http::Method::GET, path_and_query, None, true)
            .await
    }

    /// A signed `PUT` of `body` to `path` on `destination`, answered with JSON.
    pub async fn put_json(
        &self,
        destination: &ServerName,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, FederationError> {
        self.request(destination, http::Method::PUT, path, Some(body), true)
            .await
    }

    /// A signed `POST` of `body` to `path` on `destination`, answered with JSON.
    pub async fn post_json(
        &self,
        destination: &ServerName,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, FederationError> {
        self.request(destination, http::Method::POST, path, Some(body), true)
            .await
    }

    /// The lock serialising `origin`'s transactions.
    pub fn origin_lock(&self, origin: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.origin_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(origin.to_owned())
            .or_default()
            .clone()
    }

    /// Whether `server`'s keys may be fetched now (at most once per [`KEY_REFETCH`]); saying
    /// yes counts as a fetch.
    pub fn may_fetch_keys(&self, server: &ServerName) -> bool {
        let mut fetches = self.key_fetches.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if fetches.len() > 10_000 {
            fetches.retain(|_, at| now.duration_since(*at) < KEY_REFETCH);
        }
        match fetches.get(server.as_str()) {
            Some(at) if now.duration_since(*at) < KEY_REFETCH => false,
            _ => {
                fetches.insert(server.to_string(), now);
                true
            }
        }
    }

    /// An unsigned `GET` (server keys are fetched without authentication).
    pub async fn get_json_unsigned(
        &self,
        destination: &ServerName,
        path_and_query: &str,
    ) -> Result<serde_json::Value, FederationError> {
        self.request(destination, http::Method::GET, path_and_query, None, false)
            .await
    }

    async fn request(
        &self,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        signed: bool,
    ) -> Result<serde_json::Value, FederationError> {
        let server = destination.to_string();
        let response = self
            .send(destination, method, path_and_query, body, signed, None)
            .await?;
        let bytes = read_limited(response, &server).await?;
        serde_json::from_slice(&bytes).map_err(|e| FederationError::BadResponse {
            server,
            reason: e.to_string(),
        })
    }

    /// A signed `GET` of `path_and_query` on `destination` whose 2xx answer is handed back
    /// unread, for the caller to stream (media); `timeout` replaces the usual one.
    pub async fn get_streamed(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, FederationError> {
        self.send(
            destination,
            http::Method::GET,
            path_and_query,
            None,
            true,
            Some(timeout),
        )
        .await
    }

    /// Sends a request; a non-2xx answer is an error (with the start of its body).
    async fn send(
        &self,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        signed: bool,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, FederationError> {
        let server = destination.to_string();
        if !self.allows(destination) {
            return Err(FederationError::Blocked(server));
        }
        let (authority, host) = self.authority(destination).await;
        let url = Url::parse(&format!("https://{authority}{path_and_query}")).map_err(|e| {
            FederationError::Unreachable {
                server: server.clone(),
                reason: e.to_string(),
            }
        })?;
        if let Some(blocked) = blocked_literal(&url, &self.filter) {
            return Err(FederationError::Blocked(blocked.0));
        }
        let body_bytes = match body {
            Some(body) => {
                serde_json::to_vec(body).map_err(|e| FederationError::Sign(e.to_string()))?
            }
            None => Vec::new(),
        };
        let mut builder = self
            .http
            .request(method.clone(), url)
            // The Host is the (delegated) server name whatever address it was reached at.
            .header(http::header::HOST, host);
        if signed {
            let to_sign = http::Request::builder()
                .method(method)
                .uri(path_and_query)
                .body(body_bytes.clone())
                .map_err(|e| FederationError::Sign(e.to_string()))?;
            let header =
                request_auth::authorization(&self.key, &self.origin, destination, &to_sign)
                    .map_err(|e| FederationError::Sign(e.to_string()))?;
            builder = builder.header(http::header::AUTHORIZATION, header);
        }
        if body.is_some() {
            builder = builder
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body_bytes);
        }
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let response = builder.send().await.map_err(|e| match find_blocked(&e) {
            Some(address) => FederationError::Blocked(address),
            None => FederationError::Unreachable {
                server: server.clone(),
                reason: e.to_string(),
            },
        })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = read_limited(response, &server).await?;
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(FederationError::Status {
                server,
                status,
                body,
            });
        }
        Ok(response)
    }

    /// Where `server` is reached: `(host:port for the URL, the Host header)` (see the
    /// module's discovery order). The Host is the delegated name as `.well-known` gave it,
    /// without the port 8448 we add, as the spec asks.
    async fn authority(&self, server: &ServerName) -> Reached {
        if has_port_or_is_ip(server.as_str()) {
            return (server.to_string(), server.to_string());
        }
        let key = server.to_string();
        if let Some((authority, expires)) = self.well_known.lock().expect("not poisoned").get(&key)
        {
            if *expires > Instant::now() {
                return authority.clone();
            }
        }
        let (authority, ttl) = match self.delegated(server).await {
            Some(delegated) if has_port_or_is_ip(&delegated) => {
                ((delegated.clone(), delegated), WELL_KNOWN_TTL)
            }
            Some(delegated) => ((format!("{delegated}:8448"), delegated), WELL_KNOWN_TTL),
            None => (
                (format!("{server}:8448"), server.to_string()),
                WELL_KNOWN_FAILURE_TTL,
            ),
        };
        self.well_known
            .lock()
            .expect("not poisoned")
            .insert(key, (authority.clone(), Instant::now() + ttl));
        authority
    }

    /// The `m.server` of `server`'s `/.well-known/matrix/server`, if it has a valid one.
    async fn delegated(&self, server: &ServerName) -> Option<String> {
        let url = Url::parse(&format!("https://{server}/.well-known/matrix/server")).ok()?;
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let bytes = read_limited(response, server.as_str()).await.ok()?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let delegated = value.get("m.server")?.as_str()?;
        // Only a valid server name (with an optional port) is followed.
        <&ServerName>::try_from(delegated).ok()?;
        Some(delegated.to_owned())
    }
}

/// `value` percent-encoded for a URL query (everything but unreserved characters).
pub fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether a server name says where it is reached: an IP literal, or an explicit port.
fn has_port_or_is_ip(name: &str) -> bool {
    if name.starts_with('[') || name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    name.rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()))
}

/// A response body, refusing one larger than [`MAX_RESPONSE_BYTES`].
async fn read_limited(
    mut response: reqwest::Response,
    server: &str,
) -> Result<Vec<u8>, FederationError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FederationError::Unreachable {
            server: server.to_owned(),
            reason: e.to_string(),
        })?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(FederationError::BadResponse {
                server: server.to_owned(),
                reason: "response too large".to_owned(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            query_value("@bob:127.0.0.1:8448"),
            "%40bob%3A127.0.0.1%3A8448"
        );
        assert_eq!(query_value("a b/é"), "a%20b%2F%C3%A9");
    }

    #[test]
    fn keys_are_fetched_at_most_once_a_minute() {
        let key = Arc::new(ServerSigningKey::generate());
        let client = FederationClient::new(
            "a.example".try_into().unwrap(),
            key,
            &[],
            true,
            ServerPolicy::default(),
        )
        .unwrap();
        let b: &ServerName = "b.example".try_into().unwrap();
        let c: &ServerName = "c.example".try_into().unwrap();
        assert!(client.may_fetch_keys(b));
        assert!(!client.may_fetch_keys(b));
        assert!(client.may_fetch_keys(c));
    }

    #[test]
    fn names_that_say_where_they_are() {
        assert!(has_port_or_is_ip("127.0.0.1"));
        assert!(has_port_or_is_ip("127.0.0.1:8448"));
        assert!(has_port_or_is_ip("[::1]"));
        assert!(has_port_or_is_ip("[::1]:8448"));
        assert!(has_port_or_is_ip("example.org:443"));
        assert!(!has_port_or_is_ip("example.org"));
        assert!(!has_port_or_is_ip("matrix.example.org"));
    }
}
