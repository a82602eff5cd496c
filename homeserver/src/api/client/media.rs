//! The content repository: upload, download, thumbnails, configuration and URL previews.
//!
//! <https://spec.matrix.org/latest/client-server-api/#content-repository>
//!
//! Uploads stream their body ([`RumaStream`]) into the media store; downloads and thumbnails
//! stream files back with the headers `media::headers` builds. Both the authenticated
//! endpoints (`/_matrix/client/v1/media/*`) and the deprecated unauthenticated ones
//! (`/_matrix/media/v3/*`) are served from the same code; the spec's "freeze" of the
//! unauthenticated ones is not applied yet. What is stored and how is decided in `media`; these
//! handlers only translate HTTP.

use std::time::Duration;

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use ruma::{
    api::client::{
        authenticated_media,
        media::{
            create_content, create_content_async, create_mxc_uri, get_content,
            get_content_as_filename, get_content_thumbnail, get_media_config, get_media_preview,
        },
    },
    MilliSecondsSinceUnixEpoch, OwnedMxcUri, ServerName, UInt,
};

use crate::{
    api::ruma::{drain, Ruma, RumaResponse, RumaStream},
    error::{Error, Result},
    media::{self, thumbnail::Method, Content},
    AppState,
};

fn mxc(server_name: &ServerName, media_id: &str) -> OwnedMxcUri {
    OwnedMxcUri::from(format!("mxc://{server_name}/{media_id}"))
}

/// Refuses a body whose declared length is over the limit before reading it.
async fn check_declared_length(
    state: &AppState,
    upload: &mut Option<Body>,
    declared: Option<u64>,
) -> Result<()> {
    let limit = state.media.max_upload_size();
    if declared.is_some_and(|len| len > limit) {
        if let Some(body) = upload.take() {
            drain(body.into_data_stream()).await;
        }
        return Err(Error::too_large(format!(
            "Media is larger than the limit of {limit} bytes"
        )));
    }
    Ok(())
}

/// After a 413 the rest of the body is read, so the client sees the answer rather than a
/// reset connection.
async fn drain_if_too_large<T>(result: &Result<T>, rest: axum::body::BodyDataStream) {
    if let Err(Error::Matrix(e)) = result {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            drain(rest).await;
        }
    }
}

/// POST /_matrix/media/v3/upload
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixmediav3upload>
pub async fn create_content(
    State(state): State<AppState>,
    req: RumaStream<create_content::v3::Request>,
) -> Result<RumaResponse<create_content::v3::Response>> {
    let RumaStream {
        request,
        body,
        content_length,
    } = req;
    let mut body = Some(body);
    check_declared_length(&state, &mut body, content_length).await?;
    let body = body.expect("not taken unless refused");
    let user = request.sender().user_id.to_string();
    let mut stream = body.into_data_stream();
    let result = media::upload(
        &state,
        &user,
        request.content_type.as_deref(),
        request.filename.as_deref(),
        &mut stream,
    )
    .await;
    drain_if_too_large(&result, stream).await;
    let row = result?;
    Ok(RumaResponse(create_content::v3::Response::new(mxc(
        &state.server_name,
        &row.media_id,
    ))))
}

/// POST /_matrix/media/v1/create
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixmediav1create>
pub async fn create_mxc_uri(
    State(state): State<AppState>,
    req: Ruma<create_mxc_uri::v1::Request>,
) -> Result<create_mxc_uri::v1::Response> {
    let (media_id, expires) = media::create_pending(&state, req.sender().user_id.as_str()).await?;
    let mut response = create_mxc_uri::v1::Response::new(mxc(&state.server_name, &media_id));
    response.unused_expires_at = Some(MilliSecondsSinceUnixEpoch(UInt::new_saturating(
        expires.max(0) as u64,
    )));
    Ok(response)
}

/// PUT /_matrix/media/v3/upload/{serverName}/{mediaId}
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixmediav3uploadservernamemediaid>
pub async fn create_content_async(
    State(state): State<AppState>,
    req: RumaStream<create_content_async::v3::Request>,
) -> Result<axum::Json<serde_json::Value>> {
    let RumaStream {
        request,
        body,
        content_length,
    } = req;
    let user = request.sender().user_id.to_string();
    let mut body = Some(body);
    if let Err(e) =
        media::check_pending(&state, &request.server_name, &request.media_id, &user).await
    {
        if let Some(body) = body.take() {
            drain(body.into_data_stream()).await;
        }
        return Err(e);
    }
    check_declared_length(&state, &mut body, content_length).await?;
    let body = body.expect("not taken unless refused");
    let mut stream = body.into_data_stream();
    let result = media::upload_pending(
        &state,
        &request.media_id,
        &user,
        request.content_type.as_deref(),
        request.filename.as_deref(),
        &mut stream,
    )
    .await;
    drain_if_too_large(&result, stream).await;
    result?;
    // ruma's (empty) response type cannot be built outside its crate.
    Ok(axum::Json(serde_json::json!({})))
}

/// The HTTP response for media content: its headers and the file as a stream.
fn content_response(content: Content) -> Response {
    let mut headers = media::headers::media_headers(&content.content_type, &content.disposition);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(content.len));
    let body = match content.body {
        media::Body::File(file) => Body::from_stream(media::store::file_stream(file)),
        media::Body::Bytes(bytes) => Body::from(bytes),
    };
    (headers, body).into_response()
}

async fn download(
    state: &AppState,
    (server_name, media_id): (&ServerName, &str),
    filename: Option<&str>,
    timeout: Duration,
    fetch_remote: bool,
) -> Result<Response> {
    let row = media::find(state, server_name, media_id, timeout, fetch_remote).await?;
    Ok(content_response(
        media::open_content(state, &row, filename).await?,
    ))
}

/// GET /_matrix/client/v1/media/download/{serverName}/{mediaId}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1mediadownloadservernamemediaid>
pub async fn get_content_authenticated(
    State(state): State<AppState>,
    req: Ruma<authenticated_media::get_content::v1::Request>,
) -> Result<Response> {
    download(
        &state,
        (&req.server_name, &req.media_id),
        None,
        req.timeout_ms,
        true,
    )
    .await
}

/// GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1mediadownloadservernamemediaidfilename>
pub async fn get_content_as_filename_authenticated(
    State(state): State<AppState>,
    req: Ruma<authenticated_media::get_content_as_filename::v1::Request>,
) -> Result<Response> {
    download(
        &state,
        (&req.server_name, &req.media_id),
        Some(&req.filename),
        req.timeout_ms,
        true,
    )
    .await
}

/// GET /_matrix/media/v3/download/{serverName}/{mediaId} (deprecated, unauthenticated)
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixmediav3downloadservernamemediaid>
///
/// `allow_remote` and `allow_redirect` are accepted; remote media is not served yet and we
/// never redirect.
// Deprecated in the spec (and so in ruma), still served for older clients.
#[allow(deprecated)]
pub async fn get_content(
    State(state): State<AppState>,
    req: Ruma<get_content::v3::Request>,
) -> Result<Response> {
    download(
        &state,
        (&req.server_name, &req.media_id),
        None,
        req.timeout_ms,
        false,
    )
    .await
}

/// GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName} (deprecated)
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixmediav3downloadservernamemediaidfilename>
// Deprecated in the spec (and so in ruma), still served for older clients.
#[allow(deprecated)]
pub async fn get_content_as_filename(
    State(state): State<AppState>,
    req: Ruma<get_content_as_filename::v3::Request>,
) -> Result<Response> {
    download(
        &state,
        (&req.server_name, &req.media_id),
        Some(&req.filename),
        req.timeout_ms,
        false,
    )
    .await
}

async fn thumbnail(
    state: &AppState,
    server_name: &ServerName,
    media_id: &str,
    (width, height): (UInt, UInt),
    method: Option<&ruma::media::Method>,
    timeout: Duration,
    fetch_remote: bool,
) -> Result<Response> {
    let method = match method {
        None | Some(ruma::media::Method::Scale) => Method::Scale,
        Some(ruma::media::Method::Crop) => Method::Crop,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown thumbnail method {:?}",
                other.as_str()
            )))
        }
    };
    let size = |v: UInt| u32::try_from(u64::from(v)).unwrap_or(u32::MAX);
    let row = media::find(state, server_name, media_id, timeout, fetch_remote).await?;
    let content = media::thumbnail(state, &row, size(width), size(height), method).await?;
    Ok(content_response(content))
}

/// GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1mediathumbnailservernamemediaid>
///
/// `animated` is accepted; thumbnails are never animated (the spec allows that).
pub async fn get_content_thumbnail_authenticated(
    State(state): State<AppState>,
    req: Ruma<authenticated_media::get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    thumbnail(
        &state,
        &req.server_name,
        &req.media_id,
        (req.width, req.height),
        req.method.as_ref(),
        req.timeout_ms,
        true,
    )
    .await
}

/// GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId} (deprecated, unauthenticated)
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixmediav3thumbnailservernamemediaid>
// Deprecated in the spec (and so in ruma), still served for older clients.
#[allow(deprecated)]
pub async fn get_content_thumbnail(
    State(state): State<AppState>,
    req: Ruma<get_content_thumbnail::v3::Request>,
) -> Result<Response> {
    thumbnail(
        &state,
        &req.server_name,
        &req.media_id,
        (req.width, req.height),
        req.method.as_ref(),
        req.timeout_ms,
        false,
    )
    .await
}

/// GET /_matrix/client/v1/media/config
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1mediaconfig>
pub async fn get_media_config_authenticated(
    State(state): State<AppState>,
    _req: Ruma<authenticated_media::get_media_config::v1::Request>,
) -> Result<authenticated_media::get_media_config::v1::Response> {
    Ok(authenticated_media::get_media_config::v1::Response::new(
        UInt::new_saturating(state.media.max_upload_size()),
    ))
}

/// GET /_matrix/media/v3/config (deprecated; needs an access token)
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixmediav3config>
// Deprecated in the spec (and so in ruma), still served for older clients.
#[allow(deprecated)]
pub async fn get_media_config(
    State(state): State<AppState>,
    _req: Ruma<get_media_config::v3::Request>,
) -> Result<get_media_config::v3::Response> {
    Ok(get_media_config::v3::Response::new(UInt::new_saturating(
        state.media.max_upload_size(),
    )))
}

/// The preview of `url`; when previews are off the endpoint does not exist (404
/// `M_UNRECOGNIZED`, as Synapse answers then).
async fn preview(
    state: &AppState,
    user: &str,
    url: &str,
) -> Result<Box<serde_json::value::RawValue>> {
    let value = media::preview_url(state, user, url).await.ok_or_else(|| {
        Error::unrecognized(
            StatusCode::NOT_FOUND,
            "URL previews are disabled on this server",
        )
    })??;
    serde_json::value::to_raw_value(&value).map_err(Error::internal)
}

/// GET /_matrix/client/v1/media/preview_url
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1mediapreview_url>
///
/// `ts` is accepted; pages are fetched now.
pub async fn get_media_preview_authenticated(
    State(state): State<AppState>,
    req: Ruma<authenticated_media::get_media_preview::v1::Request>,
) -> Result<authenticated_media::get_media_preview::v1::Response> {
    let data = preview(&state, req.sender().user_id.as_str(), &req.url).await?;
    Ok(authenticated_media::get_media_preview::v1::Response::from_raw_value(data))
}

/// GET /_matrix/media/v3/preview_url (deprecated)
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixmediav3preview_url>
// Deprecated in the spec (and so in ruma), still served for older clients.
#[allow(deprecated)]
pub async fn get_media_preview(
    State(state): State<AppState>,
    req: Ruma<get_media_preview::v3::Request>,
) -> Result<get_media_preview::v3::Response> {
    let data = preview(&state, req.sender().user_id.as_str(), &req.url).await?;
    Ok(get_media_preview::v3::Response::from_raw_value(data))
}
