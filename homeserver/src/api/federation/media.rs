//! Our media, for other servers (authenticated media over federation).
//!
//! <https://spec.matrix.org/latest/server-server-api/#content-repository>
//!
//! Both endpoints answer `multipart/mixed`: an (empty) JSON metadata part, then the content
//! streamed from the store. Only media uploaded here is served; what we cached of a third
//! server's media is not passed on.

use std::time::Duration;

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use bytes::Bytes;
use futures_util::StreamExt;

use super::url_pairs;
use crate::{
    error::Error,
    federation::inbound::ServerRequest,
    media::{self, thumbnail::Method, Content},
    AppState,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(
            "/_matrix/federation/v1/media/download/{media_id}",
            get(get_content),
        )
        .route(
            "/_matrix/federation/v1/media/thumbnail/{media_id}",
            get(get_content_thumbnail),
        )
}

/// A query parameter of the request.
fn param(request: &ServerRequest, name: &str) -> Option<String> {
    url_pairs(&request.parts.uri)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn timeout(request: &ServerRequest) -> Duration {
    let ms = param(request, "timeout_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(20_000);
    Duration::from_millis(ms)
}

/// `content` as the spec's `multipart/mixed` answer: metadata part, then the content part.
fn multipart(content: Content) -> Response {
    let boundary = crate::auth::random_string(32);
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n\
         --{boundary}\r\nContent-Type: {}\r\nContent-Disposition: {}\r\n\r\n",
        content.content_type, content.disposition
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let len = head.len() as u64 + content.len + tail.len() as u64;
    let middle = match content.body {
        media::Body::File(file) => media::store::file_stream(file).boxed(),
        media::Body::Bytes(bytes) => futures_util::stream::once(async { Ok(bytes) }).boxed(),
    };
    let stream = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(middle)
        .chain(futures_util::stream::once(async move {
            Ok::<_, std::io::Error>(Bytes::from(tail))
        }));
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// GET /_matrix/federation/v1/media/download/{mediaId}
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1mediadownloadmediaid>
async fn get_content(
    State(state): State<AppState>,
    axum::extract::Path(media_id): axum::extract::Path<String>,
    request: ServerRequest,
) -> Result<Response, Error> {
    let row = media::find(
        &state,
        &state.server_name,
        &media_id,
        timeout(&request),
        false,
    )
    .await?;
    Ok(multipart(media::open_content(&state, &row, None).await?))
}

/// GET /_matrix/federation/v1/media/thumbnail/{mediaId}
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1mediathumbnailmediaid>
async fn get_content_thumbnail(
    State(state): State<AppState>,
    axum::extract::Path(media_id): axum::extract::Path<String>,
    request: ServerRequest,
) -> Result<Response, Error> {
    let size = |name: &str| -> Result<u32, Error> {
        param(&request, name)
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| Error::invalid_param(format!("{name} must be a positive integer")))
    };
    let (width, height) = (size("width")?, size("height")?);
    let method = match param(&request, "method").as_deref() {
        None | Some("scale") => Method::Scale,
        Some("crop") => Method::Crop,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown thumbnail method {other:?}"
            )))
        }
    };
    let row = media::find(
        &state,
        &state.server_name,
        &media_id,
        timeout(&request),
        false,
    )
    .await?;
    Ok(multipart(
        media::thumbnail(&state, &row, width, height, method).await?,
    ))
}
