//! What end-to-end encryption needs across servers (migration 0024): the durable outbox of
//! EDUs that must reach a destination exactly once (to-device messages, device-list and
//! signing-key updates), and the cache of other servers' users' device lists.
//!
//! What goes into an EDU and when a cached list is still good are the homeserver's; this
//! module only stores and hands back.

use sqlx::Row;

use crate::{Result, Storage};

/// An EDU to put in a destination's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxEdu {
    pub destination: String,
    pub edu_type: String,
    /// The EDU's `content`, as JSON text.
    pub content: String,
}

/// An EDU waiting in a destination's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEdu {
    pub id: i64,
    pub edu_type: String,
    pub content: String,
}

pub(crate) async fn insert_outbox(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    edu: &NewOutboxEdu,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO federation_outbox (destination, edu_type, content, created_ts)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&edu.destination)
    .bind(&edu.edu_type)
    .bind(&edu.content)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Storage {
    /// Puts `edus` into their destinations' outboxes, all in one transaction.
    pub async fn queue_edus(&self, edus: &[NewOutboxEdu], now: i64) -> Result<()> {
        if edus.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for edu in edus {
            insert_outbox(&mut tx, edu, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The oldest `limit` EDUs waiting for `destination`, oldest first.
    pub async fn outbox(&self, destination: &str, limit: usize) -> Result<Vec<OutboxEdu>> {
        let rows = sqlx::query(
            "SELECT id, edu_type, content FROM federation_outbox
             WHERE destination = $1 ORDER BY id LIMIT $2",
        )
        .bind(destination)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OutboxEdu {
                    id: row.try_get("id")?,
                    edu_type: row.try_get("edu_type")?,
                    content: row.try_get("content")?,
                })
            })
            .collect()
    }

    /// Deletes `destination`'s EDUs up to `upto_id`, once the destination accepted them.
    pub async fn delete_outbox(&self, destination: &str, upto_id: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM federation_outbox WHERE destination = $1 AND id <= $2")
            .bind(destination)
            .bind(upto_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The cached device list of another server's user (their server's answer, JSON).
    pub async fn remote_device_list(&self, user_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT answer FROM remote_device_lists WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("answer")).transpose()?)
    }

    /// Caches another server's user's device list.
    pub async fn cache_remote_device_list(
        &self,
        user_id: &str,
        answer: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO remote_device_lists (user_id, answer, cached_ts) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET answer = excluded.answer,
                                                 cached_ts = excluded.cached_ts",
        )
        .bind(user_id)
        .bind(answer)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Another server told us `user_id`'s devices or cross-signing keys changed: drops the
    /// cached list and puts the change on the stream, so our users who share a room with
    /// them see it in `device_lists.changed` and query again. Returns the position taken.
    pub async fn remote_device_list_changed(&self, user_id: &str) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM remote_device_lists WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let guard = self.mark_device_list_changed(&mut tx, user_id).await?;
        let position = guard.position();
        tx.commit().await?;
        drop(guard);
        Ok(position)
    }

    /// The position of `user_id`'s latest device-list change (0 if none): the `stream_id`
    /// of `/user/devices`.
    pub async fn device_list_position(&self, user_id: &str) -> Result<i64> {
        let row = sqlx::query("SELECT stream_ordering FROM device_lists WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("stream_ordering"))
            .transpose()?
            .unwrap_or(0))
    }
}
