//! Typing notifications: in memory only (they are gone in seconds and never stored), with a
//! per-room version so that sync sends a room's typing list only when it changed.
//!
//! <https://spec.matrix.org/latest/client-server-api/#typing-notifications>
//!
//! A sync token carries the typing serial it saw (`s<position>_<serial>`); every change bumps
//! the serial and the changed room's version. Expiry is a change too: the sweeper in
//! `lib.rs` calls [`Typing::expire`] and wakes the room's members.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// Default and longest typing timeouts.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    users: HashMap<String, Instant>,
    version: u64,
}

/// Who is typing where. A std mutex: held for map operations only.
#[derive(Default)]
pub struct Typing {
    rooms: Mutex<HashMap<String, RoomTyping>>,
    serial: AtomicU64,
}

impl Typing {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomTyping>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, room: &mut RoomTyping) {
        room.version = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
    }

    /// Sets or clears a user's typing; returns whether the room's list changed.
    pub fn set(
        &self,
        room_id: &str,
        user_id: &str,
        typing: bool,
        timeout: Duration,
        now: Instant,
    ) -> bool {
        let mut rooms = self.lock();
        let room = rooms.entry(room_id.to_owned()).or_default();
        let changed = if typing {
            room.users
                .insert(user_id.to_owned(), now + timeout.min(MAX_TIMEOUT))
                .is_none()
        } else {
            room.users.remove(user_id).is_some()
        };
        if changed {
            self.bump(room);
        }
        changed
    }

    /// Drops expired typing entries; returns the rooms whose lists changed.
    pub fn expire(&self, now: Instant) -> Vec<String> {
        let mut rooms = self.lock();
        let mut changed = Vec::new();
        for (room_id, room) in rooms.iter_mut() {
            let before = room.users.len();
            room.users.retain(|_, expiry| *expiry > now);
            if room.users.len() != before {
                room.version = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
                changed.push(room_id.clone());
            }
        }
        rooms.retain(|_, room| !room.users.is_empty() || room.version > 0);
        changed
    }

    /// The current serial, for sync tokens.
    pub fn serial(&self) -> u64 {
        self.serial.load(Ordering::SeqCst)
    }

    /// The users typing in a room if its list changed after `since_serial`.
    pub fn changed_since(&self, room_id: &str, since_serial: u64) -> Option<Vec<String>> {
        let rooms = self.lock();
        let room = rooms.get(room_id)?;
        (room.version > since_serial).then(|| {
            let mut users: Vec<String> = room.users.keys().cloned().collect();
            users.sort();
            users
        })
    }

    /// The users typing in a room now.
    pub fn current(&self, room_id: &str) -> Vec<String> {
        self.changed_since(room_id, 0).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_and_expire() {
        let t = Typing::default();
        let now = Instant::now();
        assert!(t.set("!r", "@a", true, Duration::from_secs(5), now));
        let s1 = t.serial();
        assert_eq!(t.changed_since("!r", 0), Some(vec!["@a".to_owned()]));
        assert_eq!(t.changed_since("!r", s1), None);
        // Refreshing does not count as a change.
        assert!(!t.set("!r", "@a", true, Duration::from_secs(5), now));
        assert!(t.expire(now + Duration::from_secs(1)).is_empty());
        assert_eq!(
            t.expire(now + Duration::from_secs(6)),
            vec!["!r".to_owned()]
        );
        assert_eq!(t.changed_since("!r", s1), Some(vec![]));
        assert!(t.set("!r", "@b", true, Duration::from_secs(5), now));
        assert!(t.set("!r", "@b", false, Duration::ZERO, now));
        assert!(t.current("!r").is_empty());
    }
}
