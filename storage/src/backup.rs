//! Server-side key backup: versions and the room keys stored in them.
//!
//! Every write happens in one transaction that first locks the user's versions (a row lock
//! on PostgreSQL, the write lock on SQLite), so "is this the current version?" and the
//! write cannot be separated by a concurrent version change, and etags and counts are exact.
//! Which uploaded key wins over a stored one is decided by the homeserver, through the
//! `keep` closure of [`Storage::put_backup_keys`].

use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use crate::{Backend, Result, Storage};

/// A backup version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupVersionRow {
    pub version: i64,
    /// `{"algorithm": …, "auth_data": …}` as JSON text.
    pub algorithm: String,
    pub etag: i64,
    pub count: i64,
}

/// A backed-up room key, with the fields that decide replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKeyRow {
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    /// The whole KeyBackupData as JSON text.
    pub session_data: String,
}

/// Why a backup write did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupWriteError {
    /// The user has no backup version at all (or not this one, for updates and deletes).
    NotFound,
    /// The version exists but is not the current one; carries the current version.
    WrongVersion(i64),
}

/// Which keys a deletion removes.
#[derive(Debug, Clone, Copy)]
pub enum BackupScope<'a> {
    All,
    Room(&'a str),
    Session(&'a str, &'a str),
}

impl Storage {
    /// Serialises backup writes of one user for the rest of the transaction.
    async fn lock_backup(&self, tx: &mut Transaction<'static, Any>, user_id: &str) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('backup:' || $1))")
                .bind(user_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn current_backup_version_in(
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
    ) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(version) AS version FROM backup_versions WHERE user_id = $1 AND deleted = 0",
        )
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await?;
        Ok(row.try_get("version")?)
    }

    /// Creates a new backup version, which becomes the current one; returns its number.
    pub async fn create_backup_version(&self, user_id: &str, algorithm: &str) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        self.lock_backup(&mut tx, user_id).await?;
        // Deleted versions count too: a version number is never handed out twice.
        let next: i64 = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) + 1 AS next FROM backup_versions WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("next")?;
        sqlx::query(
            "INSERT INTO backup_versions (user_id, version, algorithm, etag, deleted)
             VALUES ($1, $2, $3, 0, 0)",
        )
        .bind(user_id)
        .bind(next)
        .bind(algorithm)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(next)
    }

    /// A backup version (the current one for `None`), unless deleted.
    pub async fn get_backup_version(
        &self,
        user_id: &str,
        version: Option<i64>,
    ) -> Result<Option<BackupVersionRow>> {
        let row = sqlx::query(
            "SELECT v.version, v.algorithm, v.etag,
                    (SELECT COUNT(*) FROM backup_keys k
                     WHERE k.user_id = v.user_id AND k.version = v.version) AS count
             FROM backup_versions v
             WHERE v.user_id = $1 AND v.deleted = 0 AND ($2 < 0 OR v.version = $2)
             ORDER BY v.version DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(version.unwrap_or(-1))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(BackupVersionRow {
                version: row.try_get("version")?,
                algorithm: row.try_get("algorithm")?,
                etag: row.try_get("etag")?,
                count: row.try_get("count")?,
            })
        })
        .transpose()
    }

    /// Replaces the algorithm and auth data of an existing version.
    pub async fn update_backup_version(
        &self,
        user_id: &str,
        version: i64,
        algorithm: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE backup_versions SET algorithm = $3
             WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .bind(algorithm)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a version and its keys. Returns false if there was no such version.
    pub async fn delete_backup_version(&self, user_id: &str, version: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        self.lock_backup(&mut tx, user_id).await?;
        let done = sqlx::query(
            "UPDATE backup_versions SET deleted = 1 WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done > 0)
    }

    /// Stores uploaded keys in the current version `version`. For a session already backed
    /// up, `keep(stored, uploaded)` says whether the stored key stays. The etag moves when
    /// anything changed. Returns the new `(etag, count)`.
    pub async fn put_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        keys: &[BackupKeyRow],
        keep: impl Fn(&BackupKeyRow, &BackupKeyRow) -> bool,
    ) -> Result<Result<(i64, i64), BackupWriteError>> {
        let mut tx = self.begin_write().await?;
        self.lock_backup(&mut tx, user_id).await?;
        match Self::current_backup_version_in(&mut tx, user_id).await? {
            None => return Ok(Err(BackupWriteError::NotFound)),
            Some(current) if current != version => {
                return Ok(Err(BackupWriteError::WrongVersion(current)))
            }
            Some(_) => {}
        }
        let mut changed = false;
        for key in keys {
            let stored = sqlx::query(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified,
                        session_data
                 FROM backup_keys
                 WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
            )
            .bind(user_id)
            .bind(version)
            .bind(&key.room_id)
            .bind(&key.session_id)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(backup_key_from_row)
            .transpose()?;
            if let Some(stored) = &stored {
                if stored == key || keep(stored, key) {
                    continue;
                }
            }
            sqlx::query(
                "INSERT INTO backup_keys (user_id, version, room_id, session_id,
                    first_message_index, forwarded_count, is_verified, session_data)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
                    first_message_index = excluded.first_message_index,
                    forwarded_count = excluded.forwarded_count,
                    is_verified = excluded.is_verified,
                    session_data = excluded.session_data",
            )
            .bind(user_id)
            .bind(version)
            .bind(&key.room_id)
            .bind(&key.session_id)
            .bind(key.first_message_index)
            .bind(key.forwarded_count)
            .bind(i64::from(key.is_verified))
            .bind(&key.session_data)
            .execute(&mut *tx)
            .await?;
            changed = true;
        }
        let result = self
            .bump_backup_etag(&mut tx, user_id, version, changed)
            .await?;
        tx.commit().await?;
        Ok(Ok(result))
    }

    /// Deletes keys of an existing version. Returns the new `(etag, count)`.
    pub async fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        scope: BackupScope<'_>,
    ) -> Result<Result<(i64, i64), BackupWriteError>> {
        let mut tx = self.begin_write().await?;
        self.lock_backup(&mut tx, user_id).await?;
        let exists = sqlx::query(
            "SELECT 1 AS one FROM backup_versions WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !exists {
            return Ok(Err(BackupWriteError::NotFound));
        }
        let (filter, room, session) = match scope {
            BackupScope::All => ("", None, None),
            BackupScope::Room(room) => ("AND room_id = $3", Some(room), None),
            BackupScope::Session(room, session) => (
                "AND room_id = $3 AND session_id = $4",
                Some(room),
                Some(session),
            ),
        };
        let sql = format!("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2 {filter}");
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(user_id)
            .bind(version);
        if let Some(room) = room {
            query = query.bind(room);
        }
        if let Some(session) = session {
            query = query.bind(session);
        }
        let deleted = query.execute(&mut *tx).await?.rows_affected();
        let result = self
            .bump_backup_etag(&mut tx, user_id, version, deleted > 0)
            .await?;
        tx.commit().await?;
        Ok(Ok(result))
    }

    /// Moves the etag if `changed`; returns `(etag, count)`.
    async fn bump_backup_etag(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        version: i64,
        changed: bool,
    ) -> Result<(i64, i64)> {
        if changed {
            sqlx::query(
                "UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2",
            )
            .bind(user_id)
            .bind(version)
            .execute(&mut **tx)
            .await?;
        }
        let row = sqlx::query(
            "SELECT v.etag,
                    (SELECT COUNT(*) FROM backup_keys k
                     WHERE k.user_id = v.user_id AND k.version = v.version) AS count
             FROM backup_versions v WHERE v.user_id = $1 AND v.version = $2",
        )
        .bind(user_id)
        .bind(version)
        .fetch_one(&mut **tx)
        .await?;
        Ok((row.try_get("etag")?, row.try_get("count")?))
    }

    /// Keys of a version, optionally of one room or one session, ordered by room and session.
    pub async fn get_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<BackupKeyRow>> {
        let rows = sqlx::query(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified,
                    session_data
             FROM backup_keys
             WHERE user_id = $1 AND version = $2
               AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)
             ORDER BY room_id, session_id",
        )
        .bind(user_id)
        .bind(version)
        .bind(room_id.unwrap_or(""))
        .bind(session_id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(backup_key_from_row).collect()
    }
}

fn backup_key_from_row(row: &sqlx::any::AnyRow) -> Result<BackupKeyRow> {
    Ok(BackupKeyRow {
        room_id: row.try_get("room_id")?,
        session_id: row.try_get("session_id")?,
        first_message_index: row.try_get("first_message_index")?,
        forwarded_count: row.try_get("forwarded_count")?,
        is_verified: row.try_get::<i64, _>("is_verified")? != 0,
        session_data: row.try_get("session_data")?,
    })
}
