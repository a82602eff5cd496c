//! URL previews: fetching a page for a user, guarded against server-side request forgery, and
//! reading its Open Graph tags.
//!
//! Every connection goes through [`Fetcher`]'s client, guarded by [`crate::outbound`] with the
//! `media.url_preview_ip_range_allowlist`: host names are checked where they resolve, IP
//! literals in the URL and in every redirect. Proxies from the environment are ignored. Bodies
//! are read up to a bound.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use html5gum::{emitters::default::DefaultEmitter, Token, Tokenizer};
use reqwest::{redirect, Url};

use crate::outbound::{blocked_literal, find_blocked, Blocked, GuardedResolver, IpFilter};

/// How much of an HTML page is read for its tags.
pub const MAX_HTML_BYTES: usize = 1024 * 1024;
const MAX_REDIRECTS: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(10);
/// Open Graph values longer than this are cut (descriptions can be whole articles).
const MAX_VALUE_CHARS: usize = 1000;
/// At most this many `og:` tags are returned.
const MAX_TAGS: usize = 50;

/// Why a URL could not be previewed.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The URL, a redirect or a resolved address is not allowed.
    #[error("{0}")]
    Blocked(String),
    #[error("fetching the URL failed: {0}")]
    Fetch(String),
}

/// Checks a URL before it is requested (also each redirect): http or https, and an allowed
/// address if the host is an IP literal. Host names are checked when resolved.
fn check_url(url: &Url, filter: &IpFilter) -> Result<(), PreviewError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(PreviewError::InvalidUrl("only http and https URLs".into()));
    }
    if url.host_str().is_none() {
        return Err(PreviewError::InvalidUrl("the URL has no host".into()));
    }
    match blocked_literal(url, filter) {
        Some(blocked) => Err(PreviewError::Blocked(blocked.to_string())),
        None => Ok(()),
    }
}

/// Turns a reqwest error into a [`PreviewError`], recognising refused addresses anywhere in
/// its chain of causes.
fn classify(e: reqwest::Error) -> PreviewError {
    match find_blocked(&e) {
        Some(why) => PreviewError::Blocked(why),
        None => PreviewError::Fetch(e.without_url().to_string()),
    }
}

/// The HTTP client for previews.
pub struct Fetcher {
    client: reqwest::Client,
    filter: Arc<IpFilter>,
}

impl Fetcher {
    pub fn new(filter: IpFilter) -> Result<Fetcher, reqwest::Error> {
        let filter = Arc::new(filter);
        let redirect_filter = filter.clone();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                filter: filter.clone(),
            }))
            .redirect(redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error("too many redirects");
                }
                match check_url(attempt.url(), &redirect_filter) {
                    Ok(()) => attempt.follow(),
                    Err(PreviewError::Blocked(why)) => attempt.error(Blocked(why)),
                    Err(e) => attempt.error(e.to_string()),
                }
            }))
            .no_proxy()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!(
                "Myelin/",
                env!("CARGO_PKG_VERSION"),
                " (URL preview)"
            ))
            .build()?;
        Ok(Fetcher { client, filter })
    }

    /// GETs `url` (checked), following allowed redirects; fails on non-2xx answers.
    pub async fn get(&self, url: &str) -> Result<reqwest::Response, PreviewError> {
        let url = Url::parse(url).map_err(|e| PreviewError::InvalidUrl(e.to_string()))?;
        check_url(&url, &self.filter)?;
        let response = self
            .client
            .get(url)
            .header(
                reqwest::header::ACCEPT,
                "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.5",
            )
            .send()
            .await
            .map_err(classify)?;
        if !response.status().is_success() {
            return Err(PreviewError::Fetch(format!(
                "the server answered {}",
                response.status()
            )));
        }
        Ok(response)
    }
}

/// The essence of a response's content type (`text/html`), lowercased.
pub fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Reads at most `limit` bytes of a body; a longer one is cut there.
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, PreviewError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

/// A response body as a stream of chunks (for storing an image).
pub fn body_stream(
    response: reqwest::Response,
) -> impl futures_util::Stream<Item = Result<Bytes, reqwest::Error>> + Unpin {
    Box::pin(futures_util::stream::unfold(
        Some(response),
        |response| async move {
            let mut response = response?;
            match response.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}

/// What a page says about itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OpenGraph {
    /// `og:*` properties (first occurrence of each), with `og:title` falling back to the
    /// `<title>` and `og:description` to `<meta name="description">`.
    pub tags: BTreeMap<String, String>,
    /// `og:image` resolved against the page's URL.
    pub image: Option<Url>,
}

fn text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let collapsed = s.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(MAX_VALUE_CHARS).collect()
}

/// Reads the Open Graph tags of an HTML page fetched from `base`.
pub fn parse_html(html: &[u8], base: &Url) -> OpenGraph {
    let mut emitter = DefaultEmitter::default();
    // Switch to raw text inside <script>, <style>, <title>..., so markup inside a script is
    // not taken for tags.
    emitter.naively_switch_states(true);
    let mut tags = BTreeMap::new();
    let mut title: Option<String> = None;
    let mut description: Option<String> = None;
    let mut in_title = false;
    let mut title_text = Vec::new();
    for token in Tokenizer::new_with_emitter(html, emitter).flatten() {
        match token {
            Token::StartTag(tag) if tag.name.as_slice() == b"meta" => {
                let attr = |name: &str| {
                    tag.attributes
                        .get(name.as_bytes())
                        .map(|v| text(v.value.as_slice()))
                };
                let Some(content) = attr("content") else {
                    continue;
                };
                let key = attr("property")
                    .or_else(|| attr("name"))
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                if key.starts_with("og:") && tags.len() < MAX_TAGS {
                    tags.entry(key).or_insert(content);
                } else if key == "description" && description.is_none() {
                    description = Some(content);
                }
            }
            Token::StartTag(tag) if tag.name.as_slice() == b"title" && title.is_none() => {
                in_title = true;
            }
            Token::String(s) if in_title => title_text.extend_from_slice(s.value.as_slice()),
            Token::EndTag(tag) if tag.name.as_slice() == b"title" && in_title => {
                in_title = false;
                title = Some(text(&title_text));
            }
            _ => {}
        }
    }
    if let Some(title) = title.filter(|t| !t.is_empty()) {
        tags.entry("og:title".into()).or_insert(title);
    }
    if let Some(description) = description.filter(|d| !d.is_empty()) {
        tags.entry("og:description".into()).or_insert(description);
    }
    let image = tags
        .remove("og:image")
        .and_then(|src| base.join(&src).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"));
    OpenGraph { tags, image }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_graph_tags_with_fallbacks() {
        let base = Url::parse("https://example.org/blog/post").unwrap();
        let html = br#"<!doctype html><html><head>
            <title>  Page   title </title>
            <meta property="og:title" content="The &amp; Title">
            <meta property="og:title" content="second, ignored">
            <META PROPERTY="og:type" CONTENT="article">
            <meta name="description" content="Plain description">
            <meta property="og:image" content="/img/cat.png">
            <script>var s = '<meta property="og:site_name" content="fake">';</script>
            </head><body>hi</body></html>"#;
        let og = parse_html(html, &base);
        assert_eq!(og.tags["og:title"], "The & Title");
        assert_eq!(og.tags["og:type"], "article");
        assert_eq!(og.tags["og:description"], "Plain description");
        assert!(!og.tags.contains_key("og:site_name"), "{:?}", og.tags);
        assert_eq!(
            og.image.unwrap().as_str(),
            "https://example.org/img/cat.png"
        );

        let og = parse_html(b"<title>Only a title</title><p>text", &base);
        assert_eq!(og.tags["og:title"], "Only a title");
        assert_eq!(og.image, None);
        // Garbage does not panic and yields nothing.
        let og = parse_html(b"\xff\xfe<meta <<<\"\0", &base);
        assert!(og.tags.is_empty());
        let og = parse_html(
            br#"<meta property="og:image" content="javascript:alert(1)">"#,
            &base,
        );
        assert_eq!(og.image, None);
    }

    #[test]
    fn urls_are_checked_before_any_request() {
        let filter = IpFilter::new(&[]);
        let check = |u: &str| check_url(&Url::parse(u).unwrap(), &filter);
        assert!(matches!(
            check("http://127.0.0.1:8008/"),
            Err(PreviewError::Blocked(_))
        ));
        assert!(matches!(
            check("http://[::1]/"),
            Err(PreviewError::Blocked(_))
        ));
        assert!(matches!(
            check("http://[::ffff:169.254.169.254]/"),
            Err(PreviewError::Blocked(_))
        ));
        assert!(matches!(
            check("http://10.0.0.1/"),
            Err(PreviewError::Blocked(_))
        ));
        assert!(matches!(
            check("http://2130706433/"),
            Err(PreviewError::Blocked(_))
        ));
        assert!(matches!(
            check("http://0x7f.1/"),
            Err(PreviewError::Blocked(_))
        ));
        assert!(matches!(
            check("file:///etc/passwd"),
            Err(PreviewError::InvalidUrl(_))
        ));
        assert!(matches!(
            check("ftp://example.org/"),
            Err(PreviewError::InvalidUrl(_))
        ));
        assert!(check("https://example.org/").is_ok());
        assert!(check("http://93.184.216.34/").is_ok());
    }

    #[tokio::test]
    async fn host_names_resolving_to_blocked_addresses_are_refused() {
        let fetcher = Fetcher::new(IpFilter::new(&[])).unwrap();
        // "localhost" resolves to loopback: refused by the resolver, before any connection.
        match fetcher.get("http://localhost:9/").await {
            Err(PreviewError::Blocked(why)) => assert!(why.contains("localhost"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
