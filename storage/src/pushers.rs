//! Pushers (migration 0011): the HTTP push gateways a user's devices registered, and each
//! one's durable delivery position.
//!
//! What is sent, and when, is decided by the homeserver's pusher worker
//! (`homeserver/src/push/sender.rs`); this module only stores pushers, claims them for a
//! process, moves their positions and reads what is due: the user's notifying push actions
//! after a position that are still unread (a notification read on another device is not
//! pushed, as in Synapse).

use sqlx::{any::AnyRow, Row};

use crate::{Backend, Result, Storage};

/// A stored pusher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PusherRow {
    pub id: i64,
    pub user_id: String,
    /// The device whose access token set it.
    pub device_id: String,
    pub kind: String,
    pub app_id: String,
    pub pushkey: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// The request's `data` object, as JSON.
    pub data: String,
    pub pushkey_ts: i64,
    /// Notifications at or before this stream position have been delivered (or given up on).
    pub last_stream_ordering: i64,
    /// When the gateway started failing, if it is failing.
    pub failing_since: Option<i64>,
}

/// A pusher as `POST /pushers/set` gives it.
#[derive(Debug, Clone)]
pub struct NewPusher<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub kind: &'a str,
    pub app_id: &'a str,
    pub pushkey: &'a str,
    pub app_display_name: &'a str,
    pub device_display_name: &'a str,
    pub profile_tag: Option<&'a str>,
    pub lang: &'a str,
    pub data: &'a str,
}

const PUSHER_COLUMNS: &str = "id, user_id, device_id, kind, app_id, pushkey, app_display_name,
    device_display_name, profile_tag, lang, data, pushkey_ts, last_stream_ordering, failing_since";

fn pusher_from_row(row: &AnyRow) -> Result<PusherRow> {
    Ok(PusherRow {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        device_id: row.try_get("device_id")?,
        kind: row.try_get("kind")?,
        app_id: row.try_get("app_id")?,
        pushkey: row.try_get("pushkey")?,
        app_display_name: row.try_get("app_display_name")?,
        device_display_name: row.try_get("device_display_name")?,
        profile_tag: row.try_get("profile_tag")?,
        lang: row.try_get("lang")?,
        data: row.try_get("data")?,
        pushkey_ts: row.try_get("pushkey_ts")?,
        last_stream_ordering: row.try_get("last_stream_ordering")?,
        failing_since: row.try_get("failing_since")?,
    })
}

impl Storage {
    /// Creates the pusher `(user, app_id, pushkey)` or updates it (keeping its position),
    /// claimed by `owner` until `claim_until`. Unless `append`, other users' pushers with the
    /// same app and pushkey are deleted (the device changed hands). Returns its ID.
    pub async fn set_pusher(
        &self,
        pusher: &NewPusher<'_>,
        append: bool,
        now: i64,
        owner: &str,
        claim_until: i64,
    ) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        if !append {
            sqlx::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3")
                .bind(pusher.app_id)
                .bind(pusher.pushkey)
                .bind(pusher.user_id)
                .execute(&mut *tx)
                .await?;
        }
        let existing: Option<i64> = sqlx::query(
            "SELECT id FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
        )
        .bind(pusher.user_id)
        .bind(pusher.app_id)
        .bind(pusher.pushkey)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.try_get("id"))
        .transpose()?;
        let id = match existing {
            Some(id) => {
                sqlx::query(
                    "UPDATE pushers SET device_id = $1, kind = $2, app_display_name = $3,
                        device_display_name = $4, profile_tag = $5, lang = $6, data = $7,
                        pushkey_ts = $8, claimed_by = $9, claim_until = $10
                     WHERE id = $11",
                )
                .bind(pusher.device_id)
                .bind(pusher.kind)
                .bind(pusher.app_display_name)
                .bind(pusher.device_display_name)
                .bind(pusher.profile_tag)
                .bind(pusher.lang)
                .bind(pusher.data)
                .bind(now)
                .bind(owner)
                .bind(claim_until)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                id
            }
            None => {
                // A new pusher starts at what is visible now: it is not sent the user's
                // older notifications.
                let position = self.safe_stream_position();
                sqlx::query(
                    "INSERT INTO pushers (user_id, device_id, kind, app_id, pushkey,
                        app_display_name, device_display_name, profile_tag, lang, data,
                        pushkey_ts, last_stream_ordering, claimed_by, claim_until)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                     RETURNING id",
                )
                .bind(pusher.user_id)
                .bind(pusher.device_id)
                .bind(pusher.kind)
                .bind(pusher.app_id)
                .bind(pusher.pushkey)
                .bind(pusher.app_display_name)
                .bind(pusher.device_display_name)
                .bind(pusher.profile_tag)
                .bind(pusher.lang)
                .bind(pusher.data)
                .bind(now)
                .bind(position)
                .bind(owner)
                .bind(claim_until)
                .fetch_one(&mut *tx)
                .await?
                .try_get("id")?
            }
        };
        tx.commit().await?;
        Ok(id)
    }

    /// Deletes the user's pusher `(app_id, pushkey)`; returns whether there was one.
    pub async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
                .bind(user_id)
                .bind(app_id)
                .bind(pushkey)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a pusher by ID (its gateway rejected its pushkey).
    pub async fn delete_pusher_by_id(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM pushers WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The user's pushers, oldest first.
    pub async fn pushers_for_user(&self, user_id: &str) -> Result<Vec<PusherRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY id"
        )))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pusher_from_row).collect()
    }

    /// How many pushers the user has.
    pub async fn pusher_count(&self, user_id: &str) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM pushers WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    /// One pusher, if it still exists and is still claimed by `owner`.
    pub async fn claimed_pusher(&self, id: i64, owner: &str) -> Result<Option<PusherRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PUSHER_COLUMNS} FROM pushers WHERE id = $1 AND claimed_by = $2"
        )))
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(pusher_from_row).transpose()
    }

    /// Claims for `owner` until `claim_until` every pusher that is unclaimed, already its own,
    /// or whose claim lapsed before `now`; returns them all.
    pub async fn claim_pushers(
        &self,
        owner: &str,
        now: i64,
        claim_until: i64,
    ) -> Result<Vec<PusherRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE pushers SET claimed_by = $1, claim_until = $2
             WHERE claimed_by IS NULL OR claimed_by = $1 OR claim_until IS NULL OR claim_until < $3
             RETURNING {PUSHER_COLUMNS}"
        )))
        .bind(owner)
        .bind(claim_until)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pusher_from_row).collect()
    }

    /// Records that the pusher's gateway accepted everything up to `position` (or that it was
    /// given up on); clears its failure. Returns false if the pusher is gone or no longer
    /// claimed by `owner` (its worker then stops).
    ///
    /// On PostgreSQL the commit does not wait for the WAL to reach disk
    /// (`synchronous_commit = off` for this transaction only): a position is written for every
    /// notification, and the price of losing the last few of them in a crash *of PostgreSQL*
    /// (not of Myelin, whose commits PostgreSQL still holds) is that those notifications are
    /// sent again. Everything else keeps full durability.
    pub async fn advance_pusher(
        &self,
        id: i64,
        owner: &str,
        position: i64,
        now: i64,
    ) -> Result<bool> {
        // One statement (its own transaction); on PostgreSQL it turns off the wait for the
        // WAL for itself through `set_config(..., true)` in its FROM list.
        let sql = match self.backend {
            Backend::Postgres => {
                "UPDATE pushers SET last_stream_ordering = $1, last_success = $2, failing_since = NULL
                 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_wait
                 WHERE id = $3 AND claimed_by = $4 AND last_stream_ordering <= $1"
            }
            Backend::Sqlite => {
                "UPDATE pushers SET last_stream_ordering = $1, last_success = $2, failing_since = NULL
                 WHERE id = $3 AND claimed_by = $4 AND last_stream_ordering <= $1"
            }
        };
        let done = sqlx::query(sql)
            .bind(position)
            .bind(now)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records when the pusher's gateway started failing.
    pub async fn set_pusher_failing(&self, id: i64, since: i64) -> Result<()> {
        sqlx::query("UPDATE pushers SET failing_since = $1 WHERE id = $2")
            .bind(since)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
