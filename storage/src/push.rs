//! Push actions (migration 0010): which local users an event notifies or highlights, written
//! with the event (`persist_events`), and what follows from them: unread counts,
//! `/notifications`, and the bounding of the table.
//!
//! A row is *read* when the user's newest `m.read` or `m.read.private` receipt in its room,
//! unthreaded or of the row's thread, is at or after it in the stream (without a receipt:
//! when the user's join is). The receipts are not
//! copied here: counts join them, so a receipt clears counts in the receipt's own
//! transaction and nothing can disagree after a restart.

use sqlx::{Any, Row, Transaction};

use crate::{rooms::value_rows, Backend, Result, Storage};

/// What the push rules of one user decided for a new event (only events that notify or
/// highlight have one).
#[derive(Debug, Clone)]
pub struct NewPushAction {
    pub user_id: String,
    pub notify: bool,
    pub highlight: bool,
    /// The matched rule's actions, as JSON.
    pub actions: String,
}

/// Unread counts of one thread (`"main"` for the main timeline) of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadCount {
    pub room_id: String,
    pub thread_id: String,
    pub notifications: i64,
    pub highlights: i64,
}

/// One row of `/notifications`.
#[derive(Debug, Clone)]
pub struct NotificationRow {
    pub stream_ordering: i64,
    pub room_id: String,
    pub event_id: String,
    pub actions: String,
    pub ts: i64,
    pub read: bool,
}

/// The position up to which the user has read for row `a`: their newest `m.read` or
/// `m.read.private` receipt in the room, unthreaded or of the row's thread; without one, their
/// join (as Synapse counts: what came before joining, the invite among it, is not unread once
/// they are in the room); 0 if neither.
pub(crate) const READ_UPTO: &str = "COALESCE((
        SELECT MAX(e.stream_ordering) FROM receipts r JOIN events e ON e.event_id = r.event_id
        WHERE r.room_id = a.room_id AND r.user_id = a.user_id
          AND r.receipt_type IN ('m.read', 'm.read.private')
          AND (r.thread_id = '' OR r.thread_id = a.thread_id)
    ), (
        SELECT m.stream_ordering FROM room_memberships m
        WHERE m.room_id = a.room_id AND m.user_id = a.user_id AND m.membership = 'join'
    ), 0)";

/// Rows per insert statement (9 parameters each; SQLite allows 32,766 per statement).
const INSERT_CHUNK: usize = 500;

/// Read rows are kept this long for `/notifications`, then deleted.
pub const READ_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
/// Every row is deleted after this long, read or not (as Synapse does).
pub const RETENTION_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// Inserts the push actions of a batch of events: `(position, event ID, thread, actions)`.
///
/// A message into a room of 50 is 49 rows. On PostgreSQL they go as one JSON parameter
/// expanded by `json_to_recordset`: a multi-row `VALUES` with 9 parameters a row made
/// PostgreSQL parse, bind and plan thousands of parameters per batch, which cost more than
/// writing the rows. SQLite, in-process, takes the plain multi-row insert.
pub(crate) async fn insert_push_actions(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    room_id: &str,
    rows: &[(i64, &str, &str, &NewPushAction)],
    now: i64,
) -> Result<()> {
    if backend == Backend::Postgres {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(position, event_id, thread_id, action)| {
                serde_json::json!({
                    "u": action.user_id, "p": position, "e": event_id, "t": thread_id,
                    "n": i64::from(action.notify), "h": i64::from(action.highlight),
                    "a": action.actions,
                })
            })
            .collect();
        let json =
            serde_json::to_string(&json).map_err(|e| crate::Error::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO event_push_actions (user_id, stream_ordering, room_id, event_id, thread_id,
                                             notify, highlight, actions, ts)
             SELECT r.u, r.p, $1, r.e, r.t, r.n, r.h, r.a, $2
             FROM json_to_recordset($3::json)
                  AS r(u TEXT, p BIGINT, e TEXT, t TEXT, n BIGINT, h BIGINT, a TEXT)",
        )
        .bind(room_id)
        .bind(now)
        .bind(json)
        .execute(&mut **tx)
        .await?;
        return Ok(());
    }
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO event_push_actions (user_id, stream_ordering, room_id, event_id, thread_id,
                                             notify, highlight, actions, ts)
             VALUES {}",
            value_rows(chunk.len(), 9)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for (position, event_id, thread_id, action) in chunk {
            query = query
                .bind(action.user_id.as_str())
                .bind(*position)
                .bind(room_id)
                .bind(*event_id)
                .bind(*thread_id)
                .bind(i64::from(action.notify))
                .bind(i64::from(action.highlight))
                .bind(action.actions.as_str())
                .bind(now);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Storage {
    /// The user's unread counts at stream position `upto`, per room and thread, for rooms
    /// and threads with any (a room missing from the answer has none).
    pub async fn unread_counts(&self, user_id: &str, upto: i64) -> Result<Vec<UnreadCount>> {
        let sql = format!(
            "SELECT a.room_id, a.thread_id, CAST(SUM(a.notify) AS BIGINT) AS notifications,
                    CAST(SUM(a.highlight) AS BIGINT) AS highlights
             FROM event_push_actions a
             WHERE a.user_id = $1 AND a.stream_ordering <= $2 AND a.stream_ordering > {READ_UPTO}
             GROUP BY a.room_id, a.thread_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(user_id)
            .bind(upto)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(UnreadCount {
                    room_id: row.try_get("room_id")?,
                    thread_id: row.try_get("thread_id")?,
                    notifications: row.try_get::<Option<i64>, _>("notifications")?.unwrap_or(0),
                    highlights: row.try_get::<Option<i64>, _>("highlights")?.unwrap_or(0),
                })
            })
            .collect()
    }

    /// The user's notifications, newest first, before stream position `before` (all when
    /// `None`), at most `limit`, only highlights if asked.
    pub async fn notifications(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: i64,
        only_highlight: bool,
    ) -> Result<Vec<NotificationRow>> {
        let sql = format!(
            "SELECT a.stream_ordering, a.room_id, a.event_id, a.actions, a.ts,
                    CAST(CASE WHEN a.stream_ordering <= {READ_UPTO} THEN 1 ELSE 0 END AS BIGINT) AS is_read
             FROM event_push_actions a
             WHERE a.user_id = $1 AND a.stream_ordering < $2 AND a.notify + a.highlight > 0
               AND ($3 = 0 OR a.highlight = 1)
             ORDER BY a.stream_ordering DESC
             LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(user_id)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(only_highlight))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(NotificationRow {
                    stream_ordering: row.try_get("stream_ordering")?,
                    room_id: row.try_get("room_id")?,
                    event_id: row.try_get("event_id")?,
                    actions: row.try_get("actions")?,
                    ts: row.try_get("ts")?,
                    read: row.try_get::<i64, _>("is_read")? != 0,
                })
            })
            .collect()
    }

    /// Keeps `event_push_actions` bounded: deletes rows that are read and older than
    /// [`READ_RETENTION_MS`], and every row older than [`RETENTION_MS`]. Returns how many.
    pub async fn prune_push_actions(&self, now: i64) -> Result<u64> {
        let old = sqlx::query("DELETE FROM event_push_actions WHERE ts < $1")
            .bind(now - RETENTION_MS)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let sql = format!(
            "DELETE FROM event_push_actions WHERE (user_id, stream_ordering) IN (
                SELECT a.user_id, a.stream_ordering FROM event_push_actions a
                WHERE a.ts < $1 AND a.stream_ordering <= {READ_UPTO})"
        );
        let read = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(now - READ_RETENTION_MS)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(old + read)
    }
}
