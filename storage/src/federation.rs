//! Rooms shared with other servers (migration 0023): events held without a place in the
//! timeline (outliers: the state and auth chain a join brought), how far each destination has
//! been sent, and the transactions received (for idempotency). What to send and whether a
//! peer's event is allowed are the homeserver's.

use sqlx::{AssertSqlSafe, Row};

use crate::{
    pdu_form,
    rooms::{event_from_row, placeholders_from, EventRow, EVENT_COLUMNS},
    Backend, Result, Storage,
};

/// A room a server may be sent events of, and its users joined at the position asked about
/// (see [`Storage::rooms_with_server`]).
#[derive(Debug, Clone)]
pub struct ServerInRoom {
    pub room_id: String,
    pub joined: Vec<String>,
}

/// `content.membership` of a member event's PDU (`None`: not readable).
pub fn membership_of(pdu: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Member {
        content: Content,
    }
    #[derive(serde::Deserialize)]
    struct Content {
        membership: String,
    }
    serde_json::from_str::<Member>(pdu)
        .ok()
        .map(|m| m.content.membership)
}

/// An event stored as an outlier: held for authorization and state, never in a timeline.
#[derive(Debug, Clone, Copy)]
pub struct Outlier<'a> {
    pub event_id: &'a str,
    pub depth: i64,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub sender: &'a str,
    pub origin_server_ts: i64,
    pub pdu: &'a str,
}

/// A destination and how far it has been sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub destination: String,
    pub stream_position: i64,
    pub failures: i64,
    pub retry_at: Option<i64>,
}

/// Inserts `event` of `room_id` as an outlier (no stream position), unless it is held.
async fn insert_outlier(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    room_id: &str,
    event: &Outlier<'_>,
) -> Result<()> {
    let stored = pdu_form::strip(
        event.pdu,
        pdu_form::Columns {
            room_id,
            sender: event.sender,
            event_type: event.event_type,
            origin_server_ts: event.origin_server_ts,
            depth: event.depth,
        },
    )?;
    sqlx::query(
        "INSERT INTO events (event_id, room_id, depth, event_type, state_key, sender,
                             origin_server_ts, pdu)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id)
    .bind(room_id)
    .bind(event.depth)
    .bind(event.event_type)
    .bind(event.state_key)
    .bind(event.sender)
    .bind(event.origin_server_ts)
    .bind(stored)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Storage {
    /// Stores events of `room_id` as outliers: no stream position (that is what makes an
    /// outlier, migration 0007), so no sync, `/messages` or timeline ever reads them. An event already held is left as it is.
    pub async fn store_outliers(&self, room_id: &str, events: &[Outlier<'_>]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for event in events {
            insert_outlier(&mut tx, room_id, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a membership of local `user_id` in a room held elsewhere that this server is
    /// not in (an invite received over federation, or its rejection): the member event as an
    /// outlier, the membership row at a new stream position (so sync reports it), and for an
    /// invite the room's stripped state the inviting server sent (`None` forgets it).
    pub async fn record_remote_membership(
        &self,
        room_id: &str,
        user_id: &str,
        event: Outlier<'_>,
        membership: &str,
        invite_state: Option<&str>,
    ) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let in_flight = self.next_stream_position(&mut tx).await?;
        let position = in_flight.position();
        insert_outlier(&mut tx, room_id, &event).await?;
        sqlx::query(
            "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_ordering, forgotten)
             VALUES ($1, $2, $3, $4, $5, 0)
             ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,
                event_id = excluded.event_id, stream_ordering = excluded.stream_ordering, forgotten = 0",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(membership)
        .bind(event.event_id)
        .bind(position)
        .execute(&mut *tx)
        .await?;
        match invite_state {
            Some(invite_state) => {
                sqlx::query(
                    "INSERT INTO remote_invites (room_id, user_id, event_id, invite_state)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (room_id, user_id) DO UPDATE SET event_id = excluded.event_id,
                        invite_state = excluded.invite_state",
                )
                .bind(room_id)
                .bind(user_id)
                .bind(event.event_id)
                .bind(invite_state)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM remote_invites WHERE room_id = $1 AND user_id = $2")
                    .bind(room_id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        // Committed, position still in flight: tell the caches (see `recent.rs`).
        self.recent.memberships_changed(user_id);
        self.recent.room_members_changed(room_id);
        self.recent.membership_changed_at(position);
        drop(in_flight);
        Ok(position)
    }

    /// The stripped state another server sent with `user_id`'s invite to `room_id`, if any.
    pub async fn remote_invite_state(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT invite_state FROM remote_invites WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The stripped state of the remote invite that is `event_id`, if it is one.
    pub async fn remote_invite_by_event(
        &self,
        room_id: &str,
        event_id: &str,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT invite_state FROM remote_invites WHERE room_id = $1 AND event_id = $2",
        )
        .bind(room_id)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Forgets a remote invite's stripped state (the user joined).
    pub async fn delete_remote_invite(&self, room_id: &str, user_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM remote_invites WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every destination with its position.
    pub async fn destinations(&self) -> Result<Vec<Destination>> {
        let rows = sqlx::query(
            "SELECT destination, stream_position, failures, retry_at FROM federation_destinations",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Destination {
                    destination: row.try_get(0)?,
                    stream_position: row.try_get(1)?,
                    failures: row.try_get(2)?,
                    retry_at: row.try_get(3)?,
                })
            })
            .collect()
    }

    /// Makes `destination` known, to be sent what comes after `position`; a destination
    /// already known keeps its position.
    pub async fn add_destination(&self, destination: &str, position: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO federation_destinations (destination, stream_position) VALUES ($1, $2)
             ON CONFLICT (destination) DO NOTHING",
        )
        .bind(destination)
        .bind(position)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that `destination` accepted everything up to `position` (only ever forward),
    /// and that it is healthy.
    ///
    /// On PostgreSQL the commit does not wait for the WAL to reach disk (as
    /// [`Storage::advance_pusher`]): a position is written for every transaction sent, and
    /// losing the last few in a crash *of PostgreSQL* only resends events the peer already
    /// has, which it recognises by their event IDs.
    pub async fn destination_sent(&self, destination: &str, position: i64) -> Result<()> {
        let sql = match self.backend {
            Backend::Postgres => {
                "UPDATE federation_destinations
                 SET stream_position = CASE WHEN stream_position < $2 THEN $2 ELSE stream_position END,
                     failures = 0, retry_at = NULL
                 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_wait
                 WHERE destination = $1"
            }
            Backend::Sqlite => {
                "UPDATE federation_destinations
                 SET stream_position = CASE WHEN stream_position < $2 THEN $2 ELSE stream_position END,
                     failures = 0, retry_at = NULL
                 WHERE destination = $1"
            }
        };
        sqlx::query(sql)
            .bind(destination)
            .bind(position)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a failed attempt and when to try again.
    pub async fn destination_failed(
        &self,
        destination: &str,
        failures: i64,
        retry_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE federation_destinations SET failures = $2, retry_at = $3 WHERE destination = $1",
        )
        .bind(destination)
        .bind(failures)
        .bind(retry_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The rooms `server` may be sent events of after stream position `since`: where a user
    /// of it is joined now, or where the membership of one of its users changed after `since`
    /// (a join, a kick, a ban, a leave). Each comes with those of its users that were joined
    /// at `since`; the sender follows the membership events after it to know, event by event,
    /// whether the server was in the room (so it is sent neither what came before it joined
    /// nor what happened while it was out).
    pub async fn rooms_with_server(&self, server: &str, since: i64) -> Result<Vec<ServerInRoom>> {
        let suffix = format!(":{server}");
        // LIKE narrows; the exact suffix is compared here (`_` and `%` may be in names).
        let rows = sqlx::query(
            "SELECT room_id, user_id, membership, stream_ordering FROM room_memberships
             WHERE (membership = 'join' OR stream_ordering > $2) AND user_id LIKE $1",
        )
        .bind(format!("%{suffix}"))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut rooms: Vec<ServerInRoom> = Vec::new();
        for row in rows {
            let (room_id, user, membership, position): (String, String, String, i64) = (
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            );
            if !(user.ends_with(&suffix)
                && user[1..user.len() - suffix.len()].chars().all(|c| c != ':'))
            {
                continue;
            }
            let joined_at_since = if position <= since {
                membership == "join"
            } else {
                self.joined_before(&room_id, &user, since)
                    .await?
                    .unwrap_or(membership == "join")
            };
            let index = match rooms.iter().position(|r| r.room_id == room_id) {
                Some(index) => index,
                None => {
                    rooms.push(ServerInRoom {
                        room_id,
                        joined: Vec::new(),
                    });
                    rooms.len() - 1
                }
            };
            if joined_at_since {
                rooms[index].joined.push(user);
            }
        }
        Ok(rooms)
    }

    /// Whether `user` was joined to `room` at stream position `since`, from what the first
    /// membership event of theirs after it replaced. `None` when no such event is found; an
    /// event stored before migration 0015 (replacement not recorded) or one replacing an
    /// event no longer held counts as joined, which sends rather than withholds.
    async fn joined_before(&self, room: &str, user: &str, since: i64) -> Result<Option<bool>> {
        let row = sqlx::query(
            "SELECT e.replaces_state, r.pdu
             FROM events e LEFT JOIN events r ON r.event_id = e.replaces_state
             WHERE e.room_id = $1 AND e.event_type = 'm.room.member' AND e.state_key = $2
               AND e.stream_ordering > $3 AND e.rejected_reason IS NULL
             ORDER BY e.stream_ordering LIMIT 1",
        )
        .bind(room)
        .bind(user)
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let replaced: Option<String> = row.try_get(0)?;
        // The stored form keeps `content` (only columns the row holds are left out).
        let stored: Option<String> = row.try_get(1)?;
        Ok(Some(match (replaced.as_deref(), stored) {
            (Some(""), _) => false,
            (Some(_), Some(stored)) => membership_of(&stored).is_none_or(|m| m == "join"),
            _ => true,
        }))
    }

    /// Up to `limit` timeline events of `rooms` with stream positions in `(after, upto]`, in
    /// stream order.
    pub async fn room_events_between(
        &self,
        rooms: &[String],
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE room_id IN ({}) AND stream_ordering > $1 AND stream_ordering <= $2
             ORDER BY stream_ordering LIMIT $3",
            placeholders_from(4, rooms.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(after)
            .bind(upto)
            .bind(limit);
        for room in rooms {
            query = query.bind(room.as_str());
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    /// The answer given to a transaction received before, if any.
    pub async fn received_txn(&self, origin: &str, txn_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT response FROM federation_received_txns WHERE origin = $1 AND txn_id = $2",
        )
        .bind(origin)
        .bind(txn_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records the answer to a received transaction (the first answer stays).
    pub async fn record_received_txn(
        &self,
        origin: &str,
        txn_id: &str,
        response: &str,
        now: i64,
    ) -> Result<()> {
        // On PostgreSQL without waiting for the WAL to reach disk (as `destination_sent`):
        // the record only spares a retried transaction being worked through again, which
        // would change nothing (its PDUs are known by event ID, its to-device messages by
        // message ID, receipts and typing are idempotent).
        let sql = match self.backend {
            Backend::Postgres => {
                "INSERT INTO federation_received_txns (origin, txn_id, response, received_ts)
                 SELECT $1, $2, $3, $4 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_wait
                 ON CONFLICT (origin, txn_id) DO NOTHING"
            }
            Backend::Sqlite => {
                "INSERT INTO federation_received_txns (origin, txn_id, response, received_ts)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (origin, txn_id) DO NOTHING"
            }
        };
        sqlx::query(sql)
            .bind(origin)
            .bind(txn_id)
            .bind(response)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
