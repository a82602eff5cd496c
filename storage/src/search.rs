//! Message search: the index of events' searchable text and the queries over it (migration
//! 0018).
//!
//! The write pipeline stores each searchable event's folded words (`words.rs`) in
//! `event_search` in the event's own transaction, and a redaction deletes them in its own, so
//! search never finds an event that is not stored or whose text is gone. PostgreSQL finds
//! matches through a GIN-indexed tsvector, SQLite through an FTS5 table; both rank from the
//! stored words with the same integer formula (see the migration), so the two engines return
//! the same events in the same order. Which events are searchable, and who may see a match,
//! is the homeserver's business.

use std::collections::HashMap;

use sqlx::{Any, AnyConnection, AssertSqlSafe, Row, Transaction};

use crate::{rooms::placeholders_from, words::words, Backend, Result, Storage};

/// An event's searchable text, folded for the index.
#[derive(Debug, Clone)]
pub(crate) struct IndexedText {
    pub key: String,
    pub word_count: i64,
    /// ` w1 w2 … ` (see the migration).
    pub words: String,
}

impl IndexedText {
    /// `None` when `text` has no words (nothing could ever match it).
    pub(crate) fn new(key: &str, text: &str) -> Option<IndexedText> {
        let words = words(text);
        if words.is_empty() {
            return None;
        }
        Some(IndexedText {
            key: key.to_owned(),
            word_count: words.len() as i64,
            words: format!(" {} ", words.join(" ")),
        })
    }
}

/// The value PostgreSQL stores in `vector`: the words as lexemes, no parser involved; `{w}`
/// is the parameter of the words. (Rows indexed before migration 0021 also hold the room ID
/// as a lexeme; nothing queries it.)
fn pg_vector(words: usize) -> String {
    format!("array_to_tsvector(string_to_array(btrim(CAST(${words} AS TEXT)), ' '))")
}

/// Inserts the index rows of `rows` (`(event ID, stream position, state snapshot, text)`)
/// of `room_id`.
pub(crate) async fn insert_rows(
    conn: &mut AnyConnection,
    backend: Backend,
    room_id: &str,
    rows: &[(&str, i64, Option<i64>, &IndexedText)],
) -> Result<()> {
    for chunk in rows.chunks(500) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| row_values(backend, 1 + COLUMNS * i))
            .collect();
        let vector = if backend == Backend::Postgres {
            ", vector"
        } else {
            ""
        };
        let sql = format!(
            "INSERT INTO event_search (stream_ordering, event_id, room_id, search_key, word_count,
                                       words, snapshot{vector})
             VALUES {} ON CONFLICT (stream_ordering) DO NOTHING",
            values.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
        for (event_id, stream, snapshot, text) in chunk {
            query = query
                .bind(*stream)
                .bind(*event_id)
                .bind(room_id)
                .bind(text.key.as_str())
                .bind(text.word_count)
                .bind(text.words.as_str())
                .bind(*snapshot);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Parameters per index row: stream, event, room, key, word count, words, snapshot.
const COLUMNS: usize = 7;

/// One row's `VALUES` tuple, parameters from `$p` in [`COLUMNS`] order (PostgreSQL adds the
/// vector made of the words).
fn row_values(backend: Backend, p: usize) -> String {
    let params: Vec<String> = (p..p + COLUMNS).map(|i| format!("${i}")).collect();
    match backend {
        Backend::Postgres => format!("({}, {})", params.join(", "), pg_vector(p + 5)),
        Backend::Sqlite => format!("({})", params.join(", ")),
    }
}

/// The CTE that inserts index rows inside the single statement of
/// `persist_plain_messages` (PostgreSQL), with its parameters from `$first` in the order of
/// [`insert_rows`]; returns the SQL and the number of parameters it takes.
pub(crate) fn insert_cte(first: usize, rows: usize) -> (String, usize) {
    let values: Vec<String> = (0..rows)
        .map(|i| row_values(Backend::Postgres, first + COLUMNS * i))
        .collect();
    (
        format!(
            ", se AS (INSERT INTO event_search (stream_ordering, event_id, room_id, search_key,
                                               word_count, words, snapshot, vector)
                      VALUES {})",
            values.join(", ")
        ),
        rows * COLUMNS,
    )
}

/// Deletes the index row of a redacted event, in the redaction's transaction.
pub(crate) async fn delete_row(tx: &mut Transaction<'static, Any>, event_id: &str) -> Result<()> {
    // Through the event's stream position: event_search has no index on event_id.
    sqlx::query(
        "DELETE FROM event_search
         WHERE stream_ordering = (SELECT stream_ordering FROM events WHERE event_id = $1)",
    )
    .bind(event_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An older event's searchable text, for [`Storage::index_backfilled`].
#[derive(Debug, Clone)]
pub struct TextToIndex {
    pub event_id: String,
    pub room_id: String,
    pub stream_ordering: i64,
    /// The state the event was sent on.
    pub snapshot: Option<i64>,
    pub key: &'static str,
    pub text: String,
}

/// How many events each room has indexed, and up to which stream position they were
/// counted: `(count, position)` (-1: not counted yet). Per process and approximate (a
/// redaction's deleted row or the start-up indexing of old events below a room's position
/// are not seen): it only scales estimates. Several processes each keep their own, read
/// from the shared table.
#[derive(Debug, Default)]
pub(crate) struct RoomSizes(std::sync::Mutex<HashMap<String, (i64, i64)>>);

/// One matching event, with what deciding who may see it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchMatch {
    pub event_id: String,
    pub stream_ordering: i64,
    /// Matching words per million words of the text (see the migration).
    pub rank: i64,
    pub room_id: String,
    /// The state snapshot the event was sent on.
    pub snapshot: Option<i64>,
    /// The event's sender and type, when asked for (`""` otherwise).
    pub sender: String,
    pub event_type: String,
}

/// A search: every one of `terms` (folded words) must start a word of the text.
#[derive(Debug, Clone, Copy)]
pub struct SearchQuery<'a> {
    pub terms: &'a [String],
    /// The rooms searched (an empty list finds nothing).
    pub rooms: &'a [String],
    /// `content.body`, `content.name`, `content.topic`; empty: all.
    pub keys: &'a [&'a str],
}

impl SearchQuery<'_> {
    /// `(FROM … WHERE …, parameters)` of the matches; parameters from `$1`.
    ///
    /// On PostgreSQL the tsquery is written into the statement rather than bound: with a
    /// parameter the planner would plan for any query (and could pick a scan of the whole
    /// table after a few executions); with the text it sees how rare the words are, and
    /// walks the stream backwards for a common word but goes through the text index for a
    /// rare one. Words are letters and digits only, so the text is safe to inline. The rooms
    /// are a plain `IN` list: the room lexemes migration 0018 put into `vector` are not
    /// queried, since an OR of a hundred of them cost more than the words they narrowed.
    fn filter(&self, backend: Backend) -> (String, Vec<String>) {
        let mut params = Vec::new();
        let matcher = match backend {
            Backend::Postgres => {
                let words = self
                    .terms
                    .iter()
                    .map(|t| format!("{}:*", tsquery_quote(t)))
                    .collect::<Vec<_>>()
                    .join(" & ");
                format!("s.vector @@ CAST({} AS tsquery)", sql_quote(&words))
            }
            Backend::Sqlite => {
                params.push(
                    self.terms
                        .iter()
                        .map(|t| format!("\"{t}\"*"))
                        .collect::<Vec<_>>()
                        .join(" AND "),
                );
                "s.stream_ordering IN (SELECT rowid FROM event_search_fts WHERE event_search_fts MATCH $1)"
                    .to_owned()
            }
        };
        let rooms = placeholders_from(params.len() + 1, self.rooms.len());
        params.extend(self.rooms.iter().cloned());
        let mut sql = format!("FROM event_search s WHERE {matcher} AND s.room_id IN ({rooms})");
        if !self.keys.is_empty() {
            let keys = placeholders_from(params.len() + 1, self.keys.len());
            params.extend(self.keys.iter().map(|k| (*k).to_owned()));
            sql.push_str(&format!(" AND s.search_key IN ({keys})"));
        }
        (sql, params)
    }

    fn is_empty(&self) -> bool {
        self.terms.is_empty() || self.rooms.is_empty()
    }
}

impl Storage {
    /// The newest matches of `query` below stream position `below` (all when `None`), at
    /// most `limit`, newest first; with each event's sender and type when
    /// `with_sender_and_type`.
    ///
    /// Everything a search answers is read through such windows: pages by recency walk them
    /// down, pages by rank sort each window by rank (see the homeserver's search), and the
    /// count comes from the first one. A window costs about `limit` matches whatever the
    /// word: a common word is found walking the stream backwards (the planner stops after
    /// `limit`), a rare one through the text index.
    pub async fn search_window(
        &self,
        query: SearchQuery<'_>,
        below: Option<i64>,
        limit: usize,
        with_sender_and_type: bool,
    ) -> Result<Vec<SearchMatch>> {
        if query.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let (mut filter, params) = query.filter(self.backend);
        let mut next = params.len() + 1;
        // Words starting with each term: (length - length without ' term') / length(' term').
        let mut occurrences = Vec::new();
        for _ in query.terms {
            occurrences.push(format!(
                "(length(s.words) - length(replace(s.words, ${}, ''))) / ${}",
                next,
                next + 1
            ));
            next += 2;
        }
        let rank = format!("(({}) * 1000000) / s.word_count", occurrences.join(" + "));
        if below.is_some() {
            filter.push_str(&format!(" AND s.stream_ordering < ${next}"));
        }
        let limit_param = next + usize::from(below.is_some());
        let window = format!(
            "SELECT s.event_id, s.stream_ordering, {rank} AS rank, s.room_id, s.snapshot
             {filter} ORDER BY s.stream_ordering DESC LIMIT ${limit_param}"
        );
        // The join comes after the window, so it costs `limit` look-ups at most.
        let sql = if with_sender_and_type {
            format!(
                "SELECT w.*, e.sender, e.event_type FROM ({window}) w
                 JOIN events e ON e.event_id = w.event_id ORDER BY w.stream_ordering DESC"
            )
        } else {
            format!("SELECT w.*, '' AS sender, '' AS event_type FROM ({window}) w ORDER BY w.stream_ordering DESC")
        };
        // Each statement's text is new on PostgreSQL (see `filter`): not worth preparing.
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str())).persistent(false);
        for param in &params {
            q = q.bind(param.as_str());
        }
        for term in query.terms {
            q = q
                .bind(format!(" {term}"))
                .bind(term.chars().count() as i64 + 1);
        }
        if let Some(below) = below {
            q = q.bind(below);
        }
        q = q.bind(limit as i64);
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(SearchMatch {
                    event_id: row.try_get(0)?,
                    stream_ordering: row.try_get(1)?,
                    rank: row.try_get(2)?,
                    room_id: row.try_get(3)?,
                    snapshot: row.try_get(4)?,
                    sender: row.try_get(5)?,
                    event_type: row.try_get(6)?,
                })
            })
            .collect()
    }

    /// How many events of `rooms` are indexed: counted once per room and then kept up to
    /// date by counting only rows past the position of the last count (see [`RoomSizes`]),
    /// so a search can estimate how many matches a common word has without reading them.
    pub async fn search_room_sizes(&self, rooms: &[String]) -> Result<i64> {
        let now = self.safe_stream_position();
        // Rooms to bring up to date, by the position they were counted to.
        let mut stale: HashMap<i64, Vec<String>> = HashMap::new();
        {
            let sizes = self.search_sizes.0.lock().expect("not poisoned");
            for room in rooms {
                let upto = sizes.get(room).map_or(-1, |&(_, upto)| upto);
                if upto < now {
                    stale.entry(upto).or_default().push(room.clone());
                }
            }
        }
        for (upto, rooms) in stale {
            for chunk in rooms.chunks(500) {
                let sql = format!(
                    "SELECT room_id, COUNT(*) FROM event_search
                     WHERE room_id IN ({}) AND stream_ordering > $1 AND stream_ordering <= $2
                     GROUP BY room_id",
                    placeholders_from(3, chunk.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(sql.as_str()))
                    .persistent(false)
                    .bind(upto)
                    .bind(now);
                for room in chunk {
                    q = q.bind(room.as_str());
                }
                let mut found: HashMap<String, i64> = HashMap::new();
                for row in q.fetch_all(&self.pool).await? {
                    found.insert(row.try_get(0)?, row.try_get(1)?);
                }
                let mut sizes = self.search_sizes.0.lock().expect("not poisoned");
                for room in chunk {
                    let entry = sizes.entry(room.clone()).or_insert((0, -1));
                    // Another request may have counted the same rows meanwhile.
                    if entry.1 == upto {
                        *entry = (entry.0 + found.get(room).copied().unwrap_or(0), now);
                    }
                }
            }
        }
        let sizes = self.search_sizes.0.lock().expect("not poisoned");
        Ok(rooms
            .iter()
            .filter_map(|room| sizes.get(room))
            .map(|&(count, _)| count)
            .sum())
    }

    /// How many events of `rooms` are indexed at or above stream position `from`.
    pub async fn search_rooms_events_since(&self, rooms: &[String], from: i64) -> Result<i64> {
        if rooms.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "SELECT COUNT(*) FROM event_search WHERE room_id IN ({}) AND stream_ordering >= $1",
            placeholders_from(2, rooms.len())
        );
        let mut q = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
            .persistent(false)
            .bind(from);
        for room in rooms {
            q = q.bind(room.as_str());
        }
        Ok(q.fetch_one(&self.pool).await?)
    }

    /// Where the start-up indexing of events older than migration 0018 stands: events at or
    /// below this position may be unindexed (0: none are).
    pub async fn search_backfill_position(&self) -> Result<i64> {
        let up_to: Option<i64> = sqlx::query_scalar("SELECT up_to FROM event_search_backfill")
            .fetch_optional(&self.pool)
            .await?;
        Ok(up_to.unwrap_or(0))
    }

    /// The next events to index at start-up: up to `limit` unredacted, unrejected events of
    /// `types` at or below `up_to`, newest first.
    pub async fn events_to_index(
        &self,
        up_to: i64,
        types: &[&str],
        limit: usize,
    ) -> Result<Vec<crate::EventRow>> {
        let sql = format!(
            "SELECT {} FROM events
             WHERE stream_ordering <= $1 AND stream_ordering IS NOT NULL AND outlier = 0
               AND rejected_reason IS NULL AND redacted_by IS NULL
               AND event_type IN ({})
             ORDER BY stream_ordering DESC LIMIT $2",
            crate::rooms::EVENT_COLUMNS,
            placeholders_from(3, types.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(up_to)
            .bind(limit as i64);
        for t in types {
            q = q.bind(*t);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(crate::rooms::event_from_row)
            .collect()
    }

    /// Indexes `texts` found by
    /// [`Storage::events_to_index`] and moves the start-up indexing down to `up_to`, in one
    /// transaction. Events redacted meanwhile are skipped.
    pub async fn index_backfilled(&self, texts: &[TextToIndex], up_to: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for TextToIndex {
            event_id,
            room_id,
            stream_ordering: stream,
            snapshot,
            key,
            text,
        } in texts
        {
            let redacted: Option<Option<String>> =
                sqlx::query_scalar("SELECT redacted_by FROM events WHERE event_id = $1")
                    .bind(event_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if !matches!(redacted, Some(None)) {
                continue;
            }
            if let Some(indexed) = IndexedText::new(key, text) {
                insert_rows(
                    &mut tx,
                    self.backend,
                    room_id,
                    &[(event_id.as_str(), *stream, *snapshot, &indexed)],
                )
                .await?;
            }
        }
        sqlx::query("UPDATE event_search_backfill SET up_to = $1")
            .bind(up_to)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A tsquery lexeme in single quotes (a quote or backslash inside is escaped).
fn tsquery_quote(lexeme: &str) -> String {
    format!("'{}'", lexeme.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An SQL string literal.
fn sql_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(tsquery_quote("!a'b\\c:x"), "'!a\\'b\\\\c:x'");
        assert_eq!(sql_quote("it's"), "'it''s'");
    }

    #[test]
    fn indexed_text_is_spaced_folded_words() {
        let text = IndexedText::new("content.body", "Hello, Wörld! hello").unwrap();
        assert_eq!(text.words, " hello world hello ");
        assert_eq!(text.word_count, 3);
        assert!(IndexedText::new("content.body", " ?! ").is_none());
    }
}
