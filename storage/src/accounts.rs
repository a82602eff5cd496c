//! Users, devices, access tokens, profiles and account data.

use sqlx::{AssertSqlSafe, Row};

use crate::{Result, Storage};

/// A user as stored.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub deactivated: bool,
}

/// A device as stored.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_seen_ts: Option<i64>,
}

/// Who an access token belongs to.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user_id: String,
    pub device_id: String,
    pub is_admin: bool,
    /// When the token expires (a token issued with a refresh token); `None`: never.
    pub expires_ts: Option<i64>,
    /// The token came with a refresh token that replaced another: its first use retires the
    /// old one ([`Storage::retire_predecessor`]).
    pub retires_refresh_token: Option<String>,
}

/// Access tokens already resolved, so a request costs no query to authenticate.
///
/// Every write that removes a token or changes what it resolves to (logout, device deletion,
/// deactivation, admin flag) calls [`TokenCache::invalidate`] after its commit. That bumps a
/// generation: a lookup that read the database before the change but finishes after it does
/// not store what it read. (One server process per database, like the other caches.)
///
/// The same call tells holders of long-lived sessions (the sync WebSocket) whose tokens
/// changed, so they re-check theirs and close when it is gone: a logged-out, deleted or
/// deactivated device must stop receiving at once, not at its next request.
#[derive(Debug)]
pub(crate) struct TokenCache {
    inner: std::sync::Mutex<(u64, std::collections::HashMap<String, TokenOwner>)>,
    /// The user IDs whose tokens changed, after the commit. A subscriber that lags behind
    /// re-checks its token anyway, so a small buffer loses nothing.
    changed: tokio::sync::broadcast::Sender<std::sync::Arc<str>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            inner: Default::default(),
            changed: tokio::sync::broadcast::channel(64).0,
        }
    }
}

/// Tokens cached at most; the cache starts over when full.
const MAX_CACHED_TOKENS: usize = 100_000;

impl TokenCache {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (u64, std::collections::HashMap<String, TokenOwner>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, token_hash: &str) -> Result<TokenOwner, u64> {
        let inner = self.lock();
        inner.1.get(token_hash).cloned().ok_or(inner.0)
    }

    fn store(&self, generation: u64, token_hash: &str, owner: &TokenOwner) {
        let mut inner = self.lock();
        if inner.0 == generation {
            if inner.1.len() >= MAX_CACHED_TOKENS {
                inner.1.clear();
            }
            inner.1.insert(token_hash.to_owned(), owner.clone());
        }
    }

    /// Forgets every cached token of `user_id`.
    pub(crate) fn invalidate(&self, user_id: &str) {
        {
            let mut inner = self.lock();
            inner.0 += 1;
            inner.1.retain(|_, owner| owner.user_id != user_id);
        }
        // No subscriber is not an error.
        let _ = self.changed.send(user_id.into());
    }
}

fn device_from_row(row: &sqlx::any::AnyRow) -> Result<DeviceRow> {
    Ok(DeviceRow {
        device_id: row.try_get("device_id")?,
        display_name: row.try_get("display_name")?,
        last_seen_ip: row.try_get("last_seen_ip")?,
        last_seen_ts: row.try_get("last_seen_ts")?,
    })
}

impl Storage {
    /// Creates a user with an empty profile whose display name is `displayname`.
    /// Fails with [`crate::Error::UniqueViolation`] if the user ID was ever taken, including by
    /// a since-deactivated account.
    pub async fn create_user(
        &self,
        user_id: &str,
        password_hash: Option<&str>,
        is_admin: bool,
        displayname: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO users (user_id, password_hash, is_admin, deactivated, created_ts)
             VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(user_id)
        .bind(password_hash)
        .bind(i64::from(is_admin))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)")
            .bind(user_id)
            .bind(displayname)
            .execute(&mut *tx)
            .await?;
        crate::directory::index_user(&mut tx, user_id, Some(displayname)).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_user(&self, user_id: &str) -> Result<Option<UserRow>> {
        let row = sqlx::query(
            "SELECT user_id, password_hash, is_admin, deactivated FROM users WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(UserRow {
                user_id: row.try_get("user_id")?,
                password_hash: row.try_get("password_hash")?,
                is_admin: row.try_get::<i64, _>("is_admin")? != 0,
                deactivated: row.try_get::<i64, _>("deactivated")? != 0,
            })
        })
        .transpose()
    }

    pub async fn set_password_hash(&self, user_id: &str, password_hash: &str) -> Result<()> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE user_id = $2")
            .bind(password_hash)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_admin(&self, user_id: &str, is_admin: bool) -> Result<()> {
        sqlx::query("UPDATE users SET is_admin = $1 WHERE user_id = $2")
            .bind(i64::from(is_admin))
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        self.tokens.invalidate(user_id);
        Ok(())
    }

    /// Deactivates a user for good: no password, no devices, no tokens, no encryption keys or
    /// key backups. The row stays so the user ID is never reused.
    pub async fn deactivate_user(&self, user_id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE users SET deactivated = 1, password_hash = NULL, is_admin = 0
             WHERE user_id = $1",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM access_tokens WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM pushers WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        // Device keys, one-time keys and pending to-device messages go with the devices.
        sqlx::query("DELETE FROM devices WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        // Nobody finds a deactivated user in the directory.
        sqlx::query("DELETE FROM user_directory_words WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM user_directory WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let _in_flight = self.forget_user_e2ee(&mut tx, user_id).await?;
        tx.commit().await?;
        self.tokens.invalidate(user_id);
        self.recent.key_counts_changed();
        Ok(())
    }

    /// Creates (or takes over) a device and issues an access token for it, in one transaction.
    ///
    /// Logging in with the `device_id` of an existing device re-uses that device, as the spec
    /// asks, and invalidates the tokens it had: a device has one live session. A new device
    /// is a change of the user's device list (on the stream, for other users' syncs); returns
    /// whether the device is new.
    pub async fn create_device_with_token(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
        ip: Option<&str>,
        token_hash: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        self.create_device_with_tokens(user_id, device_id, display_name, ip, token_hash, None, now)
            .await
    }

    /// [`Storage::create_device_with_token`], with a refresh token: `(refresh token hash,
    /// when the access token expires)`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_device_with_tokens(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
        ip: Option<&str>,
        token_hash: Option<&str>,
        refresh: Option<(&str, i64)>,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        let updated = sqlx::query(
            "UPDATE devices SET last_seen_ip = $3, last_seen_ts = $4,
                    display_name = COALESCE($5, display_name)
             WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(ip)
        .bind(now)
        .bind(display_name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let created = updated == 0;
        let mut _in_flight = None;
        if created {
            sqlx::query(
                "INSERT INTO devices
                    (user_id, device_id, display_name, last_seen_ip, last_seen_ts, created_ts)
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(display_name)
            .bind(ip)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            _in_flight = Some(self.mark_device_list_changed(&mut tx, user_id).await?);
        }
        if let Some(token_hash) = token_hash {
            // The device's earlier refresh tokens go with its earlier access tokens.
            sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            if let Some((refresh_hash, _)) = refresh {
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, user_id, device_id, predecessor, created_ts)
                     VALUES ($1, $2, $3, NULL, $4)",
                )
                .bind(refresh_hash)
                .bind(user_id)
                .bind(device_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts,
                                            refresh_token_hash)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(token_hash)
            .bind(user_id)
            .bind(device_id)
            .bind(now)
            .bind(refresh.map(|(_, expires)| expires))
            .bind(refresh.map(|(hash, _)| hash))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.tokens.invalidate(user_id);
        self.recent.key_counts_changed();
        Ok(created)
    }

    /// Announces, after each commit that removes or changes a user's tokens (logout, device
    /// deletion, password change logging out devices, deactivation), that user's ID. Subscribe
    /// *before* checking a token, so a change in between is not missed.
    pub fn subscribe_token_changes(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<str>> {
        self.tokens.changed.subscribe()
    }

    pub async fn find_token(&self, token_hash: &str) -> Result<Option<TokenOwner>> {
        let generation = match self.tokens.get(token_hash) {
            Ok(owner) => return Ok(Some(owner)),
            Err(generation) => generation,
        };
        let row = sqlx::query(
            "SELECT t.user_id, t.device_id, u.is_admin, t.expires_ts,
                    CASE WHEN r.predecessor IS NULL THEN NULL ELSE r.token_hash END AS retires
             FROM access_tokens t JOIN users u ON u.user_id = t.user_id
             LEFT JOIN refresh_tokens r ON r.token_hash = t.refresh_token_hash
             WHERE t.token_hash = $1 AND u.deactivated = 0",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let owner = row
            .map(|row| -> Result<TokenOwner> {
                Ok(TokenOwner {
                    user_id: row.try_get("user_id")?,
                    device_id: row.try_get("device_id")?,
                    is_admin: row.try_get::<i64, _>("is_admin")? != 0,
                    expires_ts: row.try_get("expires_ts")?,
                    retires_refresh_token: row.try_get("retires")?,
                })
            })
            .transpose()?;
        if let Some(owner) = &owner {
            self.tokens.store(generation, token_hash, owner);
        }
        Ok(owner)
    }

    pub async fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        ip: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET last_seen_ip = $3, last_seen_ts = $4
             WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(ip)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn list_devices(&self, user_id: &str) -> Result<Vec<DeviceRow>> {
        let rows = sqlx::query(
            "SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices
             WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    pub async fn get_device(&self, user_id: &str, device_id: &str) -> Result<Option<DeviceRow>> {
        let row = sqlx::query(
            "SELECT device_id, display_name, last_seen_ip, last_seen_ts FROM devices
             WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Renames a device; returns false if the device does not exist.
    pub async fn set_device_display_name(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(display_name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes devices with their access tokens, encryption keys and pending to-device
    /// messages. Returns whether any device existed (a change of the user's device list).
    pub async fn delete_devices(&self, user_id: &str, device_ids: &[String]) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let mut deleted = Vec::new();
        for device_id in device_ids {
            sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            // A pusher belongs to the device (access token) that set it.
            sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            let done = sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() > 0 {
                deleted.push(device_id.clone());
            }
        }
        let _in_flight = if deleted.is_empty() {
            None
        } else {
            Some(self.forget_devices_e2ee(&mut tx, user_id, &deleted).await?)
        };
        tx.commit().await?;
        self.tokens.invalidate(user_id);
        self.recent.key_counts_changed();
        Ok(!deleted.is_empty())
    }

    /// Deletes every device of `user_id` except `keep` (if given), as
    /// [`Storage::delete_devices`] does. Returns whether any device existed.
    pub async fn delete_other_devices(&self, user_id: &str, keep: Option<&str>) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let keep = keep.unwrap_or("");
        sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id <> $2")
            .bind(user_id)
            .bind(keep)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND device_id <> $2")
            .bind(user_id)
            .bind(keep)
            .execute(&mut *tx)
            .await?;
        let deleted: Vec<String> = sqlx::query(
            "DELETE FROM devices WHERE user_id = $1 AND device_id <> $2 RETURNING device_id",
        )
        .bind(user_id)
        .bind(keep)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("device_id"))
        .collect::<Result<_, _>>()?;
        let _in_flight = if deleted.is_empty() {
            None
        } else {
            Some(self.forget_devices_e2ee(&mut tx, user_id, &deleted).await?)
        };
        tx.commit().await?;
        self.tokens.invalidate(user_id);
        self.recent.key_counts_changed();
        Ok(!deleted.is_empty())
    }

    pub async fn get_profile(
        &self,
        user_id: &str,
    ) -> Result<Option<(Option<String>, Option<String>)>> {
        let row = sqlx::query("SELECT displayname, avatar_url FROM profiles WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get("displayname")?, row.try_get("avatar_url")?)))
            .transpose()
    }

    /// Sets the display name and marks the profile as still to be carried into the user's
    /// rooms; returns the mark (see [`Storage::profile_propagated`]).
    pub async fn set_displayname(&self, user_id: &str, displayname: Option<&str>) -> Result<i64> {
        self.set_profile_column(user_id, "displayname", displayname)
            .await
    }

    /// Like [`Storage::set_displayname`], for the avatar.
    pub async fn set_avatar_url(&self, user_id: &str, avatar_url: Option<&str>) -> Result<i64> {
        self.set_profile_column(user_id, "avatar_url", avatar_url)
            .await
    }

    async fn set_profile_column(
        &self,
        user_id: &str,
        column: &'static str,
        value: Option<&str>,
    ) -> Result<i64> {
        let sql = format!(
            "UPDATE profiles SET {column} = $2, propagation_pending = propagation_pending + 1
             WHERE user_id = $1 RETURNING propagation_pending"
        );
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(user_id)
            .bind(value)
            .fetch_optional(&mut *tx)
            .await?;
        // The directory finds users by display name: its words change in the same transaction.
        // (A deactivated user is not listed and stays out.)
        if column == "displayname" && row.is_some() {
            let listed: Option<String> =
                sqlx::query_scalar("SELECT user_id FROM user_directory WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if listed.is_some() {
                crate::directory::index_user(&mut tx, user_id, value).await?;
            }
        }
        tx.commit().await?;
        Ok(match row {
            Some(row) => row.try_get("propagation_pending")?,
            None => 0,
        })
    }

    /// The profile change marked `mark` is in every room: clears the mark unless a newer
    /// change raised it meanwhile (that change's propagation clears it).
    pub async fn profile_propagated(&self, user_id: &str, mark: i64) -> Result<()> {
        sqlx::query(
            "UPDATE profiles SET propagation_pending = 0 WHERE user_id = $1 AND propagation_pending = $2",
        )
        .bind(user_id)
        .bind(mark)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Users whose last profile change may not be in all their rooms yet (a server stopped
    /// during propagation), with their marks.
    pub async fn pending_profile_propagations(&self) -> Result<Vec<(String, i64)>> {
        sqlx::query(
            "SELECT user_id, propagation_pending FROM profiles WHERE propagation_pending > 0",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("user_id")?, row.try_get("propagation_pending")?)))
        .collect()
    }

    /// Account data: `room_id` is `None` for global account data. Content is JSON text.
    pub async fn get_account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        data_type: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT content FROM account_data
             WHERE user_id = $1 AND room_id = $2 AND data_type = $3",
        )
        .bind(user_id)
        .bind(room_id.unwrap_or(""))
        .bind(data_type)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("content")).transpose()?)
    }

    /// Stores account data at a new stream position, which it returns.
    pub async fn set_account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        data_type: &str,
        content: &str,
        now: i64,
    ) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let in_flight = self.next_stream_position(&mut tx).await?;
        let position = in_flight.position();
        sqlx::query(
            "INSERT INTO account_data (user_id, room_id, data_type, content, updated_ts, stream_ordering)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (user_id, room_id, data_type)
             DO UPDATE SET content = excluded.content, updated_ts = excluded.updated_ts,
                           stream_ordering = excluded.stream_ordering",
        )
        .bind(user_id)
        .bind(room_id.unwrap_or(""))
        .bind(data_type)
        .bind(content)
        .bind(now)
        .bind(position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.recent.account_data_changed(user_id, position);
        Ok(position)
    }
}

/// Why a profile field was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileFieldRefused {
    /// The user's profile would exceed the size limit.
    TooLarge,
}

impl Storage {
    /// A user's profile fields other than displayname and avatar_url: `(field, JSON value)`,
    /// sorted by field.
    pub async fn profile_fields(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT field, value FROM profile_fields WHERE user_id = $1 ORDER BY field",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("field")?, r.try_get("value")?)))
            .collect()
    }

    /// Sets one such field (its value as JSON text), unless the user's fields would then
    /// take more than `max_total_bytes` (names and values). Checked and written in one
    /// transaction, with the user's profile row locked on PostgreSQL, so two concurrent writes
    /// cannot both squeeze under the limit.
    pub async fn set_profile_field(
        &self,
        user_id: &str,
        field: &str,
        value: &str,
        max_total_bytes: i64,
    ) -> Result<std::result::Result<(), ProfileFieldRefused>> {
        let mut tx = self.begin_write().await?;
        if self.backend == crate::Backend::Postgres {
            sqlx::query("SELECT user_id FROM profiles WHERE user_id = $1 FOR UPDATE")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        let others: i64 = sqlx::query(
            "SELECT COALESCE(SUM(LENGTH(field) + LENGTH(value)), 0) AS n FROM profile_fields
             WHERE user_id = $1 AND field <> $2",
        )
        .bind(user_id)
        .bind(field)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        // Characters on both engines (LENGTH of text counts characters in each).
        let own = (field.chars().count() + value.chars().count()) as i64;
        if others + own > max_total_bytes {
            return Ok(Err(ProfileFieldRefused::TooLarge));
        }
        sqlx::query(
            "INSERT INTO profile_fields (user_id, field, value) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, field) DO UPDATE SET value = excluded.value",
        )
        .bind(user_id)
        .bind(field)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Removes one such field; whether it was set.
    pub async fn delete_profile_field(&self, user_id: &str, field: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM profile_fields WHERE user_id = $1 AND field = $2")
            .bind(user_id)
            .bind(field)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
