//! The `Ruma<T>` extractor and route registration from ruma's endpoint metadata.
//!
//! A handler names the ruma request type it serves; this module does the rest once for every
//! endpoint: it registers the handler on every path and method the metadata lists, checks the
//! access token the endpoint's `Authentication` scheme asks for (before the body is read, so
//! an unauthenticated client cannot make us buffer one), reads the body (bounded in size,
//! time and nesting; UTF-8, JSON, canonical-JSON number range), parses the typed request, and turns the typed
//! response back into HTTP. Handlers therefore only see well-formed, authenticated requests.

use std::{future::Future, net::SocketAddr};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter},
    Router,
};
use bytes::BytesMut;
use futures_util::StreamExt;
use ruma::{
    api::{
        auth_scheme::{
            extract_bearer_or_query_token, AccessToken, AccessTokenOptional,
            AppserviceTokenOptional, NoAccessToken, NoAuthentication,
        },
        error::{DeserializationError, FromHttpRequestError},
        path_builder::PathBuilder,
        IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
    },
    OwnedDeviceId, OwnedUserId,
};

use crate::{error::Error, AppState};

/// How an endpoint authenticates, derived from its ruma `Authentication` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// No access token is looked at.
    None,
    /// A valid access token is required.
    Required,
    /// A token is used if present (and must then be valid).
    Optional,
}

/// Maps ruma's authentication schemes onto what the server checks.
pub trait AuthPolicy {
    const KIND: AuthKind;
}
impl AuthPolicy for NoAuthentication {
    const KIND: AuthKind = AuthKind::None;
}
impl AuthPolicy for NoAccessToken {
    const KIND: AuthKind = AuthKind::None;
}
/// Used by `/register` and `/login`, where application services may identify themselves.
/// Application services are not supported yet, so the token is not looked at.
impl AuthPolicy for AppserviceTokenOptional {
    const KIND: AuthKind = AuthKind::None;
}
impl AuthPolicy for AccessToken {
    const KIND: AuthKind = AuthKind::Required;
}
impl AuthPolicy for AccessTokenOptional {
    const KIND: AuthKind = AuthKind::Optional;
}

/// The authenticated sender of a request.
#[derive(Debug, Clone)]
pub struct Sender {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub is_admin: bool,
}

/// A parsed, authenticated request for the ruma endpoint `T`.
pub struct Ruma<T> {
    pub body: T,
    /// Set when the request carried a valid access token.
    pub sender: Option<Sender>,
    pub client_ip: std::net::IpAddr,
}

impl<T> Ruma<T> {
    /// The sender of an endpoint whose metadata requires an access token.
    pub fn sender(&self) -> &Sender {
        self.sender
            .as_ref()
            .expect("the extractor checked the token this endpoint requires")
    }
}

impl<T> std::ops::Deref for Ruma<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.body
    }
}

/// A typed ruma response, turned into HTTP.
pub struct RumaResponse<R>(pub R);

impl<R: OutgoingResponse> IntoResponse for RumaResponse<R> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(response) => response
                .map(|body| Body::from(body.freeze()))
                .into_response(),
            Err(e) => Error::internal(format!("serializing response: {e}")).into_response(),
        }
    }
}

/// Whether a body should be checked as JSON. Client API bodies are JSON whatever the client
/// labels them (curl sends form encoding, some SDKs text/plain); only bodies declared as media
/// are passed through unchecked, for the endpoints that take raw bytes.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let ct = ct.to_ascii_lowercase();
    !["image/", "video/", "audio/", "application/octet-stream"]
        .iter()
        .any(|p| ct.starts_with(p))
}

/// The largest integer canonical JSON allows (2^53 - 1); larger magnitudes cannot round-trip
/// through every client's JSON parser and are refused.
const MAX_SAFE_INT: u64 = (1 << 53) - 1;

fn check_number_range(value: &serde_json::Value) -> Result<(), Error> {
    match value {
        serde_json::Value::Number(n) => {
            let ok = if let Some(u) = n.as_u64() {
                u <= MAX_SAFE_INT
            } else if let Some(i) = n.as_i64() {
                i.unsigned_abs() <= MAX_SAFE_INT
            } else {
                n.as_f64()
                    .is_some_and(|f| f.is_finite() && f.abs() <= MAX_SAFE_INT as f64)
            };
            if ok {
                Ok(())
            } else {
                Err(Error::bad_json(format!(
                    "number {n} is outside the range of canonical JSON"
                )))
            }
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(check_number_range),
        serde_json::Value::Object(map) => map.values().try_for_each(check_number_range),
        _ => Ok(()),
    }
}

/// Deepest nesting of arrays and objects accepted in a request body.
///
/// serde_json refuses to parse anything nested deeper than 128 levels, and every stored event
/// is parsed again later, wrapped in more levels (an event's content sits inside the PDU, the
/// PDU inside a response). Content that was accepted at 127 levels could therefore never be
/// read back: every `/sync` and `/messages` covering it failed. Half of serde_json's limit
/// leaves room for any wrapping we do, so what is accepted can always be served.
pub const MAX_JSON_DEPTH: usize = 64;

/// Whether JSON `text` nests arrays and objects deeper than [`MAX_JSON_DEPTH`]. A linear scan
/// of the bytes (brackets inside strings do not count), run before parsing so that the parser
/// never meets its own recursion limit.
fn too_deep(text: &str) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Reads the body up to `limit` bytes, and checks that a JSON body is UTF-8, valid JSON,
/// nested at most [`MAX_JSON_DEPTH`] levels and within the canonical-JSON number range.
///
/// The whole body must arrive within `timeout` (else 408): a client trickling bytes would
/// otherwise hold a connection and a buffer for as long as it likes.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<bytes::Bytes, Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        drain(body.into_data_stream()).await;
        return Err(Error::too_large("Request body too large"));
    }
    let mut body = body.into_data_stream();
    let mut bytes = BytesMut::new();
    let read = tokio::time::timeout(timeout, async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|_| {
                Error::unknown(StatusCode::BAD_REQUEST, "Could not read request body")
            })?;
            if bytes.len() + chunk.len() > limit {
                drain(&mut body).await;
                return Err(Error::too_large("Request body too large"));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    })
    .await;
    match read {
        Ok(result) => result?,
        Err(_) => return Err(body_timeout()),
    }
    let bytes = bytes.freeze();
    if !bytes.is_empty() && is_json(headers) {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::not_json("Request body is not UTF-8"))?;
        if too_deep(text) {
            return Err(Error::bad_json(format!(
                "Request body is nested deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::not_json(format!("Request body is not valid JSON: {e}")))?;
        check_number_range(&value)?;
    }
    Ok(bytes)
}

fn body_timeout() -> Error {
    Error::unknown(
        StatusCode::REQUEST_TIMEOUT,
        "Timed out waiting for the request body",
    )
}

/// A request body that must keep coming: each piece must arrive within `idle` of the one
/// before, else the stream ends with an error (for uploads, which may rightly take long in
/// all but must not stall).
pub(crate) fn with_idle_timeout(body: Body, idle: std::time::Duration) -> Body {
    let stream = body.into_data_stream();
    Body::from_stream(futures_util::stream::unfold(
        Some(stream),
        move |stream| async move {
            let mut stream = stream?;
            match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request body stalled",
                    )),
                    None,
                )),
            }
        },
    ))
}

/// How much of an oversized body is read and thrown away before answering 413.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads and discards the rest of a rejected body (up to [`DRAIN_LIMIT`], for at most a few
/// seconds). Closing a connection with unread data makes the kernel send a reset, which
/// clients see instead of our 413.
pub(crate) async fn drain<S, E>(mut stream: S)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let mut seen = 0usize;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

fn deserialization_error(e: FromHttpRequestError) -> Error {
    match e {
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            Error::bad_json(format!("Invalid request body: {e}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(e)) => {
            Error::invalid_param(format!("Invalid query parameters: {e}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Ident(e)) => {
            Error::invalid_param(format!("Invalid identifier: {e}"))
        }
        FromHttpRequestError::Deserialization(e) => {
            Error::bad_json(format!("Invalid request: {e}"))
        }
        FromHttpRequestError::MethodMismatch { .. } => {
            Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        }
        // `FromHttpRequestError` is non-exhaustive.
        #[allow(unreachable_patterns)]
        e => Error::bad_json(format!("Invalid request: {e}")),
    }
}

/// The raw path parameters of a request, in order.
async fn path_args(parts: &mut http::request::Parts, state: &AppState) -> Vec<String> {
    match RawPathParams::from_request_parts(parts, state).await {
        Ok(params) => params.iter().map(|(_, value)| value.to_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

fn client_ip(parts: &http::request::Parts) -> std::net::IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(std::net::Ipv6Addr::LOCALHOST.into())
}

/// Checks the access token endpoint `T`'s metadata asks for.
async fn authenticate<T>(
    state: &AppState,
    request: &http::Request<&[u8]>,
    client_ip: std::net::IpAddr,
) -> Result<Option<Sender>, Error>
where
    T: IncomingRequest,
    T::Authentication: AuthPolicy,
{
    Ok(match <T::Authentication as AuthPolicy>::KIND {
        AuthKind::None => None,
        kind => match extract_bearer_or_query_token(request) {
            Ok(Some(token)) => Some(crate::auth::authenticate(state, &token, client_ip).await?),
            Ok(None) | Err(_) if kind == AuthKind::Optional => None,
            Ok(None) | Err(_) => return Err(Error::missing_token()),
        },
    })
}

/// Parses the typed request from the HTTP request and its path parameters.
fn parse<T: IncomingRequest>(
    request: http::Request<&[u8]>,
    mut path_args: Vec<String>,
) -> Result<T, Error> {
    // `/state/{type}` and `/state/{type}/` name the empty state key: routes registered
    // without the last parameter leave it out, and ruma's parser wants it present.
    let expected = T::PATH_BUILDER
        .all_paths()
        .next()
        .map_or(0, |p| p.matches('{').count());
    while path_args.len() < expected {
        path_args.push(String::new());
    }
    let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
    T::try_from_http_request(request, &args).map_err(deserialization_error)
}

impl<T> FromRequest<AppState> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthPolicy,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        // Boxed: the handler's future (which a waiting long-poll keeps for its whole wait) is
        // as large as its largest state, and extraction, with the token check and the body
        // read, would otherwise be that state.
        Box::pin(extract::<T>(req, state))
            .await
            .map(|(ruma, _)| ruma)
    }
}

/// A [`Ruma`] request together with its body as it came, for the few endpoints that read
/// fields ruma's types do not carry yet (sliding sync's `spaces` and `tags` filters).
pub struct RumaRaw<T> {
    pub request: Ruma<T>,
    /// The checked JSON body.
    pub raw: bytes::Bytes,
}

impl<T> FromRequest<AppState> for RumaRaw<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthPolicy,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        Box::pin(extract::<T>(req, state))
            .await
            .map(|(request, raw)| RumaRaw { request, raw })
    }
}

/// [`Ruma`]'s extraction; also returns the body read.
async fn extract<T>(req: Request, state: &AppState) -> Result<(Ruma<T>, bytes::Bytes), Error>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthPolicy,
{
    let (mut parts, body) = req.into_parts();
    let path_args = path_args(&mut parts, state).await;
    let client_ip = client_ip(&parts);
    // The token is in the headers or the query: check it before reading the body, so
    // nobody without one gets a body buffered.
    let headers_only = http::Request::from_parts(parts, &[][..]);
    let sender = match authenticate::<T>(state, &headers_only, client_ip).await {
        Ok(sender) => sender,
        Err(e) => {
            drain(body.into_data_stream()).await;
            return Err(e);
        }
    };
    let (parts, _) = headers_only.into_parts();
    let mut bytes = read_body(
        body,
        &parts.headers,
        state.config.max_json_body_bytes,
        std::time::Duration::from_secs(state.config.body_read_timeout_seconds),
    )
    .await?;
    // An empty body on a POST or PUT means "no fields", as Synapse reads it: some clients
    // (matrix-nio's join, for one) send nothing where the spec's body is all optional.
    let has_body_method = parts.method == http::Method::POST || parts.method == http::Method::PUT;
    if bytes.is_empty() && has_body_method && is_json(&parts.headers) {
        bytes = bytes::Bytes::from_static(b"{}");
    }
    let request = http::Request::from_parts(parts, &bytes[..]);
    let body = parse::<T>(request, path_args)?;
    Ok((
        Ruma {
            body,
            sender,
            client_ip,
        },
        bytes,
    ))
}

/// A request for endpoint `T` whose body is streamed rather than read (media uploads, which
/// may be far larger than any JSON body). Path, query, headers and the access token are
/// checked exactly as for [`Ruma`]; `request.body` is parsed with an empty body, and the real
/// one is handed over unread, with no size limit of its own: the handler enforces one.
pub struct RumaStream<T> {
    pub request: Ruma<T>,
    pub body: Body,
    /// The declared `Content-Length`, if any.
    pub content_length: Option<u64>,
}

impl<T> FromRequest<AppState> for RumaStream<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthPolicy,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let (mut parts, body) = req.into_parts();
        let path_args = path_args(&mut parts, state).await;
        let client_ip = client_ip(&parts);
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let request = http::Request::from_parts(parts, &[][..]);
        let checked = match authenticate::<T>(state, &request, client_ip).await {
            Ok(sender) => parse::<T>(request, path_args).map(|parsed| (sender, parsed)),
            Err(e) => Err(e),
        };
        match checked {
            Ok((sender, parsed)) => Ok(RumaStream {
                request: Ruma {
                    body: parsed,
                    sender,
                    client_ip,
                },
                body: with_idle_timeout(
                    body,
                    std::time::Duration::from_secs(state.config.body_read_timeout_seconds),
                ),
                content_length,
            }),
            Err(e) => {
                // Answer only after reading what the client sends, as for a too-large body.
                drain(body.into_data_stream()).await;
                Err(e)
            }
        }
    }
}

/// Registers the axum `handler` on every path and the method of endpoint `T`.
fn register<T, H, X>(mut router: Router<AppState>, handler: H) -> Router<AppState>
where
    T: IncomingRequest,
    H: axum::handler::Handler<X, AppState> + Clone,
    X: 'static,
{
    let filter = MethodFilter::try_from(T::METHOD).expect("ruma endpoints use standard methods");
    for path in T::PATH_BUILDER.all_paths() {
        router = router.route(path, on(filter, handler.clone()));
        // A trailing state key may be empty: serve `/state/{type}` and `/state/{type}/` too.
        if let Some(prefix) = path
            .strip_suffix("/{state_key}")
            .or_else(|| path.strip_suffix("/{stateKey}"))
        {
            router = router.route(prefix, on(filter, handler.clone()));
            router = router.route(&format!("{prefix}/"), on(filter, handler.clone()));
        }
    }
    router
}

/// Registers `handler` for endpoint `T` on every path its metadata lists.
pub fn route<T, F, Fut>(router: Router<AppState>, handler: F) -> Router<AppState>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthPolicy,
    T::OutgoingResponse: Send,
    F: Fn(State<AppState>, Ruma<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T::OutgoingResponse, Error>> + Send + 'static,
{
    route_raw::<T, _, _, _>(router, move |state, request| {
        let handler = handler.clone();
        async move { handler(state, request).await.map(RumaResponse) }
    })
}

/// Like [`route`], for a handler that builds its HTTP response itself (where ruma's response
/// type cannot say what the spec asks).
pub fn route_raw<T, F, Fut, R>(router: Router<AppState>, handler: F) -> Router<AppState>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthPolicy,
    F: Fn(State<AppState>, Ruma<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
    R: IntoResponse + 'static,
{
    register::<T, _, _>(router, handler)
}

/// Like [`route_raw`], for a handler that also reads the body as it came ([`RumaRaw`]).
pub fn route_with_body<T, F, Fut, R>(router: Router<AppState>, handler: F) -> Router<AppState>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthPolicy,
    F: Fn(State<AppState>, RumaRaw<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
    R: IntoResponse + 'static,
{
    register::<T, _, _>(router, handler)
}

/// Like [`route_raw`], for a handler that reads the request body as a stream ([`RumaStream`]).
pub fn route_stream<T, F, Fut, R>(router: Router<AppState>, handler: F) -> Router<AppState>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthPolicy,
    F: Fn(State<AppState>, RumaStream<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
    R: IntoResponse + 'static,
{
    register::<T, _, _>(router, handler)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_number_range() {
        assert!(check_number_range(&json!({"a": [1, -5, 9007199254740991_u64]})).is_ok());
        assert!(check_number_range(&json!({"a": -9007199254740991_i64})).is_ok());
        assert!(check_number_range(&json!({"a": 9007199254740992_u64})).is_err());
        assert!(check_number_range(&json!({"a": {"b": [-9007199254740992_i64]}})).is_err());
        assert!(check_number_range(&json!({"a": 1e300})).is_err());
        assert!(check_number_range(&json!({"a": 1.5})).is_ok());
    }

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn nesting_depth() {
        assert!(!too_deep(&nested(MAX_JSON_DEPTH)));
        assert!(too_deep(&nested(MAX_JSON_DEPTH + 1)));
        // Brackets inside strings, escaped quotes included, are text.
        let text = format!(r#"{{"a": "{}\"[[", "b": {}}}"#, "[".repeat(200), nested(10));
        assert!(!too_deep(&text));
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
    }
}
