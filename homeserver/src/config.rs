//! Configuration: a TOML file (`--config PATH`) with every key overridable by an environment
//! variable, validated once at start-up.
//!
//! [`KEYS`] is the one list of options: it drives the environment overrides, the commented file
//! that `myelin generate-config` prints, and the unit test that keeps both in step with
//! [`Config`]. A top-level key `foo` is `MYELIN_FOO`; a key `bar` in section `[sec]` is
//! `MYELIN_SEC_BAR`.

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// The validated server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server_name: String,
    pub client_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub public_baseurl: Option<String>,
    pub federation_public_address: Option<String>,
    pub federation_enabled: bool,
    /// Empty: no federation listener.
    pub federation_listen: String,
    pub federation_tls_cert: Option<PathBuf>,
    pub federation_tls_key: Option<PathBuf>,
    pub federation_verify_certificates: bool,
    pub federation_ip_range_allowlist: Vec<String>,
    pub federation_allowed_servers: Vec<String>,
    pub federation_denied_servers: Vec<String>,
    pub registration_open: bool,
    pub registration_shared_secret: Option<String>,
    pub registration_token_required: bool,
    pub max_json_body_bytes: usize,
    pub max_connections: usize,
    pub header_read_timeout_seconds: u64,
    pub body_read_timeout_seconds: u64,
    pub delivery_receipts: bool,
    pub refreshable_access_token_lifetime_seconds: u64,
    pub login_get_token_enabled: bool,
    pub log: String,
    pub rate_limits: RateLimits,
    pub presence: PresenceConfig,
    pub media: MediaConfig,
    pub push: PushConfig,
    pub voip: VoipConfig,
    pub rtc: RtcConfig,
    pub user_directory: UserDirectoryConfig,
}

/// The user directory (POST /user_directory/search).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDirectoryConfig {
    /// Let every user find every local user, not only those in public rooms and those they
    /// share a room with (Synapse's `user_directory.search_all_users`).
    pub search_all_users: bool,
}

/// Voice and video calls: the TURN server clients relay media through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoipConfig {
    /// `turn:`/`turns:` URIs handed to clients; empty: no TURN server.
    pub turn_uris: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret` with
    /// `use-auth-secret`): credentials are an HMAC of a username that ends when they expire.
    pub turn_shared_secret: Option<String>,
    /// How long handed-out credentials are valid, in seconds.
    pub turn_user_lifetime: u64,
}

/// MatrixRTC (Element Call): the LiveKit focus advertised to clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtcConfig {
    /// `livekit_service_url`s of the operator's LiveKit JWT services, in order of preference:
    /// advertised in `/.well-known/matrix/client` as `org.matrix.msc4143.rtc_foci` and by
    /// the MSC4143 transports endpoint.
    pub livekit_service_urls: Vec<String>,
}

/// Push: where notifications may be sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// CIDR ranges push gateways may be reached at although they are private, loopback or
    /// otherwise non-public (parsed and checked by `validate`).
    pub ip_range_allowlist: Vec<String>,
}

/// The media repository: upload limits, thumbnails and URL previews.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Largest upload accepted, in bytes (reported to clients as `m.upload.size`).
    pub max_upload_size: u64,
    /// Make the common thumbnail sizes right after an image is uploaded (otherwise on the
    /// first request for each).
    pub pregenerate_thumbnails: bool,
    /// The sizes thumbnails are made in, `"<width>x<height> <crop|scale>"` (checked by
    /// `validate`). A request is answered with the best fit among them.
    pub thumbnail_sizes: Vec<String>,
    /// How long an ID from `POST /_matrix/media/v1/create` waits for its upload.
    pub unused_id_lifetime_seconds: u64,
    /// How many such IDs a user may have waiting at once.
    pub max_pending_uploads: u64,
    pub url_preview_enabled: bool,
    /// CIDR ranges URL previews may fetch from even though they are private, loopback or
    /// otherwise non-public (parsed and checked by `validate`).
    pub url_preview_ip_range_allowlist: Vec<String>,
}

/// Presence: whether it is on, and when a user without open connections counts as offline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    pub enabled: bool,
    pub offline_after_seconds: u64,
    pub unavailable_after_seconds: u64,
    pub online_debounce_ms: u64,
    pub send_to_federation: bool,
    pub receive_from_federation: bool,
}

/// Request rate limits (token buckets). `per_second` is the refill rate, `burst` the bucket size.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub enabled: bool,
    pub login_per_second: f64,
    pub login_burst: u32,
    pub failed_login_per_second: f64,
    pub failed_login_burst: u32,
    pub registration_per_second: f64,
    pub registration_burst: u32,
    pub registration_nonce_per_second: f64,
    pub registration_nonce_burst: u32,
    pub to_device_per_second: f64,
    pub to_device_burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Bool,
    Int,
    Float,
    /// A list of strings: a TOML array, or comma-separated in the environment.
    List,
}

/// One configuration option: its dotted path, type, default (as TOML, `None` when unset by
/// default) and the comment printed by `generate-config`.
struct Key {
    path: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    doc: &'static str,
}

const KEYS: &[Key] = &[
    Key { path: "server_name", kind: Kind::Str, default: Some("\"localhost\""),
          doc: "The server name: the part after the colon in @user:server_name. Cannot change once users exist." },
    Key { path: "client_listen", kind: Kind::Str, default: Some("\"127.0.0.1:8008\""),
          doc: "Address and port the client-server API listens on." },
    Key { path: "data_dir", kind: Kind::Str, default: Some("\"./data\""),
          doc: "Directory for the SQLite database (when database_url is unset) and media." },
    Key { path: "database_url", kind: Kind::Str, default: None,
          doc: "Database to use. Unset: SQLite at <data_dir>/myelin.db. postgres://user:pass@host/db selects PostgreSQL." },
    Key { path: "public_baseurl", kind: Kind::Str, default: None,
          doc: "URL clients reach this server at, advertised in /.well-known/matrix/client. Unset: http://<client_listen>." },
    Key { path: "federation_public_address", kind: Kind::Str, default: None,
          doc: "host:port other servers reach this server at, advertised in /.well-known/matrix/server. Unset: <server_name>:8448." },
    Key { path: "federation_enabled", kind: Kind::Bool, default: Some("true"),
          doc: "Serve the server-server (federation) API on federation_listen." },
    Key { path: "federation_listen", kind: Kind::Str, default: Some("\"127.0.0.1:8448\""),
          doc: "Address and port of the federation API's TLS listener (loopback by default, like client_listen; \"\" turns it off, e.g. behind a reverse proxy)." },
    Key { path: "federation_tls_cert", kind: Kind::Str, default: None,
          doc: "PEM certificate chain of the federation listener. Unset (with federation_tls_key unset): a self-signed certificate is made once in data_dir." },
    Key { path: "federation_tls_key", kind: Kind::Str, default: None,
          doc: "PEM private key of federation_tls_cert." },
    Key { path: "federation_verify_certificates", kind: Kind::Bool, default: Some("true"),
          doc: "Check other servers' TLS certificates. Only tests turn this off." },
    Key { path: "federation_ip_range_allowlist", kind: Kind::List, default: Some("[]"),
          doc: "CIDR ranges outbound federation may reach although they are not public (private, loopback). Empty: public addresses only." },
    Key { path: "federation_allowed_servers", kind: Kind::List, default: Some("[]"),
          doc: "Server names (globs with * and ?) this server federates with. Empty: every server not denied." },
    Key { path: "federation_denied_servers", kind: Kind::List, default: Some("[]"),
          doc: "Server names (globs with * and ?) this server never federates with, in either direction." },
    Key { path: "registration_open", kind: Kind::Bool, default: Some("false"),
          doc: "Let anyone register an account (m.login.dummy). Off by default: create accounts with myelin-admin." },
    Key { path: "registration_shared_secret", kind: Kind::Str, default: None,
          doc: "Secret for Synapse-compatible shared-secret registration (/_synapse/admin/v1/register), used by myelin-admin. Unset: disabled." },
    Key { path: "registration_token_required", kind: Kind::Bool, default: Some("false"),
          doc: "Require a registration token (m.login.registration_token) to register, even when registration_open is false." },
    Key { path: "max_json_body_bytes", kind: Kind::Int, default: Some("8388608"),
          doc: "Largest JSON request body accepted, in bytes; larger ones get 413 M_TOO_LARGE." },
    Key { path: "max_connections", kind: Kind::Int, default: Some("50000"),
          doc: "Most client connections open at once (idle long-polls and WebSockets included); a connection beyond it is answered 503 M_LIMIT_EXCEEDED and closed. Keep it below the process's open-file limit." },
    Key { path: "header_read_timeout_seconds", kind: Kind::Int, default: Some("30"),
          doc: "A client must send a request's headers within this many seconds (also how long an idle keep-alive connection is kept between requests), else the connection is closed." },
    Key { path: "body_read_timeout_seconds", kind: Kind::Int, default: Some("60"),
          doc: "A JSON request body must arrive within this many seconds, and an upload may pause at most this long between pieces; else 408 and the connection is closed." },
    Key { path: "delivery_receipts", kind: Kind::Bool, default: Some("true"),
          doc: "Record when a member's device first receives an event and show senders an io.myelin.delivered receipt (see docs/delivered-receipts.md)." },
    Key { path: "refreshable_access_token_lifetime_seconds", kind: Kind::Int, default: Some("300"),
          doc: "How long an access token lives when the client asked for a refresh token (refresh_token: true on login or register); the client renews it with POST /refresh." },
    Key { path: "login_get_token_enabled", kind: Kind::Bool, default: Some("false"),
          doc: "Let a logged-in device make a short-lived token (POST /login/get_token, after re-entering the password) to log in another device with m.login.token, as for QR-code sign-in." },
    Key { path: "log", kind: Kind::Str, default: Some("\"info,ruma_state_res=warn,sqlx=warn\""),
          doc: "Log filter in tracing's EnvFilter syntax, e.g. \"info\" or \"myelin=debug,sqlx=warn\"." },
    Key { path: "rate_limits.enabled", kind: Kind::Bool, default: Some("true"),
          doc: "Answer over-eager clients with 429 M_LIMIT_EXCEEDED. Turn off only for tests and benchmarks." },
    Key { path: "rate_limits.login_per_second", kind: Kind::Float, default: Some("0.2"),
          doc: "Login attempts per second per client IP address (and per account), refill rate." },
    Key { path: "rate_limits.login_burst", kind: Kind::Int, default: Some("10"),
          doc: "Login attempts allowed in a burst per IP address (and per account)." },
    Key { path: "rate_limits.failed_login_per_second", kind: Kind::Float, default: Some("0.17"),
          doc: "Failed logins per second per account, refill rate (guards against password guessing)." },
    Key { path: "rate_limits.failed_login_burst", kind: Kind::Int, default: Some("3"),
          doc: "Failed logins allowed in a burst per account." },
    Key { path: "rate_limits.registration_per_second", kind: Kind::Float, default: Some("0.17"),
          doc: "Registration requests per second per client IP address, refill rate." },
    Key { path: "rate_limits.registration_burst", kind: Kind::Int, default: Some("5"),
          doc: "Registration requests allowed in a burst per client IP address." },
    Key { path: "rate_limits.registration_nonce_per_second", kind: Kind::Float, default: Some("1.0"),
          doc: "Requests for a shared-secret registration nonce (GET /_synapse/admin/v1/register) per second per client IP address, refill rate. Each stores a row until it is used or expires (60 s)." },
    Key { path: "rate_limits.registration_nonce_burst", kind: Kind::Int, default: Some("10"),
          doc: "Shared-secret registration nonces allowed in a burst per client IP address." },
    Key { path: "rate_limits.to_device_per_second", kind: Kind::Float, default: Some("10.0"),
          doc: "PUT /sendToDevice requests per second per sending user, refill rate." },
    Key { path: "rate_limits.to_device_burst", kind: Kind::Int, default: Some("100"),
          doc: "PUT /sendToDevice requests allowed in a burst per sending user." },
    Key { path: "presence.enabled", kind: Kind::Bool, default: Some("true"),
          doc: "Track and share online/offline status and last-active time with users who share a room." },
    Key { path: "presence.offline_after_seconds", kind: Kind::Int, default: Some("60"),
          doc: "A user with no open sync or WebSocket for this long is shown offline." },
    Key { path: "presence.unavailable_after_seconds", kind: Kind::Int, default: Some("300"),
          doc: "An online user with no activity (sending, typing, receipts, setting presence) for this long is shown unavailable (idle)." },
    Key { path: "presence.online_debounce_ms", kind: Kind::Int, default: Some("2000"),
          doc: "Coming online by opening a sync or WebSocket is announced only after this long, if the user is still connected, so that brief reconnections do not flap." },
    Key { path: "presence.send_to_federation", kind: Kind::Bool, default: Some("true"),
          doc: "Send local users' presence to the other servers they share rooms with." },
    Key { path: "presence.receive_from_federation", kind: Kind::Bool, default: Some("true"),
          doc: "Accept presence of other servers' users from those servers." },
    Key { path: "media.max_upload_size", kind: Kind::Int, default: Some("52428800"),
          doc: "Largest media upload accepted, in bytes (clients see it as m.upload.size); larger ones get 413 M_TOO_LARGE." },
    Key { path: "media.pregenerate_thumbnails", kind: Kind::Bool, default: Some("true"),
          doc: "Make the thumbnails of media.thumbnail_sizes right after an image is uploaded, instead of on first request." },
    Key { path: "media.thumbnail_sizes", kind: Kind::List, default: Some("[\"32x32 crop\", \"96x96 crop\", \"320x240 scale\", \"640x480 scale\", \"800x600 scale\"]"),
          doc: "The only sizes thumbnails are made in, each \"<width>x<height> <crop|scale>\" (Synapse's thumbnail_sizes). A request for another size gets the best fit among these, so clients cannot make the server decode images for sizes of their choosing." },
    Key { path: "media.unused_id_lifetime_seconds", kind: Kind::Int, default: Some("86400"),
          doc: "How long a media ID created with POST /_matrix/media/v1/create waits for its content before it lapses." },
    Key { path: "media.max_pending_uploads", kind: Kind::Int, default: Some("5"),
          doc: "How many created-but-not-uploaded media IDs one user may hold at once (more get 429 M_LIMIT_EXCEEDED)." },
    Key { path: "media.url_preview_enabled", kind: Kind::Bool, default: Some("false"),
          doc: "Let clients ask the server to fetch web pages for link previews (/_matrix/client/v1/media/preview_url). The server then makes outgoing HTTP requests on users' behalf." },
    Key { path: "media.url_preview_ip_range_allowlist", kind: Kind::List, default: Some("[]"),
          doc: "CIDR ranges URL previews may fetch from although they are private, loopback or otherwise not public (e.g. [\"10.1.2.0/24\"]); everything non-public is refused otherwise. Like Synapse's url_preview_ip_range_whitelist." },
    Key { path: "push.ip_range_allowlist", kind: Kind::List, default: Some("[]"),
          doc: "CIDR ranges push gateways (the URLs of users' pushers) may be reached at although they are private, loopback or otherwise not public (e.g. [\"10.1.2.0/24\"]); notifications to other non-public addresses are refused. Like Synapse's ip_range_whitelist for pushers." },
    Key { path: "user_directory.search_all_users", kind: Kind::Bool, default: Some("false"),
          doc: "Let users find every local user in the user directory (\"Start chat\"). Off: only users who share a room with them or are in a public room." },
    Key { path: "voip.turn_uris", kind: Kind::List, default: Some("[]"),
          doc: "TURN server URIs handed to clients for calls (GET /voip/turnServer), e.g. [\"turn:turn.example.org:3478?transport=udp\", \"turns:turn.example.org:5349?transport=tcp\"]. Empty: clients get no TURN server." },
    Key { path: "voip.turn_shared_secret", kind: Kind::Str, default: None,
          doc: "Secret shared with the TURN server (coturn: use-auth-secret, static-auth-secret): clients get time-limited credentials made from it. Needed for voip.turn_uris to be handed out." },
    Key { path: "voip.turn_user_lifetime", kind: Kind::Int, default: Some("3600"),
          doc: "How long TURN credentials handed to clients stay valid, in seconds." },
    Key { path: "rtc.livekit_service_urls", kind: Kind::List, default: Some("[]"),
          doc: "MatrixRTC (Element Call): URLs of LiveKit JWT services, advertised to clients as org.matrix.msc4143.rtc_foci in /.well-known/matrix/client and by the MSC4143 transports endpoint. Empty: none (clients use their own)." },
];

/// Why the configuration was refused. The message always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn env_name(path: &str) -> String {
    format!("MYELIN_{}", path.replace('.', "_").to_uppercase())
}

/// Parses an environment variable's text into the TOML value of the key's type.
fn env_value(key: &Key, env: &str, raw: &str) -> Result<toml::Value, ConfigError> {
    let bad = |what: &str| {
        ConfigError::Invalid(format!(
            "{env} (key `{}`): expected {what}, got {raw:?}",
            key.path
        ))
    };
    Ok(match key.kind {
        Kind::Str => toml::Value::String(raw.to_owned()),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(bad("true or false")),
        },
        Kind::Int => toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?),
        Kind::Float => toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?),
        Kind::List => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        ),
    })
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), ConfigError> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().expect("paths are non-empty");
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        current = entry.as_table_mut().ok_or_else(|| {
            ConfigError::Invalid(format!("`{part}` must be a table (a [{part}] section)"))
        })?;
    }
    current.insert(last.to_owned(), value);
    Ok(())
}

fn has_path(table: &toml::Table, path: &str) -> bool {
    let mut current = table;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        match current.get(part) {
            Some(toml::Value::Table(t)) if parts.peek().is_some() => current = t,
            Some(_) if parts.peek().is_none() => return true,
            _ => return false,
        }
    }
    false
}

fn get_path<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let (section, name) = path.rsplit_once('.').unwrap_or(("", path));
    let table = if section.is_empty() {
        table
    } else {
        table.get(section)?.as_table()?
    };
    table.get(name)
}

/// Checks each known key's type before serde sees it, so that the error names the key.
fn check_types(table: &toml::Table) -> Result<(), ConfigError> {
    for key in KEYS {
        let Some(value) = get_path(table, key.path) else {
            continue;
        };
        let ok = match key.kind {
            Kind::Str => value.is_str(),
            Kind::Bool => value.is_bool(),
            Kind::Int => value.as_integer().is_some_and(|i| i >= 0),
            Kind::Float => value.is_float() || value.is_integer(),
            Kind::List => value
                .as_array()
                .is_some_and(|items| items.iter().all(toml::Value::is_str)),
        };
        if !ok {
            let what = match key.kind {
                Kind::Str => "a string",
                Kind::Bool => "true or false",
                Kind::Int => "a non-negative integer",
                Kind::Float => "a number",
                Kind::List => "a list of strings",
            };
            return Err(ConfigError::Invalid(format!(
                "{} ({}): expected {what}, got {value}",
                key.path,
                env_name(key.path)
            )));
        }
    }
    if let Some(listen) = get_path(table, "client_listen").and_then(|v| v.as_str()) {
        if listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "client_listen (MYELIN_CLIENT_LISTEN): {listen:?} is not an IP address and port like 127.0.0.1:8008"
            )));
        }
    }
    if let Some(listen) = get_path(table, "federation_listen").and_then(|v| v.as_str()) {
        if !listen.is_empty() && listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "federation_listen (MYELIN_FEDERATION_LISTEN): {listen:?} is not an IP address and port like 127.0.0.1:8448, nor empty"
            )));
        }
    }
    let cert = get_path(table, "federation_tls_cert").is_some();
    let key = get_path(table, "federation_tls_key").is_some();
    if cert != key {
        return Err(ConfigError::Invalid(
            "federation_tls_cert and federation_tls_key (MYELIN_FEDERATION_TLS_CERT, MYELIN_FEDERATION_TLS_KEY) go together: set both or neither".to_owned(),
        ));
    }
    Ok(())
}

impl Config {
    /// Loads the configuration: defaults, then the file (if any), then `MYELIN_*` variables from
    /// `env`, then validation.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for key in KEYS {
            let name = env_name(key.path);
            if let Some(raw) = env(&name) {
                set_path(&mut table, key.path, env_value(key, &name, &raw)?)?;
            } else if let (Some(default), false) = (key.default, has_path(&table, key.path)) {
                let value: toml::Table = format!("v = {default}")
                    .parse()
                    .expect("defaults are valid TOML");
                set_path(&mut table, key.path, value["v"].clone())?;
            }
        }
        check_types(&table)?;
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if ruma::ServerName::parse(&self.server_name).is_err() {
            return Err(ConfigError::Invalid(format!(
                "server_name (MYELIN_SERVER_NAME): {:?} is not a valid Matrix server name",
                self.server_name
            )));
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(ConfigError::Invalid(
                    "database_url (MYELIN_DATABASE_URL): must start with postgres://, postgresql:// or sqlite:".into(),
                ));
            }
        }
        if let Some(url) = &self.public_baseurl {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(
                    "public_baseurl (MYELIN_PUBLIC_BASEURL): must start with http:// or https://"
                        .into(),
                ));
            }
        }
        if matches!(&self.registration_shared_secret, Some(s) if s.is_empty()) {
            return Err(ConfigError::Invalid(
                "registration_shared_secret (MYELIN_REGISTRATION_SHARED_SECRET): must not be empty; leave it unset to disable".into(),
            ));
        }
        if self.max_json_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_json_body_bytes (MYELIN_MAX_JSON_BODY_BYTES): must be at least 1024".into(),
            ));
        }
        for (name, value) in [
            ("max_connections", self.max_connections as u64),
            (
                "header_read_timeout_seconds",
                self.header_read_timeout_seconds,
            ),
            ("body_read_timeout_seconds", self.body_read_timeout_seconds),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} ({}): must be at least 1",
                    env_name(name)
                )));
            }
        }
        if self.media.max_upload_size == 0 {
            return Err(ConfigError::Invalid(
                "media.max_upload_size (MYELIN_MEDIA_MAX_UPLOAD_SIZE): must be at least 1".into(),
            ));
        }
        for size in &self.media.thumbnail_sizes {
            if crate::media::thumbnail::parse_size(size).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "media.thumbnail_sizes (MYELIN_MEDIA_THUMBNAIL_SIZES): {size:?} is not a size like \"320x240 scale\" or \"96x96 crop\""
                )));
            }
        }
        for range in &self.media.url_preview_ip_range_allowlist {
            if range.parse::<ipnet::IpNet>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "media.url_preview_ip_range_allowlist (MYELIN_MEDIA_URL_PREVIEW_IP_RANGE_ALLOWLIST): {range:?} is not a CIDR range like 10.0.0.0/8 or fd00::/8"
                )));
            }
        }
        for range in &self.federation_ip_range_allowlist {
            if range.parse::<ipnet::IpNet>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "federation_ip_range_allowlist (MYELIN_FEDERATION_IP_RANGE_ALLOWLIST): {range:?} is not a CIDR range like 10.0.0.0/8 or fd00::/8"
                )));
            }
        }
        for range in &self.push.ip_range_allowlist {
            if range.parse::<ipnet::IpNet>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "push.ip_range_allowlist (MYELIN_PUSH_IP_RANGE_ALLOWLIST): {range:?} is not a CIDR range like 10.0.0.0/8 or fd00::/8"
                )));
            }
        }
        if matches!(&self.voip.turn_shared_secret, Some(s) if s.is_empty()) {
            return Err(ConfigError::Invalid(
                "voip.turn_shared_secret (MYELIN_VOIP_TURN_SHARED_SECRET): must not be empty; leave it unset to hand out no TURN credentials".into(),
            ));
        }
        for uri in &self.voip.turn_uris {
            if !(uri.starts_with("turn:") || uri.starts_with("turns:") || uri.starts_with("stun:"))
            {
                return Err(ConfigError::Invalid(format!(
                    "voip.turn_uris (MYELIN_VOIP_TURN_URIS): {uri:?} is not a turn:, turns: or stun: URI"
                )));
            }
        }
        if self.voip.turn_user_lifetime == 0 {
            return Err(ConfigError::Invalid(
                "voip.turn_user_lifetime (MYELIN_VOIP_TURN_USER_LIFETIME): must be at least 1"
                    .into(),
            ));
        }
        for url in &self.rtc.livekit_service_urls {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::Invalid(format!(
                    "rtc.livekit_service_urls (MYELIN_RTC_LIVEKIT_SERVICE_URLS): {url:?} must start with https:// or http://"
                )));
            }
        }
        let rl = &self.rate_limits;
        for (name, rate) in [
            ("rate_limits.login_per_second", rl.login_per_second),
            (
                "rate_limits.failed_login_per_second",
                rl.failed_login_per_second,
            ),
            (
                "rate_limits.registration_per_second",
                rl.registration_per_second,
            ),
            (
                "rate_limits.registration_nonce_per_second",
                rl.registration_nonce_per_second,
            ),
            ("rate_limits.to_device_per_second", rl.to_device_per_second),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::Invalid(format!(
                    "{name} ({}): must be a positive number",
                    env_name(name)
                )));
            }
        }
        for (name, burst) in [
            ("rate_limits.login_burst", rl.login_burst),
            ("rate_limits.failed_login_burst", rl.failed_login_burst),
            ("rate_limits.registration_burst", rl.registration_burst),
            (
                "rate_limits.registration_nonce_burst",
                rl.registration_nonce_burst,
            ),
            ("rate_limits.to_device_burst", rl.to_device_burst),
        ] {
            if burst == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name} ({}): must be at least 1",
                    env_name(name)
                )));
            }
        }
        Ok(())
    }

    /// The database URL to connect to: the configured one, or SQLite inside the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| myelin_storage::Storage::sqlite_url_in(&self.data_dir))
    }

    /// The base URL clients should use, without a trailing slash.
    pub fn public_baseurl(&self) -> String {
        match &self.public_baseurl {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.client_listen),
        }
    }

    /// Where the federation TLS listener binds, if it is on.
    pub fn federation_listener(&self) -> Option<SocketAddr> {
        if !self.federation_enabled {
            return None;
        }
        self.federation_listen.parse().ok()
    }

    pub fn federation_public_address(&self) -> String {
        self.federation_public_address
            .clone()
            .unwrap_or_else(|| format!("{}:8448", self.server_name))
    }
}

/// The complete, commented configuration file with every option at its default.
pub fn generate_config() -> String {
    let mut out = String::from(
        "# Myelin configuration. Every option is shown with its default.\n\
         # Each option can also be set by the environment variable named above it, which wins\n\
         # over this file. Start the server with: myelin --config myelin.toml\n",
    );
    let mut section = "";
    for key in KEYS {
        let (sec, name) = key.path.rsplit_once('.').unwrap_or(("", key.path));
        if sec != section {
            let _ = write!(out, "\n[{sec}]\n");
            section = sec;
        }
        let _ = write!(out, "\n# {}\n# env: {}\n", key.doc, env_name(key.path));
        match key.default {
            Some(default) => {
                let _ = writeln!(out, "{name} = {default}");
            }
            None => {
                let example = if key.kind == Kind::Str { "\"\"" } else { "" };
                let _ = writeln!(out, "# {name} = {example}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(None, |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_need_no_file() {
        let c = load_env(&[]).unwrap();
        assert_eq!(c.server_name, "localhost");
        assert_eq!(c.client_listen.to_string(), "127.0.0.1:8008");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(!c.registration_open);
        assert!(c.rate_limits.enabled);
        assert!(c.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn generated_config_parses_back_to_the_defaults() {
        let dir = tempfile_dir();
        let path = dir.join("myelin.toml");
        std::fs::write(&path, generate_config()).unwrap();
        let c = Config::load(Some(&path), |_| None).unwrap();
        assert_eq!(c.server_name, "localhost");
        assert_eq!(c.rate_limits.registration_burst, 5);
        // Every key of the generated file is documented with its environment variable.
        for key in KEYS {
            assert!(generate_config().contains(&env_name(key.path)));
        }
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile_dir();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "server_name = \"file.example\"\n[rate_limits]\nenabled = true\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), |k| match k {
            "MYELIN_SERVER_NAME" => Some("env.example".into()),
            "MYELIN_RATE_LIMITS_ENABLED" => Some("false".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.server_name, "env.example");
        assert!(!c.rate_limits.enabled);
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_env(&[("MYELIN_REGISTRATION_OPEN", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("MYELIN_REGISTRATION_OPEN") && e.contains("maybe"),
            "{e}"
        );
        let e = load_env(&[("MYELIN_CLIENT_LISTEN", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("client_listen"), "{e}");
        let e = load_env(&[("MYELIN_SERVER_NAME", "bad name!")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("server_name"), "{e}");
        let e = load_env(&[("MYELIN_DATABASE_URL", "mysql://x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("database_url"), "{e}");
        let e = load_env(&[("MYELIN_RATE_LIMITS_LOGIN_BURST", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rate_limits.login_burst"), "{e}");
        let e = load_env(&[(
            "MYELIN_MEDIA_URL_PREVIEW_IP_RANGE_ALLOWLIST",
            "127.0.0.1/32, nonsense",
        )])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("url_preview_ip_range_allowlist") && e.contains("nonsense"),
            "{e}"
        );
    }

    #[test]
    fn lists_come_from_toml_arrays_or_comma_separated_variables() {
        let c = load_env(&[(
            "MYELIN_MEDIA_URL_PREVIEW_IP_RANGE_ALLOWLIST",
            "127.0.0.1/32, ::1/128,",
        )])
        .unwrap();
        assert_eq!(
            c.media.url_preview_ip_range_allowlist,
            vec!["127.0.0.1/32".to_owned(), "::1/128".to_owned()]
        );
        assert_eq!(c.media.max_upload_size, 50 * 1024 * 1024);
        assert!(!c.media.url_preview_enabled);
        let dir = tempfile_dir();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[media]\nurl_preview_ip_range_allowlist = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), |_| None).unwrap();
        assert_eq!(c.media.url_preview_ip_range_allowlist, vec!["10.0.0.0/8"]);
        std::fs::write(
            &path,
            "[media]\nurl_preview_ip_range_allowlist = \"10.0.0.0/8\"\n",
        )
        .unwrap();
        let e = Config::load(Some(&path), |_| None).unwrap_err().to_string();
        assert!(e.contains("a list of strings"), "{e}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile_dir();
        let path = dir.join("c.toml");
        std::fs::write(&path, "sever_name = \"typo\"\n").unwrap();
        let e = Config::load(Some(&path), |_| None).unwrap_err().to_string();
        assert!(e.contains("sever_name"), "{e}");
    }

    fn tempfile_dir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("myelin-config-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
