//! HTTP access to the homeserver and the shared-secret registration MAC.
//!
//! Owns everything that touches the wire: base-URL handling, the
//! Synapse-compatible `/_synapse/admin/v1/register` nonce/MAC handshake, and
//! turning transport failures and Matrix error bodies into [`Error`]s. It does
//! no terminal I/O; prompting and printing live in [`crate::commands`].

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::{Client, RequestBuilder, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha1::Sha1;

use crate::error::Error;

/// Shared-secret registration endpoint (Synapse-compatible).
pub const REGISTER_PATH: &str = "/_synapse/admin/v1/register";
/// Standard client-server endpoint reporting the owner of an access token.
pub const WHOAMI_PATH: &str = "/_matrix/client/v3/account/whoami";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a non-Matrix error body to quote back to the operator.
const BODY_SNIPPET_CHARS: usize = 300;

/// Lowercase hex HMAC-SHA1, keyed with the shared secret, over
/// `nonce \0 username \0 password \0 ("admin" | "notadmin")`.
pub fn registration_mac(
    shared_secret: &[u8],
    nonce: &str,
    username: &str,
    password: &str,
    admin: bool,
) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        Hmac::<Sha1>::new_from_slice(shared_secret).expect("HMAC accepts keys of any length");
    mac.update(nonce.as_bytes());
    mac.update(b"\0");
    mac.update(username.as_bytes());
    mac.update(b"\0");
    mac.update(password.as_bytes());
    mac.update(b"\0");
    mac.update(if admin { b"admin" } else { b"notadmin" });
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Debug, Deserialize)]
struct NonceResponse {
    nonce: String,
}

#[derive(Debug, Serialize)]
struct RegisterRequest<'a> {
    nonce: &'a str,
    username: &'a str,
    password: &'a str,
    admin: bool,
    mac: &'a str,
}

/// The parts of a successful registration response the CLI uses. The access
/// token the server also returns is deliberately ignored.
#[derive(Debug, Deserialize)]
pub struct Registered {
    pub user_id: String,
}

#[derive(Debug, Deserialize)]
pub struct WhoAmI {
    pub user_id: String,
    #[serde(default)]
    pub device_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MatrixErrorBody {
    errcode: String,
    #[serde(default)]
    error: String,
}

/// Client for one homeserver.
#[derive(Debug)]
pub struct AdminClient {
    http: Client,
    base: Url,
    /// The base URL as shown to the operator in messages.
    display: String,
}

impl AdminClient {
    /// `base_url` must be an `http://` or `https://` URL; a path prefix is
    /// kept (useful behind a reverse proxy).
    pub fn new(base_url: &str) -> Result<Self, Error> {
        let base = parse_base_url(base_url)?;
        let http = Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("myelin-admin/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("cannot initialise HTTP client: {e}")))?;
        Ok(Self {
            http,
            display: base.as_str().trim_end_matches('/').to_owned(),
            base,
        })
    }

    fn endpoint(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{}", self.base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url
    }

    /// Registers a user with the shared-secret handshake: fetch a nonce, then
    /// POST the registration with its MAC.
    pub async fn register(
        &self,
        shared_secret: &str,
        username: &str,
        password: &str,
        admin: bool,
    ) -> Result<Registered, Error> {
        let url = self.endpoint(REGISTER_PATH);
        let NonceResponse { nonce } = self.send(self.http.get(url.clone())).await?;
        let mac = registration_mac(shared_secret.as_bytes(), &nonce, username, password, admin);
        let body = RegisterRequest {
            nonce: &nonce,
            username,
            password,
            admin,
            mac: &mac,
        };
        self.send(self.http.post(url).json(&body)).await
    }

    /// Asks the server who owns `access_token`.
    pub async fn whoami(&self, access_token: &str) -> Result<WhoAmI, Error> {
        let url = self.endpoint(WHOAMI_PATH);
        self.send(self.http.get(url).bearer_auth(access_token))
            .await
    }

    /// Sends a request and decodes a 2xx JSON body as `T`; maps everything
    /// else to an [`Error`].
    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, Error> {
        let response = request.send().await.map_err(|e| Error::Unreachable {
            url: self.display.clone(),
            detail: transport_detail(&e),
        })?;
        let status = response.status();
        let url = response.url().to_string();
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::UnexpectedResponse {
                url: url.clone(),
                status: status.as_u16(),
                detail: format!("failed to read response body: {}", transport_detail(&e)),
            })?;

        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| Error::UnexpectedResponse {
                url,
                status: status.as_u16(),
                detail: format!("unexpected response body ({e}): {}", snippet(&body)),
            });
        }
        match serde_json::from_slice::<MatrixErrorBody>(&body) {
            Ok(MatrixErrorBody { errcode, error }) => Err(Error::Matrix { errcode, error }),
            Err(_) => Err(Error::UnexpectedResponse {
                url,
                status: status.as_u16(),
                detail: snippet(&body),
            }),
        }
    }
}

fn parse_base_url(raw: &str) -> Result<Url, Error> {
    let invalid = |why: &str| Error::Usage(format!("invalid --url {raw:?}: {why}"));
    let mut url = Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("missing host"));
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// A short, human-readable reason for a transport failure: the innermost
/// cause (e.g. "Connection refused (os error 111)") rather than reqwest's
/// generic "error sending request" wrapper.
fn transport_detail(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "request timed out".to_owned();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut out: String = text.chars().take(BODY_SNIPPET_CHARS).collect();
    if text.chars().count() > BODY_SNIPPET_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    // Expected values computed independently with Python's hmac/hashlib:
    //   hmac.new(key, b"\x00".join([nonce, user, pw, b"notadmin"]), hashlib.sha1).hexdigest()
    #[test]
    fn mac_matches_known_vector_notadmin() {
        assert_eq!(
            registration_mac(b"secret", "abcdef", "alice", "hunter2", false),
            "0bd41f74cb12248a3b9641cb8f93198628290050"
        );
    }

    #[test]
    fn mac_matches_known_vector_admin() {
        assert_eq!(
            registration_mac(
                b"shared-secret-for-tests",
                "nonce123",
                "bob",
                "correct horse",
                true
            ),
            "acd261dd7d546807ead319d54831e22418fc430d"
        );
    }

    #[test]
    fn mac_depends_on_admin_flag() {
        assert_ne!(
            registration_mac(b"k", "n", "u", "p", true),
            registration_mac(b"k", "n", "u", "p", false)
        );
    }

    #[test]
    fn base_url_handling() {
        let c = AdminClient::new("http://127.0.0.1:8008").unwrap();
        assert_eq!(
            c.endpoint(REGISTER_PATH).as_str(),
            "http://127.0.0.1:8008/_synapse/admin/v1/register"
        );
        assert_eq!(c.display, "http://127.0.0.1:8008");
        let c = AdminClient::new("https://hs.example/prefix/?x=1").unwrap();
        assert_eq!(
            c.endpoint(WHOAMI_PATH).as_str(),
            "https://hs.example/prefix/_matrix/client/v3/account/whoami"
        );
        for bad in ["", "127.0.0.1:8008", "localhost:8008", "ftp://x", "http://"] {
            let err = AdminClient::new(bad).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{bad:?} gave {err:?}");
        }
    }

    #[test]
    fn snippet_truncates_and_marks_empty() {
        assert_eq!(snippet(b"  "), "(empty body)");
        assert_eq!(snippet(b" <html> "), "<html>");
        let long = "x".repeat(BODY_SNIPPET_CHARS + 10);
        assert_eq!(
            snippet(long.as_bytes()).chars().count(),
            BODY_SNIPPET_CHARS + 1
        );
    }

    /// A request seen by [`serve`].
    #[derive(Debug)]
    struct Request {
        head: String,
        body: String,
    }

    type Seen = Arc<Mutex<Vec<Request>>>;

    /// Minimal one-request-per-connection HTTP/1.1 server answering with
    /// `respond(method, path, body) -> (status, body)`.
    async fn serve(
        respond: impl Fn(&str, &str, &str) -> (u16, String) + Send + Sync + 'static,
    ) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "client closed early");
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let content_length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().parse::<usize>().unwrap())
                    .unwrap_or(0);
                while buf.len() < head_end + content_length {
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "client closed early");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                let mut words = head.split_whitespace();
                let method = words.next().unwrap().to_owned();
                let path = words.next().unwrap().to_owned();
                let (status, reply) = respond(&method, &path, &body);
                log.lock().unwrap().push(Request { head, body });
                let out = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                sock.write_all(out.as_bytes()).await.unwrap();
                sock.shutdown().await.unwrap();
            }
        });
        (base, seen)
    }

    #[tokio::test]
    async fn register_happy_path_sends_correct_mac() {
        let (base, seen) = serve(|method, path, body| {
            assert_eq!(path, REGISTER_PATH);
            match method {
                "GET" => (200, r#"{"nonce":"abcdef"}"#.to_owned()),
                "POST" => {
                    let v: serde_json::Value = serde_json::from_str(body).unwrap();
                    let user = v["username"].as_str().unwrap();
                    (
                        200,
                        format!(r#"{{"user_id":"@{user}:hs.test","access_token":"t"}}"#),
                    )
                }
                other => panic!("unexpected method {other}"),
            }
        })
        .await;
        let client = AdminClient::new(&base).unwrap();
        let reg = client
            .register("secret", "alice", "hunter2", false)
            .await
            .unwrap();
        assert_eq!(reg.user_id, "@alice:hs.test");

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen[0].head.starts_with("GET "), "{:?}", seen[0]);
        assert!(seen[1].head.starts_with("POST "), "{:?}", seen[1]);
        let posted: serde_json::Value = serde_json::from_str(&seen[1].body).unwrap();
        assert_eq!(
            posted,
            serde_json::json!({
                "nonce": "abcdef",
                "username": "alice",
                "password": "hunter2",
                "admin": false,
                "mac": "0bd41f74cb12248a3b9641cb8f93198628290050",
            })
        );
    }

    #[tokio::test]
    async fn register_maps_matrix_error() {
        let (base, _) = serve(|method, _, _| match method {
            "GET" => (200, r#"{"nonce":"n"}"#.to_owned()),
            _ => (
                400,
                r#"{"errcode":"M_USER_IN_USE","error":"User ID already taken."}"#.to_owned(),
            ),
        })
        .await;
        let err = AdminClient::new(&base)
            .unwrap()
            .register("s", "alice", "pw", true)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Matrix { .. }), "{err:?}");
        assert_eq!(err.to_string(), "M_USER_IN_USE: User ID already taken.");
    }

    #[tokio::test]
    async fn non_matrix_error_body_is_unexpected_response() {
        let (base, _) = serve(|_, _, _| (502, "<html>Bad Gateway</html>".to_owned())).await;
        let err = AdminClient::new(&base)
            .unwrap()
            .register("s", "alice", "pw", false)
            .await
            .unwrap_err();
        match err {
            Error::UnexpectedResponse { status, detail, .. } => {
                assert_eq!(status, 502);
                assert_eq!(detail, "<html>Bad Gateway</html>");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[tokio::test]
    async fn unreachable_server_names_the_url() {
        // Grab a free port, then close it so the connection is refused.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let base = format!("http://127.0.0.1:{port}");
        let err = AdminClient::new(&base)
            .unwrap()
            .register("s", "alice", "pw", false)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("could not reach the server at {base}: ")),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn whoami_sends_bearer_token() {
        let (base, seen) = serve(|_, path, _| {
            assert_eq!(path, WHOAMI_PATH);
            (
                200,
                r#"{"user_id":"@admin:hs.test","device_id":"D"}"#.to_owned(),
            )
        })
        .await;
        let who = AdminClient::new(&base)
            .unwrap()
            .whoami("tok")
            .await
            .unwrap();
        assert_eq!(who.user_id, "@admin:hs.test");
        assert_eq!(who.device_id.as_deref(), Some("D"));
        let seen = seen.lock().unwrap();
        assert!(
            seen[0]
                .head
                .to_ascii_lowercase()
                .contains("\r\nauthorization: bearer tok\r\n"),
            "{:?}",
            seen[0]
        );
    }
}
