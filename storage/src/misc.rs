//! The server's signing keys, registration tokens, user-interactive-auth sessions and
//! shared-secret registration nonces.

use sqlx::Row;

use crate::{Result, Storage};

/// The server's current signing key.
#[derive(Debug, Clone)]
pub struct SigningKeyRow {
    pub key_id: String,
    /// Unpadded base64 of the 32-byte ed25519 seed.
    pub secret_key: String,
}

/// A registration token as stored.
#[derive(Debug, Clone)]
pub struct RegistrationTokenRow {
    pub token: String,
    pub uses_allowed: Option<i64>,
    pub completed: i64,
    pub expiry_ts: Option<i64>,
}

impl RegistrationTokenRow {
    /// Whether the token may still be used at `now`: uses left and not expired.
    pub fn is_usable(&self, now: i64) -> bool {
        self.uses_allowed
            .is_none_or(|allowed| self.completed < allowed)
            && self.expiry_ts.is_none_or(|exp| exp > now)
    }
}

/// A user-interactive auth session.
#[derive(Debug, Clone)]
pub struct UiaSessionRow {
    pub user_id: Option<String>,
    /// JSON array of completed stage types.
    pub completed: String,
    pub created_ts: i64,
}

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<RegistrationTokenRow> {
    Ok(RegistrationTokenRow {
        token: row.try_get("token")?,
        uses_allowed: row.try_get("uses_allowed")?,
        completed: row.try_get("completed")?,
        expiry_ts: row.try_get("expiry_ts")?,
    })
}

impl Storage {
    /// The current signing key, if one was ever generated.
    pub async fn current_signing_key(&self) -> Result<Option<SigningKeyRow>> {
        let row = sqlx::query(
            "SELECT key_id, secret_key FROM server_signing_keys
             WHERE valid_until_ts IS NULL ORDER BY created_ts DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(SigningKeyRow {
                key_id: row.try_get("key_id")?,
                secret_key: row.try_get("secret_key")?,
            })
        })
        .transpose()
    }

    /// Stores a newly generated signing key unless another process stored one first; returns
    /// whichever key is current afterwards, so concurrent first starts agree on one key.
    pub async fn insert_signing_key_if_none(
        &self,
        key: &SigningKeyRow,
        now: i64,
    ) -> Result<SigningKeyRow> {
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query(
            "SELECT key_id, secret_key FROM server_signing_keys WHERE valid_until_ts IS NULL LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            tx.commit().await?;
            return Ok(SigningKeyRow {
                key_id: row.try_get("key_id")?,
                secret_key: row.try_get("secret_key")?,
            });
        }
        sqlx::query(
            "INSERT INTO server_signing_keys (key_id, secret_key, created_ts) VALUES ($1, $2, $3)",
        )
        .bind(&key.key_id)
        .bind(&key.secret_key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(key.clone())
    }

    pub async fn create_registration_token(
        &self,
        token: &RegistrationTokenRow,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO registration_tokens (token, uses_allowed, completed, expiry_ts, created_ts)
             VALUES ($1, $2, 0, $3, $4)",
        )
        .bind(&token.token)
        .bind(token.uses_allowed)
        .bind(token.expiry_ts)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn list_registration_tokens(&self) -> Result<Vec<RegistrationTokenRow>> {
        let rows = sqlx::query(
            "SELECT token, uses_allowed, completed, expiry_ts FROM registration_tokens ORDER BY token",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    pub async fn get_registration_token(
        &self,
        token: &str,
    ) -> Result<Option<RegistrationTokenRow>> {
        let row = sqlx::query(
            "SELECT token, uses_allowed, completed, expiry_ts FROM registration_tokens WHERE token = $1",
        )
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub async fn delete_registration_token(&self, token: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM registration_tokens WHERE token = $1")
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Uses up one use of a registration token if it is still valid at `now`; returns whether
    /// it was. The check and the increment are one statement, so two registrations racing for
    /// the last use cannot both win.
    pub async fn consume_registration_token(&self, token: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE registration_tokens SET completed = completed + 1
             WHERE token = $1
               AND (uses_allowed IS NULL OR completed < uses_allowed)
               AND (expiry_ts IS NULL OR expiry_ts > $2)",
        )
        .bind(token)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn create_uia_session(
        &self,
        session_id: &str,
        user_id: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO uia_sessions (session_id, user_id, completed, created_ts) VALUES ($1, $2, '[]', $3)")
            .bind(session_id)
            .bind(user_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get_uia_session(&self, session_id: &str) -> Result<Option<UiaSessionRow>> {
        let row = sqlx::query(
            "SELECT user_id, completed, created_ts FROM uia_sessions WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(UiaSessionRow {
                user_id: row.try_get("user_id")?,
                completed: row.try_get("completed")?,
                created_ts: row.try_get("created_ts")?,
            })
        })
        .transpose()
    }

    pub async fn set_uia_completed(&self, session_id: &str, completed: &str) -> Result<()> {
        sqlx::query("UPDATE uia_sessions SET completed = $2 WHERE session_id = $1")
            .bind(session_id)
            .bind(completed)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_uia_session(&self, session_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM uia_sessions WHERE session_id = $1")
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets UIA sessions and to-device transaction IDs created before `cutoff`, and
    /// registration nonces created before `nonce_cutoff`.
    pub async fn expire_transient(&self, cutoff: i64, nonce_cutoff: i64) -> Result<()> {
        sqlx::query("DELETE FROM uia_sessions WHERE created_ts < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM registration_nonces WHERE created_ts < $1")
            .bind(nonce_cutoff)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM to_device_txns WHERE created_ts < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a fresh nonce and deletes those created before `expire_before` in the same
    /// transaction, so the table holds only the nonces still usable, however often the
    /// (unauthenticated) endpoint is called between housekeeping runs.
    pub async fn create_registration_nonce(
        &self,
        nonce: &str,
        now: i64,
        expire_before: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM registration_nonces WHERE created_ts < $1")
            .bind(expire_before)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO registration_nonces (nonce, created_ts) VALUES ($1, $2)")
            .bind(nonce)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// How many registration nonces are stored (for tests and metrics).
    pub async fn registration_nonce_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM registration_nonces")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Removes a nonce, returning its creation time if it existed: each nonce works once.
    pub async fn take_registration_nonce(&self, nonce: &str) -> Result<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT created_ts FROM registration_nonces WHERE nonce = $1")
            .bind(nonce)
            .fetch_optional(&mut *tx)
            .await?;
        let created = row.map(|r| r.try_get::<i64, _>("created_ts")).transpose()?;
        let deleted = sqlx::query("DELETE FROM registration_nonces WHERE nonce = $1")
            .bind(nonce)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        // Under concurrency only the transaction whose DELETE removed the row may use it.
        Ok(if deleted > 0 { created } else { None })
    }
}
