//! The pusher worker: delivers each user's notifications to each of their pushers' gateways,
//! durably, in order, once.
//!
//! <https://spec.matrix.org/latest/client-server-api/#push-notifications>
//!
//! Every pusher has its own task ([`run`]), so a slow or dead gateway delays only its own
//! pusher. A task sends, in stream order, the user's notifying push actions that are after
//! the pusher's stored position and still unread, and moves the position after each one the
//! gateway accepted (`storage::advance_pusher`). So a restart resumes where the gateway last
//! said yes: nothing is lost, and nothing accepted is sent again (except the one notification
//! whose acceptance and position write a crash falls between). A failing gateway is retried
//! with exponential backoff ([`INITIAL_BACKOFF`] doubling to [`MAX_BACKOFF`]); after
//! [`GIVE_UP_AFTER_MS`] of failures a notification is skipped. A pushkey the gateway lists in
//! `rejected` deletes its pusher.
//!
//! Tasks sleep until woken: the write pipeline wakes the users an event notifies once its
//! position is safe to read (so a task never reads past a position still open), and a read
//! receipt wakes the user's tasks for a badge update. A task re-reads its pusher before every
//! batch, so a change of URL or data applies at once, and a pusher deleted (by the user, by a
//! logout or device deletion) stops its task.
//!
//! Several processes: each claims pushers in the database (`claimed_by`, a lease renewed by
//! housekeeping) and runs tasks only for its own, so a pusher is worked by one process at a
//! time and a dead process's pushers are taken over when their lease lapses. Wake-ups are
//! in-process; with several processes the ones for another process's pushers will need a
//! channel between them (PostgreSQL `LISTEN/NOTIFY`); until then each task also looks for work
//! every [`IDLE_RECHECK`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use myelin_storage::{PendingPush, PusherRow};
use ruma::push::Action;
use serde_json::Value;
use tokio::sync::Notify;

use super::gateway::{self, EventDetails, Gateway};
use crate::{auth::now_ms, AppState};

/// The first retry of a failing gateway waits this long; each further one twice as long.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Retries are at least this often, however long a gateway has been failing. (Synapse waits
/// up to an hour; five minutes brings phones their notifications sooner after an outage, for
/// one request per pusher every five minutes.)
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// A notification that could not be delivered for this long is skipped (as in Synapse).
pub const GIVE_UP_AFTER_MS: i64 = 24 * 60 * 60 * 1000;
/// How many notifications a task reads at once.
const BATCH: i64 = 100;
/// A sleeping task looks for work this often even if nobody woke it.
const IDLE_RECHECK: Duration = Duration::from_secs(60);
/// How long this process's claim on its pushers lasts; housekeeping renews it every minute.
pub const CLAIM_MS: i64 = 5 * 60 * 1000;
/// The claim name of this process. One process today; with several, each needs its own.
pub const OWNER: &str = "main";

/// One running pusher task's handle.
struct Worker {
    id: i64,
    wake: Notify,
    /// A receipt changed the user's counts: send a badge update when idle.
    badge_due: AtomicBool,
    /// The pusher was deleted through this process: stop.
    stopped: AtomicBool,
}

/// The pusher tasks of this process, by user.
pub struct Pushers {
    gateway: Arc<Gateway>,
    /// Std mutex: held for map lookups only, never across an await.
    workers: Mutex<HashMap<String, Vec<Arc<Worker>>>>,
}

impl Pushers {
    pub fn new(allowed: &[String]) -> Result<Pushers, reqwest::Error> {
        Ok(Pushers {
            gateway: Arc::new(Gateway::new(allowed)?),
            workers: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Worker>>>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the tasks of these users (their notifications up to a safe position are due).
    pub fn wake<'a>(&self, users: impl IntoIterator<Item = &'a str>) {
        let workers = self.lock();
        for user in users {
            for worker in workers.get(user).into_iter().flatten() {
                worker.wake.notify_one();
            }
        }
    }

    /// The user's read receipt moved: their devices' badges may have changed.
    pub fn receipt(&self, user_id: &str) {
        let workers = self.lock();
        for worker in workers.get(user_id).into_iter().flatten() {
            worker.badge_due.store(true, Ordering::Relaxed);
            worker.wake.notify_one();
        }
    }

    /// The user deleted a pusher: its task stops (a deletion by another process or with a
    /// device is noticed by the task itself before its next send).
    pub fn stop(&self, user_id: &str, id: i64) {
        let mut workers = self.lock();
        if let Some(list) = workers.get_mut(user_id) {
            list.retain(|w| {
                if w.id == id {
                    w.stopped.store(true, Ordering::Relaxed);
                    w.wake.notify_one();
                }
                w.id != id
            });
        }
    }

    fn forget(&self, user_id: &str, id: i64) {
        let mut workers = self.lock();
        if let Some(list) = workers.get_mut(user_id) {
            list.retain(|w| w.id != id);
            if list.is_empty() {
                workers.remove(user_id);
            }
        }
    }

    /// Stops every task (at shutdown).
    pub fn stop_all(&self) {
        let mut workers = self.lock();
        for worker in workers.values().flatten() {
            worker.stopped.store(true, Ordering::Relaxed);
            worker.wake.notify_one();
        }
        workers.clear();
    }

    /// How many pusher tasks run (for tests and metrics).
    pub fn running(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

/// Starts a task for a pusher this process claimed, unless one runs already.
pub fn ensure_running(state: &AppState, pusher: &PusherRow) {
    let worker = {
        let mut workers = state.pushers.lock();
        let list = workers.entry(pusher.user_id.clone()).or_default();
        if let Some(running) = list.iter().find(|w| w.id == pusher.id) {
            // Maybe its data changed: let it re-read the pusher.
            running.wake.notify_one();
            return;
        }
        let worker = Arc::new(Worker {
            id: pusher.id,
            wake: Notify::new(),
            badge_due: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        list.push(worker.clone());
        worker
    };
    tokio::spawn(run(state.clone(), pusher.user_id.clone(), worker));
}

/// Claims (or renews the claim on) every pusher this process may work and starts the tasks
/// that are not running: at start-up and from housekeeping.
pub async fn claim_and_start(state: &AppState) {
    let now = now_ms();
    match state
        .storage
        .claim_pushers(OWNER, now, now + CLAIM_MS)
        .await
    {
        Ok(pushers) => {
            for pusher in &pushers {
                ensure_running(state, pusher);
            }
        }
        Err(e) => tracing::warn!(error = %e, "claiming pushers failed"),
    }
}

/// Wakes the pushers of the users an event at `position` notifies, once `position` is safe to
/// read (at once if it is; otherwise a small task waits for the earlier positions to commit).
pub fn wake_when_safe(state: &AppState, position: i64, users: Vec<String>) {
    if users.is_empty() {
        return;
    }
    state.when_safe(position, move |state| {
        state.pushers.wake(users.iter().map(String::as_str))
    });
}

/// How a delivery ended.
enum Delivery {
    /// The gateway took it; `rejected` says whether it rejected this pusher's pushkey.
    Accepted { rejected: bool },
    /// Failing for longer than [`GIVE_UP_AFTER_MS`]: skipped.
    GaveUp,
    /// The pusher was deleted meanwhile.
    Gone,
}

/// One pusher's task (see the module docs).
async fn run(state: AppState, user_id: String, worker: Arc<Worker>) {
    let mut last_badge: Option<i64> = None;
    let mut failing_since: Option<i64> = None;
    loop {
        let woken = worker.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if worker.stopped.load(Ordering::Relaxed) {
            return;
        }
        match step(&state, &worker, &mut last_badge, &mut failing_since).await {
            Ok(Step::Idle) => {
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(IDLE_RECHECK) => {}
                }
            }
            Ok(Step::More) => {}
            Ok(Step::Stop) => {
                state.pushers.forget(&user_id, worker.id);
                return;
            }
            Err(e) => {
                tracing::warn!(pusher = worker.id, error = %e, "pusher: storage failed, retrying");
                tokio::time::sleep(INITIAL_BACKOFF).await;
            }
        }
    }
}

enum Step {
    /// Nothing due: sleep until woken.
    Idle,
    /// A batch was sent: look again at once.
    More,
    /// The pusher is gone (deleted, rejected, or claimed elsewhere).
    Stop,
}

async fn step(
    state: &AppState,
    worker: &Worker,
    last_badge: &mut Option<i64>,
    failing_since: &mut Option<i64>,
) -> Result<Step, crate::error::Error> {
    let Some(pusher) = state.storage.claimed_pusher(worker.id, OWNER).await? else {
        return Ok(Step::Stop);
    };
    if failing_since.is_none() {
        *failing_since = pusher.failing_since;
    }
    let upto = state.storage.safe_stream_position();
    let badge_due = worker.badge_due.swap(false, Ordering::Relaxed);
    let (due, badge) = state
        .storage
        .pending_pushes_and_badge(
            &pusher.user_id,
            pusher.last_stream_ordering,
            upto,
            BATCH,
            badge_due,
        )
        .await?;
    if due.is_empty() {
        if let Some(badge) = badge.filter(|b| *last_badge != Some(*b)) {
            // Best effort, once per receipt (as Synapse): a badge update that fails is
            // not retried, the next notification carries the count anyway.
            let body = gateway::badge_update(&pusher, badge);
            match state.pushers.gateway.send(&url(&pusher), &body).await {
                Ok(_) => *last_badge = Some(badge),
                Err(e) => {
                    tracing::debug!(pusher = pusher.id, error = %e, "badge update failed")
                }
            }
        }
        return Ok(Step::Idle);
    }
    let badge = badge.unwrap_or(0);
    let details = BatchDetails::load(state, &due).await?;
    for push in &due {
        if worker.stopped.load(Ordering::Relaxed) {
            return Ok(Step::Stop);
        }
        let Some(details) = details.of(push)? else {
            // The event is gone (purged): nothing to send.
            state
                .storage
                .advance_pusher(pusher.id, OWNER, push.stream_ordering, now_ms())
                .await?;
            continue;
        };
        let actions: Vec<Action> = serde_json::from_str(&push.actions).unwrap_or_default();
        let body = gateway::notification(&pusher, &details, &actions, badge);
        match deliver(state, worker, &pusher, &body, failing_since).await? {
            Delivery::Accepted { rejected: true } => {
                tracing::info!(
                    pusher = pusher.id,
                    "the gateway rejected the pushkey: pusher deleted"
                );
                state.storage.delete_pusher_by_id(pusher.id).await?;
                return Ok(Step::Stop);
            }
            Delivery::Accepted { rejected: false } | Delivery::GaveUp => {}
            Delivery::Gone => return Ok(Step::Stop),
        }
        if !state
            .storage
            .advance_pusher(pusher.id, OWNER, push.stream_ordering, now_ms())
            .await?
        {
            return Ok(Step::Stop);
        }
    }
    *last_badge = Some(badge);
    Ok(Step::More)
}

/// The pusher's gateway URL (checked when the pusher was set; a row without one fails at
/// the gateway, as a bad URL).
fn url(pusher: &PusherRow) -> String {
    serde_json::from_str::<Value>(&pusher.data)
        .ok()
        .and_then(|d| d["url"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Sends one notification until the gateway takes it, backing off while it fails.
async fn deliver(
    state: &AppState,
    worker: &Worker,
    pusher: &PusherRow,
    body: &Value,
    failing_since: &mut Option<i64>,
) -> Result<Delivery, crate::error::Error> {
    let mut backoff = INITIAL_BACKOFF;
    let url = url(pusher);
    loop {
        match state.pushers.gateway.send(&url, body).await {
            Ok(rejected) => {
                *failing_since = None;
                return Ok(Delivery::Accepted {
                    rejected: rejected.contains(&pusher.pushkey),
                });
            }
            Err(e) => {
                let now = now_ms();
                let since = match *failing_since {
                    Some(since) => since,
                    None => {
                        state.storage.set_pusher_failing(pusher.id, now).await?;
                        *failing_since = Some(now);
                        now
                    }
                };
                tracing::debug!(pusher = pusher.id, error = %e, retry_in = ?backoff, "push failed");
                if now - since >= GIVE_UP_AFTER_MS {
                    tracing::warn!(pusher = pusher.id, error = %e, "push failing for a day: notification skipped");
                    // The next notification gets a day of its own.
                    *failing_since = None;
                    return Ok(Delivery::GaveUp);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = worker.wake.notified() => {
                        // Woken by new work or a deletion: only a deletion ends the wait early.
                        if !worker.stopped.load(Ordering::Relaxed) {
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }
                if worker.stopped.load(Ordering::Relaxed)
                    || state
                        .storage
                        .claimed_pusher(pusher.id, OWNER)
                        .await?
                        .is_none()
                {
                    return Ok(Delivery::Gone);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The events of a batch of notifications, read at once, and the names the gateway shows:
/// for each room of the batch, its name, canonical alias and the display names of the batch's
/// senders in it, in one statement.
struct BatchDetails {
    events: HashMap<String, myelin_storage::EventRow>,
    /// `(room name, canonical alias)` by room.
    rooms: HashMap<String, (Option<String>, Option<String>)>,
    /// Display names by `(room, user)`.
    names: HashMap<(String, String), Option<String>>,
}

impl BatchDetails {
    async fn load(
        state: &AppState,
        due: &[PendingPush],
    ) -> Result<BatchDetails, crate::error::Error> {
        let ids: Vec<String> = due.iter().map(|p| p.event_id.clone()).collect();
        let events: HashMap<String, myelin_storage::EventRow> = state
            .storage
            .get_events(&ids)
            .await?
            .into_iter()
            .map(|row| (row.event_id.clone(), row))
            .collect();
        let mut senders: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for push in due {
            if let Some(row) = events.get(&push.event_id) {
                senders
                    .entry(push.room_id.as_str())
                    .or_default()
                    .insert(row.sender.as_str());
            }
        }
        let mut rooms = HashMap::new();
        let mut names = HashMap::new();
        for (room, senders) in &senders {
            let mut keys = vec![("m.room.name", ""), ("m.room.canonical_alias", "")];
            keys.extend(senders.iter().map(|s| ("m.room.member", *s)));
            let found = state.storage.current_state_events(room, &keys).await?;
            let content = |event_type: &str, state_key: &str| -> Option<Value> {
                let row = found.iter().find(|r| {
                    r.event_type == event_type && r.state_key.as_deref() == Some(state_key)
                })?;
                let mut pdu: Value = row.parse_pdu().ok()?;
                pdu.get_mut("content").map(Value::take)
            };
            let field = |event_type: &str, state_key: &str, field: &str| {
                content(event_type, state_key).and_then(|c| c[field].as_str().map(str::to_owned))
            };
            rooms.insert(
                room.to_string(),
                (
                    field("m.room.name", "", "name"),
                    field("m.room.canonical_alias", "", "alias"),
                ),
            );
            for sender in senders {
                names.insert(
                    (room.to_string(), sender.to_string()),
                    field("m.room.member", sender, "displayname"),
                );
            }
        }
        Ok(BatchDetails {
            events,
            rooms,
            names,
        })
    }

    /// The details of one notification's event, or `None` if the event is gone.
    fn of(&self, push: &PendingPush) -> Result<Option<EventDetails>, crate::error::Error> {
        let Some(row) = self.events.get(&push.event_id) else {
            return Ok(None);
        };
        let pdu: Value = row.parse_pdu().map_err(crate::error::Error::internal)?;
        let (room_name, room_alias) = self.rooms.get(&push.room_id).cloned().unwrap_or_default();
        Ok(Some(EventDetails {
            event_id: row.event_id.clone(),
            room_id: row.room_id.clone(),
            event_type: row.event_type.clone(),
            sender: row.sender.clone(),
            state_key: row.state_key.clone(),
            content: pdu.get("content").cloned().unwrap_or(Value::Null),
            sender_display_name: self
                .names
                .get(&(push.room_id.clone(), row.sender.clone()))
                .cloned()
                .flatten(),
            room_name,
            room_alias,
        }))
    }
}
