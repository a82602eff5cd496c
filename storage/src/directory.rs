//! The user directory: which local users a searcher may find, by the words of their user ID
//! and display name (migration 0017).
//!
//! A user is in `user_directory` from registration until deactivation, with their folded words
//! (`words.rs`) in `user_directory_words`. The index follows the account: registration, a new
//! display name and deactivation rewrite it in their own transaction. Whether the user is in a
//! public room (`in_public_room`) follows the rooms: the event transactions that change a
//! membership or a room's join rule or history visibility recompute it for the users
//! concerned (`refresh_public_flags`, called from `rooms.rs`). Start-up fills in what was there
//! before the migration ([`Storage::rooms_missing_directory_settings`],
//! [`Storage::backfill_user_directory`]).
//!
//! A search is one index range per source, read in (word, user ID) order and cut at the page:
//! the users in public rooms, the users who share a room with the searcher (or every user,
//! when the server says so).

use sqlx::{Any, AnyConnection, Row, Transaction};

use crate::{
    rooms::placeholders_from,
    words::{distinct_words, prefix_upper_bound},
    Result, Storage,
};

/// One user found by a directory search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub user_id: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

/// The condition under which a room's members are visible to every searcher: the room can be
/// joined by anyone or read by anyone (as Synapse counts "public" for the directory).
const PUBLIC_ROOM: &str = "(r.join_rule = 'public' OR r.history_visibility = 'world_readable')";

/// Rewrites `user_id`'s directory row and words for `displayname`, in `conn`'s transaction.
pub(crate) async fn index_user(
    conn: &mut AnyConnection,
    user_id: &str,
    displayname: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO user_directory (user_id, in_public_room) VALUES ($1, 0)
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM user_directory_words WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let mut words = distinct_words(user_id);
    words.extend(distinct_words(displayname.unwrap_or_default()));
    words.sort();
    words.dedup();
    if !words.is_empty() {
        let rows = (0..words.len())
            .map(|i| format!("(${}, $1, 0)", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO user_directory_words (word, user_id, in_public_room) VALUES {rows}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(user_id);
        for word in &words {
            query = query.bind(word.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    refresh_public_flags(conn, &[user_id]).await
}

/// Recomputes `in_public_room` of `users` (those not in the directory are skipped), in
/// `conn`'s transaction, after their memberships or their rooms' settings changed.
pub(crate) async fn refresh_public_flags(conn: &mut AnyConnection, users: &[&str]) -> Result<()> {
    for chunk in users.chunks(500) {
        let list = placeholders_from(1, chunk.len());
        let sql = format!(
            "UPDATE user_directory SET in_public_room = CASE WHEN EXISTS (
                 SELECT 1 FROM room_memberships m JOIN rooms r ON r.room_id = m.room_id
                 WHERE m.user_id = user_directory.user_id AND m.membership = 'join' AND {PUBLIC_ROOM}
             ) THEN 1 ELSE 0 END
             WHERE user_id IN ({list})"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for user in chunk {
            query = query.bind(*user);
        }
        query.execute(&mut *conn).await?;
        let sql = format!(
            "UPDATE user_directory_words SET in_public_room = (
                 SELECT d.in_public_room FROM user_directory d
                 WHERE d.user_id = user_directory_words.user_id)
             WHERE user_id IN ({list})"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for user in chunk {
            query = query.bind(*user);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// After a room's join rule or history visibility changed (copied onto its row): recomputes
/// the flags of everyone joined to it.
pub(crate) async fn refresh_room_members(
    tx: &mut Transaction<'static, Any>,
    room_id: &str,
) -> Result<()> {
    let members: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM room_memberships WHERE room_id = $1 AND membership = 'join'",
    )
    .bind(room_id)
    .fetch_all(&mut **tx)
    .await?;
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    refresh_public_flags(tx, &members).await
}

impl Storage {
    /// Rooms whose join rule and history visibility have not been copied onto their row yet
    /// (created before migration 0017); start-up copies them with
    /// [`Storage::set_room_directory_settings`].
    pub async fn rooms_missing_directory_settings(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT room_id FROM rooms WHERE directory_indexed = 0")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Copies a room's join rule and history visibility (as its current state has them) onto
    /// its row and recomputes its members' directory flags.
    pub async fn set_room_directory_settings(
        &self,
        room_id: &str,
        join_rule: Option<&str>,
        history_visibility: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE rooms SET join_rule = $2, history_visibility = $3, directory_indexed = 1
             WHERE room_id = $1",
        )
        .bind(room_id)
        .bind(join_rule)
        .bind(history_visibility)
        .execute(&mut *tx)
        .await?;
        refresh_room_members(&mut tx, room_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds the local users that are not in the directory (registered before migration 0017)
    /// and not deactivated; returns how many.
    pub async fn backfill_user_directory(&self) -> Result<usize> {
        let rows = sqlx::query(
            "SELECT u.user_id, p.displayname FROM users u
             LEFT JOIN profiles p ON p.user_id = u.user_id
             WHERE u.deactivated = 0
               AND NOT EXISTS (SELECT 1 FROM user_directory d WHERE d.user_id = u.user_id)",
        )
        .fetch_all(&self.pool)
        .await?;
        for chunk in rows.chunks(200) {
            let mut tx = self.begin_write().await?;
            for row in chunk {
                let user_id: String = row.try_get(0)?;
                let displayname: Option<String> = row.try_get(1)?;
                index_user(&mut tx, &user_id, displayname.as_deref()).await?;
            }
            tx.commit().await?;
        }
        Ok(rows.len())
    }

    /// Searches the directory for users every word of `term` is the start of a word of (of
    /// their user ID or display name), as `searcher` may see them: users in public rooms and
    /// users who share a room with the searcher, or every user when `all_users`. The searcher
    /// is never listed. Ordered by the first matching word, then user ID; returns at most
    /// `limit` users and whether there were more.
    pub async fn search_user_directory(
        &self,
        searcher: &str,
        term: &str,
        limit: usize,
        all_users: bool,
    ) -> Result<(Vec<DirectoryUser>, bool)> {
        let mut terms = distinct_words(term);
        if terms.is_empty() || limit == 0 {
            return Ok((Vec::new(), false));
        }
        // The longest word drives the range read (fewest matches, as a rule); the others are
        // checked per candidate.
        terms.sort_by_key(|t| std::cmp::Reverse(t.chars().count()));
        let sources: &[&str] = if all_users {
            &[""]
        } else {
            &[
                "AND w.in_public_room = 1",
                // The searcher's room-mates, found once from the searcher's rooms (a set the
                // planner hashes), rather than a join per candidate word.
                "AND w.user_id IN (SELECT b.user_id FROM room_memberships a
                                   JOIN room_memberships b ON b.room_id = a.room_id
                                   WHERE a.user_id = $3 AND a.membership = 'join'
                                     AND b.membership = 'join')",
            ]
        };
        let mut found: Vec<(String, String)> = Vec::new();
        for source in sources {
            found.extend(
                self.directory_source(searcher, &terms, source, limit + 1)
                    .await?,
            );
        }
        // The union in (first word, user ID) order, each user once.
        found.sort();
        let mut seen = std::collections::HashSet::new();
        let mut users: Vec<String> = found
            .into_iter()
            .filter_map(|(_, user)| seen.insert(user.clone()).then_some(user))
            .collect();
        let limited = users.len() > limit;
        users.truncate(limit);
        if users.is_empty() {
            return Ok((Vec::new(), limited));
        }
        let sql = format!(
            "SELECT user_id, displayname, avatar_url FROM profiles WHERE user_id IN ({})",
            placeholders_from(1, users.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for user in &users {
            query = query.bind(user.as_str());
        }
        let mut profiles: std::collections::HashMap<String, (Option<String>, Option<String>)> =
            std::collections::HashMap::new();
        for row in query.fetch_all(&self.pool).await? {
            profiles.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
        }
        let results = users
            .into_iter()
            .map(|user_id| {
                let (displayname, avatar_url) = profiles.remove(&user_id).unwrap_or_default();
                DirectoryUser {
                    user_id,
                    displayname,
                    avatar_url,
                }
            })
            .collect();
        Ok((results, limited))
    }

    /// The first `wanted` distinct users of one source, as `(first matching word, user ID)`
    /// in that order. A user can match on several words, so the read is repeated with a
    /// larger window until it has `wanted` distinct users or the range ends.
    async fn directory_source(
        &self,
        searcher: &str,
        terms: &[String],
        condition: &str,
        wanted: usize,
    ) -> Result<Vec<(String, String)>> {
        let mut others = String::new();
        let mut next = 5;
        for _ in &terms[1..] {
            others.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM user_directory_words o WHERE o.user_id = w.user_id
                                AND o.word >= ${} AND o.word < ${})",
                next,
                next + 1
            ));
            next += 2;
        }
        let sql = format!(
            "SELECT w.word, w.user_id FROM user_directory_words w
             WHERE w.word >= $1 AND w.word < $2 AND w.user_id <> $3 {condition}{others}
             ORDER BY w.word, w.user_id LIMIT $4"
        );
        let mut window = wanted * 2;
        loop {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(terms[0].as_str())
                .bind(prefix_upper_bound(&terms[0]))
                .bind(searcher)
                .bind(window as i64);
            for term in &terms[1..] {
                query = query.bind(term.as_str()).bind(prefix_upper_bound(term));
            }
            let rows = query.fetch_all(&self.pool).await?;
            let complete = rows.len() < window;
            let mut seen = std::collections::HashSet::new();
            let mut found = Vec::new();
            for row in rows {
                let (word, user): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                if seen.insert(user.clone()) {
                    found.push((word, user));
                }
            }
            if complete || found.len() >= wanted {
                found.truncate(wanted);
                return Ok(found);
            }
            window *= 4;
        }
    }
}
