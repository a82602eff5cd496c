//! Credentials: access tokens, device IDs and password hashes.
//!
//! Access tokens are 256-bit random strings; only their SHA-256 is stored, so a token is looked
//! up by hashing what the client presents. Passwords are hashed with argon2id on the blocking
//! thread pool, since a hash takes tens of milliseconds of CPU by design.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use argon2::{
    password_hash::{
        rand_core::OsRng as PhOsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
    },
    Argon2,
};
use rand::{distributions::Alphanumeric, Rng};
use ruma::{OwnedDeviceId, OwnedUserId};
use sha2::{Digest, Sha256};

use crate::{api::ruma::Sender, error::Error, AppState};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A new access token. The prefix makes leaked tokens easy to recognise in logs and scanners.
pub fn new_access_token() -> String {
    format!("myl_{}", random_string(43))
}

/// A new device ID: ten upper-case letters, as Synapse makes them.
pub fn new_device_id() -> OwnedDeviceId {
    let id: String = (0..10)
        .map(|_| rand::thread_rng().gen_range(b'A'..=b'Z') as char)
        .collect();
    id.into()
}

/// A random opaque identifier (UIA sessions, nonces).
pub fn new_opaque_id() -> String {
    random_string(24)
}

/// The form in which a token is stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Hashes a password with argon2id and a random salt (PHC string format).
pub async fn hash_password(password: String) -> Result<String, Error> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut PhOsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("hashing password: {e}")))
    })
    .await
    .map_err(Error::internal)?
}

/// Checks a password against a stored PHC hash. A malformed stored hash never matches.
pub async fn verify_password(password: String, hash: String) -> Result<bool, Error> {
    tokio::task::spawn_blocking(move || match PasswordHash::new(&hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    })
    .await
    .map_err(Error::internal)
}

/// Remembers when each device's "last seen" was last written, so that a busy client costs one
/// database write every few minutes rather than one per request. A std mutex is right here: it
/// is held for a map lookup only, never across an await.
#[derive(Default)]
pub struct LastSeen {
    written: Mutex<HashMap<(OwnedUserId, OwnedDeviceId), i64>>,
}

const LAST_SEEN_WRITE_INTERVAL_MS: i64 = 60_000;

impl LastSeen {
    /// Whether a new last-seen value should be written now; records it if so.
    fn should_write(&self, user: &OwnedUserId, device: &OwnedDeviceId, now: i64) -> bool {
        let mut map = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.clone(), device.clone());
        match map.get(&key) {
            Some(&last) if now - last < LAST_SEEN_WRITE_INTERVAL_MS => false,
            _ => {
                map.insert(key, now);
                true
            }
        }
    }
}

/// Resolves an access token to its user and device, and notes the device as seen.
pub async fn authenticate(state: &AppState, token: &str, ip: IpAddr) -> Result<Sender, Error> {
    let owner = state
        .storage
        .find_token(&hash_token(token))
        .await?
        .ok_or_else(Error::unknown_token)?;
    let now = now_ms();
    if owner.expires_ts.is_some_and(|expires| expires <= now) {
        // The client still has its refresh token: this is a soft logout.
        return Err(Error::expired_token());
    }
    if let Some(refresh) = &owner.retires_refresh_token {
        // The first use of a refreshed token retires the refresh token before it.
        state
            .storage
            .retire_predecessor(&owner.user_id, refresh)
            .await?;
    }
    let user_id = OwnedUserId::try_from(owner.user_id).map_err(Error::internal)?;
    let device_id = OwnedDeviceId::from(owner.device_id);
    if state.last_seen.should_write(&user_id, &device_id, now) {
        // Off the request path: a failed last-seen write must not fail the request.
        let storage = state.storage.clone();
        let (user, device) = (user_id.to_string(), device_id.to_string());
        tokio::spawn(async move {
            if let Err(e) = storage
                .touch_device(&user, &device, &ip.to_string(), now)
                .await
            {
                tracing::warn!(error = %e, "could not record device last seen");
            }
        });
    }
    Ok(Sender {
        user_id,
        device_id,
        is_admin: owner.is_admin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn password_hash_round_trip() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), hash.clone())
            .await
            .unwrap());
        assert!(!verify_password("wrong".into(), hash).await.unwrap());
        assert!(!verify_password("x".into(), "not a hash".into())
            .await
            .unwrap());
    }

    #[test]
    fn tokens_and_ids() {
        let a = new_access_token();
        assert!(a.starts_with("myl_") && a.len() == 47);
        assert_ne!(a, new_access_token());
        assert_eq!(hash_token("abc").len(), 64);
        let d = new_device_id();
        assert!(d.as_str().len() == 10 && d.as_str().chars().all(|c| c.is_ascii_uppercase()));
    }
}
