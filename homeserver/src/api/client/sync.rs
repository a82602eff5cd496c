//! `GET /sync` and filters.
//!
//! <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3sync>
//! <https://spec.matrix.org/latest/client-server-api/#filtering>

use std::time::Duration;

use axum::{extract::State, response::IntoResponse};
use ruma::api::client::{
    filter::{create_filter, get_filter, FilterDefinition},
    sync::sync_events,
};

use crate::{
    api::ruma::Ruma,
    auth::now_ms,
    error::{Error, Result},
    sync::{filter::SyncFilter, parse_token, sync, SyncRequest},
    AppState,
};

/// The longest a sync may wait; longer timeouts are shortened to this.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

async fn load_filter(state: &AppState, user: &str, filter_id: &str) -> Result<FilterDefinition> {
    let id: i64 = filter_id
        .parse()
        .map_err(|_| Error::invalid_param("Unknown filter"))?;
    let json = state
        .storage
        .get_filter(user, id)
        .await?
        .ok_or_else(|| Error::invalid_param("Unknown filter"))?;
    serde_json::from_str(&json).map_err(Error::internal)
}

/// GET /_matrix/client/v3/sync
///
/// The request comes boxed (see `client::routes`): an `async fn`'s arguments stay in its
/// future, and a waiting long-poll would keep the whole parsed request (1.1 KiB) for nothing.
pub async fn sync_events(
    State(state): State<AppState>,
    req: Box<Ruma<sync_events::v3::Request>>,
) -> Result<axum::response::Response> {
    // Only what the sync needs is kept while it waits: the parsed request and the filter
    // definition are dropped here, which keeps an idle long-poll small (see the benchmark).
    // The steps before the wait are boxed: a future is as large as its largest state, so
    // inline they would make every waiting sync carry their space (4 KiB instead of 1).
    let parsed = Box::pin(parse_request(&state, req)).await?;
    if let Some(since) = parsed.since {
        // Presenting a token acknowledges the to-device messages up to it.
        Box::pin(crate::sync::e2ee::acknowledge(
            &state,
            parsed.user.as_str(),
            parsed.device.as_str(),
            since.position,
        ))
        .await;
    }
    let request = SyncRequest {
        user: &parsed.user,
        device: &parsed.device,
        since: parsed.since.map(|t| t.position),
        since_typing: parsed.since.map_or(0, |t| t.typing),
        since_presence: parsed.since.map_or(0, |t| t.presence),
        full_state: parsed.full_state,
        filter: parsed.filter,
        timeout: parsed.timeout,
    };
    // Syncing marks the user active (unless they ask otherwise) and, while it waits, counts
    // as an open connection for presence.
    let presence = parsed.set_presence.filter(|p| p != "offline");
    if let Some(set) = &presence {
        Box::pin(crate::presence_connected(&state, parsed.user.as_str(), set)).await;
    }
    let response = sync(&state, &request).await;
    if presence.is_some() {
        state.presence.disconnected(parsed.user.as_str(), now_ms());
    }
    let body = response?.to_json();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// A `/sync` request, reduced to what the engine needs.
struct ParsedSync {
    user: ruma::OwnedUserId,
    device: ruma::OwnedDeviceId,
    since: Option<crate::sync::Token>,
    full_state: bool,
    filter: SyncFilter,
    timeout: Duration,
    /// `None` when presence is disabled.
    set_presence: Option<String>,
}

async fn parse_request(
    state: &AppState,
    req: Box<Ruma<sync_events::v3::Request>>,
) -> Result<ParsedSync> {
    let sender = req.sender();
    let filter = match &req.body.filter {
        None => SyncFilter::from_definition(&FilterDefinition::default()),
        Some(sync_events::v3::Filter::FilterDefinition(def)) => SyncFilter::from_definition(def),
        Some(sync_events::v3::Filter::FilterId(id)) => {
            SyncFilter::from_definition(&load_filter(state, sender.user_id.as_str(), id).await?)
        }
        Some(_) => SyncFilter::from_definition(&FilterDefinition::default()),
    };
    Ok(ParsedSync {
        user: sender.user_id.clone(),
        device: sender.device_id.clone(),
        since: req.body.since.as_deref().map(parse_token).transpose()?,
        full_state: req.body.full_state,
        filter,
        timeout: req.body.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        set_presence: state
            .config
            .presence
            .enabled
            .then(|| req.body.set_presence.to_string()),
    })
}

/// POST /_matrix/client/v3/user/{userId}/filter
pub async fn create_filter(
    State(state): State<AppState>,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    let user = &req.sender().user_id;
    if *user != req.body.user_id {
        return Err(Error::forbidden(
            "You cannot create filters for other users",
        ));
    }
    let json = serde_json::to_string(&req.body.filter).map_err(Error::internal)?;
    let id = state.storage.create_filter(user.as_str(), &json).await?;
    Ok(create_filter::v3::Response::new(id.to_string()))
}

/// GET /_matrix/client/v3/user/{userId}/filter/{filterId}
pub async fn get_filter(
    State(state): State<AppState>,
    req: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response> {
    let user = &req.sender().user_id;
    if *user != req.body.user_id {
        return Err(Error::forbidden("You cannot read other users' filters"));
    }
    let id: i64 = req
        .body
        .filter_id
        .parse()
        .map_err(|_| Error::not_found("No such filter"))?;
    let json = state
        .storage
        .get_filter(user.as_str(), id)
        .await?
        .ok_or_else(|| Error::not_found("No such filter"))?;
    let def: FilterDefinition = serde_json::from_str(&json).map_err(Error::internal)?;
    Ok(get_filter::v3::Response::new(def))
}
