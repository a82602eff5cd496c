//! Sliding-sync connections: what each `(user, device, conn_id)` has been sent, per `pos`.
//!
//! A `pos` names one [`ConnState`]: the stream position, typing serial and rooms (each with
//! where it was sent up to and with which room config) that the response carrying it left
//! the client with. A request with `pos` P computes from P's state and stores the new state
//! under P + 1; P stays, so a retried request (the response was lost, or the client cancelled
//! and re-sent with other lists) computes from the same state again, and everything older
//! than P is dropped, since the client has shown it holds P.
//!
//! Kept in memory, bounded ([`MAX_CONNECTIONS`] in all, least recently used first out, and
//! [`MAX_PER_DEVICE`] per device). Losing a connection costs the client a fresh start
//! (`M_UNKNOWN_POS`), never a wrong answer: a `pos` whose state is gone is refused. A
//! restart loses them all, as the nonce in every `pos` shows. With several server processes
//! a connection's requests must reach the same process (route by access token), or the
//! states move to a shared table.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Instant,
};

/// Connections kept in all.
pub const MAX_CONNECTIONS: usize = 20_000;
/// Connections kept per device (a client uses one or two).
pub const MAX_PER_DEVICE: usize = 10;
/// States kept per connection: the one the client presented and the one after it.
const STATES_KEPT: usize = 2;

/// Lazily loaded members remembered per room and connection; past this the set starts
/// over, which only costs resending a few member events.
pub const MAX_LAZY_REMEMBERED: usize = 100;

/// `(type, state key)` entries of a `required_state`, shared between the rooms (and
/// states) that were sent with the same one.
pub type RequiredState = Arc<BTreeSet<(String, String)>>;

/// What one room has been sent on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRoom {
    /// The stream position the room's data was sent up to.
    pub upto: i64,
    /// The room config it was last sent with (a larger one later expands what is sent).
    pub timeline_limit: u64,
    pub required_state: RequiredState,
    /// The membership it was sent with.
    pub membership: Arc<str>,
    /// Users whose member event, as of `upto`, was sent through lazy loading (so later
    /// timelines by them need not send it again). Emptied whenever a timeline is sent
    /// `limited`, since the client then drops its member cache (MSC4186).
    pub lazy_members: Arc<BTreeSet<Arc<str>>>,
}

/// What a client holds after a response.
#[derive(Debug, Clone, Default)]
pub struct ConnState {
    /// The stream position everything connection-wide (extensions) was sent up to.
    pub upto: i64,
    /// The typing serial the typing extension was sent up to.
    pub typing: u64,
    pub rooms: HashMap<Arc<str>, SentRoom>,
}

#[derive(Debug)]
struct Connection {
    nonce: u64,
    /// `(seq, state)`, ascending.
    states: VecDeque<(u64, Arc<ConnState>)>,
    last_used: Instant,
}

/// `(user, device, conn_id)`.
type Key = (String, String, String);

/// Every connection of this process.
#[derive(Debug, Default)]
pub struct Connections {
    inner: Mutex<HashMap<Key, Connection>>,
}

/// Why a `pos` cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownPos;

/// The state to compute from, and where the next one goes.
#[derive(Debug)]
pub struct Base {
    pub state: Arc<ConnState>,
    /// `None` for a new connection.
    pub seq: Option<u64>,
    nonce: u64,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Connection>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state `pos` names (a fresh one without `pos`).
    pub fn base(
        &self,
        user: &str,
        device: &str,
        conn_id: &str,
        pos: Option<&str>,
    ) -> Result<Base, UnknownPos> {
        let Some(pos) = pos else {
            return Ok(Base {
                state: Arc::default(),
                seq: None,
                nonce: rand::random(),
            });
        };
        let (nonce, seq) = parse_pos(pos).ok_or(UnknownPos)?;
        let mut connections = self.lock();
        let key = (user.to_owned(), device.to_owned(), conn_id.to_owned());
        let conn = connections.get_mut(&key).ok_or(UnknownPos)?;
        if conn.nonce != nonce {
            return Err(UnknownPos);
        }
        let state = conn
            .states
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, state)| state.clone())
            .ok_or(UnknownPos)?;
        conn.last_used = Instant::now();
        Ok(Base {
            state,
            seq: Some(seq),
            nonce,
        })
    }

    /// Stores the state after a response computed from `base`; returns its `pos`.
    pub fn store(
        &self,
        user: &str,
        device: &str,
        conn_id: &str,
        base: &Base,
        next: ConnState,
    ) -> String {
        let seq = base.seq.map_or(1, |s| s + 1);
        let key = (user.to_owned(), device.to_owned(), conn_id.to_owned());
        let mut connections = self.lock();
        let conn = match connections.get_mut(&key) {
            // A new connection replaces one of the same ID; so does a request computed from
            // a connection that was replaced meanwhile.
            Some(conn) if conn.nonce == base.nonce && base.seq.is_some() => conn,
            _ => {
                make_room(&mut connections, &key);
                connections.insert(
                    key.clone(),
                    Connection {
                        nonce: base.nonce,
                        states: VecDeque::new(),
                        last_used: Instant::now(),
                    },
                );
                connections.get_mut(&key).expect("just inserted")
            }
        };
        // The client holds `base`: older states are of no more use. A state stored for the
        // same seq by a request that raced this one is replaced (the client uses the pos of
        // whichever response it processed, and both describe what it was sent).
        if let Some(base_seq) = base.seq {
            conn.states.retain(|(s, _)| *s >= base_seq && *s != seq);
        } else {
            conn.states.clear();
        }
        conn.states.push_back((seq, Arc::new(next)));
        while conn.states.len() > STATES_KEPT {
            conn.states.pop_front();
        }
        conn.last_used = Instant::now();
        format_pos(base.nonce, seq)
    }

    /// How many connections are kept (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every connection of a device (logged out or deleted).
    pub fn forget_device(&self, user: &str, device: &str) {
        self.lock()
            .retain(|(u, d, _), _| !(u == user && d == device));
    }

    /// Forgets every connection of the user's devices except `keep` (logout everywhere,
    /// a password change that signs out the other devices, deactivation). A device ID
    /// reused by a later login must not find the old session's connections.
    pub fn forget_user(&self, user: &str, keep: Option<&str>) {
        self.lock()
            .retain(|(u, d, _), _| u != user || Some(d.as_str()) == keep);
    }
}

/// Makes space for one more connection of `key`'s device.
fn make_room(connections: &mut HashMap<Key, Connection>, key: &Key) {
    let of_device: Vec<(Key, Instant)> = connections
        .iter()
        .filter(|((u, d, _), _)| *u == key.0 && *d == key.1)
        .map(|(k, c)| (k.clone(), c.last_used))
        .collect();
    if of_device.len() >= MAX_PER_DEVICE {
        if let Some((oldest, _)) = of_device.iter().min_by_key(|(_, t)| *t) {
            connections.remove(oldest);
        }
    }
    if connections.len() >= MAX_CONNECTIONS {
        // Rare (a full table): drop the least recently used tenth at once.
        let mut by_age: Vec<(Key, Instant)> = connections
            .iter()
            .map(|(k, c)| (k.clone(), c.last_used))
            .collect();
        by_age.sort_by_key(|(_, t)| *t);
        for (k, _) in by_age.into_iter().take(MAX_CONNECTIONS / 10) {
            connections.remove(&k);
        }
    }
}

fn format_pos(nonce: u64, seq: u64) -> String {
    format!("{nonce:x}_{seq}")
}

fn parse_pos(pos: &str) -> Option<(u64, u64)> {
    let (nonce, seq) = pos.split_once('_')?;
    Some((u64::from_str_radix(nonce, 16).ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(upto: i64) -> ConnState {
        ConnState {
            upto,
            ..ConnState::default()
        }
    }

    #[test]
    fn a_pos_names_its_state_and_a_retry_gets_it_again() {
        let conns = Connections::default();
        let base = conns.base("@a:x", "D", "c", None).unwrap();
        let p1 = conns.store("@a:x", "D", "c", &base, state(10));
        let b1 = conns.base("@a:x", "D", "c", Some(&p1)).unwrap();
        assert_eq!(b1.state.upto, 10);
        let p2 = conns.store("@a:x", "D", "c", &b1, state(20));
        // The response with p2 was lost: the client retries with p1.
        let again = conns.base("@a:x", "D", "c", Some(&p1)).unwrap();
        assert_eq!(again.state.upto, 10);
        let p2b = conns.store("@a:x", "D", "c", &again, state(25));
        assert_eq!(p2, p2b, "the same seq, its state replaced");
        let b2 = conns.base("@a:x", "D", "c", Some(&p2b)).unwrap();
        assert_eq!(b2.state.upto, 25);
        let p3 = conns.store("@a:x", "D", "c", &b2, state(30));
        // Once p2 was presented, p1 is gone.
        assert_eq!(
            conns.base("@a:x", "D", "c", Some(&p1)).unwrap_err(),
            UnknownPos
        );
        assert!(conns.base("@a:x", "D", "c", Some(&p3)).is_ok());
    }

    #[test]
    fn unknown_and_foreign_positions_are_refused() {
        let conns = Connections::default();
        let base = conns.base("@a:x", "D", "c", None).unwrap();
        let p1 = conns.store("@a:x", "D", "c", &base, state(10));
        for bad in ["", "zz", "1_2", "abc", &p1.replace('_', "-")] {
            assert!(conns.base("@a:x", "D", "c", Some(bad)).is_err(), "{bad}");
        }
        assert!(
            conns.base("@a:x", "D", "other", Some(&p1)).is_err(),
            "another conn_id"
        );
        assert!(
            conns.base("@b:x", "D", "c", Some(&p1)).is_err(),
            "another user"
        );
        // Starting over replaces the connection: its old pos is gone.
        let fresh = conns.base("@a:x", "D", "c", None).unwrap();
        conns.store("@a:x", "D", "c", &fresh, state(11));
        assert!(conns.base("@a:x", "D", "c", Some(&p1)).is_err());
    }

    #[test]
    fn connections_are_bounded_per_device() {
        let conns = Connections::default();
        for i in 0..(MAX_PER_DEVICE + 5) {
            let base = conns.base("@a:x", "D", &i.to_string(), None).unwrap();
            conns.store("@a:x", "D", &i.to_string(), &base, state(1));
        }
        assert_eq!(conns.len(), MAX_PER_DEVICE);
        conns.forget_device("@a:x", "D");
        assert!(conns.is_empty());
    }

    #[test]
    fn forgetting_a_user_keeps_the_named_device_and_other_users() {
        let conns = Connections::default();
        for (user, device) in [("@a:x", "D"), ("@a:x", "E"), ("@b:x", "D")] {
            let base = conns.base(user, device, "c", None).unwrap();
            conns.store(user, device, "c", &base, state(1));
        }
        conns.forget_user("@a:x", Some("E"));
        assert_eq!(conns.len(), 2);
        assert!(conns.base("@b:x", "D", "c", None).is_ok());
        conns.forget_user("@a:x", None);
        assert_eq!(conns.len(), 1);
    }
}
