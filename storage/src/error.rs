//! The storage error type. The homeserver maps these to Matrix errors in one place.

/// What can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A row with the same key exists already (e.g. a taken user ID).
    #[error("unique constraint violated")]
    UniqueViolation,
    #[error("database URL must start with postgres://, postgresql:// or sqlite:")]
    UnsupportedUrl,
    /// The database has a migration this build does not know: it was written by a newer Myelin.
    #[error("database schema is newer than this Myelin (it has migration {0}, which this build does not know); upgrade Myelin")]
    SchemaTooNew(i64),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.kind() == sqlx::error::ErrorKind::UniqueViolation {
                // Callers map this to a client error (a taken name); which constraint it was
                // matters when it is not the one they expect.
                tracing::debug!(constraint = ?db.constraint(), table = ?db.table(), "unique violation");
                return Error::UniqueViolation;
            }
        }
        Error::Database(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
