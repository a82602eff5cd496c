//! To-device messages: an inbox per device on the global stream.
//!
//! A send takes one stream position for all its messages (ordered by `seq` within it) and
//! records its transaction ID in the same transaction, so a retried request sends nothing
//! twice. A message stays in the inbox until its device syncs with a token at or past its
//! position ([`Storage::ack_to_device`]); reading never deletes, so a response lost on the
//! way is sent again to a client that retries with its old token.

use sqlx::{AssertSqlSafe, Row};

use crate::{
    federation_edus::{insert_outbox, NewOutboxEdu},
    Result, Storage,
};

/// A message for the devices of one user: `device_id` `None` means all of them (`*`).
#[derive(Debug, Clone)]
pub struct OutgoingToDevice {
    pub user_id: String,
    pub device_id: Option<String>,
    /// The event content as JSON text.
    pub content: String,
}

/// A message waiting in a device's inbox.
#[derive(Debug, Clone)]
pub struct ToDeviceRow {
    pub stream_ordering: i64,
    pub sender: String,
    pub event_type: String,
    pub content: String,
}

impl Storage {
    /// Puts messages of `event_type` from `sender` into their devices' inboxes, and `remote`
    /// (the `m.direct_to_device` EDUs for other servers' users) into the federation outbox,
    /// unless the sending device already used `txn_id`: all of it or none. Messages for
    /// devices that do not exist are dropped. Returns the stream position taken, or `None`
    /// for a repeated transaction.
    ///
    /// Messages received over federation come here too, with an empty `sender_device` (no
    /// device of ours has one) and the EDU's `message_id` as `txn_id`, so a peer resending an
    /// EDU after a crash delivers nothing twice.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_to_device(
        &self,
        sender: &str,
        sender_device: &str,
        txn_id: &str,
        event_type: &str,
        messages: &[OutgoingToDevice],
        remote: &[NewOutboxEdu],
        now: i64,
    ) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let fresh = sqlx::query(
            "INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts)
             VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
        )
        .bind(sender)
        .bind(sender_device)
        .bind(txn_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !fresh {
            tx.commit().await?;
            return Ok(None);
        }
        let in_flight = self.next_stream_position(&mut tx).await?;
        let position = in_flight.position();
        for (seq, message) in messages.iter().enumerate() {
            // INSERT … SELECT from devices: `*` expands to the devices that exist now, and a
            // message for an unknown device inserts nothing.
            let device_filter = if message.device_id.is_some() {
                "AND device_id = $7"
            } else {
                ""
            };
            let sql = format!(
                "INSERT INTO to_device_inbox
                    (user_id, device_id, stream_ordering, seq, sender, event_type, content)
                 SELECT user_id, device_id, $2, $3, $4, $5, $6 FROM devices
                 WHERE user_id = $1 {device_filter}"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(&message.user_id)
                .bind(position)
                .bind(seq as i64)
                .bind(sender)
                .bind(event_type)
                .bind(&message.content);
            if let Some(device_id) = &message.device_id {
                query = query.bind(device_id);
            }
            query.execute(&mut *tx).await?;
            self.recent.to_device_sent(&message.user_id, position);
        }
        for edu in remote {
            insert_outbox(&mut tx, edu, now).await?;
        }
        tx.commit().await?;
        Ok(Some(position))
    }

    /// The messages in a device's inbox with `after < position <= upto`, in order.
    pub async fn to_device_messages(
        &self,
        user_id: &str,
        device_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<ToDeviceRow>> {
        if self.recent.to_device_none_since(user_id, after) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT stream_ordering, sender, event_type, content FROM to_device_inbox
             WHERE user_id = $1 AND device_id = $2 AND stream_ordering > $3 AND stream_ordering <= $4
             ORDER BY stream_ordering, seq",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ToDeviceRow {
                    stream_ordering: row.try_get("stream_ordering")?,
                    sender: row.try_get("sender")?,
                    event_type: row.try_get("event_type")?,
                    content: row.try_get("content")?,
                })
            })
            .collect()
    }

    /// Where a response starting after `after` must stop so that it carries at most `limit`
    /// of the device's messages: `None` when `(after, upto]` holds no more than `limit`,
    /// else the highest position below the first message left out (or that message's own
    /// position, when it is the first in the range: a position's messages are never split,
    /// since a token acknowledges whole positions). Sync ends its whole response there, so
    /// the token it hands out acknowledges only the messages it gave.
    pub async fn to_device_cut(
        &self,
        user_id: &str,
        device_id: &str,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Option<i64>> {
        if self.recent.to_device_none_since(user_id, after) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT stream_ordering FROM to_device_inbox
             WHERE user_id = $1 AND device_id = $2 AND stream_ordering > $3 AND stream_ordering <= $4
             ORDER BY stream_ordering, seq LIMIT 1 OFFSET $5",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(after)
        .bind(upto)
        .bind(limit as i64)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let first_left_out: i64 = row.try_get("stream_ordering")?;
        let first = sqlx::query(
            "SELECT MIN(stream_ordering) AS first FROM to_device_inbox
             WHERE user_id = $1 AND device_id = $2 AND stream_ordering > $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(after)
        .fetch_one(&self.pool)
        .await?
        .try_get::<Option<i64>, _>("first")?;
        Ok(Some(if first == Some(first_left_out) {
            first_left_out
        } else {
            first_left_out - 1
        }))
    }

    /// Removes the messages a device has acknowledged by syncing with a token at `upto`:
    /// those at or below it. Looks before it deletes, so the common case (nothing to
    /// remove) writes nothing and never waits for SQLite's write lock.
    pub async fn ack_to_device(&self, user_id: &str, device_id: &str, upto: i64) -> Result<u64> {
        if !self.recent.to_device_ack_needed(user_id, device_id) {
            return Ok(0);
        }
        let pending = sqlx::query(
            "SELECT 1 AS one FROM to_device_inbox
             WHERE user_id = $1 AND device_id = $2 AND stream_ordering <= $3 LIMIT 1",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(upto)
        .fetch_optional(&self.pool)
        .await?
        .is_some();
        if !pending {
            self.recent.to_device_acked(user_id, device_id, upto);
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM to_device_inbox
             WHERE user_id = $1 AND device_id = $2 AND stream_ordering <= $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(upto)
        .execute(&self.pool)
        .await?;
        self.recent.to_device_acked(user_id, device_id, upto);
        Ok(done.rows_affected())
    }
}
