//! State snapshots: the state of a room before and after each event, stored as delta lines
//! (migration 0007 has the tables and the reasoning).
//!
//! - Writing: a state event adds **one row** (`state_entries`), at the next position of the
//!   line its parent snapshot ends; a message adds nothing (it points at the snapshot it was
//!   placed on). The cost of a send never depends on the size of the room's state.
//! - One key at a snapshot ([`Storage::state_lookups`]): the newest entry of that key at or
//!   before the snapshot's position in its line, one index probe (per line, when the state
//!   was forked); many lookups go in one statement. This is what visibility and
//!   `prev_content` read, so `/messages` never loads a whole state.
//! - The whole state at a snapshot ([`Storage::load_snapshot`]): the newest checkpoint at or
//!   before it plus the deltas after that checkpoint. A checkpoint is written after commit by
//!   a background task ([`Storage::checkpoint`]) once the line has grown by at least
//!   twice the state's size since the last one, so a full read costs O(state size) rows and
//!   checkpoints cost at most half a row per state change.
//!
//! Snapshots never change once written, so the homeserver caches full states by ID.

use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use crate::{
    rooms::{placeholders, value_rows},
    Backend, Error, Result, StateMap, Storage,
};

/// A checkpoint is never due before this many deltas since the last one (tiny states would
/// otherwise be copied every few changes, for no gain).
const CHECKPOINT_MIN_GAP: i64 = 32;

/// Point lookups per statement in [`Storage::state_lookups`].
const LOOKUPS_PER_STATEMENT: usize = 50;

/// Where a snapshot lies: `(line, position, the snapshot the line was built on)`.
#[derive(Debug, Clone, Copy)]
struct Located {
    line: i64,
    pos: i64,
    parent: Option<i64>,
}

/// How many deltas a line must grow by before a checkpoint of a state of `size` entries.
fn checkpoint_gap(size: usize) -> i64 {
    (2 * i64::try_from(size).unwrap_or(i64::MAX / 4)).max(CHECKPOINT_MIN_GAP)
}

impl Storage {
    /// Allocates `n` new snapshot IDs (a line's ID is its first snapshot's).
    async fn new_snapshot_ids(
        &self,
        tx: &mut Transaction<'static, Any>,
        n: usize,
    ) -> Result<Vec<i64>> {
        let count = i64::try_from(n).map_err(|_| Error::Corrupt("batch too large".into()))?;
        match self.backend {
            Backend::Postgres => {
                let mut ids: Vec<i64> = sqlx::query(
                    "SELECT nextval('state_snapshot_ids') AS id FROM generate_series(1, $1::bigint)",
                )
                .bind(count)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|row| row.try_get("id"))
                .collect::<std::result::Result<_, _>>()?;
                ids.sort_unstable();
                Ok(ids)
            }
            Backend::Sqlite => {
                // BEGIN IMMEDIATE holds the write lock, so nobody else takes these.
                let last: i64 =
                    sqlx::query("SELECT coalesce(max(snapshot_id), 0) AS id FROM state_entries")
                        .fetch_one(&mut **tx)
                        .await?
                        .try_get("id")?;
                Ok((last + 1..=last + count).collect())
            }
        }
    }

    async fn start_line(
        &self,
        tx: &mut Transaction<'static, Any>,
        line: i64,
        room_id: &str,
        parent: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO state_lines (line_id, room_id, parent_snapshot, checkpoint_pos, next_check)
             VALUES ($1, $2, $3, -1, $4)",
        )
        .bind(line)
        .bind(room_id)
        .bind(parent)
        .bind(CHECKPOINT_MIN_GAP)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Writes one snapshot per change, each built on the one before, the first on `base`
    /// (`None`: the empty state, a room's create event). Returns the new snapshot IDs in
    /// order, and the last one if a checkpoint of its line is due (to run after commit, see
    /// [`Self::spawn_checkpoint`]).
    ///
    /// Cost: one lookup of `base`, one ID allocation and one multi-row insert, whatever the
    /// size of the state.
    pub(crate) async fn write_state_changes(
        &self,
        tx: &mut Transaction<'static, Any>,
        room_id: &str,
        base: Option<i64>,
        changes: &[(&str, &str, &str)],
    ) -> Result<(Vec<i64>, Option<i64>)> {
        if changes.is_empty() {
            return Ok((Vec::new(), None));
        }
        let ids = self.new_snapshot_ids(tx, changes.len()).await?;
        // Where the first change goes: after `base` in its line if `base` is that line's tip,
        // else (a fork, or no base) at the start of a new line.
        let tip = match base {
            Some(base) => {
                let row = sqlx::query(
                    "SELECT s.line_id, s.line_pos, l.next_check,
                            CASE WHEN EXISTS (SELECT 1 FROM state_entries n
                                              WHERE n.line_id = s.line_id AND n.line_pos = s.line_pos + 1)
                                 THEN 1 ELSE 0 END AS forked
                     FROM state_entries s JOIN state_lines l ON l.line_id = s.line_id
                     WHERE s.snapshot_id = $1 LIMIT 1",
                )
                .bind(base)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| Error::Corrupt(format!("missing state snapshot {base}")))?;
                let forked: i64 = row.try_get("forked")?;
                (forked == 0).then(|| -> Result<(i64, i64, i64)> {
                    Ok((
                        row.try_get("line_id")?,
                        row.try_get("line_pos")?,
                        row.try_get("next_check")?,
                    ))
                })
            }
            None => None,
        }
        .transpose()?;
        let (line, mut pos, next_check) = match tip {
            Some(tip) => tip,
            None => {
                self.start_line(tx, ids[0], room_id, base).await?;
                (ids[0], -1, CHECKPOINT_MIN_GAP)
            }
        };
        let rows: Vec<(i64, i64, &str, &str, &str)> = ids
            .iter()
            .zip(changes)
            .map(|(&id, &(t, k, e))| {
                pos += 1;
                (id, pos, t, k, e)
            })
            .collect();
        for chunk in rows.chunks(100) {
            let sql = format!(
                "INSERT INTO state_entries (snapshot_id, line_id, line_pos, event_type, state_key, event_id) VALUES {}",
                value_rows(chunk.len(), 6)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for &(id, pos, t, k, e) in chunk {
                query = query.bind(id).bind(line).bind(pos).bind(t).bind(k).bind(e);
            }
            query.execute(&mut **tx).await?;
        }
        let due = if pos >= next_check {
            // Not again until the background task has looked (it sets the real next check).
            sqlx::query("UPDATE state_lines SET next_check = $2 WHERE line_id = $1")
                .bind(line)
                .bind(pos + CHECKPOINT_MIN_GAP)
                .execute(&mut **tx)
                .await?;
            ids.last().copied()
        } else {
            None
        };
        Ok((ids, due))
    }

    /// Runs [`Self::checkpoint`] for `snapshot` on a background task: it reads the whole
    /// state, which a send must never wait for.
    pub(crate) fn spawn_checkpoint(&self, snapshot: i64) {
        let storage = self.clone();
        tokio::spawn(async move {
            if let Err(e) = storage.checkpoint(snapshot).await {
                tracing::warn!(snapshot, error = %e, "writing a state checkpoint failed");
            }
        });
    }

    /// Writes a full copy of the state at `snapshot` if its line has grown by at least
    /// [`checkpoint_gap`] of that state since the previous copy, and sets when to look again.
    /// Returns whether it wrote one. Safe to run twice at once (the copy is idempotent).
    pub async fn checkpoint(&self, snapshot: i64) -> Result<bool> {
        let at = self
            .locate(&[snapshot])
            .await?
            .remove(&snapshot)
            .ok_or_else(|| Error::Corrupt(format!("missing state snapshot {snapshot}")))?;
        let state = self.load_snapshot(snapshot).await?;
        let gap = checkpoint_gap(state.len());
        let mut tx = self.begin_write().await?;
        let row =
            sqlx::query("SELECT checkpoint_pos, next_check FROM state_lines WHERE line_id = $1")
                .bind(at.line)
                .fetch_one(&mut *tx)
                .await?;
        let last: i64 = row.try_get("checkpoint_pos")?;
        let next_check: i64 = row.try_get("next_check")?;
        let due = at.pos - last >= gap;
        if due {
            let entries: Vec<_> = state.iter().collect();
            for chunk in entries.chunks(100) {
                let sql = format!(
                    "INSERT INTO state_checkpoints (line_id, line_pos, event_type, state_key, event_id)
                     VALUES {} ON CONFLICT DO NOTHING",
                    value_rows(chunk.len(), 5)
                );
                let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
                for ((t, k), e) in chunk {
                    query = query.bind(at.line).bind(at.pos).bind(t).bind(k).bind(e);
                }
                query.execute(&mut *tx).await?;
            }
        }
        // State only grows (keys are never removed), so the next copy cannot be due before
        // the line has grown by `gap` past the newest copy.
        let newest = if due { at.pos.max(last) } else { last };
        sqlx::query(
            "UPDATE state_lines SET checkpoint_pos = $2, next_check = $3 WHERE line_id = $1",
        )
        .bind(at.line)
        .bind(newest)
        .bind(next_check.max(newest + gap))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(due)
    }

    /// Where each of `snapshots` lies; unknown ones are left out.
    async fn locate(&self, snapshots: &[i64]) -> Result<std::collections::HashMap<i64, Located>> {
        let mut out = std::collections::HashMap::new();
        for chunk in snapshots.chunks(100) {
            let sql = format!(
                "SELECT DISTINCT s.snapshot_id, s.line_id, s.line_pos, l.parent_snapshot
                 FROM state_entries s JOIN state_lines l ON l.line_id = s.line_id
                 WHERE s.snapshot_id IN ({})",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.insert(
                    row.try_get("snapshot_id")?,
                    Located {
                        line: row.try_get("line_id")?,
                        pos: row.try_get("line_pos")?,
                        parent: row.try_get("parent_snapshot")?,
                    },
                );
            }
        }
        Ok(out)
    }

    /// The full state of a snapshot: per line, the newest checkpoint at or before it plus
    /// the deltas after it (nearer entries win); without a checkpoint, the line's deltas over
    /// the state it was built on.
    pub async fn load_snapshot(&self, snapshot_id: i64) -> Result<StateMap> {
        let mut state = StateMap::new();
        let mut next = Some(snapshot_id);
        while let Some(id) = next {
            let row = sqlx::query(
                "SELECT s.line_id, s.line_pos, l.parent_snapshot,
                        (SELECT max(c.line_pos) FROM state_checkpoints c
                         WHERE c.line_id = s.line_id AND c.line_pos <= s.line_pos) AS checkpoint
                 FROM state_entries s JOIN state_lines l ON l.line_id = s.line_id
                 WHERE s.snapshot_id = $1 LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("missing state snapshot {id}")))?;
            let line: i64 = row.try_get("line_id")?;
            let pos: i64 = row.try_get("line_pos")?;
            let checkpoint: Option<i64> = row.try_get("checkpoint")?;
            // Deltas newest first, then the checkpoint: `or_insert` keeps the nearest.
            let rows = sqlx::query(
                "SELECT 0 AS src, line_pos, event_type, state_key, event_id FROM state_entries
                 WHERE line_id = $1 AND line_pos > $2 AND line_pos <= $3
                 UNION ALL
                 SELECT 1 AS src, line_pos, event_type, state_key, event_id FROM state_checkpoints
                 WHERE line_id = $1 AND line_pos = $2",
            )
            .bind(line)
            .bind(checkpoint.unwrap_or(-1))
            .bind(pos)
            .fetch_all(&self.pool)
            .await?;
            let mut rows = rows
                .iter()
                .map(|row| {
                    Ok((
                        row.try_get::<i64, _>("src")?,
                        row.try_get::<i64, _>("line_pos")?,
                        (row.try_get("event_type")?, row.try_get("state_key")?),
                        row.try_get::<String, _>("event_id")?,
                    ))
                })
                .collect::<Result<Vec<(i64, i64, (String, String), String)>>>()?;
            rows.sort_by_key(|(src, pos, _, _)| (*src, std::cmp::Reverse(*pos)));
            for (_, _, key, event_id) in rows {
                state.entry(key).or_insert(event_id);
            }
            next = match checkpoint {
                Some(_) => None,
                None => row.try_get("parent_snapshot")?,
            };
        }
        Ok(state)
    }

    /// The event of each `(snapshot, event type, state key)` in that snapshot's state, in the
    /// same order (`None`: not set). Each is one index probe per line, up to
    /// [`LOOKUPS_PER_STATEMENT`] to a statement; no whole state is read.
    pub async fn state_lookups(
        &self,
        requests: &[(i64, String, String)],
    ) -> Result<Vec<Option<String>>> {
        let mut out: Vec<Option<String>> = vec![None; requests.len()];
        // (request index, snapshot to look in)
        let mut pending: Vec<(usize, i64)> = requests
            .iter()
            .enumerate()
            .map(|(i, (snapshot, _, _))| (i, *snapshot))
            .collect();
        let mut located: std::collections::HashMap<i64, Located> = std::collections::HashMap::new();
        while !pending.is_empty() {
            let mut unknown: Vec<i64> = pending
                .iter()
                .map(|(_, s)| *s)
                .filter(|s| !located.contains_key(s))
                .collect();
            unknown.sort_unstable();
            unknown.dedup();
            located.extend(self.locate(&unknown).await?);
            let mut not_found = Vec::new();
            for chunk in pending.chunks(LOOKUPS_PER_STATEMENT) {
                let mut arms = Vec::with_capacity(chunk.len());
                let mut asked = Vec::with_capacity(chunk.len());
                for &(i, snapshot) in chunk {
                    let at = located.get(&snapshot).ok_or_else(|| {
                        Error::Corrupt(format!("missing state snapshot {snapshot}"))
                    })?;
                    let p = asked.len() * 5;
                    arms.push(format!(
                        "SELECT * FROM (SELECT CAST(${} AS BIGINT) AS i, event_id FROM state_entries
                         WHERE line_id = ${} AND event_type = ${} AND state_key = ${} AND line_pos <= ${}
                         ORDER BY line_pos DESC LIMIT 1) AS q{}",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        asked.len()
                    ));
                    asked.push((i, *at));
                }
                let sql = arms.join(" UNION ALL ");
                let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
                for &(i, at) in &asked {
                    let (_, t, k) = &requests[i];
                    query = query
                        .bind(i as i64)
                        .bind(at.line)
                        .bind(t.as_str())
                        .bind(k.as_str())
                        .bind(at.pos);
                }
                let mut found = vec![false; requests.len()];
                for row in query.fetch_all(&self.pool).await? {
                    let i: i64 = row.try_get("i")?;
                    let i = usize::try_from(i).map_err(|_| Error::Corrupt("bad index".into()))?;
                    out[i] = Some(row.try_get("event_id")?);
                    found[i] = true;
                }
                // Not set in this line: look in the state the line was built on.
                for (i, at) in asked {
                    if let (false, Some(parent)) = (found[i], at.parent) {
                        not_found.push((i, parent));
                    }
                }
            }
            pending = not_found;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_storage() -> (std::path::PathBuf, Storage) {
        let dir = std::env::temp_dir().join(format!(
            "myelin-state-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let storage = Storage::connect(&Storage::sqlite_url_in(&dir))
            .await
            .unwrap();
        (dir, storage)
    }

    /// A tiny deterministic generator, so the fixture is the same on every run.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    async fn write(
        storage: &Storage,
        base: Option<i64>,
        changes: &[(String, String, String)],
    ) -> Vec<i64> {
        let mut tx = storage.begin_write().await.unwrap();
        let borrowed: Vec<(&str, &str, &str)> = changes
            .iter()
            .map(|(t, k, e)| (t.as_str(), k.as_str(), e.as_str()))
            .collect();
        let (ids, _) = storage
            .write_state_changes(&mut tx, "!r:x", base, &borrowed)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        ids
    }

    /// Fixture: 600 changes over 40 keys, mostly extending the tip, sometimes forking from
    /// an older snapshot, with checkpoints forced along the way. At every snapshot the full
    /// read and every point lookup equal the naive fold of the deltas from the start.
    #[tokio::test]
    async fn reading_any_snapshot_equals_the_fold_of_its_deltas() {
        let (dir, storage) = temp_storage().await;
        let mut rng = Lcg(7);
        // snapshot → the naive state (folded in memory)
        let mut naive: Vec<(i64, StateMap)> = Vec::new();
        let mut tip: Option<(i64, StateMap)> = None;
        for n in 0..600u64 {
            // One in 25 builds on a random earlier snapshot (a fork).
            let (base, mut state) = match (&tip, rng.next(25)) {
                (Some(_), 0) if !naive.is_empty() => {
                    let (id, s) = &naive[rng.next(naive.len() as u64) as usize];
                    (Some(*id), s.clone())
                }
                (Some((id, s)), _) => (Some(*id), s.clone()),
                (None, _) => (None, StateMap::new()),
            };
            // Batches of one to three chained changes, like a group commit.
            let batch: Vec<(String, String, String)> = (0..1 + rng.next(3))
                .map(|j| {
                    let key = rng.next(40);
                    (
                        format!("t{}", key % 3),
                        format!("k{key}"),
                        format!("$e{n}_{j}"),
                    )
                })
                .collect();
            let ids = write(&storage, base, &batch).await;
            for (id, (t, k, e)) in ids.iter().zip(&batch) {
                state.insert((t.clone(), k.clone()), e.clone());
                naive.push((*id, state.clone()));
            }
            tip = Some((*ids.last().unwrap(), state));
            if n % 37 == 0 {
                storage.checkpoint(tip.as_ref().unwrap().0).await.unwrap();
            }
        }
        for (id, expected) in naive.iter().step_by(7) {
            assert_eq!(
                &storage.load_snapshot(*id).await.unwrap(),
                expected,
                "snapshot {id}"
            );
        }
        // Point lookups, set and unset keys, across many snapshots in one call.
        let mut requests = Vec::new();
        let mut expected = Vec::new();
        for (id, state) in naive.iter().step_by(3) {
            let key = rng.next(45);
            let (t, k) = (format!("t{}", key % 3), format!("k{key}"));
            expected.push(state.get(&(t.clone(), k.clone())).cloned());
            requests.push((*id, t, k));
        }
        assert_eq!(storage.state_lookups(&requests).await.unwrap(), expected);
        storage.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Storage grows with the number of changes, not with state size x changes: a state of
    /// 2,000 entries changed 4,000 more times costs at most two rows per change.
    #[tokio::test]
    async fn storage_is_linear_in_state_changes() {
        let (dir, storage) = temp_storage().await;
        let mut base = None;
        let mut changes = 0usize;
        for round in 0..60 {
            let batch: Vec<(String, String, String)> = (0..100)
                .map(|i| {
                    let key = if round < 20 {
                        round * 100 + i
                    } else {
                        (round * 37 + i) % 2000
                    };
                    (
                        "m.bench".to_owned(),
                        format!("k{key}"),
                        format!("$e{round}_{i}"),
                    )
                })
                .collect();
            let ids = write(&storage, base, &batch).await;
            changes += ids.len();
            base = ids.last().copied();
            storage.checkpoint(base.unwrap()).await.unwrap();
        }
        let count = |table: &'static str| {
            let storage = storage.clone();
            async move {
                let sql = format!("SELECT count(*) AS n FROM {table}");
                sqlx::query(AssertSqlSafe(sql))
                    .fetch_one(&storage.pool)
                    .await
                    .unwrap()
                    .try_get::<i64, _>("n")
                    .unwrap() as usize
            }
        };
        let entries = count("state_entries").await;
        let checkpoints = count("state_checkpoints").await;
        assert_eq!(entries, changes, "one row per change");
        assert!(checkpoints > 0, "a long line gets a checkpoint");
        assert!(
            entries + checkpoints <= 2 * changes,
            "{entries} + {checkpoints} rows for {changes} changes"
        );
        assert_eq!(
            storage.load_snapshot(base.unwrap()).await.unwrap().len(),
            2000
        );
        storage.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
