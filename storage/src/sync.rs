//! The reads `/sync` is built from: what changed for a user between two stream positions.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use crate::{rooms::EventRow, Backend, Result, Storage};

/// A user's membership of a room, with where it changed.
#[derive(Debug, Clone)]
pub struct MembershipRow {
    pub room_id: String,
    pub membership: String,
    /// The current member event (for `join`, possibly a later profile change).
    pub event_id: String,
    /// Where the membership last changed to what it is: a `join` -> `join` event (a display
    /// name or avatar change) does not move it, so `stream_ordering > since` means "joined,
    /// left, invited... since then", never "changed their profile".
    pub stream_ordering: i64,
    pub forgotten: bool,
    /// Who sent the current member event: for `leave`, someone else means a kick.
    pub sender: String,
}

/// Account data that changed: `room_id` is `None` for global account data.
#[derive(Debug, Clone)]
pub struct AccountDataChange {
    pub room_id: Option<String>,
    pub data_type: String,
    pub content: String,
}

impl Storage {
    /// Every room the user has a membership in (any state).
    pub async fn memberships_for_user(&self, user_id: &str) -> Result<Vec<MembershipRow>> {
        let generation = match self.recent.memberships(user_id) {
            Ok(rows) => return Ok(rows),
            Err(generation) => generation,
        };
        let rows = sqlx::query(
            "SELECT m.room_id, m.membership, m.event_id, m.stream_ordering, m.forgotten,
                    COALESCE(e.sender, m.user_id) AS sender
             FROM room_memberships m LEFT JOIN events e ON e.event_id = m.event_id
             WHERE m.user_id = $1 ORDER BY m.stream_ordering",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        let rows = rows
            .iter()
            .map(|row| {
                Ok(MembershipRow {
                    room_id: row.try_get("room_id")?,
                    membership: row.try_get("membership")?,
                    event_id: row.try_get("event_id")?,
                    stream_ordering: row.try_get("stream_ordering")?,
                    forgotten: row.try_get::<i64, _>("forgotten")? != 0,
                    sender: row.try_get("sender")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.recent.store_memberships(user_id, generation, &rows);
        Ok(rows)
    }

    /// Up to `limit` of a room's events with `after < stream <= upto`, newest first.
    pub async fn room_events_in_range(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let wanted = usize::try_from(limit).unwrap_or(0);
        if let Some(events) = self.recent.room_events(room_id, after, upto, wanted) {
            return Ok(events);
        }
        let sql = format!(
            "SELECT {} FROM events WHERE room_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3
               AND rejected_reason IS NULL ORDER BY stream_ordering DESC LIMIT $4",
            crate::rooms::EVENT_COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(room_id)
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(crate::rooms::event_from_row).collect()
    }

    /// The state snapshot after the room's last event at or before `position`.
    pub async fn snapshot_at(&self, room_id: &str, position: i64) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT state_after FROM events WHERE room_id = $1 AND stream_ordering <= $2
             ORDER BY stream_ordering DESC LIMIT 1",
        )
        .bind(room_id)
        .bind(position)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| r.try_get::<Option<i64>, _>("state_after"))
            .transpose()?
            .flatten())
    }

    /// Account data of the user changed in `after < stream <= upto` (all of it when `after`
    /// is 0).
    pub async fn account_data_changes(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<AccountDataChange>> {
        if self.recent.account_data_unchanged_since(user_id, after) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT room_id, data_type, content FROM account_data
             WHERE user_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3",
        )
        .bind(user_id)
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let room: String = row.try_get("room_id")?;
                Ok(AccountDataChange {
                    room_id: Some(room).filter(|r| !r.is_empty()),
                    data_type: row.try_get("data_type")?,
                    content: row.try_get("content")?,
                })
            })
            .collect()
    }

    /// Stores a filter and returns its ID (per user, counting up from 0).
    pub async fn create_filter(&self, user_id: &str, filter_json: &str) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        // On PostgreSQL, lock the user's filters so two concurrent creations cannot pick the
        // same ID (SQLite's BEGIN IMMEDIATE already serialises writers).
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        let next: i64 = sqlx::query(
            "SELECT COALESCE(MAX(filter_id) + 1, 0) AS next FROM filters WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("next")?;
        sqlx::query("INSERT INTO filters (user_id, filter_id, filter_json) VALUES ($1, $2, $3)")
            .bind(user_id)
            .bind(next)
            .bind(filter_json)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(next)
    }

    pub async fn get_filter(&self, user_id: &str, filter_id: i64) -> Result<Option<String>> {
        let row =
            sqlx::query("SELECT filter_json FROM filters WHERE user_id = $1 AND filter_id = $2")
                .bind(user_id)
                .bind(filter_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("filter_json")).transpose()?)
    }
}

/// A read receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    pub room_id: String,
    pub user_id: String,
    pub receipt_type: String,
    pub thread_id: Option<String>,
    pub event_id: String,
    pub ts: i64,
}

fn receipt_from_row(row: &sqlx::any::AnyRow) -> Result<ReceiptRow> {
    let thread: String = row.try_get("thread_id")?;
    Ok(ReceiptRow {
        room_id: row.try_get("room_id")?,
        user_id: row.try_get("user_id")?,
        receipt_type: row.try_get("receipt_type")?,
        thread_id: Some(thread).filter(|t| !t.is_empty()),
        event_id: row.try_get("event_id")?,
        ts: row.try_get("ts")?,
    })
}

impl Storage {
    /// Moves a user's receipt forward to `event_id` at a new stream position, which it
    /// returns; `None` when the receipt already points at that event or a later one (in
    /// topological order), so a receipt never moves backwards and nothing is sent.
    ///
    /// The check is part of the upsert, so two concurrent receipts of one user cannot leave
    /// the earlier event stored (PostgreSQL locks the conflicting row and evaluates the
    /// condition on its latest version; SQLite writers are serialised).
    pub async fn set_receipt(&self, receipt: &ReceiptRow) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let in_flight = self.next_stream_position(&mut tx).await?;
        let position = in_flight.position();
        let written = sqlx::query(
            "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_ordering)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (room_id, user_id, receipt_type, thread_id)
             DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream_ordering = excluded.stream_ordering
             WHERE NOT EXISTS (
                SELECT 1 FROM events old_event, events new_event
                WHERE old_event.event_id = receipts.event_id AND new_event.event_id = excluded.event_id
                  AND (old_event.depth > new_event.depth
                       OR (old_event.depth = new_event.depth
                           AND old_event.stream_ordering >= new_event.stream_ordering)))",
        )
        .bind(&receipt.room_id)
        .bind(&receipt.user_id)
        .bind(&receipt.receipt_type)
        .bind(receipt.thread_id.as_deref().unwrap_or(""))
        .bind(&receipt.event_id)
        .bind(receipt.ts)
        .bind(position)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if written == 0 {
            // Not a move forward: nothing to commit (the position stays unused).
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        self.recent
            .receipts_moved(position, std::slice::from_ref(receipt));
        Ok(Some(position))
    }

    /// Whether event `later` comes after event `earlier` in topological order (depth, then
    /// stream position); `None` if either is unknown. Used for the read marker, which must
    /// not move backwards either.
    pub async fn event_is_after(&self, later: &str, earlier: &str) -> Result<Option<bool>> {
        let row = sqlx::query(
            "SELECT CASE WHEN l.depth > e.depth
                           OR (l.depth = e.depth AND l.stream_ordering > e.stream_ordering)
                         THEN 1 ELSE 0 END AS after
             FROM events l, events e WHERE l.event_id = $1 AND e.event_id = $2",
        )
        .bind(later)
        .bind(earlier)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("after"))
            .transpose()?
            .map(|a| a == 1))
    }

    /// Writes many receipts in one transaction at one stream position (the delivered
    /// receipts of a batch). Of several rows for the same `(room, user, type, thread)`, the
    /// last wins.
    pub async fn set_receipts(&self, receipts: &[ReceiptRow]) -> Result<i64> {
        let mut unique: HashMap<(&str, &str, &str, &str), &ReceiptRow> = HashMap::new();
        for r in receipts {
            let thread = r.thread_id.as_deref().unwrap_or("");
            unique.insert((&r.room_id, &r.user_id, &r.receipt_type, thread), r);
        }
        let rows: Vec<&ReceiptRow> = unique.into_values().collect();
        let mut tx = self.begin_write().await?;
        let in_flight = self.next_stream_position(&mut tx).await?;
        let position = in_flight.position();
        // 7 parameters a row; 500 rows stay far below both engines' limits.
        for chunk in rows.chunks(500) {
            let sql = format!(
                "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_ordering)
                 VALUES {}
                 ON CONFLICT (room_id, user_id, receipt_type, thread_id)
                 DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream_ordering = excluded.stream_ordering",
                crate::rooms::value_rows(chunk.len(), 7)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for r in chunk {
                query = query
                    .bind(&r.room_id)
                    .bind(&r.user_id)
                    .bind(&r.receipt_type)
                    .bind(r.thread_id.as_deref().unwrap_or(""))
                    .bind(&r.event_id)
                    .bind(r.ts)
                    .bind(position);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let written: Vec<ReceiptRow> = rows.into_iter().cloned().collect();
        self.recent.receipts_moved(position, &written);
        Ok(position)
    }

    /// Each user's receipt of `receipt_type` (unthreaded) in a room, as the stream position
    /// of the event it points at.
    pub async fn receipt_positions(
        &self,
        room_id: &str,
        receipt_type: &str,
    ) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT r.user_id, e.stream_ordering FROM receipts r JOIN events e ON e.event_id = r.event_id
             WHERE r.room_id = $1 AND r.receipt_type = $2 AND r.thread_id = ''",
        )
        .bind(room_id)
        .bind(receipt_type)
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::new();
        for row in rows {
            if let Some(position) = row.try_get::<Option<i64>, _>("stream_ordering")? {
                out.insert(row.try_get("user_id")?, position);
            }
        }
        Ok(out)
    }

    /// Receipts that moved in `after < stream <= upto`, in any room. Shared: every member
    /// of a room woken by the same receipts gets the same rows.
    pub async fn receipts_in_range(
        &self,
        after: i64,
        upto: i64,
    ) -> Result<Vec<std::sync::Arc<ReceiptRow>>> {
        if let Some(rows) = self.recent.receipts_in_range(after, upto) {
            return Ok(rows);
        }
        let rows = sqlx::query(
            "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts FROM receipts
             WHERE stream_ordering > $1 AND stream_ordering <= $2",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| receipt_from_row(r).map(std::sync::Arc::new))
            .collect()
    }

    /// The latest receipts of a room (at or before `upto`).
    pub async fn receipts_for_room(&self, room_id: &str, upto: i64) -> Result<Vec<ReceiptRow>> {
        let rows = sqlx::query(
            "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts FROM receipts
             WHERE room_id = $1 AND stream_ordering <= $2",
        )
        .bind(room_id)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(receipt_from_row).collect()
    }
}
