//! The headers media is served with: `Content-Type`, `Content-Disposition` (RFC 6266, with
//! RFC 5987 encoding for non-ASCII file names) and the security headers the spec recommends.
//!
//! Pure functions over strings; the handlers only attach what these return.
//! <https://spec.matrix.org/latest/client-server-api/#serving-inline-content>

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

/// What the spec allows to be served `inline`; everything else is an `attachment`, so a browser
/// never renders uploaded HTML or SVG in the homeserver's origin.
const INLINE_CONTENT_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// The spec's recommended policy (plus `media-src 'self'`, so audio and video still play when a
/// browser opens the file directly).
pub const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; \
     plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The type/subtype of a content type, lowercased, without parameters.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether media of this content type may be shown inline.
pub fn is_inline(content_type: &str) -> bool {
    INLINE_CONTENT_TYPES.contains(&essence(content_type).as_str())
}

/// A content type as clients sent it, if it is usable as a header; otherwise the default.
/// Control characters or overlong values would make an invalid header, so they never get stored.
pub fn sanitize_content_type(content_type: Option<&str>) -> String {
    match content_type.map(str::trim) {
        Some(ct)
            if !ct.is_empty()
                && ct.len() <= 255
                && ct.contains('/')
                && ct.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
        {
            ct.to_owned()
        }
        _ => DEFAULT_CONTENT_TYPE.to_owned(),
    }
}

/// Characters of an RFC 5987 `attr-char`: sent as they are in `filename*`; everything else is
/// percent-encoded.
fn is_attr_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b)
}

/// `inline` or `attachment`, with the file name if there is one: `filename="..."` when it is
/// printable ASCII, and otherwise an ASCII fallback plus `filename*=utf-8''...` (RFC 6266
/// section 4.3), which every current browser prefers.
pub fn content_disposition(inline: bool, filename: Option<&str>) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    // Path separators and control characters never belong in a suggested name.
    let name: String = filename
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control() && *c != '/' && *c != '\\')
        .collect();
    let name = name.trim();
    if name.is_empty() {
        return kind.to_owned();
    }
    let quoted = |s: &str| s.replace('"', "\\\"");
    if name.is_ascii() {
        return format!("{kind}; filename=\"{}\"", quoted(name));
    }
    let fallback: String = name
        .chars()
        .map(|c| if c.is_ascii() { c } else { '_' })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if is_attr_char(b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!(
        "{kind}; filename=\"{}\"; filename*=utf-8''{encoded}",
        quoted(&fallback)
    )
}

/// Every header of a media or thumbnail response except `Content-Length`.
pub fn media_headers(content_type: &str, disposition: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = |s: &str, fallback: &'static str| {
        HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(fallback))
    };
    headers.insert(
        header::CONTENT_TYPE,
        value(content_type, DEFAULT_CONTENT_TYPE),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        value(disposition, "attachment"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Content behind an mxc URI never changes; authenticated media must not sit in shared caches.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_only_for_the_spec_list() {
        for ct in [
            "image/png",
            "IMAGE/JPEG",
            "text/plain; charset=utf-8",
            "audio/flac",
            "video/quicktime",
        ] {
            assert!(is_inline(ct), "{ct}");
        }
        for ct in [
            "text/html",
            "image/svg+xml",
            "application/octet-stream",
            "application/javascript",
            "audio/x-unknown",
            "",
            "image/png/../html",
        ] {
            assert!(!is_inline(ct), "{ct}");
        }
    }

    #[test]
    fn dispositions() {
        assert_eq!(content_disposition(true, None), "inline");
        assert_eq!(content_disposition(false, Some("  ")), "attachment");
        assert_eq!(
            content_disposition(true, Some("cat.png")),
            "inline; filename=\"cat.png\""
        );
        assert_eq!(
            content_disposition(false, Some("a \"quoted\" name.txt")),
            "attachment; filename=\"a \\\"quoted\\\" name.txt\""
        );
        assert_eq!(
            content_disposition(false, Some("€ rates.pdf")),
            "attachment; filename=\"_ rates.pdf\"; filename*=utf-8''%E2%82%AC%20rates.pdf"
        );
        // Header injection and path tricks are stripped.
        assert_eq!(
            content_disposition(false, Some("../evil\r\nSet-Cookie: x.txt")),
            "attachment; filename=\"..evilSet-Cookie: x.txt\""
        );
        // Whatever the name, the result is a valid header value.
        for name in ["\u{0}\u{7f}", "日本語.txt", "a\u{202e}b", "%41"] {
            let value = content_disposition(true, Some(name));
            assert!(HeaderValue::from_str(&value).is_ok(), "{value}");
        }
    }

    #[test]
    fn content_types_are_sanitized() {
        assert_eq!(sanitize_content_type(None), DEFAULT_CONTENT_TYPE);
        assert_eq!(sanitize_content_type(Some("")), DEFAULT_CONTENT_TYPE);
        assert_eq!(
            sanitize_content_type(Some("nonsense")),
            DEFAULT_CONTENT_TYPE
        );
        assert_eq!(
            sanitize_content_type(Some("text/plain\u{7}")),
            DEFAULT_CONTENT_TYPE
        );
        assert_eq!(
            sanitize_content_type(Some(" image/png ")),
            "image/png".to_owned()
        );
    }

    #[test]
    fn security_headers() {
        let h = media_headers("text/html", "attachment");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cross-origin-resource-policy"], "cross-origin");
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("sandbox;"));
        // A content type that cannot be a header falls back instead of failing.
        let h = media_headers("bad\nvalue", "inline");
        assert_eq!(h["content-type"], DEFAULT_CONTENT_TYPE);
    }
}
