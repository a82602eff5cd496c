//! Refresh tokens and login tokens (migration 0020). Access tokens themselves are in
//! `accounts.rs`.
//!
//! A refresh token is used once: [`Storage::refresh`] issues a new access token and a new
//! refresh token whose predecessor it becomes. The predecessor (and the access token issued
//! with it) stays valid until the new refresh token or the new access token is used, so a
//! client whose `/refresh` response was lost can retry; from then on it is refused.

use sqlx::Row;

use crate::{Result, Storage};

/// What a successful refresh found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    pub user_id: String,
    pub device_id: String,
}

/// Deletes refresh token `hash` and the access token issued with it.
async fn retire(tx: &mut sqlx::Transaction<'static, sqlx::Any>, hash: &str) -> Result<()> {
    sqlx::query("DELETE FROM access_tokens WHERE refresh_token_hash = $1")
        .bind(hash)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM refresh_tokens WHERE token_hash = $1")
        .bind(hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Storage {
    /// Uses the refresh token `old`: issues `access` (expiring at `expires_ts`) and `new` in
    /// its place, in one transaction. `None` when `old` is unknown or already retired.
    pub async fn refresh(
        &self,
        old: &str,
        access: &str,
        new: &str,
        expires_ts: i64,
        now: i64,
    ) -> Result<Option<Refreshed>> {
        let mut tx = self.begin_write().await?;
        let lock = if self.backend == crate::Backend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let sql = format!(
            "SELECT user_id, device_id, predecessor FROM refresh_tokens WHERE token_hash = $1{lock}"
        );
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(old)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let (user_id, device_id, predecessor): (String, String, Option<String>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        // Using `old` retires its own predecessor, and replaces any successor issued from
        // it before whose response never arrived (it was never used).
        let mut retired: Vec<String> =
            sqlx::query_scalar("SELECT token_hash FROM refresh_tokens WHERE predecessor = $1")
                .bind(old)
                .fetch_all(&mut *tx)
                .await?;
        retired.extend(predecessor);
        for hash in &retired {
            retire(&mut tx, hash).await?;
        }
        sqlx::query("UPDATE refresh_tokens SET predecessor = NULL WHERE token_hash = $1")
            .bind(old)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, user_id, device_id, predecessor, created_ts)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new)
        .bind(&user_id)
        .bind(&device_id)
        .bind(old)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts,
                                        refresh_token_hash)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(access)
        .bind(&user_id)
        .bind(&device_id)
        .bind(now)
        .bind(expires_ts)
        .bind(new)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.tokens.invalidate(&user_id);
        Ok(Some(Refreshed { user_id, device_id }))
    }

    /// The access token issued with refresh token `hash` was used: the refresh token before
    /// it, and that one's access token, are retired.
    pub async fn retire_predecessor(&self, user_id: &str, hash: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let predecessor: Option<Option<String>> =
            sqlx::query_scalar("SELECT predecessor FROM refresh_tokens WHERE token_hash = $1")
                .bind(hash)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(Some(predecessor)) = predecessor {
            retire(&mut tx, &predecessor).await?;
            sqlx::query("UPDATE refresh_tokens SET predecessor = NULL WHERE token_hash = $1")
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.tokens.invalidate(user_id);
        Ok(())
    }

    /// Stores a login token for `user_id` until `expires_ts` (expired ones are removed).
    pub async fn add_login_token(
        &self,
        hash: &str,
        user_id: &str,
        expires_ts: i64,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM login_tokens WHERE expires_ts <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO login_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)",
        )
        .bind(hash)
        .bind(user_id)
        .bind(expires_ts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uses a login token: its user if it exists and has not expired; it is gone either way.
    pub async fn take_login_token(&self, hash: &str, now: i64) -> Result<Option<String>> {
        let row = sqlx::query(
            "DELETE FROM login_tokens WHERE token_hash = $1 RETURNING user_id, expires_ts",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (user, expires): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok((expires > now).then_some(user))
    }
}
