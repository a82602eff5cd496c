//! Presence: online, unavailable or offline, a status message, and when the user was last
//! active. Kept in memory (it is soft state that clients refresh all the time), shared only
//! with users who share a room.
//!
//! <https://spec.matrix.org/latest/client-server-api/#presence>
//!
//! - A sync or WebSocket with `set_presence` (default `online`) counts as an open connection
//!   while it waits. An offline user who connects comes online only after
//!   `presence.online_debounce_ms`, and only if still connected then
//!   ([`Presence::connected`], [`Presence::publish_pending`]): a brief reconnection is never
//!   announced, so watchers see no flapping.
//! - Activity (sending an event, typing, a receipt, setting presence) makes a user online and
//!   `currently_active` ([`Presence::active`]). Merely syncing is not activity: like Synapse, a
//!   user whose client is open but who does nothing goes `unavailable` after
//!   `presence.unavailable_after_seconds`.
//! - A user with no open connection for `presence.offline_after_seconds` goes offline. The
//!   sweeper in `lib.rs` applies both timeouts ([`Presence::expire`]).
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
    /// Since when a connection is waiting out the debounce to bring the user online.
    pending_online: Option<i64>,
    version: u64,
    /// For a user of another server: until when its server's last report holds (its server
    /// sends the changes; without news for [`REMOTE_TIMEOUT_MS`] the user goes offline here).
    /// 0 for local users.
    remote_until: i64,
}

/// How long another server's report of its user's presence holds without a new one (as in
/// Synapse).
pub const REMOTE_TIMEOUT_MS: i64 = 30 * 60 * 1000;

impl UserPresence {
    fn offline(now: i64) -> Self {
        UserPresence {
            presence: "offline".into(),
            status_msg: None,
            last_active: 0,
            open: 0,
            last_seen: now,
            pending_online: None,
            version: 0,
            remote_until: 0,
        }
    }
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
            .or_insert_with(|| UserPresence::offline(now));
        entry.pending_online = None;
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

    /// A user of another server, as their server reports them: presence, status message and
    /// when they were last active. Returns whether anything others can see changed.
    pub fn set_remote(
        &self,
        user: &str,
        presence: &str,
        status_msg: Option<String>,
        last_active: i64,
        now: i64,
    ) -> bool {
        let changed = self.set(user, presence, Some(status_msg), now);
        if let Some(entry) = self.lock().get_mut(user) {
            entry.last_active = last_active;
            entry.remote_until = now + REMOTE_TIMEOUT_MS;
        }
        changed
    }

    /// Activity by the user: online now, and `currently_active`. Returns whether others can
    /// see a change (from offline or unavailable).
    pub fn active(&self, user: &str, now: i64) -> bool {
        let mut users = self.lock();
        let entry = users
            .entry(user.to_owned())
            .or_insert_with(|| UserPresence::offline(now));
        entry.last_active = now;
        entry.last_seen = now;
        entry.pending_online = None;
        if entry.presence == "online" {
            return false;
        }
        entry.presence = "online".into();
        entry.version = self.next();
        true
    }

    /// A sync or WebSocket with `set_presence` `presence` (`online` or `unavailable`) opened.
    /// Counts the connection. Returns `Some(true)` when others can see a change now (an
    /// explicit `unavailable`), `Some(false)` when nothing changed, and `None` when the user
    /// is coming online and the caller should call [`Self::publish_pending`] after the
    /// debounce.
    pub fn connected(&self, user: &str, presence: &str, now: i64) -> Option<bool> {
        let mut users = self.lock();
        // Looked up first, so that a known user's every sync does not allocate a key.
        if !users.contains_key(user) {
            users.insert(user.to_owned(), UserPresence::offline(now));
        }
        let Some(entry) = users.get_mut(user) else {
            return Some(false);
        };
        entry.open += 1;
        entry.last_seen = now;
        match (entry.presence.as_str(), presence) {
            ("offline", "online") => {
                if entry.pending_online.is_some() {
                    Some(false) // already waiting out the debounce
                } else {
                    entry.pending_online = Some(now);
                    None
                }
            }
            // Asking to be shown idle is immediate; syncing never overrides idle with online.
            ("online", "unavailable") | ("offline", "unavailable") => {
                entry.presence = "unavailable".into();
                entry.pending_online = None;
                entry.version = self.next();
                Some(true)
            }
            _ => Some(false),
        }
    }

    /// A connection counted by [`Self::connected`] closed.
    pub fn disconnected(&self, user: &str, now: i64) {
        let mut users = self.lock();
        if let Some(entry) = users.get_mut(user) {
            entry.open = entry.open.saturating_sub(1);
            entry.last_seen = now;
        }
    }

    /// After the debounce: brings a pending user online if they are still connected (an
    /// open connection, or a long-poll sync within the debounce). Returns whether others can
    /// see a change.
    pub fn publish_pending(&self, user: &str, now: i64, debounce_ms: i64) -> bool {
        let mut users = self.lock();
        let Some(entry) = users.get_mut(user) else {
            return false;
        };
        let Some(since) = entry.pending_online.take() else {
            return false;
        };
        let still_here = entry.open > 0 || now - entry.last_seen <= debounce_ms;
        if !still_here || entry.presence != "offline" {
            return false;
        }
        entry.presence = "online".into();
        entry.last_active = since;
        entry.version = self.next();
        true
    }

    /// Applies the timeouts: online users idle for `idle_ms` become unavailable; users with
    /// no open connection for `offline_ms` go offline. Returns the users who changed.
    pub fn expire(&self, now: i64, idle_ms: i64, offline_ms: i64) -> Vec<String> {
        let mut users = self.lock();
        let mut changed = Vec::new();
        for (user, entry) in users.iter_mut() {
            let next = if entry.remote_until > 0 {
                // Another server's user: its server reports the changes.
                if entry.presence == "offline" || now < entry.remote_until {
                    continue;
                }
                "offline"
            } else if entry.presence != "offline"
                && entry.open == 0
                && now - entry.last_seen > offline_ms
            {
                entry.pending_online = None;
                "offline"
            } else if entry.presence == "online" && now - entry.last_active > idle_ms {
                "unavailable"
            } else {
                continue;
            };
            entry.presence = next.into();
            entry.version = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
            changed.push(user.clone());
        }
        changed
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
    fn explicit_changes_bump_the_serial_and_offline_follows_disconnection() {
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
        assert_eq!(p.connected("@a", "online", 2_000), Some(false));
        assert!(
            p.expire(100_000, 1_000_000, 30_000).is_empty(),
            "an open connection keeps them online"
        );
        p.disconnected("@a", 100_000);
        assert_eq!(p.expire(140_000, 1_000_000, 30_000), vec!["@a".to_owned()]);
        assert_eq!(
            p.events_since(&["@a".into()], s1, 140_000)[0]["content"]["presence"],
            "offline"
        );
        assert!(p.set("@a", "unavailable", Some(Some("lunch".into())), 150_000));
        assert_eq!(p.get("@a", 150_000)["status_msg"], "lunch");
        assert_eq!(p.get("@nobody", 0)["presence"], "offline");
    }

    #[test]
    fn coming_online_by_connecting_waits_out_the_debounce() {
        let p = Presence::default();
        assert_eq!(
            p.connected("@a", "online", 0),
            None,
            "pending, not announced"
        );
        assert_eq!(p.get("@a", 0)["presence"], "offline");
        assert_eq!(
            p.connected("@a", "online", 100),
            Some(false),
            "already pending"
        );
        let s = p.serial();
        assert!(p.publish_pending("@a", 2_000, 2_000), "still connected");
        assert!(p.serial() > s);
        assert_eq!(p.get("@a", 2_000)["presence"], "online");

        // A brief visit that ends before the debounce is never announced.
        let q = Presence::default();
        assert_eq!(q.connected("@b", "online", 0), None);
        q.disconnected("@b", 10);
        let s = q.serial();
        assert!(!q.publish_pending("@b", 5_000, 2_000));
        assert_eq!(q.serial(), s, "no change was published");
        assert_eq!(q.get("@b", 5_000)["presence"], "offline");
    }

    #[test]
    fn idle_users_become_unavailable_until_active() {
        let p = Presence::default();
        assert!(p.active("@a", 1_000));
        assert_eq!(p.connected("@a", "online", 1_000), Some(false));
        assert!(p.expire(2_000, 5_000, 30_000).is_empty());
        assert_eq!(p.expire(7_000, 5_000, 30_000), vec!["@a".to_owned()]);
        assert_eq!(p.get("@a", 7_000)["presence"], "unavailable");
        assert_eq!(p.get("@a", 7_000)["currently_active"], false);
        assert_eq!(
            p.connected("@a", "online", 8_000),
            Some(false),
            "syncing does not override idle"
        );
        assert!(p.active("@a", 9_000), "activity brings them back");
        assert_eq!(p.get("@a", 9_000)["presence"], "online");
        assert!(
            !p.active("@a", 9_500),
            "already online: no change to announce"
        );
    }
}
