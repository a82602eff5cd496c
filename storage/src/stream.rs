//! The global stream position, and which part of it is safe to read.
//!
//! Positions are handed out inside write transactions. On PostgreSQL two transactions can
//! commit out of order (position 11 visible before 10), so a reader that took "everything up
//! to 11" would skip 10 for ever. The tracker remembers positions handed out by this process
//! whose transactions have not finished; [`StreamTracker::safe_position`] is the highest
//! position below all of them, and sync tokens never go past it.
//!
//! The race this module exists for: the database hands a position out *before* the process
//! learns its number (the `nextval` round trip). If the tracker only heard of position 10
//! when the answer arrived, a transaction that took 11 a moment later and committed first
//! would make 11 look safe while 10 is still open, and a reader would skip 10 for ever (and
//! the safe position would move back to 9 once 10 was registered). So a writer first takes a
//! [`Reservation`] (before it asks the database), and while a reservation is open the safe
//! position stays at or below the highest position the tracker had seen when it was taken.
//! The database can only hand that reservation a position above that floor (a sequence never
//! goes back), so the safe position never passes it; when the positions arrive they replace
//! the reservation in the in-flight set under one lock. This makes the safe position exact
//! (every position at or below it has committed or never will) and monotonic.
//!
//! (With several server processes on one database, each will also need the others'
//! in-flight positions: a row per open position in a table, or positions handed out from one
//! process. That comes with multi-process support.)

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

#[derive(Debug, Default)]
struct Inner {
    /// Positions handed out whose transactions have not finished.
    in_flight: BTreeSet<i64>,
    /// Open reservations (asked of the database, number not known yet), each with the
    /// highest position seen when it was taken: its floor. Keys grow with time, so the first
    /// entry has the lowest floor.
    reservations: BTreeMap<u64, i64>,
    next_reservation: u64,
    /// The highest position handed out so far (committed or not).
    max_seen: i64,
}

/// Tracks in-flight stream positions. A std mutex: it is held for a set operation only, never
/// across an await.
#[derive(Debug, Default)]
pub struct StreamTracker {
    inner: Mutex<Inner>,
    /// Woken whenever the safe position may have moved (positions or a reservation ended),
    /// for work that must wait until a committed position is safe to read
    /// ([`StreamTracker::wait_safe`]).
    advanced: tokio::sync::Notify,
}

impl StreamTracker {
    pub(crate) fn starting_at(position: i64) -> Self {
        StreamTracker {
            inner: Mutex::new(Inner {
                max_seen: position,
                ..Inner::default()
            }),
            advanced: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces that positions are about to be taken from the database. Call it before the
    /// query that takes them; turn the reservation into [`InFlight`] positions with
    /// [`Reservation::fill`]. Dropping it (an error, a cancelled request) withdraws it.
    pub(crate) fn reserve(&self) -> Reservation<'_> {
        let mut inner = self.lock();
        let id = inner.next_reservation;
        inner.next_reservation += 1;
        let floor = inner.max_seen;
        inner.reservations.insert(id, floor);
        Reservation {
            tracker: self,
            id: Some(id),
        }
    }

    /// Every position at or below this one is committed (or was rolled back and never will
    /// be). Never decreases.
    pub fn safe_position(&self) -> i64 {
        let inner = self.lock();
        let mut safe = inner.max_seen;
        if let Some(lowest) = inner.in_flight.first() {
            safe = safe.min(lowest - 1);
        }
        if let Some((_, floor)) = inner.reservations.first_key_value() {
            safe = safe.min(*floor);
        }
        safe
    }

    /// Waits until the safe position is at least `position`. A position committed in one
    /// room can be unsafe for a moment because an earlier one (another room) is still open;
    /// work that follows the commit (waking a pusher) waits here instead of reading past it
    /// or missing it. Subscribes before it checks, so a move in between is not missed.
    pub async fn wait_safe(&self, position: i64) {
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            if self.safe_position() >= position {
                return;
            }
            advanced.await;
        }
    }
}

/// Positions being taken from the database, not yet known (see the module docs).
pub(crate) struct Reservation<'a> {
    tracker: &'a StreamTracker,
    /// `None` once filled.
    id: Option<u64>,
}

impl<'a> Reservation<'a> {
    /// The database handed out `positions`: they become in flight and the reservation ends,
    /// in one step, so no reader sees a moment where neither holds the safe position back.
    pub(crate) fn fill(mut self, mut positions: Vec<i64>) -> InFlight<'a> {
        positions.sort_unstable();
        let mut inner = self.tracker.lock();
        for &position in &positions {
            inner.in_flight.insert(position);
            inner.max_seen = inner.max_seen.max(position);
        }
        if let Some(id) = self.id.take() {
            inner.reservations.remove(&id);
        }
        InFlight {
            tracker: self.tracker,
            positions,
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.tracker.lock().reservations.remove(&id);
            self.tracker.advanced.notify_waiters();
        }
    }
}

/// Stream positions taken by a transaction that has not finished. Dropping the guard ends
/// their in-flight period: after commit, or on any early return or cancellation (the
/// transaction is then rolled back and the positions never appear).
pub(crate) struct InFlight<'a> {
    tracker: &'a StreamTracker,
    /// Ascending.
    positions: Vec<i64>,
}

impl InFlight<'_> {
    /// The positions, ascending.
    pub(crate) fn positions(&self) -> &[i64] {
        &self.positions
    }

    /// The first (lowest) position.
    pub(crate) fn position(&self) -> i64 {
        self.positions.first().copied().unwrap_or_default()
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut inner = self.tracker.lock();
        for position in &self.positions {
            inner.in_flight.remove(position);
        }
        drop(inner);
        self.tracker.advanced.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take<'a>(t: &'a StreamTracker, positions: &[i64]) -> InFlight<'a> {
        t.reserve().fill(positions.to_vec())
    }

    #[test]
    fn safe_position_stays_below_uncommitted_positions() {
        let t = StreamTracker::starting_at(5);
        assert_eq!(t.safe_position(), 5);
        let six = take(&t, &[6]);
        let seven = take(&t, &[7]);
        drop(seven); // 7 committed before 6
        assert_eq!(t.safe_position(), 5);
        drop(six);
        assert_eq!(t.safe_position(), 7);
    }

    /// The race of the module docs: 10 is handed out but its number has not reached the
    /// tracker when 11 is handed out, registered and committed.
    #[test]
    fn a_position_not_yet_known_holds_the_safe_position_back() {
        let t = StreamTracker::starting_at(9);
        let asking_for_ten = t.reserve();
        let eleven = take(&t, &[11]);
        drop(eleven);
        assert_eq!(t.safe_position(), 9, "11 committed, 10 is still open");
        let ten = asking_for_ten.fill(vec![10]);
        assert_eq!(t.safe_position(), 9);
        drop(ten);
        assert_eq!(t.safe_position(), 11);
    }

    #[tokio::test]
    async fn waiting_for_a_position_ends_when_the_earlier_one_commits() {
        let t = std::sync::Arc::new(StreamTracker::starting_at(9));
        let ten = take(&t, &[10]);
        let eleven = take(&t, &[11]);
        drop(eleven);
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { t.wait_safe(11).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "11 is committed but 10 is open");
        drop(ten);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken when 10 committed")
            .unwrap();
    }

    #[test]
    fn a_withdrawn_reservation_releases_the_safe_position() {
        let t = StreamTracker::starting_at(3);
        let r = t.reserve();
        let four = take(&t, &[4]);
        drop(four);
        assert_eq!(t.safe_position(), 3);
        drop(r);
        assert_eq!(t.safe_position(), 4);
    }

    /// Any interleaving of reserve / fill / drop keeps the safe position monotonic and never
    /// past an open position (a small exhaustive-ish random walk over a fake sequence).
    #[test]
    fn safe_position_is_monotonic_and_exact_under_interleavings() {
        // xorshift: deterministic, no dependency for one test.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut gen_range = |range: std::ops::Range<usize>| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            range.start + (seed % (range.end - range.start) as u64) as usize
        };
        for _ in 0..500 {
            let t = StreamTracker::starting_at(0);
            let mut sequence = 0i64;
            let mut reservations: Vec<Reservation<'_>> = Vec::new();
            let mut open: Vec<InFlight<'_>> = Vec::new();
            // Positions the "database" handed out to a reservation not yet filled.
            let mut handed: Vec<Option<Vec<i64>>> = Vec::new();
            let mut last = t.safe_position();
            for _ in 0..60 {
                match gen_range(0..4) {
                    0 => {
                        reservations.push(t.reserve());
                        handed.push(None);
                    }
                    1 if !reservations.is_empty() => {
                        // The database answers one reservation (maybe not the oldest).
                        let i = gen_range(0..reservations.len());
                        if handed[i].is_none() {
                            let n = gen_range(1..4) as i64;
                            handed[i] = Some((sequence + 1..=sequence + n).collect());
                            sequence += n;
                        }
                    }
                    2 if !reservations.is_empty() => {
                        let i = gen_range(0..reservations.len());
                        if let Some(positions) = handed[i].take() {
                            let r = reservations.swap_remove(i);
                            handed.swap_remove(i);
                            open.push(r.fill(positions));
                        }
                    }
                    3 if !open.is_empty() => {
                        let i = gen_range(0..open.len());
                        drop(open.swap_remove(i));
                    }
                    _ => {}
                }
                let safe = t.safe_position();
                assert!(safe >= last, "safe position moved back: {last} -> {safe}");
                last = safe;
                for f in &open {
                    assert!(f.positions().iter().all(|&p| p > safe));
                }
                for positions in handed.iter().flatten() {
                    assert!(positions.iter().all(|&p| p > safe));
                }
            }
        }
    }
}
