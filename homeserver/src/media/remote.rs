//! Other servers' media: fetched over federation's authenticated media endpoint the first
//! time one of our users asks for it, and kept in the store as a media row whose origin is
//! that server (later requests, thumbnails included, are served from here).
//!
//! <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1mediadownloadmediaid>
//!
//! The answer is `multipart/mixed`: a JSON part (metadata, empty today) and the content. The
//! content is streamed into the store with the upload size limit, never held whole in
//! memory. Not yet: a content part that is a `Location` redirect (Synapse sends the bytes
//! inline unless a storage provider redirects), the older unauthenticated
//! `/_matrix/media/v3/download` for servers without authenticated media, and expiry of the
//! cached copies.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use myelin_storage::MediaRow;
use ruma::ServerName;

use super::{headers, not_found};
use crate::{
    auth::now_ms,
    error::{Error, Result},
    federation::FederationError,
    AppState,
};

/// How long a fetch from another server may take (the whole transfer).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

fn bad_gateway(message: impl Into<String>) -> Error {
    Error::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", message)
}

/// Fetches `mxc://server/media_id` from `server` into the store and records it; returns the
/// row (the one a concurrent fetch recorded, if it won).
pub async fn fetch(state: &AppState, server: &ServerName, media_id: &str) -> Result<MediaRow> {
    let path = format!(
        "/_matrix/federation/v1/media/download/{}?timeout_ms=20000",
        crate::federation::client::query_value(media_id)
    );
    let response = state
        .federation
        .get_streamed(server, &path, FETCH_TIMEOUT)
        .await
        .map_err(|e| match e {
            FederationError::Status { status: 404, .. } => not_found(),
            e => {
                tracing::info!(%server, %media_id, error = %e, "fetching remote media failed");
                bad_gateway(format!("Could not fetch the media from {server}"))
            }
        })?;
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let boundary = multipart_boundary(&content_type)
        .ok_or_else(|| bad_gateway(format!("{server} did not answer with multipart content")))?;
    let body = futures_util::stream::unfold(response, |mut response| async move {
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok::<Bytes, reqwest::Error>(chunk), response)),
            Ok(None) => None,
            Err(e) => Some((Err(e), response)),
        }
    });
    let mut parts = multer::Multipart::new(body, boundary);
    let broken = |e: multer::Error| bad_gateway(format!("Bad multipart answer from {server}: {e}"));
    // 1. The metadata (JSON; nothing in it is used yet).
    parts
        .next_field()
        .await
        .map_err(broken)?
        .ok_or_else(|| bad_gateway(format!("{server} sent no metadata part")))?;
    // 2. The content.
    let field = parts
        .next_field()
        .await
        .map_err(broken)?
        .ok_or_else(|| bad_gateway(format!("{server} sent no content part")))?;
    if field.headers().contains_key(http::header::LOCATION) {
        return Err(bad_gateway(format!(
            "{server} redirects to its media elsewhere, which is not followed yet"
        )));
    }
    let part_type = field
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let filename = field.file_name().map(str::to_owned);
    let stored = state
        .media
        .store
        .write(Box::pin(field), state.media.max_upload_size())
        .await
        .map_err(super::write_error)?;
    let row = MediaRow {
        origin: server.to_string(),
        media_id: media_id.to_owned(),
        uploader: None,
        content_type: Some(headers::sanitize_content_type(part_type.as_deref())),
        filename,
        size: Some(stored.size as i64),
        sha256: Some(stored.sha256),
        width: None,
        height: None,
        created_ts: now_ms(),
        unused_expires_ts: None,
    };
    state.storage.insert_remote_media(&row).await?;
    state
        .storage
        .get_media(server.as_str(), media_id)
        .await?
        .ok_or_else(not_found)
}

/// The boundary of a `multipart/mixed` content type (multer's own parser accepts only
/// `multipart/form-data`).
fn multipart_boundary(content_type: &str) -> Option<String> {
    let (essence, params) = content_type.split_once(';')?;
    if !essence.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        (!value.is_empty() && value.len() <= 70).then(|| value.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::multipart_boundary;

    #[test]
    fn boundaries_of_multipart_mixed() {
        assert_eq!(
            multipart_boundary("multipart/mixed; boundary=abc123").as_deref(),
            Some("abc123")
        );
        assert_eq!(
            multipart_boundary("Multipart/Mixed;charset=utf-8; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(multipart_boundary("multipart/form-data; boundary=x"), None);
        assert_eq!(multipart_boundary("multipart/mixed"), None);
        assert_eq!(multipart_boundary("multipart/mixed; boundary="), None);
    }
}
