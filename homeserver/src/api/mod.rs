//! HTTP routing: the client-server API (typed through [`ruma`]), the Synapse-compatible admin
//! endpoints, server keys, `/health`, and the Matrix-shaped answers for unknown paths and
//! methods.

pub mod client;
pub mod federation;
pub mod key;
pub mod ruma;
pub mod synapse_admin;

use axum::{
    extract::State,
    http::{header, Method, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use serde::de::DeserializeOwned;
use tower_http::cors::{Any, CorsLayer};

use crate::{error::Error, AppState};

/// The whole HTTP surface of the server.
pub fn router(state: AppState) -> Router {
    let router = Router::new().route("/health", get(health));
    let router = client::routes(router);
    let router = synapse_admin::routes(router);
    let router = key::routes(router);
    router
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        // One middleware for both, not two: each `from_fn` layer boxes its future, and a
        // waiting long-poll would carry both boxes.
        .layer(axum::middleware::from_fn(timed_to_completion))
        // Browsers (Element Web) call the API cross-origin; the spec asks for these headers.
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::DELETE,
                    Method::OPTIONS,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::ACCEPT,
                    "x-requested-with".parse().expect("valid header"),
                ]),
        )
        .with_state(state)
}

/// [`server_timing`] around [`run_to_completion`].
async fn timed_to_completion(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    server_timing(request, |request| run_to_completion(request, next)).await
}

/// Adds `Server-Timing: app;dur=<ms>` to every response: the time from the request reaching
/// the router until the response head is ready (for a long-poll `/sync`, that includes the
/// wait). Lets operators and the benchmarks tell server time from network time.
async fn server_timing<F: std::future::Future<Output = axum::response::Response>>(
    request: axum::extract::Request,
    next: impl FnOnce(axum::extract::Request) -> F,
) -> axum::response::Response {
    let start = std::time::Instant::now();
    let mut response = next(request).await;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = header::HeaderValue::from_str(&format!("app;dur={ms:.3}")) {
        response.headers_mut().insert("server-timing", value);
    }
    response
}

/// Runs every request that may change something (any method but GET, HEAD and OPTIONS) in
/// its own task, so that it runs to the end even if the client hangs up.
///
/// hyper drops a request's future when its connection closes. A write's effect is committed
/// by one await (the transaction's commit) and followed by work in memory: invalidating the
/// access-token cache after a logout, waking the syncs that wait for account data, moving a
/// room's head. Dropped between the two, the change would be in the database but not in the
/// process (a logged-out token that keeps working, account data never delivered), and a
/// multi-step operation (creating a room, propagating a profile into every room) would stop
/// half-way. So writes are not cancellable, as in Synapse, where only chosen read endpoints
/// are. Reads (GET) stay cancellable: a long-poll `/sync` whose client went away stops at
/// once (and does not mark messages delivered to a device that never got them).
async fn run_to_completion(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(e) => {
            // A panic in a handler (a bug): the client gets a 500 like any internal error.
            tracing::error!(error = %e, "request task failed");
            Error::internal("request task failed").into_response()
        }
    }
}

/// `GET /health`: 200 once the server can reach its database, 503 otherwise.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    match state.storage.ping().await {
        Ok(()) => (StatusCode::OK, "OK"),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

async fn unknown_endpoint() -> Error {
    Error::unrecognized(StatusCode::NOT_FOUND, "Unrecognized request")
}

async fn method_not_allowed() -> Error {
    Error::unrecognized(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed for this endpoint",
    )
}

/// Reads and parses a JSON body for the endpoints ruma has no types for, with the same limits
/// and errors as the typed ones.
pub async fn json_body<T: DeserializeOwned>(
    state: &AppState,
    request: axum::extract::Request,
) -> Result<T, Error> {
    let (parts, body) = request.into_parts();
    let bytes = ruma::read_body(
        body,
        &parts.headers,
        state.config.max_json_body_bytes,
        std::time::Duration::from_secs(state.config.body_read_timeout_seconds),
    )
    .await?;
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
    serde_json::from_slice(bytes).map_err(|e| Error::bad_json(format!("Invalid request body: {e}")))
}

/// The sender of a request to an endpoint outside ruma's types, which must be a server admin.
/// Takes the request's parts so no borrow of the (non-`Sync`) body is held across the await.
pub async fn require_admin(
    state: &AppState,
    parts: &http::request::Parts,
) -> Result<ruma::Sender, Error> {
    let (token, ip) = admin_credentials(parts)?;
    let sender = crate::auth::authenticate(state, &token, ip).await?;
    if !sender.is_admin {
        return Err(Error::forbidden("You are not a server admin"));
    }
    Ok(sender)
}

fn admin_credentials(parts: &http::request::Parts) -> Result<(String, std::net::IpAddr), Error> {
    let probe = http::Request::builder().uri(parts.uri.clone());
    let probe = parts
        .headers
        .iter()
        .fold(probe, |b, (k, v)| b.header(k, v))
        .body(())
        .map_err(Error::internal)?;
    let token = ::ruma::api::auth_scheme::extract_bearer_or_query_token(&probe)
        .ok()
        .flatten()
        .ok_or_else(Error::missing_token)?;
    let ip = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::Ipv6Addr::LOCALHOST.into());
    Ok((token, ip))
}
