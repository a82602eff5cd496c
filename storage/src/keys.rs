//! End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys and
//! their signatures, and device-list changes placed on the global stream.
//!
//! Key objects are stored as the JSON text the homeserver hands in (canonical JSON, so equal
//! keys compare equal as strings). Whether an upload is allowed, and whether its signatures
//! are valid, is decided above; this module only reports facts such as "a different key is
//! stored under this ID".

use std::collections::{BTreeMap, HashSet};

use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use crate::{stream::InFlight, Result, Storage};

/// `$from, $from+1, …` (`n` of them), for an `IN (…)` list after `from - 1` other parameters.
pub(crate) fn params_from(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many `(user, device, algorithm)` triples one claim statement names: 3 parameters each,
/// well below SQLite's and PostgreSQL's parameter limits.
const CLAIM_CHUNK: usize = 200;

/// A one-time or fallback key to store: `algorithm`, the key ID without the algorithm, and
/// the key object as canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub algorithm: String,
    pub key_id: String,
    pub key_json: String,
}

/// What `/keys/upload` stores for one device.
#[derive(Debug, Default)]
pub struct KeyUpload<'a> {
    /// The device keys as canonical JSON, if uploaded.
    pub device_keys: Option<&'a str>,
    pub one_time_keys: &'a [NewKey],
    pub fallback_keys: &'a [NewKey],
}

/// The outcome of an upload.
#[derive(Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Stored. `one_time_key_counts` maps algorithm to the number of unclaimed keys;
    /// `device_list_changed` says whether the device keys changed (others must be told).
    Stored {
        one_time_key_counts: BTreeMap<String, u64>,
        device_list_changed: bool,
    },
    /// The device no longer exists (deleted while the request was in flight); nothing stored.
    NoSuchDevice,
    /// A different one-time key is already stored under this `algorithm:key_id`; nothing
    /// stored.
    OneTimeKeyConflict(String),
}

/// A claimed key: `(user_id, device_id, algorithm, key_id, key_json)`.
pub type ClaimedKey = (String, String, String, String, String);

/// The keys of one device for `/keys/query`.
#[derive(Debug, Clone)]
pub struct DeviceKeysRow {
    pub user_id: String,
    pub device_id: String,
    pub key_json: String,
    pub display_name: Option<String>,
}

/// A signature from `key_signatures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySignature {
    pub target_user_id: String,
    pub target_key_id: String,
    pub signer_user_id: String,
    pub signer_key_id: String,
    pub signature: String,
}

impl Storage {
    /// Takes a stream position for a change of `user_id`'s device list and moves the user's
    /// `device_lists` row to it. The returned guard keeps the position in flight until the
    /// transaction ends.
    pub(crate) async fn mark_device_list_changed(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
    ) -> Result<InFlight<'_>> {
        let guard = self.next_stream_position(tx).await?;
        let position = guard.position();
        self.recent.device_list_changed_at(position);
        // Concurrent changes of one user may commit out of order on PostgreSQL: the row keeps
        // the highest position either way.
        sqlx::query(
            "INSERT INTO device_lists (user_id, stream_ordering) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET stream_ordering =
                CASE WHEN excluded.stream_ordering > device_lists.stream_ordering
                     THEN excluded.stream_ordering ELSE device_lists.stream_ordering END",
        )
        .bind(user_id)
        .bind(position)
        .execute(&mut **tx)
        .await?;
        Ok(guard)
    }

    /// Like [`Storage::mark_device_list_changed`], for a change only `viewer` is told about.
    async fn add_device_list_notice(
        &self,
        tx: &mut Transaction<'static, Any>,
        viewer: &str,
        changed: &str,
        position: i64,
    ) -> Result<()> {
        self.recent.device_list_changed_at(position);
        sqlx::query(
            "INSERT INTO device_list_notices (viewer_user_id, changed_user_id, stream_ordering)
             VALUES ($1, $2, $3)
             ON CONFLICT (viewer_user_id, changed_user_id) DO UPDATE SET stream_ordering =
                CASE WHEN excluded.stream_ordering > device_list_notices.stream_ordering
                     THEN excluded.stream_ordering ELSE device_list_notices.stream_ordering END",
        )
        .bind(viewer)
        .bind(changed)
        .bind(position)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Removes what storage keeps about devices beyond their own rows and records the
    /// device-list change, inside a transaction that deletes devices. Keys and pending
    /// to-device messages go with the device rows (ON DELETE CASCADE); signatures of the
    /// devices' keys, and those the devices made, are removed here.
    pub(crate) async fn forget_devices_e2ee<'a>(
        &'a self,
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        device_ids: &[String],
    ) -> Result<InFlight<'a>> {
        for device_id in device_ids {
            sqlx::query(
                "DELETE FROM key_signatures
                 WHERE (target_user_id = $1 AND target_key_id = $2)
                    OR (signer_user_id = $1 AND signer_key_id = $3)",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(format!("ed25519:{device_id}"))
            .execute(&mut **tx)
            .await?;
        }
        self.mark_device_list_changed(tx, user_id).await
    }

    /// Removes everything encryption-related of a user who is being deactivated (their
    /// devices, and with them device keys, one-time keys and to-device messages, are deleted
    /// by the caller): cross-signing keys, signatures they made or received, key backups.
    pub(crate) async fn forget_user_e2ee<'a>(
        &'a self,
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
    ) -> Result<InFlight<'a>> {
        for sql in [
            "DELETE FROM cross_signing_keys WHERE user_id = $1",
            "DELETE FROM key_signatures WHERE target_user_id = $1 OR signer_user_id = $1",
            "DELETE FROM device_list_notices WHERE viewer_user_id = $1",
            "DELETE FROM backup_keys WHERE user_id = $1",
            "UPDATE backup_versions SET deleted = 1 WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(user_id).execute(&mut **tx).await?;
        }
        self.mark_device_list_changed(tx, user_id).await
    }

    /// Stores a device's uploaded keys in one transaction: device keys (replacing different
    /// ones, which drops the signatures made of the old ones), new one-time keys (a key
    /// already stored identically is skipped) and fallback keys (replacing the previous one
    /// of the algorithm, unused again unless it is the same key). Returns the one-time key
    /// counts after the upload.
    pub async fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        upload: &KeyUpload<'_>,
    ) -> Result<UploadOutcome> {
        let mut tx = self.begin_write().await?;
        let exists =
            sqlx::query("SELECT 1 AS one FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        if !exists {
            return Ok(UploadOutcome::NoSuchDevice);
        }

        for key in upload.one_time_keys {
            let inserted = sqlx::query(
                "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(&key.algorithm)
            .bind(&key.key_id)
            .bind(&key.key_json)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                let stored: String = sqlx::query(
                    "SELECT key_json FROM one_time_keys
                     WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(&key.algorithm)
                .bind(&key.key_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("key_json")?;
                if stored != key.key_json {
                    return Ok(UploadOutcome::OneTimeKeyConflict(format!(
                        "{}:{}",
                        key.algorithm, key.key_id
                    )));
                }
            }
        }

        for key in upload.fallback_keys {
            // The same key again keeps its `used` flag; a new key starts unused.
            sqlx::query(
                "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
                 VALUES ($1, $2, $3, $4, $5, 0)
                 ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET
                    key_id = excluded.key_id, key_json = excluded.key_json,
                    used = CASE WHEN fallback_keys.key_id = excluded.key_id
                                 AND fallback_keys.key_json = excluded.key_json
                                THEN fallback_keys.used ELSE 0 END",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(&key.algorithm)
            .bind(&key.key_id)
            .bind(&key.key_json)
            .execute(&mut *tx)
            .await?;
        }

        let mut device_list_changed = false;
        let mut _in_flight = None;
        if let Some(json) = upload.device_keys {
            let stored: Option<String> = sqlx::query(
                "SELECT key_json FROM device_keys WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get("key_json"))
            .transpose()?;
            if stored.as_deref() != Some(json) {
                sqlx::query(
                    "INSERT INTO device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                )
                .bind(user_id)
                .bind(device_id)
                .bind(json)
                .execute(&mut *tx)
                .await?;
                if stored.is_some() {
                    // Signatures of the old keys say nothing about the new ones.
                    sqlx::query(
                        "DELETE FROM key_signatures WHERE target_user_id = $1 AND target_key_id = $2",
                    )
                    .bind(user_id)
                    .bind(device_id)
                    .execute(&mut *tx)
                    .await?;
                }
                _in_flight = Some(self.mark_device_list_changed(&mut tx, user_id).await?);
                device_list_changed = true;
            }
        }

        let counts = Self::count_one_time_keys_in(&mut tx, user_id, device_id).await?;
        tx.commit().await?;
        self.recent.key_counts_changed();
        Ok(UploadOutcome::Stored {
            one_time_key_counts: counts,
            device_list_changed,
        })
    }

    async fn count_one_time_keys_in(
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        device_id: &str,
    ) -> Result<BTreeMap<String, u64>> {
        let rows = sqlx::query(
            "SELECT algorithm, COUNT(*) AS n FROM one_time_keys
             WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("algorithm")?,
                    row.try_get::<i64, _>("n")?.max(0) as u64,
                ))
            })
            .collect()
    }

    /// The device's unclaimed one-time key counts per algorithm, and the algorithms of its
    /// unused fallback keys (one round trip, for every sync).
    pub async fn key_counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<(BTreeMap<String, u64>, Vec<String>)> {
        let generation = match self.recent.key_counts(user_id, device_id) {
            Ok(counts) => return Ok(counts),
            Err(generation) => generation,
        };
        let rows = sqlx::query(
            "SELECT 0 AS fallback, algorithm, COUNT(*) AS n FROM one_time_keys
               WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm
             UNION ALL
             SELECT 1 AS fallback, algorithm, 0 AS n FROM fallback_keys
               WHERE user_id = $1 AND device_id = $2 AND used = 0",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = BTreeMap::new();
        let mut unused_fallback = Vec::new();
        for row in &rows {
            let algorithm: String = row.try_get("algorithm")?;
            if row.try_get::<i64, _>("fallback")? == 1 {
                unused_fallback.push(algorithm);
            } else {
                counts.insert(algorithm, row.try_get::<i64, _>("n")?.max(0) as u64);
            }
        }
        unused_fallback.sort();
        let counts = (counts, unused_fallback);
        self.recent
            .store_key_counts(user_id, device_id, generation, &counts);
        Ok(counts)
    }

    /// Claims one key of `algorithm` for each `(user, device, algorithm)`: the device's oldest
    /// one-time key, which is deleted, or else its fallback key, which is marked used and
    /// stays. Devices with neither are left out. Each one-time key is handed out once, also
    /// under concurrent claims: the delete of a key decides who gets it.
    pub async fn claim_keys(&self, wanted: &[(String, String, String)]) -> Result<Vec<ClaimedKey>> {
        let mut claimed = Vec::new();
        for chunk in wanted.chunks(CLAIM_CHUNK) {
            let result = self.claim_chunk(chunk, &mut claimed).await;
            self.recent.key_counts_changed();
            result?;
        }
        Ok(claimed)
    }

    async fn claim_chunk(
        &self,
        wanted: &[(String, String, String)],
        claimed: &mut Vec<ClaimedKey>,
    ) -> Result<()> {
        let mut pending: Vec<&(String, String, String)> = wanted.iter().collect();
        // One statement claims the oldest key of every pending device: the CTE picks one key
        // per device (one index entry each, through `one_time_keys_claim`), the DELETE takes
        // them. On PostgreSQL a concurrent claim may delete a chosen key first; that device
        // then gets nothing from this round and is tried again while it still has keys. A
        // handful of rounds is plenty: each round some claimer makes progress.
        for _ in 0..8 {
            if pending.is_empty() {
                break;
            }
            let sql = format!(
                "WITH chosen AS MATERIALIZED (
                    SELECT (SELECT k.key_seq FROM one_time_keys k
                            WHERE k.user_id = v.column1 AND k.device_id = v.column2
                              AND k.algorithm = v.column3
                            ORDER BY k.key_seq LIMIT 1) AS key_seq
                    FROM (VALUES {}) AS v)
                 DELETE FROM one_time_keys WHERE key_seq IN (SELECT key_seq FROM chosen)
                 RETURNING user_id, device_id, algorithm, key_id, key_json",
                triple_values(pending.len())
            );
            let rows = bind_triples(sqlx::query(AssertSqlSafe(sql.as_str())), &pending)
                .fetch_all(&self.pool)
                .await?;
            let mut got = HashSet::new();
            for row in &rows {
                let key = claimed_from_row(row)?;
                got.insert((key.0.clone(), key.1.clone(), key.2.clone()));
                claimed.push(key);
            }
            pending.retain(|t| !got.contains(*t));
            if pending.is_empty() {
                break;
            }
            // Those still pending either have no key left or lost a race: ask which.
            let sql = format!(
                "SELECT v.column1 AS user_id, v.column2 AS device_id, v.column3 AS algorithm
                 FROM (VALUES {}) AS v
                 WHERE EXISTS (SELECT 1 FROM one_time_keys k
                               WHERE k.user_id = v.column1 AND k.device_id = v.column2
                                 AND k.algorithm = v.column3)",
                triple_values(pending.len())
            );
            let left: HashSet<(String, String, String)> =
                bind_triples(sqlx::query(AssertSqlSafe(sql.as_str())), &pending)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|row| {
                        Ok((
                            row.try_get("user_id")?,
                            row.try_get("device_id")?,
                            row.try_get("algorithm")?,
                        ))
                    })
                    .collect::<Result<_>>()?;
            let (retry, exhausted): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|t| left.contains(*t));
            self.claim_fallback(&exhausted, claimed).await?;
            pending = retry;
        }
        // Still contended after every round: those devices get their fallback key, as if
        // their one-time keys had run out.
        self.claim_fallback(&pending, claimed).await
    }

    async fn claim_fallback(
        &self,
        wanted: &[&(String, String, String)],
        claimed: &mut Vec<ClaimedKey>,
    ) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE fallback_keys SET used = 1
             WHERE (user_id, device_id, algorithm) IN (VALUES {})
             RETURNING user_id, device_id, algorithm, key_id, key_json",
            triple_values(wanted.len())
        );
        let rows = bind_triples(sqlx::query(AssertSqlSafe(sql.as_str())), wanted)
            .fetch_all(&self.pool)
            .await?;
        for row in &rows {
            claimed.push(claimed_from_row(row)?);
        }
        Ok(())
    }

    /// The device keys of `user_ids` (all their devices), with each device's display name.
    pub async fn device_keys_for_users(&self, user_ids: &[String]) -> Result<Vec<DeviceKeysRow>> {
        let mut out = Vec::new();
        for chunk in user_ids.chunks(500) {
            let sql = format!(
                "SELECT k.user_id, k.device_id, k.key_json, d.display_name
                 FROM device_keys k JOIN devices d
                   ON d.user_id = k.user_id AND d.device_id = k.device_id
                 WHERE k.user_id IN ({}) ORDER BY k.user_id, k.device_id",
                params_from(1, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for user in chunk {
                query = query.bind(user);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(DeviceKeysRow {
                    user_id: row.try_get("user_id")?,
                    device_id: row.try_get("device_id")?,
                    key_json: row.try_get("key_json")?,
                    display_name: row.try_get("display_name")?,
                });
            }
        }
        Ok(out)
    }

    /// Cross-signing keys of `user_ids`: `(user_id, key_type, key_json)`.
    pub async fn cross_signing_keys_for_users(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for chunk in user_ids.chunks(500) {
            let sql = format!(
                "SELECT user_id, key_type, key_json FROM cross_signing_keys WHERE user_id IN ({})",
                params_from(1, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for user in chunk {
                query = query.bind(user);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push((
                    row.try_get("user_id")?,
                    row.try_get("key_type")?,
                    row.try_get("key_json")?,
                ));
            }
        }
        Ok(out)
    }

    /// Signatures of the keys of `target_user_ids` made by their owners or by `viewer`
    /// (signatures by a third user's user-signing key are that user's business).
    pub async fn key_signatures_for(
        &self,
        target_user_ids: &[String],
        viewer: &str,
    ) -> Result<Vec<KeySignature>> {
        let mut out = Vec::new();
        for chunk in target_user_ids.chunks(500) {
            let sql = format!(
                "SELECT target_user_id, target_key_id, signer_user_id, signer_key_id, signature
                 FROM key_signatures
                 WHERE target_user_id IN ({})
                   AND (signer_user_id = target_user_id OR signer_user_id = $1)",
                params_from(2, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(viewer);
            for user in chunk {
                query = query.bind(user);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(KeySignature {
                    target_user_id: row.try_get("target_user_id")?,
                    target_key_id: row.try_get("target_key_id")?,
                    signer_user_id: row.try_get("signer_user_id")?,
                    signer_key_id: row.try_get("signer_key_id")?,
                    signature: row.try_get("signature")?,
                });
            }
        }
        Ok(out)
    }

    /// Replaces some of a user's cross-signing keys (`(key_type, key_json)`), in one
    /// transaction. `public` says whether others must be told (master or self-signing key
    /// changed) or only the user (user-signing key).
    pub async fn set_cross_signing_keys(
        &self,
        user_id: &str,
        keys: &[(&str, String)],
        public: bool,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (key_type, json) in keys {
            sqlx::query(
                "INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
            )
            .bind(user_id)
            .bind(*key_type)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        }
        let _in_flight = if public {
            self.mark_device_list_changed(&mut tx, user_id).await?
        } else {
            let guard = self.next_stream_position(&mut tx).await?;
            let position = guard.position();
            self.add_device_list_notice(&mut tx, user_id, user_id, position)
                .await?;
            guard
        };
        tx.commit().await?;
        Ok(())
    }

    /// Stores checked signatures uploaded by `signer`, in one transaction. Signatures of the
    /// signer's own keys are device-list changes of the signer; signatures of other users'
    /// master keys are told to the signer only.
    pub async fn store_key_signatures(
        &self,
        signer: &str,
        signatures: &[KeySignature],
    ) -> Result<()> {
        if signatures.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for s in signatures {
            sqlx::query(
                "INSERT INTO key_signatures
                    (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)
                 DO UPDATE SET signature = excluded.signature",
            )
            .bind(&s.target_user_id)
            .bind(&s.target_key_id)
            .bind(&s.signer_user_id)
            .bind(&s.signer_key_id)
            .bind(&s.signature)
            .execute(&mut *tx)
            .await?;
        }
        let mut guards = Vec::new();
        if signatures.iter().any(|s| s.target_user_id == signer) {
            guards.push(self.mark_device_list_changed(&mut tx, signer).await?);
        }
        let mut others: Vec<&str> = signatures
            .iter()
            .map(|s| s.target_user_id.as_str())
            .filter(|u| *u != signer)
            .collect();
        others.sort_unstable();
        others.dedup();
        if !others.is_empty() {
            let guard = self.next_stream_position(&mut tx).await?;
            let position = guard.position();
            guards.push(guard);
            for other in others {
                self.add_device_list_notice(&mut tx, signer, other, position)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Users whose device lists changed in `(after, upto]` and whom `user_id` should hear
    /// about: those sharing a joined room with them now, the user themselves, and changes
    /// told to `user_id` alone.
    pub async fn device_list_changes(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT d.user_id AS user_id FROM device_lists d
             WHERE d.stream_ordering > $2 AND d.stream_ordering <= $3
               AND (d.user_id = $1 OR EXISTS (
                    SELECT 1 FROM room_memberships mine
                    JOIN room_memberships theirs ON theirs.room_id = mine.room_id
                    WHERE mine.user_id = $1 AND mine.membership = 'join'
                      AND theirs.user_id = d.user_id AND theirs.membership = 'join'))
             UNION
             SELECT n.changed_user_id AS user_id FROM device_list_notices n
             WHERE n.viewer_user_id = $1 AND n.stream_ordering > $2 AND n.stream_ordering <= $3",
        )
        .bind(user_id)
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get("user_id")?)).collect()
    }

    /// Membership changes in `(after, upto]` that matter to `user_id`'s device lists, as
    /// `(other user, their membership, my membership, whether mine changed in the window)`:
    /// other members of the user's rooms whose membership changed in the window, and every
    /// member of a room whose membership of the user changed in the window.
    pub async fn membership_changes_around(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<(String, String, String, bool)>> {
        let rows = sqlx::query(
            "SELECT theirs.user_id AS other, theirs.membership AS theirs, mine.membership AS mine,
                    0 AS i_moved
             FROM room_memberships mine
             JOIN room_memberships theirs ON theirs.room_id = mine.room_id
             WHERE mine.user_id = $1 AND mine.membership = 'join'
               AND mine.stream_ordering <= $2
               AND theirs.stream_ordering > $2 AND theirs.stream_ordering <= $3
               AND theirs.user_id <> $1
             UNION ALL
             SELECT theirs.user_id AS other, theirs.membership AS theirs, mine.membership AS mine,
                    1 AS i_moved
             FROM room_memberships mine
             JOIN room_memberships theirs ON theirs.room_id = mine.room_id
             WHERE mine.user_id = $1
               AND mine.stream_ordering > $2 AND mine.stream_ordering <= $3
               AND theirs.user_id <> $1
               AND (theirs.membership = 'join'
                    OR (theirs.stream_ordering > $2 AND theirs.stream_ordering <= $3))",
        )
        .bind(user_id)
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("other")?,
                    row.try_get("theirs")?,
                    row.try_get("mine")?,
                    row.try_get::<i64, _>("i_moved")? == 1,
                ))
            })
            .collect()
    }

    /// Which of `others` share a joined room with `user_id` now.
    pub async fn users_sharing_a_room(
        &self,
        user_id: &str,
        others: &[String],
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in others.chunks(500) {
            let sql = format!(
                "SELECT DISTINCT theirs.user_id AS user_id FROM room_memberships mine
                 JOIN room_memberships theirs ON theirs.room_id = mine.room_id
                 WHERE mine.user_id = $1 AND mine.membership = 'join'
                   AND theirs.membership = 'join' AND theirs.user_id IN ({})",
                params_from(2, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(user_id);
            for other in chunk {
                query = query.bind(other);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(row.try_get("user_id")?);
            }
        }
        Ok(out)
    }
}

/// `($1, $2, $3), ($4, $5, $6), …` for `n` triples, a `VALUES` list whose columns are
/// `column1`, `column2` and `column3` on both engines.
fn triple_values(n: usize) -> String {
    (0..n)
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect::<Vec<_>>()
        .join(", ")
}

fn bind_triples<'q>(
    mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    triples: &[&'q (String, String, String)],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    for (user, device, algorithm) in triples {
        query = query.bind(user).bind(device).bind(algorithm);
    }
    query
}

fn claimed_from_row(row: &sqlx::any::AnyRow) -> Result<ClaimedKey> {
    Ok((
        row.try_get("user_id")?,
        row.try_get("device_id")?,
        row.try_get("algorithm")?,
        row.try_get("key_id")?,
        row.try_get("key_json")?,
    ))
}
