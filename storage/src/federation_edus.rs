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

    /// Keeps only the newest `keep` EDUs waiting for `destination` (the bound for a server
    /// that stays away); returns how many older ones were dropped.
    pub async fn trim_outbox(&self, destination: &str, keep: usize) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        // The id of the newest row beyond `keep` (none when there are fewer): it and all
        // older rows go.
        let dropped = sqlx::query(
            "DELETE FROM federation_outbox WHERE destination = $1 AND id <= (
                 SELECT id FROM federation_outbox WHERE destination = $1
                 ORDER BY id DESC LIMIT 1 OFFSET $2)",
        )
        .bind(destination)
        .bind(keep as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(dropped)
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

#[cfg(test)]
mod tests {
    use super::NewOutboxEdu;
    use crate::Storage;

    fn edu(destination: &str, n: usize) -> NewOutboxEdu {
        NewOutboxEdu {
            destination: destination.to_owned(),
            edu_type: "m.direct_to_device".to_owned(),
            content: format!("{{\"n\":{n}}}"),
        }
    }

    /// The outbox hands EDUs out oldest first, deletes up to what was accepted, and a trim
    /// keeps the newest of one destination without touching another's.
    #[tokio::test]
    async fn outbox_order_delete_and_trim() {
        let dir = std::env::temp_dir().join(format!("myelin-outbox-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display());
        let storage = Storage::connect(&url).await.unwrap();
        let mut rows: Vec<NewOutboxEdu> = (0..10).map(|n| edu("a.example", n)).collect();
        rows.extend((0..3).map(|n| edu("b.example", n)));
        storage.queue_edus(&rows, 0).await.unwrap();

        let first = storage.outbox("a.example", 4).await.unwrap();
        let ns: Vec<&str> = first.iter().map(|e| e.content.as_str()).collect();
        assert_eq!(ns, ["{\"n\":0}", "{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
        storage
            .delete_outbox("a.example", first[1].id)
            .await
            .unwrap();
        assert_eq!(storage.outbox("a.example", 100).await.unwrap().len(), 8);

        assert_eq!(storage.trim_outbox("a.example", 5).await.unwrap(), 3);
        let left = storage.outbox("a.example", 100).await.unwrap();
        let ns: Vec<&str> = left.iter().map(|e| e.content.as_str()).collect();
        assert_eq!(
            ns,
            [
                "{\"n\":5}",
                "{\"n\":6}",
                "{\"n\":7}",
                "{\"n\":8}",
                "{\"n\":9}"
            ]
        );
        assert_eq!(storage.trim_outbox("a.example", 5).await.unwrap(), 0);
        assert_eq!(storage.outbox("b.example", 100).await.unwrap().len(), 3);
        std::fs::remove_dir_all(&dir).ok();
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }
}
