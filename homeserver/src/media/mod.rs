//! The media repository: uploads, downloads, thumbnails and URL previews.
//!
//! <https://spec.matrix.org/latest/client-server-api/#content-repository>
//!
//! - [`store`]: content-addressed files under `<data_dir>/media/`, written by streaming (never
//!   the whole body in memory), hashed with SHA-256 and size-limited while they arrive.
//! - [`thumbnail`]: the spec's crop/scale rules as pure functions, and bounded decoding and
//!   resizing with the `image` crate (on the blocking pool, a few at a time).
//! - [`headers`]: `Content-Disposition`, inline-or-attachment, security headers.
//! - [`preview`]: URL previews, which never reach private addresses ([`crate::outbound`]).
//!
//! This module decides what is stored and served; the HTTP handlers
//! (`api::client::media`) only translate requests and responses. Rows live in storage's
//! `media` and `media_thumbnails` tables; the database never holds bytes.
//!
//! - [`remote`]: other servers' media, fetched over federation into the store on first use
//!   and then served like ours (rows whose `origin` is that server).

pub mod headers;
pub mod preview;
pub mod remote;
pub mod store;
pub mod thumbnail;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Weak},
    time::Duration,
};

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::Stream;
use myelin_storage::{MediaRow, PendingUpload, ThumbnailRow};
use rand::{distributions::Alphanumeric, Rng};
use ruma::ServerName;
use serde_json::{json, Map, Value};
use tokio::sync::{Notify, Semaphore};

use crate::{
    auth::now_ms,
    config::MediaConfig,
    error::{Error, Result},
    AppState,
};
use store::{Store, WriteError};
use thumbnail::{Candidate, Method, Plan, ThumbnailError};

/// Length of the media IDs we make (Synapse's length; 24 alphanumerics are ~142 bits).
const MEDIA_ID_LEN: usize = 24;
/// Longest a download waits for a pending upload, whatever `timeout_ms` says.
const MAX_DOWNLOAD_WAIT: Duration = Duration::from_secs(60);
/// A media ID keeps at most this many cached thumbnails; beyond that requests for new sizes
/// are made but not stored, so one image cannot fill the disk with sizes.
const MAX_THUMBNAILS_PER_MEDIA: usize = 32;

/// The media repository's shared state, one per process (in [`AppState`]).
pub struct Media {
    pub store: Store,
    config: MediaConfig,
    /// Decoding an image takes up to [`thumbnail::MAX_DECODE_BYTES`] and a core; at most this
    /// many run at once, so parallel thumbnail requests cannot exhaust memory.
    decode_permits: Semaphore,
    /// One thumbnail generation per media at a time: a request for a size being made (for
    /// instance by the generation right after upload) waits and then finds it stored, instead
    /// of decoding the same image again. Weak, so finished entries cost nothing; std mutex
    /// because it is held only to look up the map, never across an await.
    generating: std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// Woken when content arrives for a pending media ID (downloads waiting for it re-check).
    uploaded: Notify,
    /// The HTTP client for URL previews; `None` when previews are off.
    fetcher: Option<preview::Fetcher>,
    /// The only sizes thumbnails are made in (`media.thumbnail_sizes`, checked at start-up).
    thumbnail_sizes: Vec<thumbnail::Size>,
}

impl Media {
    /// Opens the store under `<data_dir>/media` and builds the preview client if previews are on.
    pub fn new(data_dir: &Path, config: &MediaConfig) -> std::io::Result<Media> {
        let fetcher = if config.url_preview_enabled {
            let filter = crate::outbound::IpFilter::new(&config.url_preview_ip_range_allowlist);
            Some(preview::Fetcher::new(filter).map_err(std::io::Error::other)?)
        } else {
            None
        };
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Media {
            store: Store::open(data_dir.join("media"))?,
            config: config.clone(),
            decode_permits: Semaphore::new(parallel.clamp(1, 4)),
            generating: Default::default(),
            uploaded: Notify::new(),
            fetcher,
            thumbnail_sizes: config
                .thumbnail_sizes
                .iter()
                .filter_map(|size| thumbnail::parse_size(size))
                .collect(),
        })
    }

    pub fn max_upload_size(&self) -> u64 {
        self.config.max_upload_size
    }

    fn generation_lock(&self, row: &MediaRow) -> Arc<tokio::sync::Mutex<()>> {
        self.lock_for(format!("{}/{}", row.origin, row.media_id))
    }

    /// The lock under which `key` is worked on (thumbnails made, remote media fetched).
    fn lock_for(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.generating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = map.get(&key).and_then(Weak::upgrade) {
            return lock;
        }
        if map.len() > 1024 {
            map.retain(|_, lock| lock.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key, Arc::downgrade(&lock));
        lock
    }
}

/// A new random media ID.
fn new_media_id() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(MEDIA_ID_LEN)
        .map(char::from)
        .collect()
}

/// The spec's media ID alphabet (`A-Za-z0-9`, `_`, `-`): anything else cannot be ours.
fn is_valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn not_found() -> Error {
    Error::not_found("Media not found")
}

fn write_error(e: WriteError) -> Error {
    match e {
        WriteError::TooLarge(limit) => {
            Error::too_large(format!("Media is larger than the limit of {limit} bytes"))
        }
        WriteError::Source(why) => Error::unknown(
            StatusCode::BAD_REQUEST,
            format!("Could not read the content: {why}"),
        ),
        WriteError::Io(e) => Error::internal(format!("media store: {e}")),
    }
}

/// `POST /upload`: streams `content` into the store and records it as new media of
/// `uploader`. Thumbnails of images are started in the background.
pub async fn upload<S, E>(
    state: &AppState,
    uploader: &str,
    content_type: Option<&str>,
    filename: Option<&str>,
    content: S,
) -> Result<MediaRow>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let stored = state
        .media
        .store
        .write(content, state.media.max_upload_size())
        .await
        .map_err(write_error)?;
    let row = MediaRow {
        origin: state.server_name.to_string(),
        media_id: new_media_id(),
        uploader: Some(uploader.to_owned()),
        content_type: Some(headers::sanitize_content_type(content_type)),
        filename: filename.map(str::to_owned),
        size: Some(stored.size as i64),
        sha256: Some(stored.sha256),
        width: None,
        height: None,
        created_ts: now_ms(),
        unused_expires_ts: None,
    };
    state.storage.insert_media(&row).await?;
    pregenerate_thumbnails(state, &row);
    Ok(row)
}

/// `POST /create`: a media ID to upload to later. Returns it with its expiry.
pub async fn create_pending(state: &AppState, uploader: &str) -> Result<(String, i64)> {
    let now = now_ms();
    let expires = now + state.media.config.unused_id_lifetime_seconds as i64 * 1000;
    let row = MediaRow {
        origin: state.server_name.to_string(),
        media_id: new_media_id(),
        uploader: Some(uploader.to_owned()),
        content_type: None,
        filename: None,
        size: None,
        sha256: None,
        width: None,
        height: None,
        created_ts: now,
        unused_expires_ts: Some(expires),
    };
    let max = state.media.config.max_pending_uploads as i64;
    if !state.storage.create_pending_media(&row, now, max).await? {
        // The earliest a pending ID can lapse is not tracked; a minute is a fair hint.
        return Err(Error::limit_exceeded(60_000));
    }
    Ok((row.media_id, expires))
}

/// Why content may not go to a pending media ID, checked before the body is read (and again,
/// atomically, when the content is attached).
fn pending_refusal(outcome: PendingUpload) -> Option<Error> {
    match outcome {
        PendingUpload::Done => None,
        PendingUpload::NotFound => Some(Error::not_found("Unknown or expired media ID")),
        PendingUpload::NotOwner => Some(Error::forbidden(
            "This media ID was created by another user",
        )),
        PendingUpload::AlreadyUploaded => Some(Error::new(
            StatusCode::CONFLICT,
            "M_CANNOT_OVERWRITE_MEDIA",
            "Media already uploaded",
        )),
    }
}

/// Whether `uploader` may upload to `server_name/media_id` now.
pub async fn check_pending(
    state: &AppState,
    server_name: &ServerName,
    media_id: &str,
    uploader: &str,
) -> Result<()> {
    if server_name != state.server_name || !is_valid_media_id(media_id) {
        return Err(Error::not_found("Unknown media ID"));
    }
    let outcome = match state
        .storage
        .get_media(server_name.as_str(), media_id)
        .await?
    {
        None => PendingUpload::NotFound,
        Some(row) if row.uploader.as_deref() != Some(uploader) => PendingUpload::NotOwner,
        Some(row) if row.sha256.is_some() => PendingUpload::AlreadyUploaded,
        Some(row) if row.unused_expires_ts.is_some_and(|t| t < now_ms()) => PendingUpload::NotFound,
        Some(_) => PendingUpload::Done,
    };
    pending_refusal(outcome).map_or(Ok(()), Err)
}

/// `PUT /upload/{serverName}/{mediaId}`: streams `content` into the store and attaches it to
/// the pending ID (call [`check_pending`] first so a refused upload is not read).
pub async fn upload_pending<S, E>(
    state: &AppState,
    media_id: &str,
    uploader: &str,
    content_type: Option<&str>,
    filename: Option<&str>,
    content: S,
) -> Result<()>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let stored = state
        .media
        .store
        .write(content, state.media.max_upload_size())
        .await
        .map_err(write_error)?;
    let origin = state.server_name.as_str();
    let content_type = headers::sanitize_content_type(content_type);
    let outcome = state
        .storage
        .complete_pending_media(
            origin,
            media_id,
            uploader,
            &content_type,
            filename,
            stored.size as i64,
            &stored.sha256,
            now_ms(),
        )
        .await?;
    if let Some(e) = pending_refusal(outcome) {
        // The file may be shared with other media; an unreferenced one is harmless.
        return Err(e);
    }
    state.media.uploaded.notify_waiters();
    if let Some(row) = state.storage.get_media(origin, media_id).await? {
        pregenerate_thumbnails(state, &row);
    }
    Ok(())
}

/// The media a download or thumbnail request names, once its content is there: waits up to
/// `timeout` (at most [`MAX_DOWNLOAD_WAIT`]) for a pending upload, then 504
/// `M_NOT_YET_UPLOADED`. Another server's media is served from the store once fetched, and
/// fetched from its server ([`remote::fetch`]) if `fetch_remote` (the authenticated
/// endpoints; as in Synapse, the deprecated unauthenticated ones serve only what is cached).
pub async fn find(
    state: &AppState,
    server_name: &ServerName,
    media_id: &str,
    timeout: Duration,
    fetch_remote: bool,
) -> Result<MediaRow> {
    if !is_valid_media_id(media_id) {
        return Err(not_found());
    }
    if server_name != state.server_name {
        let cached = |row: Option<MediaRow>| row.filter(|r| r.sha256.is_some());
        if let Some(row) = cached(
            state
                .storage
                .get_media(server_name.as_str(), media_id)
                .await?,
        ) {
            return Ok(row);
        }
        if !fetch_remote {
            return Err(Error::not_found(
                "Remote media is served through the authenticated media endpoints",
            ));
        }
        // One fetch of a media at a time: the others wait and find it stored.
        let lock = state
            .media
            .lock_for(format!("fetch:{server_name}/{media_id}"));
        let _held = lock.lock().await;
        if let Some(row) = cached(
            state
                .storage
                .get_media(server_name.as_str(), media_id)
                .await?,
        ) {
            return Ok(row);
        }
        return remote::fetch(state, server_name, media_id).await;
    }
    let deadline = tokio::time::Instant::now() + timeout.min(MAX_DOWNLOAD_WAIT);
    loop {
        // Subscribe before reading, so an upload finishing in between is not missed.
        let notified = state.media.uploaded.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let row = state
            .storage
            .get_media(server_name.as_str(), media_id)
            .await?
            .ok_or_else(not_found)?;
        if row.sha256.is_some() {
            return Ok(row);
        }
        if row.unused_expires_ts.is_some_and(|t| t < now_ms()) {
            return Err(not_found());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Error::new(
                StatusCode::GATEWAY_TIMEOUT,
                "M_NOT_YET_UPLOADED",
                "Content has not yet been uploaded",
            ));
        }
        // Another process may attach the content without waking us: look again each second.
        let _ = tokio::time::timeout_at(deadline.min(now + Duration::from_secs(1)), notified).await;
    }
}

/// What a response sends: a stored file, or a thumbnail just made (sent from memory while it
/// is being stored).
pub enum Body {
    File(tokio::fs::File),
    Bytes(Bytes),
}

/// Content to send, with what to call it.
pub struct Content {
    pub body: Body,
    pub len: u64,
    pub content_type: String,
    pub disposition: String,
}

/// The content of uploaded media, named `filename` (or the uploaded name).
pub async fn open_content(
    state: &AppState,
    row: &MediaRow,
    filename: Option<&str>,
) -> Result<Content> {
    let sha256 = row.sha256.as_deref().ok_or_else(not_found)?;
    let (file, len) = state
        .media
        .store
        .open_file(sha256)
        .await
        .map_err(|e| Error::internal(format!("media file {sha256}: {e}")))?;
    let content_type = row
        .content_type
        .clone()
        .unwrap_or_else(|| headers::DEFAULT_CONTENT_TYPE.into());
    let name = filename.or(row.filename.as_deref());
    Ok(Content {
        disposition: headers::content_disposition(headers::is_inline(&content_type), name),
        body: Body::File(file),
        len,
        content_type,
    })
}

/// What answers a thumbnail request.
enum Served {
    /// The original is small enough.
    Original,
    Thumbnail(ThumbnailRow),
    /// Made for this request; being stored in the background.
    Fresh {
        content_type: String,
        bytes: Bytes,
    },
}

fn thumbnail_error(e: ThumbnailError) -> Error {
    match e {
        ThumbnailError::NotAnImage(why) => {
            tracing::debug!(%why, "cannot thumbnail");
            Error::unknown(
                StatusCode::BAD_REQUEST,
                "Cannot generate thumbnails for the requested content",
            )
        }
        ThumbnailError::TooLarge(why) => {
            tracing::debug!(%why, "image too large to thumbnail");
            Error::too_large("Content is too large to thumbnail")
        }
        ThumbnailError::Io(e) => Error::internal(format!("reading media for a thumbnail: {e}")),
    }
}

fn candidates(stored: &[ThumbnailRow]) -> Vec<Candidate> {
    stored
        .iter()
        .map(|t| Candidate {
            width: t.width.clamp(0, u32::MAX as i64) as u32,
            height: t.height.clamp(0, u32::MAX as i64) as u32,
            // Rows are only ever written by us with one of the two.
            method: Method::parse(&t.method).unwrap_or(Method::Scale),
        })
        .collect()
}

/// Answers from what is stored, without decoding, when the image's size is known.
async fn from_stored(
    state: &AppState,
    row: &MediaRow,
    width: u32,
    height: u32,
    method: Method,
) -> Result<Option<Served>> {
    let (Some(w), Some(h)) = (row.width, row.height) else {
        return Ok(None);
    };
    let (w, h) = (w as u32, h as u32);
    let resize = match thumbnail::plan(w, h, width, height, method) {
        Plan::Original => {
            let sha256 = row.sha256.as_deref().ok_or_else(not_found)?;
            if sniff_image_format(state, sha256).await? == image::ImageFormat::Jpeg {
                return Ok(Some(Served::Original));
            }
            thumbnail::still_original(w, h, method)
        }
        Plan::Resize(r) => r,
    };
    let stored = state
        .storage
        .media_thumbnails(&row.origin, &row.media_id)
        .await?;
    Ok(thumbnail::select(&resize, &candidates(&stored))
        .map(|i| Served::Thumbnail(stored[i].clone())))
}

/// A thumbnail rendered on the blocking pool, not stored yet.
struct Rendered {
    width: u32,
    height: u32,
    method: Method,
    bytes: Bytes,
}

/// How one request of a batch is answered.
enum Answer {
    Original,
    /// Index into [`Made::stored`].
    Stored(usize),
    /// Index into [`Made::rendered`].
    Rendered(usize),
}

/// The outcome of decoding an image once for a batch of thumbnail requests.
struct Made {
    content_type: &'static str,
    answers: Vec<Answer>,
    stored: Vec<ThumbnailRow>,
    rendered: Vec<Rendered>,
}

/// Decodes the image once and answers each of `requests`: from the stored thumbnails where
/// one fits, else by rendering a new one (not stored yet: see [`store_rendered`]).
async fn render_thumbnails(
    state: &AppState,
    row: &MediaRow,
    requests: &[(u32, u32, Method)],
) -> Result<Made> {
    let sha256 = row.sha256.as_deref().ok_or_else(not_found)?;
    let path = state.media.store.path(sha256).ok_or_else(not_found)?;
    let stored = state
        .storage
        .media_thumbnails(&row.origin, &row.media_id)
        .await?;
    let existing = candidates(&stored);
    let owned_requests = requests.to_vec();
    let permit = state
        .media
        .decode_permits
        .acquire()
        .await
        .map_err(Error::internal)?;
    let work = tokio::task::spawn_blocking(move || {
        let decoded = thumbnail::decode(&path)?;
        let content_type = thumbnail::output_type(&decoded);
        let (w, h) = (decoded.image.width(), decoded.image.height());
        let mut answers = Vec::new();
        let mut rendered: Vec<Rendered> = Vec::new();
        for &(rw, rh, method) in &owned_requests {
            let resize = match thumbnail::plan(w, h, rw, rh, method) {
                Plan::Original if thumbnail::is_always_still(decoded.format) => {
                    answers.push(Answer::Original);
                    continue;
                }
                Plan::Original => thumbnail::still_original(w, h, method),
                Plan::Resize(r) => r,
            };
            if let Some(j) = thumbnail::select(&resize, &existing) {
                answers.push(Answer::Stored(j));
            } else if let Some(k) = rendered.iter().position(|x| {
                (x.width, x.height, x.method) == (resize.width, resize.height, method)
            }) {
                answers.push(Answer::Rendered(k));
            } else {
                rendered.push(Rendered {
                    width: resize.width,
                    height: resize.height,
                    method,
                    bytes: thumbnail::render(&decoded.image, &resize, content_type)?.into(),
                });
                answers.push(Answer::Rendered(rendered.len() - 1));
            }
        }
        Ok::<_, ThumbnailError>(((w, h), content_type, answers, rendered))
    })
    .await;
    drop(permit);
    let ((w, h), content_type, answers, rendered) = match work {
        Ok(result) => result.map_err(thumbnail_error)?,
        Err(e) => {
            // A decoder panicked on this input; the process carries on.
            tracing::error!(error = %e, media = %row.media_id, "thumbnailing failed");
            return Err(thumbnail_error(ThumbnailError::NotAnImage(
                "decoder failure".into(),
            )));
        }
    };
    if row.width.is_none() {
        state
            .storage
            .set_media_dimensions(&row.origin, &row.media_id, w as i64, h as i64)
            .await?;
    }
    Ok(Made {
        content_type,
        answers,
        stored,
        rendered,
    })
}

/// Writes freshly rendered thumbnails to the store and records them, unless the media has
/// [`MAX_THUMBNAILS_PER_MEDIA`] already.
async fn store_rendered(state: &AppState, row: &MediaRow, made: Made) -> Result<()> {
    let room = MAX_THUMBNAILS_PER_MEDIA.saturating_sub(made.stored.len());
    for r in made.rendered.into_iter().take(room) {
        let file = state
            .media
            .store
            .write_bytes(r.bytes.to_vec())
            .await
            .map_err(write_error)?;
        let thumb = ThumbnailRow {
            width: r.width as i64,
            height: r.height as i64,
            method: r.method.as_str().to_owned(),
            content_type: made.content_type.to_owned(),
            sha256: file.sha256,
            size: file.size as i64,
        };
        state
            .storage
            .insert_media_thumbnail(&row.origin, &row.media_id, &thumb, now_ms())
            .await?;
    }
    Ok(())
}

/// Makes the common thumbnail sizes of a new image in the background (if configured). A
/// request for one of them before this finishes waits for it (the per-media generation lock)
/// or, if this never ran, makes it itself.
fn pregenerate_thumbnails(state: &AppState, row: &MediaRow) {
    let is_image = row.content_type.as_deref().is_some_and(|ct| {
        matches!(
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
                .as_str(),
            "image/png" | "image/jpeg" | "image/gif" | "image/webp"
        )
    });
    if !state.media.config.pregenerate_thumbnails || !is_image {
        return;
    }
    let state = state.clone();
    let row = row.clone();
    tokio::spawn(async move {
        let lock = state.media.generation_lock(&row);
        let _guard = lock.lock().await;
        let sizes = state.media.thumbnail_sizes.clone();
        let result = match render_thumbnails(&state, &row, &sizes).await {
            Ok(made) => store_rendered(&state, &row, made).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(media = %row.media_id, error = ?e, "no thumbnails for this upload");
        }
    });
}

/// The image format of a stored file, from its first bytes (what the original is served as
/// when it answers a thumbnail request: never the uploader's claim).
async fn sniff_image_format(state: &AppState, sha256: &str) -> Result<image::ImageFormat> {
    use tokio::io::AsyncReadExt;
    let (file, _) = state
        .media
        .store
        .open_file(sha256)
        .await
        .map_err(|e| Error::internal(format!("media file {sha256}: {e}")))?;
    let mut head = Vec::with_capacity(64);
    file.take(64)
        .read_to_end(&mut head)
        .await
        .map_err(Error::internal)?;
    match image::guess_format(&head) {
        Ok(
            f @ (image::ImageFormat::Png
            | image::ImageFormat::Jpeg
            | image::ImageFormat::Gif
            | image::ImageFormat::WebP),
        ) => Ok(f),
        _ => Err(thumbnail_error(ThumbnailError::NotAnImage(
            "unknown format".into(),
        ))),
    }
}

async fn open_stored(state: &AppState, sha256: &str) -> Result<(Body, u64)> {
    let (file, len) = state
        .media
        .store
        .open_file(sha256)
        .await
        .map_err(|e| Error::internal(format!("media file {sha256}: {e}")))?;
    Ok((Body::File(file), len))
}

/// A thumbnail of `row` in the configured size that best fits `width`×`height`
/// ([`thumbnail::choose_size`]; the spec's rules in [`thumbnail`]): stored, made now, or the
/// original when it is no larger.
pub async fn thumbnail(
    state: &AppState,
    row: &MediaRow,
    width: u32,
    height: u32,
    method: Method,
) -> Result<Content> {
    if width == 0 || height == 0 {
        return Err(Error::unknown(
            StatusCode::BAD_REQUEST,
            "Thumbnail width and height must be positive",
        ));
    }
    let Some((width, height, method)) =
        thumbnail::choose_size(&state.media.thumbnail_sizes, width, height, method)
    else {
        return Err(Error::not_found(
            "Thumbnails are not available on this server",
        ));
    };
    let served = match from_stored(state, row, width, height, method).await? {
        Some(served) => served,
        None => {
            let guard = state.media.generation_lock(row).lock_owned().await;
            // Whoever held the lock may have made it, or at least learnt the image's size.
            let row = state
                .storage
                .get_media(&row.origin, &row.media_id)
                .await?
                .ok_or_else(not_found)?;
            match from_stored(state, &row, width, height, method).await? {
                Some(served) => served,
                None => {
                    let made = render_thumbnails(state, &row, &[(width, height, method)]).await?;
                    match made.answers.first() {
                        Some(Answer::Stored(j)) => Served::Thumbnail(made.stored[*j].clone()),
                        Some(Answer::Rendered(k)) => {
                            let served = Served::Fresh {
                                content_type: made.content_type.to_owned(),
                                bytes: made.rendered[*k].bytes.clone(),
                            };
                            // Answer now; store behind the response. The lock goes with the
                            // task, so a request for the same size waits and then finds it.
                            let state = state.clone();
                            tokio::spawn(async move {
                                if let Err(e) = store_rendered(&state, &row, made).await {
                                    tracing::warn!(error = ?e, "storing a thumbnail failed");
                                }
                                drop(guard);
                            });
                            served
                        }
                        Some(Answer::Original) | None => Served::Original,
                    }
                }
            }
        }
    };
    let (body, len, content_type) = match served {
        Served::Original => {
            let sha256 = row.sha256.clone().ok_or_else(not_found)?;
            let format = sniff_image_format(state, &sha256).await?;
            let (file, len) = open_stored(state, &sha256).await?;
            (file, len, thumbnail::format_type(format).to_owned())
        }
        Served::Thumbnail(t) => {
            let (file, len) = open_stored(state, &t.sha256).await?;
            (file, len, t.content_type)
        }
        Served::Fresh {
            content_type,
            bytes,
        } => (Body::Bytes(bytes.clone()), bytes.len() as u64, content_type),
    };
    let extension = match content_type.as_str() {
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => "png",
    };
    Ok(Content {
        body,
        len,
        disposition: headers::content_disposition(true, Some(&format!("thumbnail.{extension}"))),
        content_type,
    })
}

/// `GET /preview_url`: the Open Graph data of a page, with its image stored as media of
/// `user` (`og:image` is then an `mxc://` URI). `None` when previews are off.
pub async fn preview_url(state: &AppState, user: &str, url: &str) -> Option<Result<Value>> {
    let fetcher = state.media.fetcher.as_ref()?;
    Some(preview_with(state, fetcher, user, url).await)
}

fn preview_error(e: preview::PreviewError) -> Error {
    match e {
        preview::PreviewError::InvalidUrl(why) => Error::invalid_param(why),
        preview::PreviewError::Blocked(why) => Error::forbidden(why),
        preview::PreviewError::Fetch(why) => Error::unknown(
            StatusCode::BAD_GATEWAY,
            format!("Could not fetch the URL: {why}"),
        ),
    }
}

async fn preview_with(
    state: &AppState,
    fetcher: &preview::Fetcher,
    user: &str,
    url: &str,
) -> Result<Value> {
    let response = fetcher.get(url).await.map_err(preview_error)?;
    let content_type = preview::content_type(&response);
    let mut out = Map::new();
    if content_type.starts_with("image/") {
        store_preview_image(state, user, response, &content_type, &mut out).await?;
        return Ok(Value::Object(out));
    }
    if !(content_type == "text/html" || content_type == "application/xhtml+xml") {
        // Nothing to read: an empty preview, as Synapse gives.
        return Ok(Value::Object(out));
    }
    let base = response.url().clone();
    let html = preview::read_bounded(response, preview::MAX_HTML_BYTES)
        .await
        .map_err(preview_error)?;
    let og = tokio::task::spawn_blocking(move || preview::parse_html(&html, &base))
        .await
        .map_err(Error::internal)?;
    for (key, value) in og.tags {
        out.insert(key, Value::String(value));
    }
    if let Some(image_url) = og.image {
        // The page's image is best effort: the preview stands without it.
        match fetcher.get(image_url.as_str()).await {
            Ok(response) => {
                let image_type = preview::content_type(&response);
                if image_type.starts_with("image/") {
                    store_preview_image(state, user, response, &image_type, &mut out).await?;
                }
            }
            Err(e) => tracing::debug!(error = %e, "preview image not fetched"),
        }
    }
    Ok(Value::Object(out))
}

/// Streams a fetched image into the store as media of `user` and describes it in `out`.
async fn store_preview_image(
    state: &AppState,
    user: &str,
    response: reqwest::Response,
    content_type: &str,
    out: &mut Map<String, Value>,
) -> Result<()> {
    match upload(
        state,
        user,
        Some(content_type),
        None,
        preview::body_stream(response),
    )
    .await
    {
        Ok(row) => {
            out.insert(
                "og:image".into(),
                json!(format!("mxc://{}/{}", row.origin, row.media_id)),
            );
            out.insert("og:image:type".into(), json!(content_type));
            out.insert("matrix:image:size".into(), json!(row.size.unwrap_or(0)));
            Ok(())
        }
        // Too large or cut off: no image rather than no preview.
        Err(Error::Matrix(e)) => {
            tracing::debug!(error = ?e.body, "preview image not stored");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids() {
        let id = new_media_id();
        assert_eq!(id.len(), MEDIA_ID_LEN);
        assert!(is_valid_media_id(&id));
        assert_ne!(id, new_media_id());
        for bad in ["", "../etc", "a/b", "a.b", "a%2Fb", "é"] {
            assert!(!is_valid_media_id(bad), "{bad}");
        }
        assert!(is_valid_media_id("Ab_9-z"));
    }
}
