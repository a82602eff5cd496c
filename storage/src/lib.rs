//! Myelin's storage layer: every SQL statement the server runs lives in this crate.
//!
//! One [`Storage`] handle (cheap to clone) fronts either PostgreSQL (production, and the way to
//! run several server processes on one database) or SQLite (the embedded default, so one command
//! starts a server). Queries are written once in the SQL both engines accept, with `$1`-style
//! parameters, and run through sqlx's `Any` driver; where the dialects differ the code branches on
//! [`Backend`]. Schema changes are append-only migrations under `migrations/{postgres,sqlite}/`,
//! applied at start-up.
//!
//! This crate knows tables, transactions and migrations. It never decides whether something is
//! allowed (that is the homeserver's job) and never calls upward.

mod accounts;
mod backup;
mod directory;
mod error;
mod federation;
mod federation_edus;
mod keys;
mod media;
mod misc;
mod pdu_form;
mod push;
mod pushers;
mod recent;
mod remote_keys;
mod reports;
mod rooms;
mod rooms_list;
mod search;
mod state;
mod stream;
mod sync;
mod threads;
mod to_device;
mod tokens;
pub mod words;

pub use accounts::{DeviceRow, ProfileFieldRefused, TokenOwner, UserRow};
pub use backup::{BackupKeyRow, BackupScope, BackupVersionRow, BackupWriteError};
pub use directory::DirectoryUser;
pub use error::{Error, Result};
pub use federation::{membership_of, Destination, Outlier, ServerInRoom};
pub use federation_edus::{NewOutboxEdu, OutboxEdu};
pub use keys::{ClaimedKey, DeviceKeysRow, KeySignature, KeyUpload, NewKey, UploadOutcome};
pub use media::{MediaRow, PendingUpload, ThumbnailRow};
pub use misc::{RegistrationTokenRow, SigningKeyRow, UiaSessionRow};
pub use push::{NewPushAction, NotificationRow, PendingPush, UnreadCount};
pub use pushers::{NewPusher, PusherRow};
pub use remote_keys::RemoteKey;
pub use reports::{NewReport, ReportRow};
pub use rooms::{
    CurrentChange, Direction, EventRow, NewEvent, NewRoom, Persisted, RoomRow, RoomSetting,
    StateMap, TopologicalPosition,
};
pub use rooms_list::BUMP_EVENT_TYPES;
pub use search::{SearchMatch, SearchQuery, TextToIndex};
pub use stream::StreamTracker;
pub use sync::{AccountDataChange, MembershipRow, ReceiptRow};
pub use threads::ThreadRow;
pub use to_device::{OutgoingToDevice, ToDeviceRow};
pub use tokens::Refreshed;

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::{MigrateError, Migrator},
    AnyPool, ConnectOptions,
};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Which database engine a [`Storage`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The handle to the database. Clone it freely: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Storage {
    pool: AnyPool,
    backend: Backend,
    stream: std::sync::Arc<StreamTracker>,
    /// Recent changes, so sync rarely needs the database (see `recent.rs`).
    recent: std::sync::Arc<recent::Recent>,
    /// Resolved access tokens (see `accounts.rs`).
    tokens: std::sync::Arc<accounts::TokenCache>,
    /// Unread counts of long unread stretches (see `push.rs`).
    counts: std::sync::Arc<push::CountCache>,
    /// Bump stamps and room types (see `rooms_list.rs`).
    facts: std::sync::Arc<rooms_list::RoomFacts>,
    /// Which rooms have threads (see `threads.rs`).
    threaded: std::sync::Arc<threads::ThreadedRooms>,
    /// Indexed events per room, for search counts (see `search.rs`).
    search_sizes: std::sync::Arc<search::RoomSizes>,
}

impl Storage {
    /// Opens the database at `url` (`postgres://…` or `sqlite://…`), creating a SQLite file if
    /// needed, and applies pending migrations.
    ///
    /// Fails with [`Error::SchemaTooNew`] when the database was migrated by a newer Myelin: running
    /// old code on a newer schema could corrupt data, so we refuse to start.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(Error::UnsupportedUrl);
        };
        let options = AnyConnectOptions::from_str(url)
            .map_err(Error::Database)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool_options = match backend {
            Backend::Postgres => AnyPoolOptions::new().max_connections(32),
            // SQLite has one writer at a time; a handful of connections serve parallel reads.
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(8)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL lets readers proceed while a write commits; the busy timeout makes a
                        // second writer wait instead of failing with SQLITE_BUSY.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                }),
        };
        let pool = pool_options
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        let mut storage = Storage {
            pool,
            backend,
            stream: Default::default(),
            recent: Default::default(),
            tokens: Default::default(),
            counts: Default::default(),
            facts: Default::default(),
            threaded: Default::default(),
            search_sizes: Default::default(),
        };
        storage.migrate().await?;
        let position = storage.current_stream_position().await?;
        storage.stream = std::sync::Arc::new(StreamTracker::starting_at(position));
        storage.recent = std::sync::Arc::new(recent::Recent::starting_at(position));
        Ok(storage)
    }

    /// The SQLite URL for a database file inside `data_dir`, created if missing.
    pub fn sqlite_url_in(data_dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", data_dir.join("myelin.db").display())
    }

    async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Postgres => &POSTGRES_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        };
        match migrator.run(&self.pool).await {
            Ok(()) => Ok(()),
            Err(MigrateError::VersionMissing(version)) => Err(Error::SchemaTooNew(version)),
            Err(e) => Err(Error::Migration(e)),
        }
    }

    /// The highest stream position whose writes are all visible; sync tokens stop here.
    pub fn safe_stream_position(&self) -> i64 {
        self.stream.safe_position()
    }

    /// Waits until every position up to `position` is visible (see
    /// [`StreamTracker::wait_safe`]).
    pub async fn wait_safe(&self, position: i64) {
        self.stream.wait_safe(position).await
    }

    /// Whether no device list and no room membership changed after `after` (from memory; a
    /// `false` only means "maybe"): then no user has `device_lists` news since `after`.
    pub fn device_lists_unchanged_since(&self, after: i64) -> bool {
        self.recent.device_lists_unchanged_since(after)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads first and writes later can fail with
    /// SQLITE_BUSY when another writer got in between, without waiting for the busy timeout.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Postgres => self.pool.begin().await?,
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
        })
    }

    /// Closes every connection; used at shutdown so SQLite checkpoints its WAL cleanly.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A cheap round trip, used by `/health`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_sqlite_url() -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!(
            "myelin-storage-test-{}-{}",
            std::process::id(),
            now_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = Storage::sqlite_url_in(&dir);
        (dir, url)
    }

    fn now_nanos() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    /// `/messages` pages read first within a window of depths, then without it: the pages are
    /// those of a plain walk whatever the depths look like (gaps wider than the window, many
    /// events at one depth, rejected events and outliers, another room's events).
    #[tokio::test]
    async fn topological_pages_are_those_of_a_plain_walk() {
        use crate::{Direction, TopologicalPosition};
        let (dir, url) = temp_sqlite_url();
        let storage = Storage::connect(&url).await.unwrap();
        // (room, depth, stream, rejected)
        let mut rows: Vec<(&str, i64, Option<i64>, bool)> = Vec::new();
        let mut stream = 0;
        let mut next = || {
            stream += 1;
            Some(stream)
        };
        for depth in 1..=30 {
            rows.push(("!r:x", depth, next(), false));
            rows.push(("!other:x", depth, next(), false));
        }
        for depth in 1_000..=1_010 {
            for _ in 0..3 {
                rows.push(("!r:x", depth, next(), depth == 1_005));
            }
        }
        rows.push(("!r:x", 1_003, None, false));
        rows.push(("!r:x", 500_000, next(), false));
        rows.push(("!r:x", 500_001, next(), false));
        for (i, (room, depth, stream, rejected)) in rows.iter().enumerate() {
            sqlx::query(
                "INSERT INTO events (event_id, room_id, stream_ordering, depth, event_type,
                                     sender, origin_server_ts, pdu, rejected_reason)
                 VALUES ($1, $2, $3, $4, 'm.room.message', '@a:x', 0, '{\"content\":{}}', $5)",
            )
            .bind(format!("$e{i}"))
            .bind(*room)
            .bind(*stream)
            .bind(*depth)
            .bind(rejected.then_some("bad"))
            .execute(&storage.pool)
            .await
            .unwrap();
        }
        let served: Vec<(i64, i64)> = rows
            .iter()
            .filter(|(room, _, stream, rejected)| *room == "!r:x" && stream.is_some() && !rejected)
            .map(|(_, depth, stream, _)| (*depth, stream.unwrap()))
            .collect();
        let position = |(depth, stream): (i64, i64)| TopologicalPosition { depth, stream };
        let mut starts: Vec<(i64, i64)> = served.clone();
        starts.extend([(i64::MAX, i64::MAX), (i64::MIN, i64::MIN), (0, 0), (700, 0)]);
        let tos = [
            None,
            Some((5, 0)),
            Some((1_004, 0)),
            Some((500_001, i64::MAX)),
        ];
        for limit in [1, 2, 7, 50] {
            for dir in [Direction::Backward, Direction::Forward] {
                for from in &starts {
                    for to in tos {
                        let got: Vec<(i64, i64)> = storage
                            .room_events_topological(
                                "!r:x",
                                position(*from),
                                to.map(position),
                                dir,
                                limit,
                            )
                            .await
                            .unwrap()
                            .iter()
                            .map(|e| (e.depth, e.stream_ordering.unwrap()))
                            .collect();
                        let mut want: Vec<(i64, i64)> = served
                            .iter()
                            .copied()
                            .filter(|e| match dir {
                                Direction::Backward => *e < *from && to.is_none_or(|to| *e >= to),
                                Direction::Forward => *e >= *from && to.is_none_or(|to| *e < to),
                            })
                            .collect();
                        want.sort();
                        if dir == Direction::Backward {
                            want.reverse();
                        }
                        want.truncate(limit as usize);
                        assert_eq!(got, want, "{dir:?} from {from:?} to {to:?}, limit {limit}");
                    }
                }
            }
        }
        storage.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn refuses_a_database_with_a_newer_schema() {
        let (dir, url) = temp_sqlite_url();
        let storage = Storage::connect(&url).await.unwrap();
        // Pretend a newer Myelin applied a migration this build does not know.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (99999, 'from the future', 1, X'00', 0)",
        )
        .execute(&storage.pool)
        .await
        .unwrap();
        storage.close().await;
        match Storage::connect(&url).await {
            Err(Error::SchemaTooNew(99999)) => {}
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_migrations_are_idempotent() {
        let (dir, url) = temp_sqlite_url();
        let storage = Storage::connect(&url).await.unwrap();
        storage
            .create_user("@a:x", Some("hash"), true, "a", 1)
            .await
            .unwrap();
        assert!(matches!(
            storage.create_user("@a:x", None, false, "a", 2).await,
            Err(Error::UniqueViolation)
        ));
        storage.close().await;
        let storage = Storage::connect(&url).await.unwrap();
        let user = storage.get_user("@a:x").await.unwrap().unwrap();
        assert!(user.is_admin && !user.deactivated);
        assert_eq!(user.password_hash.as_deref(), Some("hash"));
        storage.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn expired_registration_nonces_are_deleted_when_new_ones_are_made() {
        let (dir, url) = temp_sqlite_url();
        let storage = Storage::connect(&url).await.unwrap();
        for i in 0..5 {
            storage
                .create_registration_nonce(&format!("old{i}"), 1_000 + i, 0)
                .await
                .unwrap();
        }
        assert_eq!(storage.registration_nonce_count().await.unwrap(), 5);
        // 60 s later, a new nonce takes the place of all the expired ones.
        storage
            .create_registration_nonce("new", 61_100, 61_100 - 60_000)
            .await
            .unwrap();
        assert_eq!(storage.registration_nonce_count().await.unwrap(), 1);
        assert_eq!(
            storage.take_registration_nonce("new").await.unwrap(),
            Some(61_100)
        );
        storage.expire_transient(0, i64::MAX).await.unwrap();
        storage.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn registration_token_uses_are_counted_atomically() {
        let (dir, url) = temp_sqlite_url();
        let storage = Storage::connect(&url).await.unwrap();
        let token = RegistrationTokenRow {
            token: "t".into(),
            uses_allowed: Some(1),
            completed: 0,
            expiry_ts: None,
        };
        storage.create_registration_token(&token, 0).await.unwrap();
        let (a, b) = tokio::join!(
            storage.consume_registration_token("t", 1),
            storage.consume_registration_token("t", 1)
        );
        assert_eq!(
            u8::from(a.unwrap()) + u8::from(b.unwrap()),
            1,
            "exactly one use succeeds"
        );
        assert!(!storage
            .get_registration_token("t")
            .await
            .unwrap()
            .unwrap()
            .is_usable(1));
        storage.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
