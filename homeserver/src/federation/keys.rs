//! Other servers' signing keys: from storage while valid, else fetched from the server
//! itself (`GET /_matrix/key/v2/server`), checked by the federation crate and stored.
//! The documents fetched are kept as served, so that we answer notary queries for others
//! (`api::key`). Missing so far: asking notaries ourselves when a server cannot be reached.

use myelin_federation::server_keys::check_server_keys;
use myelin_storage::RemoteKey;
use ruma::ServerName;

use crate::{auth::now_ms, error::Error, AppState};

/// The public key (unpadded base64) `key_id` of `server`, usable for something signed now;
/// `None` when the server does not have (or no longer uses) such a key.
pub async fn verify_key(
    state: &AppState,
    server: &ServerName,
    key_id: &str,
) -> Result<Option<String>, Error> {
    verify_key_at(state, server, key_id, now_ms()).await
}

/// The public key `key_id` of `server` for something signed at `ts` (an event's
/// `origin_server_ts`): a current key, or an old one that expired after `ts`. A key we do not
/// hold (or hold only as expired before `ts`) makes us fetch the server's keys, at most once
/// a minute per server (`FederationClient::may_fetch_keys`).
pub async fn verify_key_at(
    state: &AppState,
    server: &ServerName,
    key_id: &str,
    ts: i64,
) -> Result<Option<String>, Error> {
    // A key signs what was signed before it expired (old keys) or, for a current key, before
    // the validity it was published with ends (the spec's rule for events; for a request
    // `ts` is now).
    let usable = |key: &RemoteKey| match key.expired_ts {
        Some(expired) => expired > ts,
        None => key.valid_until_ts > ts,
    };
    let cache_key = (server.to_string(), key_id.to_owned());
    if let Some(key) = state.remote_keys.get(&cache_key) {
        if usable(&key) {
            return Ok(Some(key.public_key));
        }
    }
    let stored = state.storage.remote_key(server.as_str(), key_id).await?;
    if let Some(key) = stored {
        if usable(&key) {
            let public_key = key.public_key.clone();
            state.remote_keys.insert(cache_key, key);
            return Ok(Some(public_key));
        }
    }
    if !state.federation.may_fetch_keys(server) {
        // Fetched a moment ago: what we hold is all there is.
        return Ok(None);
    }
    let keys = fetch(state, server).await?;
    Ok(keys
        .into_iter()
        .find(|k| k.key_id == key_id && usable(k))
        .map(|k| k.public_key))
}

/// Fetches `server`'s keys from itself, checks and stores them.
async fn fetch(state: &AppState, server: &ServerName) -> Result<Vec<RemoteKey>, Error> {
    let body = state
        .federation
        .get_json_unsigned(server, "/_matrix/key/v2/server")
        .await
        .map_err(|e| {
            tracing::info!(%server, error = %e, "could not fetch a server's keys");
            Error::unauthorized(format!("Cannot fetch the keys of {server}"))
        })?;
    let bytes = serde_json::to_vec(&body).map_err(Error::internal)?;
    let now = now_ms();
    let checked = check_server_keys(&bytes, server, now as u64).map_err(|e| {
        tracing::info!(%server, error = %e, "a server's key document was refused");
        Error::unauthorized(format!("The keys of {server} do not check out: {e}"))
    })?;
    let valid_until = i64::try_from(checked.valid_until_ts).unwrap_or(i64::MAX);
    let mut keys: Vec<RemoteKey> = checked
        .verify_keys
        .into_iter()
        .map(|(key_id, public_key)| RemoteKey {
            server_name: server.to_string(),
            key_id,
            public_key,
            valid_until_ts: valid_until,
            expired_ts: None,
        })
        .collect();
    keys.extend(
        checked
            .old_verify_keys
            .into_iter()
            .map(|(key_id, (public_key, expired))| RemoteKey {
                server_name: server.to_string(),
                key_id,
                public_key,
                valid_until_ts: valid_until,
                expired_ts: Some(i64::try_from(expired).unwrap_or(i64::MAX)),
            }),
    );
    let document = serde_json::to_string(&body).map_err(Error::internal)?;
    state
        .storage
        .store_remote_keys(&keys, Some((server.as_str(), &document, valid_until)), now)
        .await?;
    state
        .remote_keys
        .remove_where(|key| key.server_name == server.as_str());
    Ok(keys)
}

/// `server`'s key document as it served it, valid at least until `minimum_valid_until`
/// (ms): the stored one, else fetched now (at most once a minute per server, so notary
/// queries cannot make us hammer anyone). `None` when there is none to give.
pub async fn notary_document(
    state: &AppState,
    server: &ServerName,
    minimum_valid_until: i64,
) -> Result<Option<ruma::CanonicalJsonObject>, Error> {
    let fresh = |stored: Option<(String, i64)>| {
        stored
            .filter(|(_, valid_until)| *valid_until >= minimum_valid_until)
            .and_then(|(text, _)| serde_json::from_str(&text).ok())
    };
    if let Some(document) = fresh(state.storage.remote_key_document(server.as_str()).await?) {
        return Ok(Some(document));
    }
    if !state.federation.allows(server) || !state.federation.may_fetch_keys(server) {
        return Ok(None);
    }
    if fetch(state, server).await.is_err() {
        return Ok(None);
    }
    Ok(fresh(
        state.storage.remote_key_document(server.as_str()).await?,
    ))
}
