//! Threads: a row per thread root (migration 0019), kept by the event transactions, and the
//! reads behind `/threads` and thread summaries.
//!
//! A reply (`m.relates_to.rel_type = m.thread`) moves its thread's latest position and adds
//! one to its count in the reply's own transaction; a redacted reply is taken out in the
//! redaction's (count and latest recomputed, the row dropped at zero). So `/threads` and the
//! summaries never show a reply that is not stored or that was redacted.
//!
//! Which rooms have threads at all is also kept in memory ([`ThreadedRooms`]), so formatting
//! events of the many rooms without threads costs no query. Like the other per-process caches
//! (`recent.rs`), it learns of new threads from this process's writers: several writing
//! processes would each load it from the table and add what the event stream tells them.

use std::collections::{HashMap, HashSet};

use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use crate::{rooms::placeholders_from, Result, Storage};

/// The rooms that have at least one thread, loaded once and then kept by the writers.
#[derive(Debug, Default)]
pub(crate) struct ThreadedRooms {
    /// `None` until loaded.
    rooms: std::sync::Mutex<Option<HashSet<String>>>,
}

/// One thread as `/threads` and summaries need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadRow {
    pub root_event_id: String,
    pub latest_event_id: String,
    pub latest_stream: i64,
    pub reply_count: i64,
    /// Whether the asking user sent the root or a reply that is not redacted.
    pub participated: bool,
}

/// After the replies of one batch of `room_id` (`(root, position)`, positions ascending):
/// moves each thread's latest position and count, in the batch's transaction.
pub(crate) async fn add_replies(
    tx: &mut Transaction<'static, Any>,
    room_id: &str,
    replies: &[(&str, i64)],
) -> Result<()> {
    for (root, latest, count) in aggregate(replies) {
        sqlx::query(
            "INSERT INTO threads (root_event_id, room_id, latest_stream, reply_count)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (root_event_id) DO UPDATE SET latest_stream = excluded.latest_stream,
                 reply_count = threads.reply_count + excluded.reply_count",
        )
        .bind(root)
        .bind(room_id)
        .bind(latest)
        .bind(count)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// `(root, latest position, number of replies)` per thread of a batch, in first-seen order
/// (one row per root: a multi-row upsert may not touch a row twice).
pub(crate) fn aggregate<'a>(replies: &[(&'a str, i64)]) -> Vec<(&'a str, i64, i64)> {
    let mut out: Vec<(&str, i64, i64)> = Vec::new();
    for (root, position) in replies {
        match out.iter_mut().find(|(r, _, _)| r == root) {
            Some(entry) => {
                entry.1 = entry.1.max(*position);
                entry.2 += 1;
            }
            None => out.push((root, *position, 1)),
        }
    }
    out
}

/// The upsert of `rows` threads for the single statement of `persist_plain_messages`
/// (PostgreSQL), parameters from `$first`: `(root, room, latest, count)` each.
pub(crate) fn upsert_cte(first: usize, rows: usize) -> (String, usize) {
    let values: Vec<String> = (0..rows)
        .map(|i| {
            let p = first + 4 * i;
            format!("(${}, ${}, ${}, ${})", p, p + 1, p + 2, p + 3)
        })
        .collect();
    (
        format!(
            ", th AS (INSERT INTO threads (root_event_id, room_id, latest_stream, reply_count)
                      VALUES {}
                      ON CONFLICT (root_event_id) DO UPDATE
                      SET latest_stream = GREATEST(threads.latest_stream, excluded.latest_stream),
                          reply_count = threads.reply_count + excluded.reply_count)",
            values.join(", ")
        ),
        rows * 4,
    )
}

/// After `target` was redacted (in the redaction's transaction): if it was a thread reply,
/// recomputes its thread from the replies that are left.
pub(crate) async fn reply_redacted(tx: &mut Transaction<'static, Any>, target: &str) -> Result<()> {
    let root: Option<String> = sqlx::query_scalar(
        "SELECT relates_to FROM event_relations WHERE event_id = $1 AND rel_type = 'm.thread'",
    )
    .bind(target)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(root) = root else {
        return Ok(());
    };
    let row = sqlx::query(
        "SELECT COUNT(*), MAX(r.stream_ordering) FROM event_relations r
         JOIN events e ON e.event_id = r.event_id
         WHERE r.relates_to = $1 AND r.rel_type = 'm.thread' AND e.redacted_by IS NULL",
    )
    .bind(&root)
    .fetch_one(&mut **tx)
    .await?;
    let (count, latest): (i64, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
    match latest {
        Some(latest) if count > 0 => {
            sqlx::query(
                "UPDATE threads SET reply_count = $2, latest_stream = $3 WHERE root_event_id = $1",
            )
            .bind(&root)
            .bind(count)
            .bind(latest)
            .execute(&mut **tx)
            .await?;
        }
        _ => {
            sqlx::query("DELETE FROM threads WHERE root_event_id = $1")
                .bind(&root)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// Whether `user` sent the root or a live reply of the thread: the SQL condition, with the
/// user as `$user` and the thread row as `t`.
fn participated(user: usize) -> String {
    format!(
        "(EXISTS (SELECT 1 FROM events x WHERE x.event_id = t.root_event_id AND x.sender = ${user})
          OR EXISTS (SELECT 1 FROM event_relations r JOIN events y ON y.event_id = r.event_id
                     WHERE r.relates_to = t.root_event_id AND r.rel_type = 'm.thread'
                       AND y.sender = ${user} AND y.redacted_by IS NULL))"
    )
}

fn thread_from_row(row: &sqlx::any::AnyRow) -> Result<ThreadRow> {
    Ok(ThreadRow {
        root_event_id: row.try_get(0)?,
        latest_event_id: row.try_get(1)?,
        latest_stream: row.try_get(2)?,
        reply_count: row.try_get(3)?,
        participated: row.try_get::<i64, _>(4)? != 0,
    })
}

impl Storage {
    /// Whether `room_id` has any thread (from memory once loaded).
    pub async fn room_has_threads(&self, room_id: &str) -> Result<bool> {
        if let Some(rooms) = self.threaded.rooms.lock().expect("threaded rooms").as_ref() {
            return Ok(rooms.contains(room_id));
        }
        let rooms: Vec<String> = sqlx::query_scalar("SELECT DISTINCT room_id FROM threads")
            .fetch_all(&self.pool)
            .await?;
        let mut guard = self.threaded.rooms.lock().expect("threaded rooms");
        let set = guard.get_or_insert_with(HashSet::new);
        set.extend(rooms);
        Ok(set.contains(room_id))
    }

    /// Called after a reply in `room_id` committed.
    pub(crate) fn thread_replied(&self, room_id: &str) {
        if let Some(rooms) = self.threaded.rooms.lock().expect("threaded rooms").as_mut() {
            rooms.insert(room_id.to_owned());
        }
    }

    /// The threads among `roots` (event IDs that may be thread roots), for `user`.
    pub async fn thread_summaries(
        &self,
        roots: &[&str],
        user: &str,
    ) -> Result<HashMap<String, ThreadRow>> {
        let mut out = HashMap::new();
        for chunk in roots.chunks(500) {
            let sql = format!(
                "SELECT t.root_event_id, e.event_id, t.latest_stream, t.reply_count,
                        CASE WHEN {} THEN 1 ELSE 0 END
                 FROM threads t JOIN events e ON e.stream_ordering = t.latest_stream
                 WHERE t.root_event_id IN ({})",
                participated(1),
                placeholders_from(2, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(user);
            for root in chunk {
                query = query.bind(*root);
            }
            for row in query.fetch_all(&self.pool).await? {
                let thread = thread_from_row(&row)?;
                out.insert(thread.root_event_id.clone(), thread);
            }
        }
        Ok(out)
    }

    /// A page of `room_id`'s threads by latest activity, newest first, before position
    /// `before` (exclusive); only those `user` took part in when `participated_only`.
    pub async fn room_threads(
        &self,
        room_id: &str,
        user: &str,
        participated_only: bool,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ThreadRow>> {
        let only = if participated_only {
            format!("AND {}", participated(2))
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT t.root_event_id, e.event_id, t.latest_stream, t.reply_count,
                    CASE WHEN {} THEN 1 ELSE 0 END
             FROM threads t JOIN events e ON e.stream_ordering = t.latest_stream
             WHERE t.room_id = $1 AND t.latest_stream < $3 {only}
             ORDER BY t.latest_stream DESC LIMIT $4",
            participated(2)
        );
        sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(room_id)
            .bind(user)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(thread_from_row)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_counts_each_root_once() {
        assert_eq!(
            aggregate(&[("$a", 5), ("$b", 6), ("$a", 7)]),
            [("$a", 7, 2), ("$b", 6, 1)]
        );
    }
}
