//! Thumbnails: what size to make ([`plan`]), which stored one to serve ([`select`]), and making
//! them with the `image` crate ([`decode`], [`render`]).
//!
//! The spec's rules (<https://spec.matrix.org/latest/client-server-api/#thumbnails>):
//!
//! 1. `scale` keeps the original aspect ratio and fits the image inside the requested box, so
//!    one side equals the request and the other is no larger.
//! 2. `crop` has the aspect ratio of the request: the largest centred region of that aspect is
//!    cut out and scaled to the requested size.
//! 3. Never upscale. When the original already fits in the requested box, the original
//!    content is returned. A crop of an image smaller than the box in one side only is cut to
//!    the requested aspect at the original scale.
//! 4. Never return a smaller thumbnail than asked for unless the original forces it; a larger
//!    stored one may be served instead of making a new one ([`select`]).
//!
//! Only the configured sizes are ever made (`media.thumbnail_sizes`): a request is answered
//! with the best fit among them ([`choose_size`]).
//!
//! Decoding is bounded ([`limits`]): images wider or taller than [`MAX_DIMENSION`] or needing
//! more than [`MAX_DECODE_BYTES`] of pixels are refused before any pixel is read. Only PNG,
//! JPEG, GIF and WebP are decoded, whatever the uploader claimed the content type was; the
//! format is guessed from the bytes. Everything here is blocking and runs on the blocking pool.

use std::{io::Cursor, path::Path};

use image::{
    codecs::{jpeg::JpegEncoder, png::PngEncoder},
    imageops::FilterType,
    DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader,
};

/// Widest or tallest image we decode.
pub const MAX_DIMENSION: u32 = 16_384;
/// Most memory one decoded image may take (a 12-megapixel RGBA photo needs 48 MiB).
pub const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;
/// JPEG quality of thumbnails (Synapse uses the same).
const JPEG_QUALITY: u8 = 80;

/// `crop` or `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "crop" => Some(Method::Crop),
            "scale" => Some(Method::Scale),
            _ => None,
        }
    }
}

/// One size thumbnails are made in.
pub type Size = (u32, u32, Method);

/// Parses a configured size, `"<width>x<height> <crop|scale>"` (e.g. `"320x240 scale"`).
pub fn parse_size(text: &str) -> Option<Size> {
    let (dimensions, method) = text.trim().split_once(char::is_whitespace)?;
    let (w, h) = dimensions.split_once('x')?;
    let (w, h): (u32, u32) = (w.parse().ok()?, h.parse().ok()?);
    let method = Method::parse(method.trim())?;
    (w > 0 && h > 0 && w <= MAX_DIMENSION && h <= MAX_DIMENSION).then_some((w, h, method))
}

/// Which of the configured `sizes` answers a request for `width`×`height` with `method`, as
/// Synapse chooses: among the sizes of that method (all sizes, if none has it), those at
/// least as large as the request in both sides are preferred; among them, for a crop the
/// closest aspect ratio wins, then the closeness in size `|(w - tw) (h - th)|`; for a scale,
/// the closeness in size. Ties go to the size listed first.
///
/// Thumbnails are made only in these sizes, so no request can make the server decode an
/// image for a size of its choosing (forty sizes of one picture cost 23 s of CPU before).
pub fn choose_size(sizes: &[Size], width: u32, height: u32, method: Method) -> Option<Size> {
    let same: Vec<Size> = sizes.iter().copied().filter(|s| s.2 == method).collect();
    let pool = if same.is_empty() {
        sizes.to_vec()
    } else {
        same
    };
    let (w, h) = (width.max(1) as f64, height.max(1) as f64);
    let key = |&(tw, th, _): &Size| {
        let (tw, th) = (tw as f64, th as f64);
        let size_quality = ((w - tw) * (h - th)).abs();
        let aspect_quality = match method {
            Method::Crop => (w / h - tw / th).abs(),
            Method::Scale => 0.0,
        };
        (aspect_quality, size_quality)
    };
    let best = |candidates: Vec<Size>| {
        candidates.into_iter().min_by(|a, b| {
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    };
    let (large_enough, smaller): (Vec<Size>, Vec<Size>) = pool
        .into_iter()
        .partition(|&(tw, th, _)| tw >= width && th >= height);
    best(large_enough).or_else(|| best(smaller))
}

/// A region of the source image and the size it is resized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    pub method: Method,
    /// Top-left corner and size of the part of the source that is kept.
    pub x: u32,
    pub y: u32,
    pub region_width: u32,
    pub region_height: u32,
    /// The thumbnail's size.
    pub width: u32,
    pub height: u32,
}

/// What to answer a thumbnail request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The original content: it is already no larger than asked for.
    Original,
    Resize(Resize),
}

fn div_round(a: u64, b: u64) -> u64 {
    (a + b / 2) / b
}

/// Plans the thumbnail of a `width`×`height` image for a request of `req_w`×`req_h` with
/// `method` (the rules in the module docs). Requested sizes must be at least 1.
pub fn plan(width: u32, height: u32, req_w: u32, req_h: u32, method: Method) -> Plan {
    let (w, h, rw, rh) = (width as u64, height as u64, req_w as u64, req_h as u64);
    if w == 0 || h == 0 || rw == 0 || rh == 0 {
        return Plan::Original;
    }
    match method {
        Method::Scale => {
            if rw >= w && rh >= h {
                return Plan::Original;
            }
            // Fit inside the box: the side that limits more is set to the request.
            let (tw, th) = if rw * h <= rh * w {
                (rw, div_round(h * rw, w).max(1))
            } else {
                (div_round(w * rh, h).max(1), rh)
            };
            Plan::Resize(Resize {
                method,
                x: 0,
                y: 0,
                region_width: width,
                region_height: height,
                width: tw as u32,
                height: th as u32,
            })
        }
        Method::Crop => {
            if rw >= w && rh >= h {
                return Plan::Original;
            }
            // The largest centred region with the requested aspect ratio.
            let (cw, ch) = if w * rh > h * rw {
                (div_round(h * rw, rh).clamp(1, w), h)
            } else {
                (w, div_round(w * rh, rw).clamp(1, h))
            };
            let (x, y) = ((w - cw) / 2, (h - ch) / 2);
            let large_enough = cw >= rw && ch >= rh;
            let (tw, th) = if large_enough {
                // Cut to the aspect ratio, then scale down to the requested size.
                (rw, rh)
            } else {
                // Too small to reach the requested size: only cut to the aspect ratio.
                (cw, ch)
            };
            if (tw, th) == (w, h) {
                return Plan::Original;
            }
            Plan::Resize(Resize {
                method,
                x: x as u32,
                y: y as u32,
                region_width: cw as u32,
                region_height: ch as u32,
                width: tw as u32,
                height: th as u32,
            })
        }
    }
}

/// A still copy of the whole image at its own size: what answers a request the original
/// already fits when the original may be animated (GIF, WebP, APNG). The spec forbids animated
/// thumbnails unless asked for, and we never make animated ones; only JPEG originals (never
/// animated) are returned as they are.
pub fn still_original(width: u32, height: u32, method: Method) -> Resize {
    Resize {
        method,
        x: 0,
        y: 0,
        region_width: width,
        region_height: height,
        width,
        height,
    }
}

/// Whether an image of this format may be served as its own thumbnail (see [`still_original`]).
pub fn is_always_still(format: ImageFormat) -> bool {
    format == ImageFormat::Jpeg
}

/// A stored thumbnail, as far as choosing one goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub width: u32,
    pub height: u32,
    pub method: Method,
}

/// Picks the stored thumbnail to serve for a planned `want`. A crop must be exactly the
/// planned size (clients lay crops out by size). A scale may be larger: the smallest stored
/// scale at least as large in both sides, as long as it is no more than twice as wide; beyond
/// that making the right size is worth it. Returns the index into `stored`.
pub fn select(want: &Resize, stored: &[Candidate]) -> Option<usize> {
    let (ww, wh) = (want.width as u64, want.height as u64);
    stored
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            let (cw, ch) = (c.width as u64, c.height as u64);
            c.method == want.method
                && match want.method {
                    Method::Crop => (cw, ch) == (ww, wh),
                    Method::Scale => cw >= ww && ch >= wh && cw <= 2 * ww,
                }
        })
        .min_by_key(|(_, c)| c.width as u64 * c.height as u64)
        .map(|(i, _)| i)
}

/// Why an image cannot be thumbnailed.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// Not PNG, JPEG, GIF or WebP, or broken.
    #[error("not a supported image: {0}")]
    NotAnImage(String),
    /// Beyond [`MAX_DIMENSION`] or [`MAX_DECODE_BYTES`].
    #[error("image too large: {0}")]
    TooLarge(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<ImageError> for ThumbnailError {
    /// Everything but a limit is the content's fault: decoders report malformed data as I/O
    /// errors too (truncation, bad lengths), and the file was opened fine before.
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Limits(e) => ThumbnailError::TooLarge(e.to_string()),
            e => ThumbnailError::NotAnImage(e.to_string()),
        }
    }
}

/// The decoding limits for untrusted images.
pub fn limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// A decoded image (EXIF orientation applied) and its format.
pub struct Decoded {
    pub image: DynamicImage,
    pub format: ImageFormat,
}

/// Decodes the image in the file at `path` within [`limits`] (the first frame of an animation).
pub fn decode(path: &Path) -> Result<Decoded, ThumbnailError> {
    let reader = ImageReader::open(path)?.with_guessed_format()?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)) => {
            f
        }
        _ => {
            return Err(ThumbnailError::NotAnImage(
                "not PNG, JPEG, GIF or WebP".into(),
            ))
        }
    };
    let mut limits = limits();
    let mut reader = reader;
    reader.limits(limits.clone());
    // `into_decoder` checks the dimensions against the limits from the header alone; the pixel
    // buffer is reserved against `max_alloc` before anything is decoded.
    let mut decoder = reader.into_decoder()?;
    limits.reserve(decoder.total_bytes())?;
    let orientation = decoder.orientation()?;
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    Ok(Decoded { image, format })
}

/// The content type thumbnails of an image are encoded as: JPEG for photos (JPEG sources, and
/// WebP without transparency), PNG otherwise, so transparency and sharp edges survive.
pub fn output_type(decoded: &Decoded) -> &'static str {
    match decoded.format {
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::WebP if !decoded.image.color().has_alpha() => "image/jpeg",
        _ => "image/png",
    }
}

/// The MIME type of a decoded image's own format (what the original is served as when it is
/// returned instead of a thumbnail).
pub fn format_type(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::Gif => "image/gif",
        ImageFormat::WebP => "image/webp",
        _ => "image/png",
    }
}

/// Makes the thumbnail `resize` describes and encodes it as `content_type`.
pub fn render(
    image: &DynamicImage,
    resize: &Resize,
    content_type: &str,
) -> Result<Vec<u8>, ThumbnailError> {
    let region = if (resize.region_width, resize.region_height) == (image.width(), image.height()) {
        std::borrow::Cow::Borrowed(image)
    } else {
        std::borrow::Cow::Owned(image.crop_imm(
            resize.x,
            resize.y,
            resize.region_width,
            resize.region_height,
        ))
    };
    let (w, h) = (resize.width, resize.height);
    let out = if (region.width(), region.height()) == (w, h) {
        region.into_owned()
    } else if region.width() >= 2 * w && region.height() >= 2 * h {
        // Reductions by 2x or more: average the block of source pixels behind each thumbnail
        // pixel (integer arithmetic, every source pixel read once). Area averaging is the
        // right filter for large reductions and takes a third of the time of a convolution
        // (12 MP to 800x600: ~45 ms against ~150 ms for box-to-2x plus Catmull-Rom).
        region.thumbnail_exact(w, h)
    } else {
        // Small reductions, where block averaging would alias: a proper filter.
        region.resize_exact(w, h, FilterType::CatmullRom)
    };
    let mut bytes = Vec::new();
    if content_type == "image/jpeg" {
        let rgb = DynamicImage::ImageRgb8(out.to_rgb8());
        rgb.write_with_encoder(JpegEncoder::new_with_quality(
            &mut Cursor::new(&mut bytes),
            JPEG_QUALITY,
        ))?;
    } else {
        out.write_with_encoder(PngEncoder::new(&mut Cursor::new(&mut bytes)))?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resize(p: Plan) -> Resize {
        match p {
            Plan::Resize(r) => r,
            Plan::Original => panic!("expected a resize"),
        }
    }

    #[test]
    fn scale_fits_the_box_keeps_aspect_and_never_upscales() {
        let r = resize(plan(4000, 3000, 800, 600, Method::Scale));
        assert_eq!((r.width, r.height), (800, 600));
        let r = resize(plan(4000, 3000, 320, 320, Method::Scale));
        assert_eq!((r.width, r.height), (320, 240));
        let r = resize(plan(1000, 2000, 320, 240, Method::Scale));
        assert_eq!((r.width, r.height), (120, 240));
        // Only one side too large: still scaled, never enlarged.
        let r = resize(plan(1000, 100, 320, 240, Method::Scale));
        assert_eq!((r.width, r.height), (320, 32));
        let r = resize(plan(10000, 1, 100, 100, Method::Scale));
        assert_eq!((r.width, r.height), (100, 1));
        assert_eq!(plan(200, 100, 320, 240, Method::Scale), Plan::Original);
        assert_eq!(plan(320, 240, 320, 240, Method::Scale), Plan::Original);
    }

    #[test]
    fn crop_has_the_requested_size_and_aspect() {
        let r = resize(plan(4000, 3000, 32, 32, Method::Crop));
        assert_eq!((r.width, r.height), (32, 32));
        assert_eq!(
            (r.x, r.y, r.region_width, r.region_height),
            (500, 0, 3000, 3000)
        );
        let r = resize(plan(200, 100, 50, 40, Method::Crop));
        assert_eq!((r.width, r.height), (50, 40));
        assert_eq!(
            (r.x, r.y, r.region_width, r.region_height),
            (37, 0, 125, 100)
        );
        let r = resize(plan(100, 300, 96, 96, Method::Crop));
        assert_eq!((r.width, r.height), (96, 96));
        assert_eq!((r.x, r.y), (0, 100));
        // Smaller than the box: the original.
        assert_eq!(plan(64, 64, 96, 96, Method::Crop), Plan::Original);
        // Smaller in one side only: cut to the aspect ratio, not enlarged.
        let r = resize(plan(200, 50, 96, 96, Method::Crop));
        assert_eq!((r.width, r.height), (50, 50));
        assert_eq!((r.x, r.region_width), (75, 50));
        // Degenerate sizes do not divide by zero.
        assert_eq!(plan(0, 10, 5, 5, Method::Crop), Plan::Original);
        assert_eq!(plan(10, 10, 0, 5, Method::Scale), Plan::Original);
        let r = resize(plan(16384, 1, 1, 16384, Method::Crop));
        assert_eq!((r.width, r.height, r.region_width), (1, 1, 1));
    }

    #[test]
    fn selection_prefers_the_smallest_large_enough_thumbnail() {
        let c = |width, height, method| Candidate {
            width,
            height,
            method,
        };
        let stored = [
            c(32, 32, Method::Crop),
            c(96, 96, Method::Crop),
            c(320, 240, Method::Scale),
            c(640, 480, Method::Scale),
            c(800, 600, Method::Scale),
        ];
        let want = |w, h, m| resize(plan(4000, 3000, w, h, m));
        assert_eq!(select(&want(32, 32, Method::Crop), &stored), Some(0));
        assert_eq!(select(&want(96, 96, Method::Crop), &stored), Some(1));
        // Crops are made to measure.
        assert_eq!(select(&want(60, 60, Method::Crop), &stored), None);
        assert_eq!(select(&want(96, 48, Method::Crop), &stored), None);
        assert_eq!(select(&want(600, 450, Method::Scale), &stored), Some(3));
        assert_eq!(select(&want(200, 200, Method::Scale), &stored), Some(2));
        // Far larger than needed: make the right size instead.
        assert_eq!(select(&want(100, 100, Method::Scale), &stored), None);
        assert_eq!(select(&want(800, 600, Method::Scale), &stored), Some(4));
        assert_eq!(select(&want(1000, 750, Method::Scale), &stored), None);
        // Never a crop for a scale request or the other way round.
        assert_eq!(select(&want(320, 240, Method::Crop), &stored), None);
    }

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), format)
            .unwrap();
        bytes
    }

    fn temp_file(bytes: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("myelin-thumb-{}", rand::random::<u64>()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn decode_and_render_each_format() {
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(300, 200, |x, y| {
            image::Rgba([x as u8, y as u8, 128, 255])
        }));
        let rgb = DynamicImage::ImageRgb8(rgba.to_rgb8());
        for (image, format, expect) in [
            (&rgba, ImageFormat::Png, "image/png"),
            (&rgb, ImageFormat::Jpeg, "image/jpeg"),
            (&rgba, ImageFormat::Gif, "image/png"),
            (&rgb, ImageFormat::WebP, "image/jpeg"),
        ] {
            let path = temp_file(&encode(image, format));
            let decoded = decode(&path).unwrap();
            let _ = std::fs::remove_file(&path);
            assert_eq!(decoded.format, format);
            assert_eq!(output_type(&decoded), expect, "{format:?}");
            let r = resize(plan(300, 200, 32, 32, Method::Crop));
            let bytes = render(&decoded.image, &r, expect).unwrap();
            let out = image::load_from_memory(&bytes).unwrap();
            assert_eq!((out.width(), out.height()), (32, 32));
        }
    }

    #[test]
    fn garbage_and_huge_images_are_refused() {
        let path = temp_file(b"definitely not an image");
        assert!(matches!(decode(&path), Err(ThumbnailError::NotAnImage(_))));
        // A PNG header claiming 100000x100000 pixels, with no pixel data.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0]);
        let crc = crc32(&png[12..]);
        png.extend_from_slice(&crc.to_be_bytes());
        std::fs::write(&path, &png).unwrap();
        assert!(
            matches!(decode(&path), Err(ThumbnailError::TooLarge(_))),
            "{:?}",
            decode(&path).err()
        );
        // Within the side limit but too many pixels for the memory limit.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&16_000u32.to_be_bytes());
        png.extend_from_slice(&16_000u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0]);
        let crc = crc32(&png[12..]);
        png.extend_from_slice(&crc.to_be_bytes());
        // The start of an image data chunk, so the header parses completely.
        png.extend_from_slice(b"\0\0\0\x02IDAT\x78\x9c");
        let crc = crc32(b"IDAT\x78\x9c");
        png.extend_from_slice(&crc.to_be_bytes());
        std::fs::write(&path, &png).unwrap();
        assert!(
            matches!(decode(&path), Err(ThumbnailError::TooLarge(_))),
            "{:?}",
            decode(&path).err()
        );
        // A truncated real PNG.
        let good = encode(
            &DynamicImage::ImageRgb8(image::RgbImage::new(64, 64)),
            ImageFormat::Png,
        );
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(matches!(decode(&path), Err(ThumbnailError::NotAnImage(_))));
        let _ = std::fs::remove_file(&path);
    }

    /// CRC-32 (IEEE), for hand-made PNG chunks.
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

    #[test]
    fn requests_map_onto_the_configured_sizes() {
        let sizes: Vec<Size> = [
            "32x32 crop",
            "96x96 crop",
            "320x240 scale",
            "640x480 scale",
            "800x600 scale",
        ]
        .iter()
        .map(|s| parse_size(s).unwrap())
        .collect();
        let pick = |w, h, m| choose_size(&sizes, w, h, m).unwrap();
        assert_eq!(pick(32, 32, Method::Crop), (32, 32, Method::Crop));
        assert_eq!(pick(33, 33, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(pick(200, 200, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(pick(1, 1, Method::Crop), (32, 32, Method::Crop));
        assert_eq!(pick(37, 41, Method::Scale), (320, 240, Method::Scale));
        assert_eq!(pick(321, 100, Method::Scale), (640, 480, Method::Scale));
        assert_eq!(pick(5000, 5000, Method::Scale), (800, 600, Method::Scale));
        // No crop size configured: the scale sizes answer crops too.
        let scales: Vec<Size> = sizes[2..].to_vec();
        assert_eq!(
            choose_size(&scales, 32, 32, Method::Crop),
            Some((320, 240, Method::Scale))
        );
        assert_eq!(choose_size(&[], 32, 32, Method::Crop), None);
        assert_eq!(parse_size("0x5 crop"), None);
        assert_eq!(parse_size("5x5 squash"), None);
        assert_eq!(parse_size(" 64x48  scale "), Some((64, 48, Method::Scale)));
    }
}
