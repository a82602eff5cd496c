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
//! one mapping of errors to HTTP).

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod media;
pub mod notifier;
pub mod presence;
pub mod ratelimit;
pub mod rooms;
pub mod sync;
pub mod typing;
pub mod uia;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use myelin_federation::keys::ServerSigningKey;
use myelin_storage::{SigningKeyRow, Storage};
use ruma::OwnedServerName;
use tokio::net::TcpListener;

pub use config::Config;

/// Everything a handler may use. Cheap to clone; handlers receive it as `State<AppState>`.
#[derive(Clone)]
pub struct AppState {
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
    /// The media repository (file store, thumbnail work, URL preview client).
    pub media: Arc<media::Media>,
    /// State snapshots are immutable once written, so they can be cached without
    /// invalidation; the cache is bounded by clearing it when full.
    pub snapshots:
        Arc<std::sync::Mutex<std::collections::HashMap<i64, Arc<myelin_storage::StateMap>>>>,
}

/// How many state snapshots [`AppState::snapshot`] keeps in memory.
const SNAPSHOT_CACHE_ENTRIES: usize = 4096;

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

    /// The full state of a snapshot, from the cache or storage.
    pub async fn snapshot(&self, id: i64) -> Result<Arc<myelin_storage::StateMap>, error::Error> {
        if let Some(map) = self
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(map.clone());
        }
        let map = Arc::new(self.storage.load_snapshot(id).await?);
        let mut cache = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= SNAPSHOT_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(id, map.clone());
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
        Ok(AppState {
            limits: Arc::new(ratelimit::RateLimiters::new(&config.rate_limits)),
            config: Arc::new(config),
            server_name,
            storage,
            signing_key: Arc::new(signing_key),
            last_seen: Arc::new(auth::LastSeen::default()),
            room_locks: Arc::new(rooms::RoomLocks::default()),
            notifier: Arc::new(notifier::Notifier::default()),
            typing: Arc::new(typing::Typing::default()),
            presence: Arc::new(presence::Presence::default()),
            media: Arc::new(media),
            snapshots: Default::default(),
        })
    }
}

/// Periodic housekeeping: expire UIA sessions, registration nonces and lapsed pending media
/// IDs, drop idle rate-limit buckets.
async fn housekeeping(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(e) = state
            .storage
            .expire_transient(auth::now_ms() - uia::SESSION_LIFETIME_MS)
            .await
        {
            tracing::warn!(error = %e, "housekeeping failed");
        }
        if let Err(e) = state.storage.expire_pending_media(auth::now_ms()).await {
            tracing::warn!(error = %e, "expiring pending media IDs failed");
        }
        state.limits.forget_idle();
        state.notifier.prune();
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
    for room in state.storage.rooms_for_user(user, "join").await? {
        for (member, membership, _) in state.storage.room_members(&room).await? {
            if membership == "join" {
                users.insert(member);
            }
        }
    }
    Ok(users.into_iter().collect())
}

/// Wakes the syncs of everyone who can see `user`'s presence.
pub async fn announce_presence(state: &AppState, user: &str) {
    match co_members(state, user).await {
        Ok(users) => state.notifier.notify(users.iter().map(String::as_str)),
        Err(e) => tracing::warn!(error = %e, "could not announce a presence change"),
    }
}

/// Marks users offline when they have had no open connection for a while.
async fn presence_sweeper(state: AppState) {
    let after_ms = state.config.presence.offline_after_seconds as i64 * 1000;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        for user in state.presence.expire(auth::now_ms(), after_ms) {
            announce_presence(&state, &user).await;
        }
    }
}

/// Serves the client API on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish and closes the database.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let housekeeping = tokio::spawn(housekeeping(state.clone()));
    let typing_sweeper = tokio::spawn(typing_sweeper(state.clone()));
    let presence_sweeper = tokio::spawn(presence_sweeper(state.clone()));
    let app = api::router(state.clone());
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    housekeeping.abort();
    typing_sweeper.abort();
    presence_sweeper.abort();
    state.storage.close().await;
    Ok(())
}
