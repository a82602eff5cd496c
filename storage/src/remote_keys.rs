//! Other servers' signing keys, cached after they were fetched and checked (migration 0022).
//! Storage keeps them; fetching and checking are the homeserver's and the federation
//! crate's.

use sqlx::Row;

use crate::{Result, Storage};

/// One key of another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKey {
    pub server_name: String,
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    pub valid_until_ts: i64,
    /// Set for a key the server retired.
    pub expired_ts: Option<i64>,
}

impl Storage {
    /// The cached key `key_id` of `server_name`, if any (however old: the caller decides).
    pub async fn remote_key(&self, server_name: &str, key_id: &str) -> Result<Option<RemoteKey>> {
        let row = sqlx::query(
            "SELECT public_key, valid_until_ts, expired_ts FROM remote_server_keys
             WHERE server_name = $1 AND key_id = $2",
        )
        .bind(server_name)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(RemoteKey {
                server_name: server_name.to_owned(),
                key_id: key_id.to_owned(),
                public_key: row.try_get(0)?,
                valid_until_ts: row.try_get(1)?,
                expired_ts: row.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Stores freshly fetched keys of one server, replacing what was cached of them, and the
    /// document they came in (`(server, JSON text, valid_until_ts)`) for notary answers.
    pub async fn store_remote_keys(
        &self,
        keys: &[RemoteKey],
        document: Option<(&str, &str, i64)>,
        fetched_ts: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if let Some((server_name, text, valid_until_ts)) = document {
            sqlx::query(
                "INSERT INTO remote_server_key_documents
                     (server_name, document, valid_until_ts, fetched_ts)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (server_name) DO UPDATE SET document = excluded.document,
                     valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts",
            )
            .bind(server_name)
            .bind(text)
            .bind(valid_until_ts)
            .bind(fetched_ts)
            .execute(&mut *tx)
            .await?;
        }
        for key in keys {
            sqlx::query(
                "INSERT INTO remote_server_keys
                     (server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (server_name, key_id) DO UPDATE SET
                     public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts,
                     expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts",
            )
            .bind(key.server_name.as_str())
            .bind(key.key_id.as_str())
            .bind(key.public_key.as_str())
            .bind(key.valid_until_ts)
            .bind(key.expired_ts)
            .bind(fetched_ts)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The latest key document `server_name` served us, with its `valid_until_ts`.
    pub async fn remote_key_document(&self, server_name: &str) -> Result<Option<(String, i64)>> {
        let row = sqlx::query(
            "SELECT document, valid_until_ts FROM remote_server_key_documents
             WHERE server_name = $1",
        )
        .bind(server_name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .transpose()
    }
}
