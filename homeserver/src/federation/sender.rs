//! Sending our rooms' events to the other servers in them.
//!
//! One task per destination (so a slow or dead server delays only itself), woken by the write
//! pipeline after a commit in a room the destination is in. Nothing is queued per event: a
//! destination's row (migration 0023) holds the stream position up to which it accepted our
//! events, and its task reads the events our users wrote after it, in the rooms where the
//! destination had a joined user at the time, and sends them in transactions of at most
//! [`MAX_PDUS_PER_TXN`], one at a time. The position moves only after a 2xx, so a restart
//! (of either side) resends from there and loses nothing; failures back off (2 s doubling to
//! an hour), and a destination that comes back is caught up as soon as it talks to us. At
//! start-up each known destination is sent one transaction even if there is nothing for it,
//! so that peers that backed off from us while we were away send their backlog at once.
//!
//! Several processes: each destination is to be worked by one of them, claimed through the
//! row's `claimed_by` / `claim_until` the way pushers are (not yet wired: one process today).
//! EDUs ride along: typing, receipts and presence from an in-memory queue (losing one costs
//! nothing lasting), to-device messages and device-list / signing-key updates from the
//! destination's durable outbox (migration 0024), deleted only once the peer accepted them.
//! A destination back after failing, with more than one transaction's worth queued, is caught
//! up as the spec has it: it is sent only our latest event in each room (and its users'
//! membership changes) and asks for the rest with `/get_missing_events` ([`select`]).
//! A server is sent a room's events only while one of its users is joined (from its
//! position on, the sender follows their membership event by event).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::ServerName;
use serde_json::json;
use tokio::sync::Notify;

use crate::{auth::now_ms, AppState};

/// The spec's limit of PDUs in one transaction.
pub const MAX_PDUS_PER_TXN: usize = 50;
/// Longest wait between attempts to a failing destination.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// A task looks for work this often even without a wake-up.
const IDLE_CHECK: Duration = Duration::from_secs(60);

/// The running destination tasks.
#[derive(Default)]
pub struct Destinations {
    /// Destination → its task's wake-ups. A std mutex: held only to look up or insert.
    tasks: Mutex<HashMap<String, Arc<Wakes>>>,
    /// EDUs (typing, receipts) waiting for each destination's next transaction. Ephemeral by
    /// nature, so kept in memory only (a restart drops them), at most [`MAX_QUEUED_EDUS`] per
    /// destination (the oldest go first).
    edus: Mutex<HashMap<String, Vec<serde_json::Value>>>,
    /// Makes transaction IDs unique within the process (with the start time, across
    /// restarts).
    txn_seq: std::sync::atomic::AtomicU64,
}

/// The spec's limit of EDUs in one transaction.
pub const MAX_EDUS_PER_TXN: usize = 100;
/// Most EDUs kept for one destination.
const MAX_QUEUED_EDUS: usize = 1000;
/// Most durable EDUs (to-device messages, device-list updates) kept for a destination that
/// cannot be reached; beyond this the oldest are dropped.
const MAX_OUTBOX: usize = 10_000;

/// What wakes a destination's task.
#[derive(Default)]
struct Wakes {
    /// New events to send (does not cut a back-off short).
    events: Notify,
    /// The destination talked to us: it is up, so a back-off ends now.
    peer_back: Notify,
}

impl Destinations {
    pub fn stop_all(&self) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn push_edus(&self, destination: &str, edus: Vec<serde_json::Value>, front: bool) {
        let mut queues = self.edus.lock().unwrap_or_else(|e| e.into_inner());
        let queue = queues.entry(destination.to_owned()).or_default();
        if front {
            let mut merged = edus;
            merged.append(queue);
            *queue = merged;
        } else {
            queue.extend(edus);
        }
        if queue.len() > MAX_QUEUED_EDUS {
            let excess = queue.len() - MAX_QUEUED_EDUS;
            queue.drain(..excess);
        }
    }

    fn take_edus(&self, destination: &str, most: usize) -> Vec<serde_json::Value> {
        let mut queues = self.edus.lock().unwrap_or_else(|e| e.into_inner());
        match queues.get_mut(destination) {
            Some(queue) => {
                let n = queue.len().min(most);
                queue.drain(..n).collect()
            }
            None => Vec::new(),
        }
    }
}

/// Sends `edu` (`{"edu_type": …, "content": …}`) to every other server with a joined member
/// in `room_id`, with each one's next transaction.
pub async fn send_edu(state: &AppState, room_id: &str, edu: serde_json::Value) {
    let ours = state.server_name.as_str();
    let members = match state.storage.room_members(room_id).await {
        Ok(members) => members,
        Err(e) => {
            tracing::warn!(%room_id, error = %e, "could not read the room's members for an EDU");
            return;
        }
    };
    let servers = other_servers(
        ours,
        members
            .iter()
            .filter(|(_, m, _)| m == "join")
            .map(|(user, _, _)| user.as_str()),
    );
    send_edu_to(state, &servers, edu).await;
}

/// The servers of `users` other than `ours`, each once, sorted.
pub fn other_servers<'a>(ours: &str, users: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut servers: Vec<String> = users
        .filter_map(|u| u.split_once(':').map(|(_, s)| s))
        .filter(|s| *s != ours)
        .map(str::to_owned)
        .collect();
    servers.sort_unstable();
    servers.dedup();
    servers
}

/// Sends `edu` to each of `servers` with its next transaction.
pub async fn send_edu_to(state: &AppState, servers: &[String], edu: serde_json::Value) {
    if servers.is_empty() {
        return;
    }
    for server in servers {
        state
            .destinations
            .push_edus(server, vec![edu.clone()], false);
    }
    wake(state, servers, state.storage.safe_stream_position()).await;
}

/// Wakes (starting if needed) the task of every server in `servers` after events up to
/// `position` were committed. A destination seen for the first time is recorded to be sent
/// what comes after `since` (the position just before the first event it must get).
pub async fn wake(state: &AppState, servers: &[String], since: i64) {
    for server in servers {
        if server == state.server_name.as_str() {
            continue;
        }
        let existing = state
            .destinations
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(server)
            .cloned();
        match existing {
            Some(wakes) => wakes.events.notify_one(),
            None => {
                if let Err(e) = state.storage.add_destination(server, since).await {
                    tracing::warn!(destination = %server, error = %e, "could not record a destination");
                    continue;
                }
                start(state, server, false);
            }
        }
    }
}

/// Starts the tasks of every known destination (at start-up).
pub async fn start_all(state: AppState) {
    match state.storage.destinations().await {
        Ok(destinations) => {
            for d in destinations {
                start(&state, &d.destination, true);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read the federation destinations"),
    }
}

/// Starts `server`'s task. With `announce`, its first transaction goes out even if empty: at
/// start-up, so that a peer backing off from us while we were away hears that we are back
/// (it resets its back-off when we talk to it, spec-wise) and sends what it queued at once.
fn start(state: &AppState, server: &str, announce: bool) {
    let notify = {
        let mut tasks = state
            .destinations
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = tasks.get(server) {
            existing.events.notify_one();
            return;
        }
        let wakes = Arc::new(Wakes::default());
        tasks.insert(server.to_owned(), wakes.clone());
        wakes
    };
    let Ok(destination) = ruma::OwnedServerName::try_from(server) else {
        return;
    };
    let state = state.clone();
    tokio::spawn(async move {
        run(&state, &destination, &notify, announce).await;
    });
}

/// Whether this task's entry is still the registered one (stop_all clears them).
fn still_running(state: &AppState, server: &ServerName, notify: &Arc<Wakes>) -> bool {
    state
        .destinations
        .tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(server.as_str())
        .is_some_and(|n| Arc::ptr_eq(n, notify))
}

async fn run(state: &AppState, destination: &ServerName, notify: &Arc<Wakes>, announce: bool) {
    let mut failures: u32 = 0;
    let mut announce = announce;
    loop {
        if !still_running(state, destination, notify) {
            return;
        }
        let sent = send_pending(state, destination, announce).await;
        // Announced once, whatever came of it (a peer that is down hears of us when it is
        // back and we next send, or when it talks to us).
        announce = false;
        match sent {
            Ok(true) => {
                failures = 0;
                continue;
            }
            Ok(false) => {
                failures = 0;
                let _ = tokio::time::timeout(IDLE_CHECK, notify.events.notified()).await;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait =
                    Duration::from_secs(2u64.saturating_pow(failures.min(12))).min(MAX_BACKOFF);
                tracing::info!(%destination, error = %e, ?wait, "sending to a server failed");
                // A server that stays away does not make its outbox grow without bound:
                // the oldest durable EDUs beyond the newest MAX_OUTBOX go.
                match state
                    .storage
                    .trim_outbox(destination.as_str(), MAX_OUTBOX)
                    .await
                {
                    Ok(0) => {}
                    Ok(dropped) => {
                        tracing::warn!(%destination, dropped, "dropped the oldest EDUs queued for an unreachable server")
                    }
                    Err(e) => tracing::warn!(%destination, error = %e, "could not trim an outbox"),
                }
                let retry_at = now_ms() + wait.as_millis() as i64;
                let _ = state
                    .storage
                    .destination_failed(destination.as_str(), i64::from(failures), retry_at)
                    .await;
                // A wake-up (new events) does not cut the back-off short; the peer talking to
                // us does (`reset`).
                let _ = tokio::time::timeout(wait, notify.peer_back.notified()).await;
            }
        }
    }
}

/// The peer `server` talked to us: if its task is backing off, try again now.
pub fn reset(state: &AppState, server: &str) {
    if let Some(notify) = state
        .destinations
        .tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(server)
    {
        notify.peer_back.notify_one();
    }
}

/// Sends one transaction of what `destination` has not accepted yet (with `announce`, even
/// an empty one). `Ok(true)` when there may be more.
async fn send_pending(
    state: &AppState,
    destination: &ServerName,
    announce: bool,
) -> Result<bool, String> {
    let row = state
        .storage
        .destinations()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|d| d.destination == destination.as_str())
        .ok_or("the destination is not recorded")?;
    let upto = state.storage.safe_stream_position();
    // The durable EDUs first (oldest first), then the ephemeral ones in the room left.
    let durable = state
        .storage
        .outbox(destination.as_str(), MAX_EDUS_PER_TXN)
        .await
        .map_err(|e| e.to_string())?;
    let ephemeral = state
        .destinations
        .take_edus(destination.as_str(), MAX_EDUS_PER_TXN - durable.len());
    if row.stream_position >= upto && durable.is_empty() && ephemeral.is_empty() && !announce {
        return Ok(false);
    }
    let mut edus: Vec<serde_json::Value> = Vec::with_capacity(durable.len() + ephemeral.len());
    for edu in &durable {
        // Written by us as JSON; a row that no longer parses is skipped (and deleted below).
        if let Ok(content) = serde_json::from_str::<serde_json::Value>(&edu.content) {
            edus.push(json!({ "edu_type": edu.edu_type, "content": content }));
        }
    }
    edus.extend(ephemeral.iter().cloned());
    let result = send_one(state, destination, &row, upto, &edus, announce).await;
    match &result {
        Ok(_) => {
            if let Some(last) = durable.last() {
                // Accepted: the peer has them (a crash before this delete resends them
                // with the same message IDs, which the peer deduplicates).
                state
                    .storage
                    .delete_outbox(destination.as_str(), last.id)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Err(_) if !ephemeral.is_empty() => {
            state
                .destinations
                .push_edus(destination.as_str(), ephemeral, true);
        }
        Err(_) => {}
    }
    result.map(|more| more || durable.len() == MAX_EDUS_PER_TXN)
}

/// Most events read from storage at once when choosing what to send.
const SCAN_PAGE: usize = 4 * MAX_PDUS_PER_TXN;

/// Which of our events `destination` is sent next from the stream after `since` (up to
/// `upto`), as PDUs, and the position up to which that covers the stream (others' events
/// are not ours to send). In order, at most [`MAX_PDUS_PER_TXN`]; or, catching up after an
/// outage (`catch_up`), over the whole backlog only the latest event of ours in each room
/// (the peer asks for the rest with `/get_missing_events`, as the spec has it) and the
/// membership changes of the destination's users (so it hears of a kick or ban).
async fn select(
    state: &AppState,
    destination: &ServerName,
    since: i64,
    upto: i64,
    catch_up: bool,
) -> Result<(Vec<serde_json::Value>, i64), String> {
    let rooms = state
        .storage
        .rooms_with_server(destination.as_str(), since)
        .await
        .map_err(|e| e.to_string())?;
    // The destination's users joined to each room, as of the event being looked at: it is
    // sent a room's events only while one of them is (the membership changes of its users
    // themselves always).
    let mut joined: HashMap<String, HashSet<String>> = rooms
        .iter()
        .map(|r| (r.room_id.clone(), r.joined.iter().cloned().collect()))
        .collect();
    let room_ids: Vec<String> = rooms.iter().map(|r| r.room_id.clone()).collect();
    let server = state.server_name.as_str();
    let mut chosen: Vec<myelin_storage::EventRow> = Vec::new();
    // Catching up: the index in `chosen` of each room's latest event so far.
    let mut latest: HashMap<String, usize> = HashMap::new();
    let mut last = since;
    let page_size = if catch_up { 5 * SCAN_PAGE } else { SCAN_PAGE };
    loop {
        let page = state
            .storage
            .room_events_between(&room_ids, last, upto, page_size as i64)
            .await
            .map_err(|e| e.to_string())?;
        for event in page.iter() {
            let Some(position) = event.stream_ordering else {
                continue;
            };
            let local = event
                .sender
                .split_once(':')
                .is_some_and(|(_, s)| s == server);
            let destination_member = is_member_of(event, destination);
            let members = joined.entry(event.room_id.clone()).or_default();
            let visible = destination_member || !members.is_empty();
            if destination_member && !event.rejected {
                let user = event.state_key.clone().unwrap_or_default();
                if myelin_storage::membership_of(&event.pdu).as_deref() == Some("join") {
                    members.insert(user);
                } else {
                    members.remove(&user);
                }
            }
            if local && !event.rejected && visible {
                if !catch_up {
                    if chosen.len() == MAX_PDUS_PER_TXN {
                        return to_pdus(chosen, last);
                    }
                    chosen.push(event.clone());
                } else {
                    match latest.get(&event.room_id) {
                        // The room's latest so far gives way, unless it is a membership
                        // change of the destination's.
                        Some(&i) if !is_member_of(&chosen[i], destination) => {
                            chosen[i] = event.clone()
                        }
                        _ => {
                            latest.insert(event.room_id.clone(), chosen.len());
                            chosen.push(event.clone());
                        }
                    }
                    if destination_member {
                        // Kept: the next event of the room takes a new place.
                        latest.remove(&event.room_id);
                    }
                }
            }
            last = position;
        }
        if page.len() < page_size {
            // The scan reached `upto`: nothing else lies before it.
            last = upto;
            break;
        }
        if !catch_up {
            break;
        }
    }
    if chosen.len() > MAX_PDUS_PER_TXN {
        // Catching up in more rooms than one transaction holds: up to the last one sent.
        chosen.sort_by_key(|e| e.stream_ordering);
        chosen.truncate(MAX_PDUS_PER_TXN);
        last = chosen
            .last()
            .and_then(|e| e.stream_ordering)
            .unwrap_or(last);
    }
    to_pdus(chosen, last)
}

/// Whether `event` is a membership change of a user of `destination`.
fn is_member_of(event: &myelin_storage::EventRow, destination: &ServerName) -> bool {
    event.event_type == "m.room.member"
        && event
            .state_key
            .as_deref()
            .and_then(|k| k.split_once(':'))
            .is_some_and(|(_, s)| s == destination.as_str())
}

fn to_pdus(
    mut events: Vec<myelin_storage::EventRow>,
    last: i64,
) -> Result<(Vec<serde_json::Value>, i64), String> {
    events.sort_by_key(|e| e.stream_ordering);
    let pdus = events
        .iter()
        .map(|e| e.parse_pdu::<serde_json::Value>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((pdus, last))
}

/// Puts `edus` (`(edu_type, content)`) for each of `servers` into their durable outboxes,
/// and wakes their tasks: for what must arrive exactly once even across restarts.
pub async fn queue_durable_edus(
    state: &AppState,
    servers: &[String],
    edus: &[(&str, serde_json::Value)],
) -> Result<(), crate::error::Error> {
    let rows: Vec<myelin_storage::NewOutboxEdu> = servers
        .iter()
        .filter(|s| s.as_str() != state.server_name.as_str())
        .flat_map(|server| {
            edus.iter()
                .map(|(edu_type, content)| myelin_storage::NewOutboxEdu {
                    destination: server.clone(),
                    edu_type: (*edu_type).to_owned(),
                    content: content.to_string(),
                })
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    state.storage.queue_edus(&rows, now_ms()).await?;
    wake(state, servers, state.storage.safe_stream_position()).await;
    Ok(())
}

/// One transaction: what `destination` has not accepted of the stream up to `upto`, and
/// `edus`.
async fn send_one(
    state: &AppState,
    destination: &ServerName,
    row: &myelin_storage::Destination,
    upto: i64,
    edus: &[serde_json::Value],
    announce: bool,
) -> Result<bool, String> {
    let (mut pdus, mut last) = select(state, destination, row.stream_position, upto, false).await?;
    if last < upto && row.failures > 0 {
        // Back after failing, with more than one transaction's worth: catch up.
        (pdus, last) = select(state, destination, row.stream_position, upto, true).await?;
    }
    if pdus.is_empty() && edus.is_empty() && !announce {
        if last > row.stream_position {
            state
                .storage
                .destination_sent(destination.as_str(), last)
                .await
                .map_err(|e| e.to_string())?;
        }
        return Ok(last < upto);
    }
    // Unique per transaction (a retry is a new transaction; the PDUs it repeats are known to
    // the peer by their event IDs).
    let seq = state
        .destinations
        .txn_seq
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let txn_id = format!("{}-{last}-{}-{seq}", row.stream_position, now_ms());
    let body = json!({
        "origin": state.server_name.as_str(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
        "edus": edus,
    });
    let path = format!("/_matrix/federation/v1/send/{txn_id}");
    let answer = state
        .federation
        .put_json(destination, &path, &body)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(results) = answer["pdus"].as_object() {
        for (event_id, result) in results {
            if let Some(error) = result.get("error") {
                tracing::info!(%destination, %event_id, %error, "a server refused one of our events");
            }
        }
    }
    if last > row.stream_position {
        state
            .storage
            .destination_sent(destination.as_str(), last)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(true)
}
