//! Myelin's media benchmark: large uploads and downloads, and thumbnails of a large photo.
//!
//! ```sh
//! cargo run --release -p complement-tests --bin bench_media             # PostgreSQL
//! BENCH_BACKEND=sqlite cargo run --release -p complement-tests --bin bench_media
//! ```
//!
//! 1. Upload and download of a `BENCH_MEDIA_MB` (default 100) MB file over loopback: MB/s, and
//!    the server's resident memory (VmRSS) before, at its highest during the transfer (sampled
//!    every 10 ms) and after, plus the process's high-water mark (VmHWM). Streaming means the
//!    memory stays flat whatever the file size.
//! 2. Thumbnails of a 12-megapixel (4000x3000) JPEG made here: a 32x32 crop and an 800x600
//!    scale, each measured cold. The server runs with `media.pregenerate_thumbnails = false`,
//!    so each request decodes the photo and makes the thumbnail on demand (the worst case a
//!    client sees); a second request for each shows the cached case, and
//!    `BENCH_THUMBNAIL_ROUNDS - 1` (default 4) requests for nearby sizes repeat the cold case.

use std::{
    io::Cursor,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use complement_tests::{
    bench::{build_release_server, env_num, ms, percentile},
    Client, ServerOptions,
};

/// A field of `/proc/<pid>/status` in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Samples the server's VmRSS until stopped; returns the highest value seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(proc_kib(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        RssSampler { stop, peak, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("http client")
}

async fn upload(client: &Client, bytes: Vec<u8>, content_type: &str) -> (String, Duration) {
    let start = Instant::now();
    let resp = http()
        .post(format!("{}/_matrix/media/v3/upload", client.base_url))
        .bearer_auth(client.access_token.as_deref().unwrap())
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("JSON");
    let elapsed = start.elapsed();
    assert!(status.is_success(), "upload: {status} {body}");
    let uri = body["content_uri"].as_str().expect("content_uri");
    let id = uri.rsplit('/').next().unwrap().to_owned();
    (id, elapsed)
}

/// GETs `path` and counts the body without keeping it; returns (bytes, status, time).
async fn fetch(client: &Client, path: &str) -> (u64, u16, Duration) {
    let start = Instant::now();
    let mut resp = http()
        .get(format!("{}{path}", client.base_url))
        .bearer_auth(client.access_token.as_deref().unwrap())
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let mut total = 0u64;
    while let Some(chunk) = resp.chunk().await.expect("body") {
        total += chunk.len() as u64;
    }
    (total, status, start.elapsed())
}

/// A 4000x3000 photo-like JPEG: smooth gradients with noise, so it compresses like a photo.
fn twelve_megapixel_jpeg() -> Vec<u8> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let img = image::RgbImage::from_fn(4000, 3000, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let noise = (seed % 24) as u32;
        image::Rgb([
            ((x * 255 / 4000) + noise).min(255) as u8,
            ((y * 255 / 3000) + noise).min(255) as u8,
            (((x + y) * 255 / 7000) + noise).min(255) as u8,
        ])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut Cursor::new(&mut bytes),
            90,
        ))
        .expect("encode JPEG");
    bytes
}

#[tokio::main]
async fn main() {
    build_release_server();
    let backend = complement_tests::bench::backend();
    let megabytes = env_num("BENCH_MEDIA_MB", 100);
    let size = megabytes * 1_000_000;
    let options = ServerOptions::default()
        .env("MYELIN_LOG", "error")
        .env("MYELIN_MEDIA_MAX_UPLOAD_SIZE", &(size + 1).to_string())
        .env("MYELIN_MEDIA_PREGENERATE_THUMBNAILS", "false");
    let hs = complement_tests::bench::start_server(backend, options).await;
    let pid = hs.pid().expect("our own server");
    let server = hs.server_name().to_owned();
    println!("# Myelin media benchmark ({backend:?})");
    let alice = hs.register_user("alice").await;

    // 1. A large upload and download.
    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let rss_before = proc_kib(pid, "VmRSS:");
    let hwm_before = proc_kib(pid, "VmHWM:");
    let sampler = RssSampler::start(pid);
    let (id, took) = upload(&alice, content, "application/octet-stream").await;
    let peak_up = sampler.finish().await;
    let rss_after_up = proc_kib(pid, "VmRSS:");
    let mb = size as f64 / 1e6;
    println!(
        "upload {megabytes} MB: {:.2} s, {:.0} MB/s",
        took.as_secs_f64(),
        mb / took.as_secs_f64()
    );

    let sampler = RssSampler::start(pid);
    let (got, status, took) = fetch(
        &alice,
        &format!("/_matrix/client/v1/media/download/{server}/{id}"),
    )
    .await;
    let peak_down = sampler.finish().await;
    assert_eq!((status, got), (200, size), "download");
    let rss_after_down = proc_kib(pid, "VmRSS:");
    println!(
        "download {megabytes} MB: {:.2} s, {:.0} MB/s",
        took.as_secs_f64(),
        mb / took.as_secs_f64()
    );
    println!(
        "server VmRSS: before {:.1} MiB, peak during upload {:.1} MiB, after upload {:.1} MiB, \
         peak during download {:.1} MiB, after download {:.1} MiB",
        mib(rss_before),
        mib(peak_up),
        mib(rss_after_up),
        mib(peak_down),
        mib(rss_after_down)
    );
    println!(
        "server VmHWM (high-water mark): before {:.1} MiB, after both {:.1} MiB",
        mib(hwm_before),
        mib(proc_kib(pid, "VmHWM:"))
    );

    // 2. Thumbnails of a 12-megapixel JPEG, cold (decoded on demand) and then cached.
    let jpeg = twelve_megapixel_jpeg();
    println!("12 MP JPEG (4000x3000): {:.1} MB", jpeg.len() as f64 / 1e6);
    let (photo, _) = upload(&alice, jpeg, "image/jpeg").await;
    let rounds = env_num("BENCH_THUMBNAIL_ROUNDS", 5) as u32;
    for (w, h, method) in [(32, 32, "crop"), (800, 600, "scale")] {
        let path = |w: u32, h: u32| {
            format!(
                "/_matrix/client/v1/media/thumbnail/{server}/{photo}?width={w}&height={h}&method={method}"
            )
        };
        let (bytes, status, cold) = fetch(&alice, &path(w, h)).await;
        assert_eq!(status, 200, "thumbnail {w}x{h} {method}");
        let (_, _, warm) = fetch(&alice, &path(w, h)).await;
        // More cold runs: slightly larger sizes, none of which any stored thumbnail answers,
        // so each decodes the photo again.
        let mut more = Vec::new();
        for i in 1..rounds {
            let (_, status, took) = fetch(&alice, &path(w + 8 * i, h + 6 * i)).await;
            assert_eq!(status, 200);
            more.push(took);
        }
        more.push(cold);
        more.sort();
        println!(
            "thumbnail {w}x{h} {method}: cold {:.0} ms ({bytes} bytes), cached {:.1} ms; \
             {} cold runs of nearby sizes: median {:.0} ms, max {:.0} ms",
            ms(cold),
            ms(warm),
            more.len(),
            ms(percentile(&more, 0.5)),
            ms(*more.last().unwrap())
        );
    }
    println!(
        "server VmHWM after thumbnails: {:.1} MiB",
        mib(proc_kib(pid, "VmHWM:"))
    );
}
