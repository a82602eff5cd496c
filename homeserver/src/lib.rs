//! Myelin, a Matrix homeserver: the server process as a library.
//!
//! `main.rs` only parses the command line and configuration, sets up logging and binds the
//! listener; everything else starts here. [`AppState::init`] opens storage (running
//! migrations) and loads or creates the server's signing key; [`serve`] runs the HTTP API on an
//! already-bound listener until a shutdown future resolves, so tests can start the real server
//! on port 0.
//!
//! Map: [`config`] (options, env overrides), [`api`] (routers and handlers, one module per spec
//! chapter; `api::ruma` is the typed extractor), [`auth`] (tokens, passwords), [`uia`]
//! (user-interactive auth), [`ratelimit`], [`media`] (the content repository), [`error`] (the
//! one mapping of errors to HTTP), [`e2ee`] (end-to-end encryption: signature checks, backup
//! rule, device-list wake-ups).

pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod e2ee;
pub mod error;
pub mod federation;
pub mod media;
pub mod notifier;
pub mod outbound;
pub mod presence;
pub mod push;
pub mod ratelimit;
pub mod rooms;
pub mod sync;
pub mod tls;
pub mod typing;
pub mod uia;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use myelin_federation::keys::ServerSigningKey;
use myelin_storage::{SigningKeyRow, Storage};
use ruma::OwnedServerName;
use tokio::net::TcpListener;

use cache::ClearingCache;
pub use config::Config;

/// Everything a handler may use; handlers receive it as `State<AppState>`. One pointer, so
/// the clones the router and extractors make for every request cost one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Services {
    pub config: Arc<Config>,
    pub server_name: OwnedServerName,
    pub storage: Storage,
    pub signing_key: Arc<ServerSigningKey>,
    pub limits: Arc<ratelimit::RateLimiters>,
    pub last_seen: Arc<auth::LastSeen>,
    pub room_locks: Arc<rooms::RoomLocks>,
    pub notifier: Arc<notifier::Notifier>,
    pub typing: Arc<typing::Typing>,
    pub presence: Arc<presence::Presence>,
    /// Users whose presence changed and whose watchers are yet to be woken.
    pub presence_changes: Arc<PresenceChanges>,
    /// The media repository (file store, thumbnail work, URL preview client).
    pub media: Arc<media::Media>,
    /// State snapshots are immutable once written, so they can be cached without
    /// invalidation; the cache is bounded (in bytes) by clearing it when full.
    pub snapshots: ClearingCache<i64, Arc<myelin_storage::StateMap>>,
    /// A room's `m.receipt` event for a sync range `(room, after, upto)`, serialised once
    /// for every member woken by those receipts (none if the range has none for the room).
    pub shared_receipts: ClearingCache<(String, i64, i64), Option<Arc<str>>>,

    /// The member events each device has, for lazy-loading (see [`sync::lazy`]).
    pub lazy_members: sync::lazy::LazyMembers,
    /// Sliding-sync connections and what each was sent (see `sync/sliding/conn.rs`).
    pub sliding: Arc<sync::sliding::conn::Connections>,
    /// Delivered receipts waiting to be written (see [`sync::delivery`]).
    pub deliveries: sync::delivery::Deliveries,
    /// Events formatted once for every sync response that carries them, by event ID (see
    /// [`rooms::format::SharedEvent`]).
    pub shared_events: ClearingCache<String, Arc<rooms::format::SharedEvent>>,
    /// Each user's push rules, cached (see [`push::rules`]).
    pub push_rules: push::rules::PushRules,
    /// The running pusher tasks and the push gateway client (see [`push::sender`]).
    pub pushers: push::sender::Pushers,
    /// The tasks sending our rooms' events to other servers (see [`federation::sender`]).
    pub destinations: federation::sender::Destinations,
    /// Requests to other servers (see [`federation::client`]).
    pub federation: federation::FederationClient,
    /// Other servers' keys by `(server, key ID)`, as last read or fetched, so that checking
    /// a signature does not read storage each time (see `federation::keys`). A key is used
    /// from here only while usable by its own validity; fetching a server's keys drops its
    /// entries. Another process's fetch does not, which only means this one keeps using a
    /// key until the validity its server published ends, as the spec allows.
    pub remote_keys: ClearingCache<(String, String), myelin_storage::RemoteKey>,
    /// Each room's version: it never changes, so it is cached without invalidation (a purge
    /// that forgets a room must drop its entry).
    pub room_versions: ClearingCache<ruma::OwnedRoomId, ruma::RoomVersionId>,
}

/// How much memory [`Services::shared_events`] may hold (events are up to 64 KiB each).
const SHARED_EVENTS_BYTES: usize = 64 * 1024 * 1024;

/// How much memory [`Services::shared_receipts`] may hold.
const SHARED_RECEIPTS_BYTES: usize = 16 * 1024 * 1024;
/// How much memory [`Services::remote_keys`] may hold (a key is about 150 bytes).
const REMOTE_KEYS_BYTES: usize = 4 * 1024 * 1024;
/// How much memory [`Services::room_versions`] may hold (about 120 bytes a room).
const ROOM_VERSIONS_BYTES: usize = 8 * 1024 * 1024;

/// How much memory the state snapshots [`AppState::snapshot`] keeps may hold.
const SNAPSHOT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// What a cached state snapshot holds: each entry's type, state key and event ID, plus the
/// map's own slot.
fn weigh_snapshot(_: &i64, map: &Arc<myelin_storage::StateMap>) -> usize {
    map.iter()
        .map(|((t, k), id)| t.len() + k.len() + id.len() + 3 * 24 + 16)
        .sum()
}

fn weigh_remote_key(key: &(String, String), value: &myelin_storage::RemoteKey) -> usize {
    key.0.len()
        + key.1.len()
        + value.server_name.len()
        + value.key_id.len()
        + value.public_key.len()
}

fn weigh_room_version(key: &ruma::OwnedRoomId, version: &ruma::RoomVersionId) -> usize {
    key.as_str().len() + version.as_str().len()
}

fn weigh_receipts(key: &(String, i64, i64), json: &Option<Arc<str>>) -> usize {
    key.0.len() + json.as_ref().map_or(0, |j| j.len())
}

// `&String`: the cache's weigher is a `fn(&K, &V)` with `K = String`.
#[allow(clippy::ptr_arg)]
fn weigh_shared_event(key: &String, event: &Arc<rooms::format::SharedEvent>) -> usize {
    key.len() + event.heap_size()
}

impl AppState {
    /// Wakes the waiting syncs of a room's joined members (after a change that is not an
    /// event: typing, receipts).
    pub async fn wake_room(&self, room_id: &str) -> Result<(), error::Error> {
        let members = self.storage.room_members(room_id).await?;
        self.notifier.notify(
            members
                .iter()
                .filter(|(_, m, _)| m == "join")
                .map(|(u, _, _)| u.as_str()),
        );
        Ok(())
    }

    /// Runs `then` once every position up to `position` is safe to read: at once if it is,
    /// otherwise on a small task that waits for the earlier positions (another room's commit)
    /// to finish.
    pub fn when_safe(&self, position: i64, then: impl FnOnce(&AppState) + Send + 'static) {
        if self.storage.safe_stream_position() >= position {
            then(self);
            return;
        }
        let state = self.clone();
        tokio::spawn(async move {
            state.storage.wait_safe(position).await;
            then(&state);
        });
    }

    /// Wakes the waiting syncs of `users` after a commit at `position`: at once, and again
    /// when `position` becomes safe to read if an earlier position (another room's commit)
    /// still holds it back. Without the second wake-up a sync woken now would read up to the
    /// safe position, find nothing, and sleep until its timeout with the event committed.
    pub fn notify_when_safe<'a>(&self, position: i64, users: impl Iterator<Item = &'a str>) {
        if self.storage.safe_stream_position() >= position {
            self.notifier.notify(users);
            return;
        }
        let users: Vec<String> = users.map(str::to_owned).collect();
        self.notifier.notify(users.iter().map(String::as_str));
        self.when_safe(position, move |state| {
            state.notifier.notify(users.iter().map(String::as_str))
        });
    }

    /// The receipts event for `(room, after, upto)` from the cache, or made by `make` and
    /// kept. Receipts in a range never change once it is safe to read, so entries need no
    /// invalidation.
    pub fn shared_receipts(
        &self,
        key: (String, i64, i64),
        make: impl FnOnce() -> Option<serde_json::Value>,
    ) -> Option<Arc<str>> {
        if let Some(json) = self.shared_receipts.get(&key) {
            return json;
        }
        let json: Option<Arc<str>> = make().map(|event| event.to_string().into());
        self.shared_receipts.insert(key, json.clone());
        json
    }

    /// The full state of a snapshot, from the cache or storage.
    pub async fn snapshot(&self, id: i64) -> Result<Arc<myelin_storage::StateMap>, error::Error> {
        if let Some(map) = self.snapshots.get(&id) {
            return Ok(map);
        }
        let map = Arc::new(self.storage.load_snapshot(id).await?);
        self.snapshots.insert(id, map.clone());
        Ok(map)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database: {0}")]
    Storage(#[from] myelin_storage::Error),
    #[error("the stored signing key is unusable: {0}")]
    SigningKey(#[from] myelin_federation::keys::KeyError),
    #[error("invalid server name: {0}")]
    ServerName(String),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error("federation TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

impl AppState {
    /// Creates the data directory, opens storage and loads (or on first start creates) the
    /// signing key.
    pub async fn init(config: Config) -> Result<AppState, StartError> {
        for dir in [config.data_dir.clone(), config.data_dir.join("media")] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| StartError::DataDir { path: dir, source })?;
        }
        let media = media::Media::new(&config.data_dir, &config.media).map_err(|source| {
            StartError::DataDir {
                path: config.data_dir.join("media"),
                source,
            }
        })?;
        let pushers = push::sender::Pushers::new(&config.push.ip_range_allowlist)
            .map_err(|e| StartError::Io(std::io::Error::other(e)))?;
        let storage = Storage::connect(&config.database_url()).await?;
        let signing_key = match storage.current_signing_key().await? {
            Some(row) => ServerSigningKey::from_stored(&row.key_id, &row.secret_key)?,
            None => {
                let key = ServerSigningKey::generate();
                let row = SigningKeyRow {
                    key_id: key.key_id().to_owned(),
                    secret_key: key.seed_base64(),
                };
                // Another process may have won the race to create the key: use whichever is stored.
                let stored = storage
                    .insert_signing_key_if_none(&row, auth::now_ms())
                    .await?;
                ServerSigningKey::from_stored(&stored.key_id, &stored.secret_key)?
            }
        };
        let server_name = OwnedServerName::try_from(config.server_name.as_str())
            .map_err(|e| StartError::ServerName(e.to_string()))?;
        let signing_key = Arc::new(signing_key);
        let federation = federation::FederationClient::new(
            server_name.clone(),
            signing_key.clone(),
            &config.federation_ip_range_allowlist,
            config.federation_verify_certificates,
            myelin_federation::server_policy::ServerPolicy::new(
                &config.federation_allowed_servers,
                &config.federation_denied_servers,
            ),
        )
        .map_err(|e| StartError::Io(std::io::Error::other(e)))?;
        Ok(AppState(Arc::new(Services {
            limits: Arc::new(ratelimit::RateLimiters::new(&config.rate_limits)),
            config: Arc::new(config),
            server_name,
            storage,
            signing_key,
            last_seen: Arc::new(auth::LastSeen::default()),
            room_locks: Arc::new(rooms::RoomLocks::default()),
            notifier: Arc::new(notifier::Notifier::default()),
            typing: Arc::new(typing::Typing::default()),
            presence: Arc::new(presence::Presence::default()),
            presence_changes: Default::default(),
            media: Arc::new(media),
            snapshots: ClearingCache::new(SNAPSHOT_CACHE_BYTES, weigh_snapshot),
            shared_events: ClearingCache::new(SHARED_EVENTS_BYTES, weigh_shared_event),
            deliveries: Default::default(),
            shared_receipts: ClearingCache::new(SHARED_RECEIPTS_BYTES, weigh_receipts),
            lazy_members: Default::default(),
            sliding: Default::default(),
            push_rules: Default::default(),
            pushers,
            destinations: Default::default(),
            federation,
            remote_keys: ClearingCache::new(REMOTE_KEYS_BYTES, weigh_remote_key),
            room_versions: ClearingCache::new(ROOM_VERSIONS_BYTES, weigh_room_version),
        })))
    }
}

/// Periodic housekeeping: expire UIA sessions, registration nonces and lapsed pending media
/// IDs, drop idle rate-limit buckets, prune push actions, claim pushers.
async fn housekeeping(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        // At start-up and every minute: claim this process's pushers (renewing the lease) and
        // start their tasks.
        push::sender::claim_and_start(&state).await;
        // Hourly (and at start-up): push actions that are read and a day old, or 30 days old.
        if ticks.is_multiple_of(60) {
            match state.storage.prune_push_actions(auth::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(rows = n, "pruned push actions"),
                Err(e) => tracing::warn!(error = %e, "pruning push actions failed"),
            }
        }
        ticks += 1;
        if let Err(e) = state
            .storage
            .expire_transient(
                auth::now_ms() - uia::SESSION_LIFETIME_MS,
                auth::now_ms() - api::synapse_admin::NONCE_LIFETIME_MS,
            )
            .await
        {
            tracing::warn!(error = %e, "housekeeping failed");
        }
        if let Err(e) = state.storage.expire_pending_media(auth::now_ms()).await {
            tracing::warn!(error = %e, "expiring pending media IDs failed");
        }
        state.limits.forget_idle();
        state.notifier.prune();
        state.room_locks.evict_idle(rooms::IDLE_SLOT);
    }
}

/// Clears typing notifications that timed out and wakes the syncs of those rooms' members.
async fn typing_sweeper(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        for room_id in state.typing.expire(std::time::Instant::now()) {
            if let Err(e) = state.wake_room(&room_id).await {
                tracing::warn!(error = %e, "typing sweeper could not read members");
            }
        }
    }
}

/// Users who share a joined room with `user` (including `user`).
pub async fn co_members(state: &AppState, user: &str) -> Result<Vec<String>, error::Error> {
    let mut users = std::collections::BTreeSet::new();
    users.insert(user.to_owned());
    // Both reads are served from storage's in-memory caches in the common case.
    for m in state.storage.memberships_for_user(user).await? {
        if m.membership != "join" {
            continue;
        }
        for (member, membership, _) in state.storage.room_members(&m.room_id).await?.iter() {
            if membership == "join" {
                users.insert(member.clone());
            }
        }
    }
    Ok(users.into_iter().collect())
}

/// Presence changes waiting to be announced. Changes are collected for a moment and then
/// announced together, so a burst (200 members of a room coming online at once) wakes each
/// watcher once, not once per change.
#[derive(Default)]
pub struct PresenceChanges {
    /// A std mutex: held to insert or take the set.
    users: std::sync::Mutex<std::collections::HashSet<String>>,
    wake: tokio::sync::Notify,
}

/// How long presence changes are collected before their watchers are woken.
const PRESENCE_COALESCE: Duration = Duration::from_millis(50);

/// Wakes (soon, see [`PresenceChanges`]) the syncs of everyone who can see `user`'s presence.
pub async fn announce_presence(state: &AppState, user: &str) {
    state
        .presence_changes
        .users
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(user.to_owned());
    state.presence_changes.wake.notify_one();
}

/// Announces collected presence changes: one wake-up per watcher per batch.
async fn presence_announcer(state: AppState) {
    loop {
        state.presence_changes.wake.notified().await;
        tokio::time::sleep(PRESENCE_COALESCE).await;
        let changed: Vec<String> = state
            .presence_changes
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let mut watchers = std::collections::HashSet::new();
        // Local users' changes go to the other servers they share rooms with, one EDU per
        // server for the whole batch.
        let mut remote: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
            Default::default();
        let ours = state.server_name.as_str();
        let send_out = state.config.presence.send_to_federation;
        for user in &changed {
            match co_members(&state, user).await {
                Ok(users) => {
                    let local = user.split_once(':').is_some_and(|(_, s)| s == ours);
                    if local && send_out {
                        let mut content = state.presence.get(user, auth::now_ms());
                        content["user_id"] = user.clone().into();
                        let mut servers: Vec<&str> = users
                            .iter()
                            .filter_map(|u| u.split_once(':').map(|(_, s)| s))
                            .filter(|s| *s != ours)
                            .collect();
                        servers.sort_unstable();
                        servers.dedup();
                        for server in servers {
                            remote
                                .entry(server.to_owned())
                                .or_default()
                                .push(content.clone());
                        }
                    }
                    watchers.extend(users);
                }
                Err(e) => tracing::warn!(error = %e, "could not announce a presence change"),
            }
        }
        state.notifier.notify(watchers.iter().map(String::as_str));
        for (server, push) in remote {
            let edu = serde_json::json!({ "edu_type": "m.presence", "content": { "push": push } });
            federation::sender::send_edu_to(&state, &[server], edu).await;
        }
    }
}

/// A sync or WebSocket of `user` opened with `set_presence` `presence`: counts it and, when
/// the user comes online, announces that after the debounce if they are still connected.
/// The caller calls [`presence::Presence::disconnected`] when it closes.
pub async fn presence_connected(state: &AppState, user: &str, presence: &str) {
    match state.presence.connected(user, presence, auth::now_ms()) {
        Some(true) => announce_presence(state, user).await,
        Some(false) => {}
        None => {
            let state = state.clone();
            let user = user.to_owned();
            let debounce = state.config.presence.online_debounce_ms;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(debounce)).await;
                if state
                    .presence
                    .publish_pending(&user, auth::now_ms(), debounce as i64)
                {
                    announce_presence(&state, &user).await;
                }
            });
        }
    }
}

/// Something `user` did (sent an event, typed, moved a receipt): they are online and active.
pub async fn presence_active(state: &AppState, user: &str) {
    if state.config.presence.enabled && state.presence.active(user, auth::now_ms()) {
        announce_presence(state, user).await;
    }
}

/// Applies presence's timeouts: idle users become unavailable, users with no open
/// connection go offline.
async fn presence_sweeper(state: AppState) {
    let idle_ms = state.config.presence.unavailable_after_seconds as i64 * 1000;
    let offline_ms = state.config.presence.offline_after_seconds as i64 * 1000;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for user in state.presence.expire(auth::now_ms(), idle_ms, offline_ms) {
            announce_presence(&state, &user).await;
        }
    }
}

/// Accepts connections until `shutdown`, serving each with hyper's HTTP/1.1 connection (with
/// upgrades, for the WebSocket) and the peer address as axum's `ConnectInfo`. Then waits (up
/// to 10 s) for open connections to finish their requests.
///
/// Hand-written instead of `axum::serve`, whose connections go through hyper-util's
/// HTTP/1-or-2 auto-detection: an HTTP/1-only connection is smaller, which matters for
/// thousands of idle long-polls (docs/benchmarks.md). Clients reach homeservers over
/// HTTP/1.1 (HTTP/2, where wanted, is a reverse proxy's job, as with Synapse).
async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // One permit per open connection: a connection over the cap is answered 503 and closed
    // instead of being served, so a flood of connections cannot take every descriptor.
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut last_refusal_logged: Option<std::time::Instant> = None;
    // Shutdown is signalled by dropping `signal_tx`; every connection task holds a `done_rx`
    // clone, so `done_tx.closed()` resolves once all of them have finished.
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(());
    let (done_tx, done_rx) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Logged at most every 10 s: a flood would otherwise also flood the log.
            if last_refusal_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_refusal_logged = Some(std::time::Instant::now());
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached; refusing new connections with 503"
                );
            }
            tokio::spawn(refuse_connection(stream));
            continue;
        };
        let app = app.clone();
        let signal_rx = signal_rx.clone();
        let done_rx = done_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            // Held for the connection's life, WebSocket included (`with_upgrades` keeps the
            // upgraded stream inside this future).
            let _permit = permit;
            match tls {
                None => serve_connection(stream, app, remote, limits, signal_rx).await,
                Some(acceptor) => {
                    // The handshake gets the time a client has to send its headers.
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, app, remote, limits, signal_rx).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %remote, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
            drop(done_rx);
        });
    }
    drop(listener);
    drop(signal_rx);
    drop(signal_tx);
    drop(done_rx);
    if tokio::time::timeout(Duration::from_secs(10), done_tx.closed())
        .await
        .is_err()
    {
        tracing::info!("some connections were still busy after 10 s; closing them");
    }
}

/// Serves one connection (plain or TLS) until it ends, or finishes its request in progress
/// and closes once shutdown is signalled.
async fn serve_connection<I>(
    io: I,
    app: axum::Router,
    remote: SocketAddr,
    limits: ConnectionLimits,
    mut signal_rx: tokio::sync::watch::Receiver<()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(remote));
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
    let connection = hyper::server::conn::http1::Builder::new()
        // A client must send a request's headers within this time (also the idle time allowed
        // between keep-alive requests); a request being served, such as a long-poll, is not
        // reading headers and is not affected.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = signal_rx.changed(), if !closing => {
                // Finish the request in progress, then close.
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What the accept loop enforces per connection (from the configuration).
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    max_connections: usize,
    header_read_timeout: Duration,
}

/// The answer to a connection over the limit: 503 `M_LIMIT_EXCEEDED`, then close. Whatever
/// the client already sent is read (briefly) before closing, so the kernel does not reset the
/// connection and destroy the answer in flight.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many connections; try again later","retry_after_ms":1000}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The federation API's listener: the bound socket and its TLS.
pub struct FederationListener {
    pub listener: TcpListener,
    pub tls: tokio_rustls::TlsAcceptor,
}

/// Serves the client API on `listener` (and the federation API on `federation`, over TLS)
/// until `shutdown` resolves, then lets in-flight requests finish and closes the database.
pub async fn serve(
    listener: TcpListener,
    federation: Option<FederationListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let housekeeping = tokio::spawn(housekeeping(state.clone()));
    let typing_sweeper = tokio::spawn(typing_sweeper(state.clone()));
    let presence_sweeper = tokio::spawn(presence_sweeper(state.clone()));
    let presence_announcer = tokio::spawn(presence_announcer(state.clone()));
    let delivery_recorder = tokio::spawn(sync::delivery::recorder(state.clone()));
    // Profile changes a stopped server had not carried into every room yet.
    let profiles = tokio::spawn(rooms::profile::resume_pending(state.clone()));
    // Room upgrades a stopped server had not finished in the old room.
    let upgrades = tokio::spawn(rooms::upgrade::resume_pending(state.clone()));
    // Rooms and users from before the user directory existed.
    let directory = tokio::spawn(api::client::user_directory::backfill(state.clone()));
    // Events from before the search index existed.
    let search_index = tokio::spawn(api::client::search::backfill(state.clone()));
    // Destinations with events they have not accepted yet.
    tokio::spawn(federation::sender::start_all(state.clone()));
    let app = api::router(state.clone());
    let limits = ConnectionLimits {
        max_connections: state.config.max_connections,
        header_read_timeout: Duration::from_secs(state.config.header_read_timeout_seconds),
    };
    // One shutdown for both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let federation = federation.map(|FederationListener { listener, tls }| {
        let app = api::federation::router(state.clone());
        tokio::spawn(accept_loop(
            listener,
            Some(tls),
            app,
            limits,
            stopped(stop_rx.clone()),
        ))
    });
    let client = accept_loop(listener, None, app, limits, stopped(stop_rx));
    tokio::pin!(client);
    // The client loop is not expected to end first; if it does, shut down as usual.
    let client_ended = tokio::select! {
        () = shutdown => false,
        () = &mut client => true,
    };
    let _ = stop_tx.send(true);
    if !client_ended {
        client.await;
    }
    if let Some(federation) = federation {
        let _ = federation.await;
    }
    housekeeping.abort();
    typing_sweeper.abort();
    presence_sweeper.abort();
    presence_announcer.abort();
    delivery_recorder.abort();
    profiles.abort();
    upgrades.abort();
    directory.abort();
    search_index.abort();
    state.pushers.stop_all();
    state.destinations.stop_all();
    state.storage.close().await;
    Ok(())
}
