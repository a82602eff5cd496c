//! Presence: online, unavailable or offline, a status message, and when the user was last
//! active. Kept in memory (it is soft state that clients refresh all the time), shared only
//! with users who share a room.
//!
//! <https://spec.matrix.org/latest/client-server-api/#presence>
//!
//! - A sync or WebSocket with `set_presence` (default `online`) marks its user active, and
//!   counts as an open connection while it waits.
//! - A user with no open connection for `presence.offline_after_seconds` goes offline (the
//!   sweeper in `lib.rs` calls [`Presence::expire`]).
//! - Each change bumps a serial; sync tokens carry the serial they saw, and a sync sends only
//!   each watched user's latest state, so a burst of changes costs one update per watcher.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct UserPresence {
    presence: String,
    status_msg: Option<String>,
    last_active: i64,
    /// Open syncs and WebSockets.
    open: usize,
    /// When the last connection closed (or the state was set), for going offline.
    last_seen: i64,
    version: u64,
}

/// Everyone's presence. A std mutex: held for map operations only.
#[derive(Default)]
pub struct Presence {
    users: Mutex<HashMap<String, UserPresence>>,
    serial: AtomicU64,
}

/// Within this long of their last activity a user is `currently_active`.
const ACTIVE_WINDOW_MS: i64 = 60_000;

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, UserPresence>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next(&self) -> u64 {
        self.serial.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn serial(&self) -> u64 {
        self.serial.load(Ordering::SeqCst)
    }

    /// Sets a user's presence (and status message, when given). Returns whether anything
    /// others can see changed.
    pub fn set(
        &self,
        user: &str,
        presence: &str,
        status_msg: Option<Option<String>>,
        now: i64,
    ) -> bool {
        let mut users = self.lock();
        let entry = users
            .entry(user.to_owned())
            .or_insert_with(|| UserPresence {
                presence: "offline".into(),
                status_msg: None,
                last_active: 0,
                open: 0,
                last_seen: now,
                version: 0,
            });
        let mut changed = entry.presence != presence;
        entry.presence = presence.to_owned();
        if let Some(msg) = status_msg {
            changed |= entry.status_msg != msg;
            entry.status_msg = msg;
        }
        if presence == "online" {
            entry.last_active = now;
        }
        entry.last_seen = now;
        if changed {
            entry.version = self.next();
        }
        changed
    }

    /// A sync or WebSocket of this user opened (`true`) or closed (`false`).
    pub fn connection(&self, user: &str, open: bool, now: i64) {
        let mut users = self.lock();
        if let Some(entry) = users.get_mut(user) {
            if open {
                entry.open += 1;
            } else {
                entry.open = entry.open.saturating_sub(1);
            }
            entry.last_seen = now;
        }
    }

    /// Users with no open connection for `after_ms` go offline; returns them.
    pub fn expire(&self, now: i64, after_ms: i64) -> Vec<String> {
        let mut users = self.lock();
        let mut gone = Vec::new();
        for (user, entry) in users.iter_mut() {
            if entry.presence != "offline" && entry.open == 0 && now - entry.last_seen > after_ms {
                entry.presence = "offline".into();
                entry.version = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
                gone.push(user.clone());
            }
        }
        gone
    }

    fn content(entry: &UserPresence, now: i64) -> Value {
        let mut content = json!({ "presence": entry.presence });
        if entry.last_active > 0 {
            content["last_active_ago"] = (now - entry.last_active).max(0).into();
            content["currently_active"] =
                (entry.presence == "online" && now - entry.last_active < ACTIVE_WINDOW_MS).into();
        }
        if let Some(msg) = &entry.status_msg {
            content["status_msg"] = msg.clone().into();
        }
        content
    }

    /// A user's presence content, as `GET /presence/{userId}/status` returns it.
    pub fn get(&self, user: &str, now: i64) -> Value {
        match self.lock().get(user) {
            Some(entry) => Self::content(entry, now),
            None => json!({ "presence": "offline" }),
        }
    }

    /// `m.presence` events for those of `users` whose presence changed after `since_serial`
    /// (all known ones when it is 0).
    pub fn events_since(&self, users: &[String], since_serial: u64, now: i64) -> Vec<Value> {
        let map = self.lock();
        users
            .iter()
            .filter_map(|user| {
                let entry = map.get(user)?;
                (entry.version > since_serial || (since_serial == 0 && entry.version > 0)).then(|| {
                    json!({ "type": "m.presence", "sender": user, "content": Self::content(entry, now) })
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_bump_the_serial_and_offline_follows_idle() {
        let p = Presence::default();
        assert!(p.set("@a", "online", None, 1_000));
        let s1 = p.serial();
        assert!(
            !p.set("@a", "online", None, 2_000),
            "refreshing is not a change"
        );
        assert_eq!(p.serial(), s1);
        assert_eq!(p.get("@a", 2_000)["presence"], "online");
        assert_eq!(p.get("@a", 2_000)["currently_active"], true);
        p.connection("@a", true, 2_000);
        assert!(
            p.expire(100_000, 30_000).is_empty(),
            "an open connection keeps them online"
        );
        p.connection("@a", false, 100_000);
        assert_eq!(p.expire(140_000, 30_000), vec!["@a".to_owned()]);
        assert_eq!(
            p.events_since(&["@a".into()], s1, 140_000)[0]["content"]["presence"],
            "offline"
        );
        assert!(p.set("@a", "unavailable", Some(Some("lunch".into())), 150_000));
        assert_eq!(p.get("@a", 150_000)["status_msg"], "lunch");
        assert_eq!(p.get("@nobody", 0)["presence"], "offline");
    }
}
