//! The content repository: scenario 38 (upload, legacy and authenticated download, 404), file
//! names and dispositions, security headers, asynchronous uploads, the size limit, shared files
//! on disk, thumbnails of each image format, refusals of bad images, authentication, and URL
//! previews (off by default, never reaching loopback unless allowed).

use std::{
    io::Cursor,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, Backend, Client, ServerOptions, TestServer,
};
use image::{DynamicImage, ImageFormat};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw HTTP answer: media responses are bytes with headers, not JSON.
struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn error(&self) -> (u16, Value) {
        (self.status, self.json())
    }
}

async fn send(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<(Vec<u8>, &str)>,
) -> Raw {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut req = http.request(method, format!("{}{path}", client.base_url));
    if let Some(token) = &client.access_token {
        req = req.bearer_auth(token);
    }
    if let Some((bytes, content_type)) = body {
        req = req.header("content-type", content_type).body(bytes);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    Raw {
        status,
        headers,
        body,
    }
}

async fn get(client: &Client, path: &str) -> Raw {
    send(client, reqwest::Method::GET, path, None).await
}

/// Uploads `bytes` and returns `(server_name, media_id)`.
async fn upload(
    client: &Client,
    bytes: &[u8],
    content_type: &str,
    filename: Option<&str>,
) -> (String, String) {
    let path = match filename {
        Some(name) => format!("/_matrix/media/v3/upload?filename={}", encode(name)),
        None => "/_matrix/media/v3/upload".to_owned(),
    };
    let resp = send(
        client,
        reqwest::Method::POST,
        &path,
        Some((bytes.to_vec(), content_type)),
    )
    .await;
    let body = resp.json();
    assert_eq!(resp.status, 200, "upload failed: {body}");
    parse_mxc(body["content_uri"].as_str().expect("content_uri"))
}

fn parse_mxc(uri: &str) -> (String, String) {
    let rest = uri
        .strip_prefix("mxc://")
        .unwrap_or_else(|| panic!("not an mxc URI: {uri}"));
    let (server, id) = rest.split_once('/').expect("mxc://server/id");
    (server.to_owned(), id.to_owned())
}

fn authed_download(server: &str, id: &str) -> String {
    format!("/_matrix/client/v1/media/download/{server}/{id}")
}

fn legacy_download(server: &str, id: &str) -> String {
    format!("/_matrix/media/v3/download/{server}/{id}")
}

/// Every regular file under the media store except temporary ones.
fn stored_files(hs: &TestServer) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &hs.data_dir().expect("spawned server").join("media"),
        &mut out,
    );
    out
}

fn temp_files(hs: &TestServer) -> Vec<PathBuf> {
    stored_files(hs)
        .into_iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("tmp")))
        .collect()
}

/// Scenario 38: upload returns an mxc://; legacy and authenticated downloads return the same
/// bytes and content type; unknown media gives 404.
async fn a38_upload_and_download(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let content = b"Hello, media!\n".to_vec();
    let (server, id) = upload(&alice, &content, "text/plain", None).await;
    assert_eq!(server, hs.server_name());

    // Another user downloads it, authenticated; anyone through the legacy endpoint.
    let authed = get(&bob, &authed_download(&server, &id)).await;
    assert_eq!(authed.status, 200);
    assert_eq!(authed.body, content);
    assert_eq!(authed.header("content-type"), "text/plain");
    let legacy = get(&hs.client(), &legacy_download(&server, &id)).await;
    assert_eq!(legacy.status, 200);
    assert_eq!(legacy.body, content);
    assert_eq!(legacy.header("content-type"), "text/plain");
    assert_eq!(legacy.header("content-length"), content.len().to_string());

    // Unknown media: 404 on both, also for malformed IDs and other servers' media through
    // the deprecated endpoint (which never fetches).
    for path in [
        authed_download(&server, "unknownMediaId0000000000"),
        legacy_download(&server, "unknownMediaId0000000000"),
        authed_download(&server, "bad.id"),
        legacy_download("other.example", &id),
        format!("/_matrix/client/v1/media/thumbnail/{server}/nothing?width=32&height=32"),
    ] {
        let resp = get(&bob, &path).await;
        assert_error(&resp.error(), 404, "M_NOT_FOUND", &path);
    }
    // Another server's media that cannot be fetched (no such server): 502, as Synapse answers.
    let path = authed_download("other.example", &id);
    assert_error(&get(&bob, &path).await.error(), 502, "M_UNKNOWN", &path);

    // No content type: application/octet-stream.
    let (_, bare) = upload(&alice, b"\x00\x01", "", None).await;
    let resp = get(&bob, &authed_download(&server, &bare)).await;
    assert_eq!(resp.header("content-type"), "application/octet-stream");
    assert!(resp.header("content-disposition").starts_with("attachment"));
}

/// File names in Content-Disposition (ASCII, UTF-8, and a name in the path winning), inline
/// only for safe types, and the security headers.
async fn names_dispositions_and_headers(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let (server, png) = upload(&alice, b"not really a png", "image/png", Some("cat.png")).await;
    let resp = get(&alice, &authed_download(&server, &png)).await;
    assert_eq!(
        resp.header("content-disposition"),
        "inline; filename=\"cat.png\""
    );
    assert_eq!(resp.header("content-type"), "image/png");
    assert_eq!(resp.header("x-content-type-options"), "nosniff");
    assert_eq!(resp.header("cross-origin-resource-policy"), "cross-origin");
    let csp = resp.header("content-security-policy");
    for directive in ["sandbox", "default-src 'none'", "script-src 'none'"] {
        assert!(csp.contains(directive), "{csp}");
    }

    // A file name in the path overrides the uploaded one, on both endpoints.
    for path in [
        format!("{}/kitten.png", authed_download(&server, &png)),
        format!("{}/kitten.png", legacy_download(&server, &png)),
    ] {
        let resp = get(&alice, &path).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(
            resp.header("content-disposition"),
            "inline; filename=\"kitten.png\""
        );
    }

    // UTF-8 names: an ASCII fallback and the RFC 5987 form.
    let (_, cv) = upload(&alice, b"cv", "text/plain", Some("résumé.txt")).await;
    let resp = get(&alice, &authed_download(&server, &cv)).await;
    let disposition = resp.header("content-disposition");
    assert!(
        disposition.starts_with("inline; ")
            && disposition.contains("filename*=utf-8''r%C3%A9sum%C3%A9.txt"),
        "{disposition}"
    );

    // HTML and SVG are never inline; their content type is kept.
    for (ct, name) in [("text/html", "page.html"), ("image/svg+xml", "x.svg")] {
        let (_, id) = upload(&alice, b"<script>alert(1)</script>", ct, Some(name)).await;
        let resp = get(&alice, &authed_download(&server, &id)).await;
        assert_eq!(resp.header("content-type"), ct);
        assert_eq!(
            resp.header("content-disposition"),
            format!("attachment; filename=\"{name}\"")
        );
        assert_eq!(resp.header("x-content-type-options"), "nosniff");
    }
}

/// Asynchronous upload: create, download before upload (504), upload, overwrite refused,
/// another user forbidden, unknown ID 404, a waiting download answered by the upload.
async fn async_upload(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let created = alice
        .post("/_matrix/media/v1/create", &serde_json::json!({}))
        .await;
    let body = assert_ok(&created, "create").clone();
    let (server, id) = parse_mxc(body["content_uri"].as_str().unwrap());
    let expires = body["unused_expires_at"]
        .as_i64()
        .expect("unused_expires_at");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        expires > now_ms + 3_600_000,
        "expires {expires}, now {now_ms}"
    );

    let started = Instant::now();
    let early = get(
        &bob,
        &format!("{}?timeout_ms=300", authed_download(&server, &id)),
    )
    .await;
    assert_error(
        &early.error(),
        504,
        "M_NOT_YET_UPLOADED",
        "download before upload",
    );
    assert!(started.elapsed() >= Duration::from_millis(250));

    let put_path = format!("/_matrix/media/v3/upload/{server}/{id}?filename=later.txt");
    let put = |who: &Client, bytes: &'static [u8]| {
        let who = who.clone();
        let path = put_path.clone();
        async move {
            send(
                &who,
                reqwest::Method::PUT,
                &path,
                Some((bytes.to_vec(), "text/plain")),
            )
            .await
        }
    };
    let by_bob = put(&bob, b"bob's").await;
    assert_error(
        &by_bob.error(),
        403,
        "M_FORBIDDEN",
        "upload to another's ID",
    );

    // A download waiting for the content gets it as soon as it arrives.
    let waiting = {
        let bob = bob.clone();
        let path = format!("{}?timeout_ms=20000", authed_download(&server, &id));
        tokio::spawn(async move { get(&bob, &path).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = put(&alice, b"the content").await;
    assert_eq!(first.status, 200, "{:?}", first.json());
    assert_eq!(first.json(), serde_json::json!({}));
    let waited = waiting.await.unwrap();
    assert_eq!(waited.status, 200);
    assert_eq!(waited.body, b"the content");
    assert_eq!(
        waited.header("content-disposition"),
        "inline; filename=\"later.txt\""
    );

    let second = put(&alice, b"other content").await;
    assert_error(
        &second.error(),
        409,
        "M_CANNOT_OVERWRITE_MEDIA",
        "second upload",
    );
    let resp = get(&bob, &legacy_download(&server, &id)).await;
    assert_eq!(resp.body, b"the content");

    let unknown = send(
        &alice,
        reqwest::Method::PUT,
        &format!("/_matrix/media/v3/upload/{server}/neverCreated000000000000"),
        Some((b"x".to_vec(), "text/plain")),
    )
    .await;
    assert_error(&unknown.error(), 404, "M_NOT_FOUND", "unknown media ID");
}

/// Pending IDs lapse after `unused_id_lifetime_seconds` and are limited per user.
async fn pending_ids_expire_and_are_limited(backend: Backend) {
    let options = ServerOptions::default()
        .env("MYELIN_MEDIA_UNUSED_ID_LIFETIME_SECONDS", "1")
        .env("MYELIN_MEDIA_MAX_PENDING_UPLOADS", "2");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let empty = serde_json::json!({});
    let create = || alice.post("/_matrix/media/v1/create", &empty);
    let first = create().await;
    let (server, id) = parse_mxc(assert_ok(&first, "create")["content_uri"].as_str().unwrap());
    assert_ok(&create().await, "second create");
    assert_error(&create().await, 429, "M_LIMIT_EXCEEDED", "third pending ID");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = send(
        &alice,
        reqwest::Method::PUT,
        &format!("/_matrix/media/v3/upload/{server}/{id}"),
        Some((b"late".to_vec(), "text/plain")),
    )
    .await;
    assert_error(&late.error(), 404, "M_NOT_FOUND", "upload to a lapsed ID");
    let download = get(&alice, &authed_download(&server, &id)).await;
    assert_error(
        &download.error(),
        404,
        "M_NOT_FOUND",
        "download of a lapsed ID",
    );
    // Lapsed IDs no longer count against the limit.
    assert_ok(&create().await, "create after the others lapsed");
}

/// Sends a chunked upload (no Content-Length) over a raw connection; returns the status.
async fn chunked_upload(hs: &TestServer, token: &str, total: usize) -> u16 {
    let addr = hs.url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 500];
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        let frame = [format!("{n:x}\r\n").as_bytes(), &chunk[..n], b"\r\n"].concat();
        if stream.write_all(&frame).await.is_err() {
            break;
        }
        sent += n;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// The upload limit: reported by /config, enforced with and without a Content-Length, and a
/// refused upload leaves no file behind.
async fn upload_size_limit(backend: Backend) {
    let options = ServerOptions::default().env("MYELIN_MEDIA_MAX_UPLOAD_SIZE", "1000");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    for path in [
        "/_matrix/client/v1/media/config",
        "/_matrix/media/v3/config",
    ] {
        let config = alice.get(path).await;
        assert_eq!(assert_ok(&config, path)["m.upload.size"], 1000);
    }
    let (server, id) = upload(&alice, &[7u8; 1000], "application/octet-stream", None).await;
    assert_eq!(stored_files(&hs).len(), 1);

    let too_big = send(
        &alice,
        reqwest::Method::POST,
        "/_matrix/media/v3/upload",
        Some((vec![1u8; 1001], "application/octet-stream")),
    )
    .await;
    assert_error(&too_big.error(), 413, "M_TOO_LARGE", "1001 bytes");
    // Without a declared length the limit is enforced while streaming.
    let token = alice.access_token.clone().unwrap();
    assert_eq!(chunked_upload(&hs, &token, 5000).await, 413);
    assert_eq!(chunked_upload(&hs, &token, 900).await, 200);

    // Asynchronous uploads have the same limit; the ID stays usable.
    let created = alice
        .post("/_matrix/media/v1/create", &serde_json::json!({}))
        .await;
    let (_, pending) = parse_mxc(
        assert_ok(&created, "create")["content_uri"]
            .as_str()
            .unwrap(),
    );
    let path = format!("/_matrix/media/v3/upload/{server}/{pending}");
    let too_big = send(
        &alice,
        reqwest::Method::PUT,
        &path,
        Some((vec![2u8; 4000], "application/octet-stream")),
    )
    .await;
    assert_error(&too_big.error(), 413, "M_TOO_LARGE", "async upload");
    let fits = send(
        &alice,
        reqwest::Method::PUT,
        &path,
        Some((vec![2u8; 10], "application/octet-stream")),
    )
    .await;
    assert_eq!(fits.status, 200);

    // Three files (1000 bytes, 900 bytes, 10 bytes), no leftovers from the refusals.
    assert_eq!(stored_files(&hs).len(), 3, "{:?}", stored_files(&hs));
    assert!(temp_files(&hs).is_empty());
    let resp = get(&alice, &authed_download(&server, &id)).await;
    assert_eq!(resp.body, vec![7u8; 1000]);
}

/// Identical uploads share one file on disk, named by the content's SHA-256.
async fn identical_uploads_share_one_file(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let content = b"the same bytes twice".to_vec();
    let (server, a) = upload(&alice, &content, "text/plain", Some("a.txt")).await;
    let (_, b) = upload(&bob, &content, "application/octet-stream", Some("b.bin")).await;
    assert_ne!(a, b, "two uploads are two media IDs");
    let files = stored_files(&hs);
    assert_eq!(files.len(), 1, "{files:?}");
    // sha256("the same bytes twice")
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(name.len(), 64);
    assert!(files[0].ends_with(format!("{}/{}/{name}", &name[0..2], &name[2..4])));
    // Each keeps its own metadata.
    let ra = get(&alice, &authed_download(&server, &a)).await;
    let rb = get(&alice, &authed_download(&server, &b)).await;
    assert_eq!(
        (ra.body.clone(), rb.body.clone()),
        (content.clone(), content)
    );
    assert_eq!(ra.header("content-type"), "text/plain");
    assert_eq!(rb.header("content-type"), "application/octet-stream");
    assert!(rb.header("content-disposition").contains("b.bin"));
    upload(&alice, b"different bytes", "text/plain", None).await;
    assert_eq!(stored_files(&hs).len(), 2);
}

/// A 400x300 test image: a gradient with a transparent corner when `alpha`.
fn test_image(alpha: bool) -> DynamicImage {
    let img = image::RgbaImage::from_fn(400, 300, |x, y| {
        let a = if alpha && x < 50 && y < 50 { 0 } else { 255 };
        image::Rgba([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8, a])
    });
    if alpha {
        DynamicImage::ImageRgba8(img)
    } else {
        DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(img).to_rgb8())
    }
}

fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .expect("encode");
    bytes
}

fn thumbnail_path(server: &str, id: &str, w: u32, h: u32, method: &str) -> String {
    format!("/_matrix/client/v1/media/thumbnail/{server}/{id}?width={w}&height={h}&method={method}")
}

/// Thumbnails of PNG, JPEG, GIF and WebP: crops are exactly the requested size, scales keep
/// the aspect ratio and never enlarge, and an image smaller than asked for comes back as is.
async fn thumbnails_of_each_format(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    for (format, content_type, alpha, thumb_type) in [
        (ImageFormat::Png, "image/png", true, "image/png"),
        (ImageFormat::Jpeg, "image/jpeg", false, "image/jpeg"),
        (ImageFormat::Gif, "image/gif", true, "image/png"),
        (ImageFormat::WebP, "image/webp", false, "image/jpeg"),
    ] {
        let original = encoded(&test_image(alpha), format);
        let (server, id) = upload(&alice, &original, content_type, Some("pic")).await;
        for (w, h, method, expect) in [
            (32, 32, "crop", (32, 32)),
            (96, 96, "crop", (96, 96)),
            // Not a configured size: the best fit among them (96x96 crop) answers.
            (50, 40, "crop", (96, 96)),
            (320, 240, "scale", (320, 240)),
            (100, 100, "scale", (100, 75)),
            (120, 40, "scale", (53, 40)),
        ] {
            let resp = get(&alice, &thumbnail_path(&server, &id, w, h, method)).await;
            let what = format!("{content_type} {w}x{h} {method}");
            assert_eq!(resp.status, 200, "{what}: {:?}", resp.json());
            assert_eq!(resp.header("content-type"), thumb_type, "{what}");
            assert!(
                resp.header("content-disposition").starts_with("inline"),
                "{what}"
            );
            let thumb = image::load_from_memory(&resp.body).expect("a decodable thumbnail");
            let got = (thumb.width(), thumb.height());
            if method == "crop" {
                assert_eq!(got, expect, "{what}");
            } else {
                assert_scaled(got, expect, &what);
            }
        }
        // Larger than the original: never enlarged. A JPEG comes back as it is; formats that
        // may be animated come back as a still image of the original's size.
        // (A crop larger than every configured crop size gets the largest one, 96x96, as
        // in Synapse; `thumbnails_come_only_in_configured_sizes` covers the choice.)
        for (w, h, method) in [(800, 600, "scale"), (1000, 1000, "scale")] {
            let what = format!("{content_type} {w}x{h} {method}");
            let resp = get(&alice, &thumbnail_path(&server, &id, w, h, method)).await;
            assert_eq!(resp.status, 200, "{what}");
            if format == ImageFormat::Jpeg {
                assert_eq!(resp.body, original, "{what}");
            }
            assert_eq!(resp.header("content-type"), thumb_type, "{what}");
            let thumb = image::load_from_memory(&resp.body).unwrap();
            assert_eq!((thumb.width(), thumb.height()), (400, 300), "{what}");
        }
        // The legacy endpoint, without a method (scale is the default).
        let resp = get(
            &hs.client(),
            &format!("/_matrix/media/v3/thumbnail/{server}/{id}?width=200&height=200"),
        )
        .await;
        assert_eq!(resp.status, 200);
        let thumb = image::load_from_memory(&resp.body).unwrap();
        assert_scaled(
            (thumb.width(), thumb.height()),
            (200, 150),
            "legacy 200x200",
        );
    }
}

/// A scaled thumbnail of the 400x300 test image: at least the planned size (a larger stored
/// one may be served), the original's aspect ratio (to a pixel of rounding), never larger than
/// the original.
#[track_caller]
fn assert_scaled(got: (u32, u32), planned: (u32, u32), what: &str) {
    assert!(got.0 >= planned.0 && got.1 >= planned.1, "{what}: {got:?}");
    assert!(got.0 <= 400 && got.1 <= 300, "{what}: {got:?}");
    let skew = (got.0 as i64 * 300 - got.1 as i64 * 400).abs();
    assert!(skew <= 400, "{what}: {got:?} is not 4:3");
}

/// An animated GIF smaller than the requested size is not returned as it is (the spec forbids
/// animated thumbnails unless asked for): a still PNG of its size comes back.
async fn animated_images_give_still_thumbnails(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let mut gif = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut gif);
        let frames = [[255u8, 0, 0, 255], [0, 0, 255, 255]].map(|colour| {
            image::Frame::new(image::RgbaImage::from_pixel(40, 30, image::Rgba(colour)))
        });
        encoder.encode_frames(frames).expect("animated GIF");
    }
    let (server, id) = upload(&alice, &gif, "image/gif", None).await;
    for path in [
        thumbnail_path(&server, &id, 96, 96, "crop"),
        thumbnail_path(&server, &id, 320, 240, "scale"),
        format!(
            "{}&animated=true",
            thumbnail_path(&server, &id, 320, 240, "scale")
        ),
    ] {
        let resp = get(&alice, &path).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.header("content-type"), "image/png", "{path}");
        let still = image::load_from_memory(&resp.body).unwrap();
        assert_eq!((still.width(), still.height()), (40, 30));
    }
}

/// Images that cannot be thumbnailed are refused with a Matrix error, never a 500.
async fn bad_images_are_refused_cleanly(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let (server, garbage) = upload(&alice, b"not an image at all", "image/png", None).await;
    let (_, text) = upload(&alice, b"plain text", "text/plain", None).await;
    let good = encoded(&test_image(false), ImageFormat::Png);
    let (_, truncated) = upload(&alice, &good[..good.len() / 2], "image/png", None).await;
    let jpeg = encoded(&test_image(false), ImageFormat::Jpeg);
    let mut corrupt = jpeg.clone();
    for b in corrupt.iter_mut().skip(200).step_by(7) {
        *b = 0xff;
    }
    let (_, corrupt) = upload(&alice, &corrupt, "image/jpeg", None).await;
    for id in [&garbage, &text, &truncated, &corrupt] {
        let resp = get(&alice, &thumbnail_path(&server, id, 32, 32, "crop")).await;
        assert_error(&resp.error(), 400, "M_UNKNOWN", "thumbnail of a non-image");
    }

    // A PNG whose header claims 100000x100000 pixels.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&[8, 6, 0, 0, 0]);
    let crc = crc32(&png[12..]);
    png.extend_from_slice(&crc.to_be_bytes());
    png.extend_from_slice(b"\0\0\0\x02IDAT\x78\x9c");
    png.extend_from_slice(&crc32(b"IDAT\x78\x9c").to_be_bytes());
    let (_, huge) = upload(&alice, &png, "image/png", None).await;
    let resp = get(&alice, &thumbnail_path(&server, &huge, 32, 32, "crop")).await;
    assert_error(&resp.error(), 413, "M_TOO_LARGE", "huge image header");
    // The file itself is still downloadable as it was uploaded.
    let resp = get(&alice, &authed_download(&server, &huge)).await;
    assert_eq!(resp.body, png);

    let (_, ok) = upload(&alice, &good, "image/png", None).await;
    let zero = get(&alice, &thumbnail_path(&server, &ok, 0, 32, "crop")).await;
    assert_eq!(zero.status, 400, "{:?}", zero.json());
    let method = get(&alice, &thumbnail_path(&server, &ok, 32, 32, "stretch")).await;
    assert_eq!(method.status, 400, "{:?}", method.json());
    let negative = get(
        &alice,
        &thumbnail_path(&server, &ok, 32, 32, "crop").replace("32&", "-5&"),
    )
    .await;
    assert_eq!(negative.status, 400, "{:?}", negative.json());
    // The server is fine afterwards.
    let resp = get(&alice, &thumbnail_path(&server, &ok, 32, 32, "crop")).await;
    assert_eq!(resp.status, 200);
}

/// CRC-32 (IEEE) for hand-made PNG chunks.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The authenticated endpoints, the legacy config, uploads and previews need a token.
async fn media_endpoints_need_tokens(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let (server, id) = upload(&alice, b"secret-ish", "text/plain", None).await;
    let anonymous = hs.client();
    for path in [
        authed_download(&server, &id),
        format!("{}/name.txt", authed_download(&server, &id)),
        thumbnail_path(&server, &id, 32, 32, "crop"),
        "/_matrix/client/v1/media/config".to_owned(),
        "/_matrix/media/v3/config".to_owned(),
        "/_matrix/client/v1/media/preview_url?url=https://example.org".to_owned(),
    ] {
        let resp = get(&anonymous, &path).await;
        assert_error(&resp.error(), 401, "M_MISSING_TOKEN", &path);
    }
    let upload = send(
        &anonymous,
        reqwest::Method::POST,
        "/_matrix/media/v3/upload",
        Some((b"x".to_vec(), "text/plain")),
    )
    .await;
    assert_error(&upload.error(), 401, "M_MISSING_TOKEN", "upload");
    let bad = send(
        &alice.with_token("not-a-token"),
        reqwest::Method::POST,
        "/_matrix/media/v3/upload",
        Some((b"x".to_vec(), "text/plain")),
    )
    .await;
    assert_error(
        &bad.error(),
        401,
        "M_UNKNOWN_TOKEN",
        "upload with a bad token",
    );
    let create = anonymous
        .post("/_matrix/media/v1/create", &serde_json::json!({}))
        .await;
    assert_error(&create, 401, "M_MISSING_TOKEN", "create");
}

/// Previews are off by default: the endpoints do not exist.
async fn url_previews_are_off_by_default(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    for path in [
        "/_matrix/client/v1/media/preview_url?url=https%3A%2F%2Fexample.org",
        "/_matrix/media/v3/preview_url?url=https%3A%2F%2Fexample.org",
    ] {
        assert_error(&alice.get(path).await, 404, "M_UNRECOGNIZED", path);
    }
}

/// A tiny web server on loopback for previews: `/` is a page with Open Graph tags, `/cat.png`
/// its image, `/elsewhere` redirects to another loopback address. Counts connections.
async fn web_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let png = encoded(&test_image(false), ImageFormat::Png);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let png = png.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (status, extra, content_type, body): (&str, String, &str, Vec<u8>) =
                    match path.as_str() {
                        "/" => (
                            "200 OK",
                            String::new(),
                            "text/html; charset=utf-8",
                            br#"<html><head><title>Fallback</title>
                            <meta property="og:title" content="Myelin &amp; friends">
                            <meta property="og:description" content="A page for previews">
                            <meta property="og:image" content="/cat.png">
                            </head><body>Hello</body></html>"#
                                .to_vec(),
                        ),
                        "/cat.png" => ("200 OK", String::new(), "image/png", png),
                        "/elsewhere" => (
                            "302 Found",
                            format!("Location: http://127.0.0.2:{port}/\r\n"),
                            "text/plain",
                            Vec::new(),
                        ),
                        _ => ("404 Not Found", String::new(), "text/plain", Vec::new()),
                    };
                let head = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (port, hits)
}

fn preview_path(url: &str) -> String {
    format!("/_matrix/client/v1/media/preview_url?url={}", encode(url))
}

/// With previews on and no allow list, loopback is refused, and no connection is made.
async fn url_preview_refuses_loopback(backend: Backend) {
    let options = ServerOptions::default().env("MYELIN_MEDIA_URL_PREVIEW_ENABLED", "true");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let (port, hits) = web_server().await;
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://2130706433:{port}/"),
    ] {
        let resp = alice.get(&preview_path(&url)).await;
        assert_error(&resp, 403, "M_FORBIDDEN", &url);
    }
    let legacy = alice
        .get(&format!(
            "/_matrix/media/v3/preview_url?url={}",
            encode(&format!("http://127.0.0.1:{port}/"))
        ))
        .await;
    assert_error(&legacy, 403, "M_FORBIDDEN", "legacy preview of loopback");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the server never connected");
    let resp = alice.get(&preview_path("file:///etc/passwd")).await;
    assert_eq!(resp.0, 400, "{}", resp.1);
}

/// With 127.0.0.1/32 allowed, a local page is previewed (title, description, and its image
/// stored as media); a redirect to another, not allowed, loopback address is refused.
async fn url_preview_of_allowed_loopback(backend: Backend) {
    let options = ServerOptions::default()
        .env("MYELIN_MEDIA_URL_PREVIEW_ENABLED", "true")
        .env(
            "MYELIN_MEDIA_URL_PREVIEW_IP_RANGE_ALLOWLIST",
            "127.0.0.1/32",
        );
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let (port, hits) = web_server().await;
    let resp = alice
        .get(&preview_path(&format!("http://127.0.0.1:{port}/")))
        .await;
    let og = assert_ok(&resp, "preview").clone();
    assert_eq!(og["og:title"], "Myelin & friends");
    assert_eq!(og["og:description"], "A page for previews");
    let (server, id) = parse_mxc(og["og:image"].as_str().expect("og:image is an mxc URI"));
    assert_eq!(og["og:image:type"], "image/png");
    let image = get(&alice, &authed_download(&server, &id)).await;
    assert_eq!(image.body, encoded(&test_image(false), ImageFormat::Png));
    assert_eq!(og["matrix:image:size"], image.body.len());
    assert_eq!(hits.load(Ordering::SeqCst), 2, "the page and its image");

    let redirected = alice
        .get(&preview_path(&format!("http://127.0.0.1:{port}/elsewhere")))
        .await;
    assert_error(&redirected, 403, "M_FORBIDDEN", "redirect to 127.0.0.2");
    let other = alice
        .get(&preview_path(&format!("http://127.0.0.2:{port}/")))
        .await;
    assert_error(&other, 403, "M_FORBIDDEN", "127.0.0.2 is not allowed");
}

/// 62. A user on hs2 downloads media uploaded on hs1 (and a thumbnail of it) through
///     authenticated media: the same bytes and content type, fetched once over federation
///     and then served from hs2's store (also after hs1 is gone). Unknown remote media is
///     404, and the deprecated unauthenticated endpoint serves only what is cached.
async fn a62_remote_media_over_federation(backend: Backend) {
    let Some(mut hs1) = TestServer::start(backend, ServerOptions::default().federating()).await
    else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let png = encoded(&test_image(false), ImageFormat::Png);
    let (server, id) = upload(&alice, &png, "image/png", Some("cat.png")).await;
    assert_eq!(server, hs1.server_name());

    let legacy = get(&bob, &legacy_download(&server, &id)).await;
    assert_eq!(legacy.status, 404, "not fetched through the old endpoint");

    let got = get(&bob, &authed_download(&server, &id)).await;
    assert_eq!(got.status, 200, "{}", got.json());
    assert!(
        got.body == png,
        "the bytes differ ({} bytes)",
        got.body.len()
    );
    assert_eq!(got.headers["content-type"], "image/png");
    assert!(
        got.headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("cat.png"),
        "{:?}",
        got.headers
    );

    let thumb = get(&bob, &thumbnail_path(&server, &id, 96, 96, "crop")).await;
    assert_eq!(thumb.status, 200, "{}", thumb.json());
    let image = image::load_from_memory(&thumb.body).expect("a thumbnail image");
    assert_eq!((image.width(), image.height()), (96, 96));

    let missing = get(&bob, &authed_download(&server, "NoSuchMediaHere")).await;
    assert_eq!(missing.status, 404, "{}", missing.json());

    // Cached: served with hs1 stopped, through either endpoint.
    hs1.stop().await;
    let again = get(&bob, &authed_download(&server, &id)).await;
    assert_eq!(again.status, 200, "{}", again.json());
    assert!(again.body == png);
    let legacy = get(&bob, &legacy_download(&server, &id)).await;
    assert_eq!(legacy.status, 200, "cached media through the old endpoint");
}

backend_tests!(
    a62_remote_media_over_federation,
    a38_upload_and_download,
    names_dispositions_and_headers,
    async_upload,
    pending_ids_expire_and_are_limited,
    upload_size_limit,
    identical_uploads_share_one_file,
    thumbnails_of_each_format,
    animated_images_give_still_thumbnails,
    bad_images_are_refused_cleanly,
    media_endpoints_need_tokens,
    url_previews_are_off_by_default,
    url_preview_refuses_loopback,
    url_preview_of_allowed_loopback,
);
