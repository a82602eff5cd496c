//! Which member events each device already has, for lazy-loading without redundancy.
//!
//! <https://spec.matrix.org/latest/client-server-api/#lazy-loading-room-members>
//!
//! With `lazy_load_members`, a sync sends the member events of the timeline's senders. Unless
//! the filter sets `include_redundant_members`, the spec asks the server not to send one the
//! device already has. This remembers, per device and room, each member event sent and the
//! position (`next_batch`) of the response that carried it. A member event counts as known
//! only when the device syncs *from* that position or later: a device retrying an older token
//! (its response was lost) gets it again. Memory only: after a restart, or when the bound is
//! hit, events are sent again, which is redundant but never wrong. Like the other sync caches
//! it assumes one server process.

use std::collections::HashMap;

/// Devices remembered before everything is forgotten.
const MAX_DEVICES: usize = 20_000;
/// Member events remembered per device and room before that room is forgotten.
const MAX_PER_ROOM: usize = 2_000;

/// `(user, device)` → room → member event ID → position of the response that sent it.
type Sent = HashMap<(String, String), HashMap<String, HashMap<String, i64>>>;

#[derive(Default)]
pub struct LazyMembers {
    /// A std mutex: every operation is a short map update.
    sent: std::sync::Mutex<Sent>,
}

impl LazyMembers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sent> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the device has `event_id` of `room`, given that it syncs from `since`.
    pub fn known(&self, user: &str, device: &str, room: &str, event_id: &str, since: i64) -> bool {
        self.lock()
            .get(&(user.to_owned(), device.to_owned()))
            .and_then(|rooms| rooms.get(room))
            .and_then(|events| events.get(event_id))
            .is_some_and(|&sent_at| sent_at <= since)
    }

    /// Remembers that the response ending at `upto` carries these member events of `room`.
    pub fn record<'a>(
        &self,
        user: &str,
        device: &str,
        room: &str,
        event_ids: impl IntoIterator<Item = &'a str>,
        upto: i64,
    ) {
        let mut sent = self.lock();
        let key = (user.to_owned(), device.to_owned());
        if !sent.contains_key(&key) && sent.len() >= MAX_DEVICES {
            sent.clear();
        }
        let events = sent
            .entry(key)
            .or_default()
            .entry(room.to_owned())
            .or_default();
        for id in event_ids {
            // The earliest response that carried it is the one that counts.
            events.entry(id.to_owned()).or_insert(upto);
        }
        if events.len() > MAX_PER_ROOM {
            events.clear();
        }
    }

    /// Forgets what a device has: it starts over (initial sync).
    pub fn forget(&self, user: &str, device: &str) {
        self.lock().remove(&(user.to_owned(), device.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_event_is_known_once_the_device_syncs_past_its_response() {
        let lazy = LazyMembers::default();
        lazy.record("@a:x", "D", "!r", ["$m1"], 10);
        assert!(
            !lazy.known("@a:x", "D", "!r", "$m1", 9),
            "response not acknowledged"
        );
        assert!(lazy.known("@a:x", "D", "!r", "$m1", 10));
        assert!(!lazy.known("@a:x", "E", "!r", "$m1", 10), "another device");
        assert!(!lazy.known("@a:x", "D", "!s", "$m1", 10), "another room");
        // Sent again later: the first response still counts.
        lazy.record("@a:x", "D", "!r", ["$m1"], 20);
        assert!(lazy.known("@a:x", "D", "!r", "$m1", 15));
        lazy.forget("@a:x", "D");
        assert!(!lazy.known("@a:x", "D", "!r", "$m1", 30));
    }
}
