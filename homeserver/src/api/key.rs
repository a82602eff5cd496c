//! Publishing the server's signing key (`GET /_matrix/key/v2/server`), and answering notary
//! queries for other servers' keys (`/_matrix/key/v2/query`).
//!
//! <https://spec.matrix.org/latest/server-server-api/#publishing-keys>
//! <https://spec.matrix.org/latest/server-server-api/#querying-keys-through-another-server>

use std::collections::BTreeMap;

use axum::{
    extract::{Path, Query, State},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{auth::now_ms, error::Error, AppState};

/// Most servers one notary query may name.
const MAX_SERVERS_PER_QUERY: usize = 100;

/// How long peers may cache our key before asking again.
const KEY_VALIDITY_MS: i64 = 7 * 24 * 60 * 60 * 1000;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/_matrix/key/v2/server", get(get_server_keys))
        .route("/_matrix/key/v2/query", post(get_remote_server_keys_batch))
        .route(
            "/_matrix/key/v2/query/{server_name}",
            get(get_remote_server_keys),
        )
}

/// GET /_matrix/key/v2/server
///
/// This server's current verify key, self-signed.
async fn get_server_keys(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Error> {
    let valid_until = (now_ms() + KEY_VALIDITY_MS) as u64;
    let doc = state
        .signing_key
        .server_keys_document(state.server_name.as_str(), valid_until)
        .map_err(Error::internal)?;
    Ok(Json(serde_json::to_value(doc).map_err(Error::internal)?))
}

/// The key document of `server` for a notary answer, countersigned by us: ours, or the one
/// the server served us (stored or fetched now) valid until at least `minimum_valid_until`.
/// `None` when there is none to give (unknown, unreachable, refused or invalid name).
async fn notary_answer(
    state: &AppState,
    server: &str,
    minimum_valid_until: i64,
) -> Result<Option<Value>, Error> {
    let Ok(server) = ruma::ServerName::parse(server) else {
        return Ok(None);
    };
    if server == state.server_name {
        let valid_until = (now_ms() + KEY_VALIDITY_MS) as u64;
        let doc = state
            .signing_key
            .server_keys_document(state.server_name.as_str(), valid_until)
            .map_err(Error::internal)?;
        return Ok(Some(serde_json::to_value(doc).map_err(Error::internal)?));
    }
    let Some(mut document) =
        crate::federation::keys::notary_document(state, &server, minimum_valid_until).await?
    else {
        return Ok(None);
    };
    state
        .signing_key
        .sign_json(state.server_name.as_str(), &mut document)
        .map_err(Error::internal)?;
    Ok(Some(
        serde_json::to_value(document).map_err(Error::internal)?,
    ))
}

#[derive(Deserialize)]
struct MinimumValidUntil {
    minimum_valid_until_ts: Option<i64>,
}

/// GET /_matrix/key/v2/query/{serverName}
///
/// Another server's keys as it served them to us, countersigned (an empty list when we have
/// none to give).
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixkeyv2queryservername>
async fn get_remote_server_keys(
    State(state): State<AppState>,
    Path(server_name): Path<String>,
    Query(query): Query<MinimumValidUntil>,
) -> Result<Json<Value>, Error> {
    let minimum = query.minimum_valid_until_ts.unwrap_or_else(now_ms);
    let keys: Vec<Value> = notary_answer(&state, &server_name, minimum)
        .await?
        .into_iter()
        .collect();
    Ok(Json(json!({ "server_keys": keys })))
}

#[derive(Deserialize)]
struct BatchQuery {
    /// Server → key ID → `{ minimum_valid_until_ts }` (the key IDs only narrow nothing here:
    /// a server's whole document is returned, as Synapse does).
    server_keys: BTreeMap<String, BTreeMap<String, MinimumValidUntil>>,
}

/// POST /_matrix/key/v2/query
///
/// <https://spec.matrix.org/latest/server-server-api/#post_matrixkeyv2query>
async fn get_remote_server_keys_batch(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    let query: BatchQuery =
        serde_json::from_slice(&body).map_err(|e| Error::bad_json(format!("Invalid body: {e}")))?;
    if query.server_keys.len() > MAX_SERVERS_PER_QUERY {
        return Err(Error::invalid_param(format!(
            "At most {MAX_SERVERS_PER_QUERY} servers per query"
        )));
    }
    let now = now_ms();
    let answers = futures_util::future::join_all(query.server_keys.iter().map(|(server, keys)| {
        let minimum = keys
            .values()
            .filter_map(|k| k.minimum_valid_until_ts)
            .max()
            .unwrap_or(now);
        let state = &state;
        async move { notary_answer(state, server, minimum).await }
    }))
    .await;
    let mut keys = Vec::new();
    for answer in answers {
        keys.extend(answer?);
    }
    Ok(Json(json!({ "server_keys": keys })))
}
