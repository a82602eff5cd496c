//! The global stream position, and which part of it is safe to read.
//!
//! Positions are handed out inside write transactions. On PostgreSQL two transactions can
//! commit out of order (position 11 visible before 10), so a reader that took "everything up
//! to 11" would skip 10 for ever. The tracker remembers positions handed out by this process
//! whose transactions have not finished; [`StreamTracker::safe_position`] is the highest
//! position below all of them, and sync tokens never go past it. (With several server
//! processes on one database, each will also need the others' in-flight positions; that comes
//! with multi-process support.)

use std::{collections::BTreeSet, sync::Mutex};

#[derive(Debug, Default)]
struct Inner {
    in_flight: BTreeSet<i64>,
    max_seen: i64,
}

/// Tracks in-flight stream positions. A std mutex: it is held for a set operation only.
#[derive(Debug, Default)]
pub struct StreamTracker {
    inner: Mutex<Inner>,
}

impl StreamTracker {
    pub(crate) fn starting_at(position: i64) -> Self {
        StreamTracker {
            inner: Mutex::new(Inner {
                in_flight: BTreeSet::new(),
                max_seen: position,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn begin(&self, position: i64) {
        let mut inner = self.lock();
        inner.in_flight.insert(position);
        inner.max_seen = inner.max_seen.max(position);
    }

    pub(crate) fn end(&self, position: i64) {
        self.lock().in_flight.remove(&position);
    }

    /// Every position at or below this one is committed (or was rolled back and never will be).
    pub fn safe_position(&self) -> i64 {
        let inner = self.lock();
        match inner.in_flight.first() {
            Some(lowest) => lowest - 1,
            None => inner.max_seen,
        }
    }
}

/// Ends a position's in-flight period when dropped: after commit, or on any early return.
pub(crate) struct InFlight<'a> {
    pub(crate) tracker: &'a StreamTracker,
    pub(crate) position: i64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.tracker.end(self.position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_position_stays_below_uncommitted_positions() {
        let t = StreamTracker::starting_at(5);
        assert_eq!(t.safe_position(), 5);
        t.begin(6);
        t.begin(7);
        t.end(7); // 7 committed before 6
        assert_eq!(t.safe_position(), 5);
        t.end(6);
        assert_eq!(t.safe_position(), 7);
    }
}
