//! Every device sees the same history, nothing missing and nothing twice, under concurrent
//! writers in many rooms: the promise `/sync` makes (issue 10).
//!
//! On PostgreSQL the server runs on a cluster with normal durability (fsync on, synchronous
//! commit), where commits take long enough for out-of-order commits to happen: the case
//! where a stream position handed out but not yet known to the server's tracker used to let
//! `/sync` move past an uncommitted event (skipping it for ever) and move `next_batch` back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use complement_tests::{backend_tests, encode, Backend, Client, ServerOptions, TestServer};
use serde_json::json;
use tokio::sync::Mutex;

/// The stream position of a sync token (`s<position>_<typing>_<presence>`).
fn token_position(token: &str) -> i64 {
    token
        .strip_prefix('s')
        .and_then(|t| t.split('_').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected sync token {token}"))
}

/// How long the writers write: a minute on PostgreSQL, where a one-in-10,000 loss showed up
/// within that time on the old code (11,239 events, one never delivered to one device), and
/// 10 seconds on SQLite, whose writers are serialised anyway. `MYELIN_STRESS_SECS` sets it.
fn stress_duration(backend: Backend) -> Duration {
    let default = match backend {
        Backend::Postgres => 60,
        Backend::Sqlite => 10,
    };
    let secs = std::env::var("MYELIN_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

const ROOMS: usize = 40;
const DEVICES: usize = 10;
const ROOMS_PER_SENDER: usize = 5;
const TO_DEVICE_SENDERS: usize = 4;

/// What one device has seen.
#[derive(Default)]
struct Seen {
    /// Room → event IDs in the order they arrived.
    events: HashMap<String, Vec<String>>,
    /// Sender → to-device sequence numbers in the order they arrived.
    to_device: HashMap<String, Vec<u64>>,
    /// Problems found while syncing (a token moving back, a limited timeline).
    problems: Vec<String>,
}

/// One device's sync loop: long-polls until `stop` is set and it has caught up with
/// `target`, recording everything.
async fn sync_loop(
    device: Client,
    mut since: String,
    rooms: Arc<HashSet<String>>,
    done: Arc<tokio::sync::watch::Receiver<bool>>,
    expected: Arc<Mutex<Option<(usize, usize)>>>,
) -> Seen {
    let mut seen = Seen::default();
    let mut caught_up_by: Option<Instant> = None;
    let filter =
        json!({ "room": { "timeline": { "limit": 1000 } }, "presence": { "not_types": ["*"] } })
            .to_string();
    loop {
        let path = format!(
            "/_matrix/client/v3/sync?timeout=1000&since={}&filter={}",
            encode(&since),
            encode(&filter)
        );
        let (status, body) = device.get(&path).await;
        assert_eq!(status, 200, "/sync failed: {body}");
        let next = body["next_batch"].as_str().expect("next_batch").to_owned();
        if token_position(&next) < token_position(&since) {
            seen.problems
                .push(format!("next_batch moved back: {since} -> {next}"));
        }
        for (room_id, room) in body["rooms"]["join"].as_object().into_iter().flatten() {
            if !rooms.contains(room_id) {
                continue;
            }
            if room["timeline"]["limited"] == json!(true) {
                seen.problems
                    .push(format!("limited timeline in {room_id} (since {since})"));
            }
            for event in room["timeline"]["events"].as_array().into_iter().flatten() {
                if event["type"] == "m.room.message" {
                    seen.events
                        .entry(room_id.clone())
                        .or_default()
                        .push(event["event_id"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
        for message in body["to_device"]["events"].as_array().into_iter().flatten() {
            if message["type"] == "io.myelin.test.stress" {
                seen.to_device
                    .entry(message["sender"].as_str().unwrap_or_default().to_owned())
                    .or_default()
                    .push(message["content"]["seq"].as_u64().unwrap_or(u64::MAX));
            }
        }
        since = next;
        if *done.borrow() {
            let give_up =
                *caught_up_by.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
            let target = *expected.lock().await;
            if let Some((events, to_device)) = target {
                let have_events: usize = seen.events.values().map(Vec::len).sum();
                let have_to_device: usize = seen.to_device.values().map(Vec::len).sum();
                if have_events >= events && have_to_device >= to_device {
                    return seen;
                }
            }
            if Instant::now() > give_up {
                seen.problems
                    .push("still missing events 30 s after the last was sent".into());
                return seen;
            }
        }
    }
}

/// Senders write into 40 rooms at once while 10 devices of one user long-poll `/sync`; other
/// users send to-device messages to all of that user's devices. Every device must get every
/// message and every to-device message exactly once, in each room in send order, and no
/// `next_batch` may be smaller than the token it was asked with.
async fn a25_sync_delivers_every_event_exactly_once_under_concurrent_rooms(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default().durable()).await else {
        return;
    };
    let watcher = hs.register_user("watcher").await;
    let mut devices = vec![watcher.clone()];
    for _ in 1..DEVICES {
        devices.push(watcher.new_device().await);
    }

    // 8 senders with 5 rooms each; the watcher joins all 40.
    let mut rooms: Vec<(Client, String)> = Vec::new();
    for _ in 0..ROOMS / ROOMS_PER_SENDER {
        let sender = hs.register_user("sender").await;
        for _ in 0..ROOMS_PER_SENDER {
            let room = sender
                .create_room(&json!({ "preset": "public_chat" }))
                .await;
            let (status, body) = watcher.join(&room).await;
            assert_eq!(status, 200, "join failed: {body}");
            rooms.push((sender.clone(), room));
        }
    }
    let mut to_device_senders = Vec::new();
    for _ in 0..TO_DEVICE_SENDERS {
        to_device_senders.push(hs.register_user("pinger").await);
    }
    let room_ids: Arc<HashSet<String>> = Arc::new(rooms.iter().map(|(_, r)| r.clone()).collect());

    // Each device starts from a token taken after all the joins.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let done_rx = Arc::new(done_rx);
    let expected: Arc<Mutex<Option<(usize, usize)>>> = Arc::new(Mutex::new(None));
    let mut loops = Vec::new();
    for device in &devices {
        let (status, body) = device
            .sync_with(
                None,
                0,
                &[("filter", r#"{"room":{"timeline":{"limit":1}}}"#)],
            )
            .await;
        assert_eq!(status, 200, "initial sync failed: {body}");
        let since = body["next_batch"].as_str().unwrap().to_owned();
        loops.push(tokio::spawn(sync_loop(
            device.clone(),
            since,
            room_ids.clone(),
            done_rx.clone(),
            expected.clone(),
        )));
    }

    // Writers: one loop per room, plus the to-device senders, for the stress duration.
    let stop_at = Instant::now() + stress_duration(backend);
    let mut writers = Vec::new();
    for (i, (sender, room)) in rooms.iter().enumerate() {
        let sender = sender.clone();
        let room = room.clone();
        writers.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut n = 0u64;
            while Instant::now() < stop_at {
                let txn = format!("stress-{i}-{n}");
                let (status, body) = sender
                    .put(
                        &format!(
                            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                            encode(&room)
                        ),
                        &json!({ "msgtype": "m.text", "body": format!("{i}/{n}") }),
                    )
                    .await;
                assert_eq!(status, 200, "send failed: {body}");
                sent.push(body["event_id"].as_str().unwrap().to_owned());
                n += 1;
            }
            (room, sent)
        }));
    }
    let watcher_id = watcher.user_id().to_owned();
    let mut pingers = Vec::new();
    for (i, pinger) in to_device_senders.iter().enumerate() {
        let pinger = pinger.clone();
        let watcher_id = watcher_id.clone();
        pingers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while Instant::now() < stop_at {
                let body = json!({ "messages": { &watcher_id: { "*": { "seq": seq } } } });
                let (status, answer) = pinger
                    .put(
                        &format!(
                            "/_matrix/client/v3/sendToDevice/io.myelin.test.stress/p{i}-{seq}"
                        ),
                        &body,
                    )
                    .await;
                assert_eq!(status, 200, "sendToDevice failed: {answer}");
                seq += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (pinger.user_id().to_owned(), seq)
        }));
    }

    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for writer in writers {
        let (room, events) = writer.await.expect("writer panicked");
        sent.insert(room, events);
    }
    let mut pinged: BTreeMap<String, u64> = BTreeMap::new();
    for pinger in pingers {
        let (user, count) = pinger.await.expect("pinger panicked");
        pinged.insert(user, count);
    }
    let total_events: usize = sent.values().map(Vec::len).sum();
    let total_to_device: usize = pinged.values().map(|&n| n as usize).sum();
    assert!(total_events > 0, "nothing was sent");
    *expected.lock().await = Some((total_events, total_to_device));
    let _ = done_tx.send(true);

    let mut failures = Vec::new();
    for (d, handle) in loops.into_iter().enumerate() {
        let seen = handle.await.expect("sync loop panicked");
        for problem in &seen.problems {
            failures.push(format!("device {d}: {problem}"));
        }
        for (room, events) in &sent {
            let got = seen.events.get(room).cloned().unwrap_or_default();
            if &got != events {
                let got_set: HashSet<&String> = got.iter().collect();
                let missing = events.iter().filter(|e| !got_set.contains(e)).count();
                let duplicates = got.len() - got_set.len();
                failures.push(format!(
                    "device {d}, room {room}: sent {}, got {} ({missing} missing, {duplicates} twice{})",
                    events.len(),
                    got.len(),
                    if missing == 0 && duplicates == 0 { ", out of order" } else { "" }
                ));
            }
        }
        for (user, &count) in &pinged {
            let got = seen.to_device.get(user).cloned().unwrap_or_default();
            let wanted: Vec<u64> = (0..count).collect();
            if got != wanted {
                failures.push(format!(
                    "device {d}: to-device from {user}: sent {count}, got {} (first differences: {:?})",
                    got.len(),
                    got.iter().zip(&wanted).filter(|(a, b)| a != b).take(3).collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} events and {} to-device messages sent; problems:\n{}",
        total_events,
        total_to_device,
        failures.join("\n")
    );
}

/// Sends a raw HTTP/1.1 request and closes the connection `delay` later, without reading the
/// answer: a client that hangs up while its request is being served.
async fn hang_up(
    hs: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
    delay: Duration,
) {
    use tokio::io::AsyncWriteExt;
    let address = hs.url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    tokio::time::sleep(delay).await;
    drop(stream);
}

/// The delays at which the tests below hang up: from "at once" to well after the commit, in
/// small steps, so some land while the write is committing.
fn hang_up_delays() -> impl Iterator<Item = Duration> {
    (0..24u64).map(|i| Duration::from_micros(i * 400))
}

/// A client that hangs up while its logout is committing: either the logout did not happen
/// (the token works and the device is listed) or it did (the token is refused and the device
/// is gone), never the mix where the database forgot the device but the server still
/// accepts its token.
async fn a07_logout_holds_when_the_client_hangs_up(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default().durable()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let mut inconsistent = Vec::new();
    for delay in hang_up_delays() {
        let device = alice.new_device().await;
        // Resolve the token once, so that the server has it cached.
        assert_eq!(device.whoami().await.0, 200);
        let token = device.access_token.clone().unwrap();
        hang_up(
            &hs,
            "POST",
            "/_matrix/client/v3/logout",
            &token,
            "{}",
            delay,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (whoami, _) = device.whoami().await;
        let (status, devices) = alice.get("/_matrix/client/v3/devices").await;
        assert_eq!(status, 200, "{devices}");
        let listed = devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["device_id"] == device.device_id());
        if listed != (whoami == 200) {
            inconsistent.push(format!(
                "hang-up after {delay:?}: device listed {listed}, its token answers {whoami}"
            ));
        }
    }
    assert!(inconsistent.is_empty(), "{}", inconsistent.join("\n"));
}

/// A client that hangs up while its account data is committing: if the data was stored, a
/// sync from before must deliver it (and a waiting one must have been woken for it).
async fn a34_account_data_holds_when_the_client_hangs_up(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default().durable()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let token = alice.access_token.clone().unwrap();
    let (_, first) = alice.sync(None, 0).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let mut lost = Vec::new();
    for (i, delay) in hang_up_delays().enumerate() {
        let data_type = format!("io.myelin.test.hangup.{i}");
        let path = format!(
            "/_matrix/client/v3/user/{}/account_data/{data_type}",
            encode(alice.user_id())
        );
        hang_up(&hs, "PUT", &path, &token, r#"{"n":1}"#, delay).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (stored, _) = alice.get(&path).await;
        let (status, sync) = alice.sync(Some(&since), 0).await;
        assert_eq!(status, 200, "{sync}");
        let delivered = sync["account_data"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == data_type);
        if (stored == 200) != delivered {
            lost.push(format!(
                "hang-up after {delay:?}: stored {}, delivered by sync {delivered}",
                stored == 200
            ));
        }
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
    assert!(lost.is_empty(), "{}", lost.join("\n"));
}

/// A room is created in one transaction: when one of its events is refused (here the power
/// levels the client asked for leave the creator unable to send the preset's join rules) or
/// the alias it asks for is
/// taken, the creation fails and leaves no room behind. It used to leave a room with the
/// creator joined and power levels set, but without the rest of its state or its invites.
async fn a11_create_room_is_all_or_nothing(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let (_, before) = bob.get("/_matrix/client/v3/joined_rooms").await;
    let (status, body) = bob
        .post(
            "/_matrix/client/v3/createRoom",
            &json!({
                "preset": "private_chat",
                "room_version": "11",
                "name": "half",
                "invite": [alice.user_id()],
                "power_level_content_override": {
                    "users": { bob.user_id(): 0 },
                    "state_default": 100,
                },
            }),
        )
        .await;
    assert!((400..500).contains(&status), "{status} {body}");
    let (_, after) = bob.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(before, after, "a refused creation left a room behind");

    let alias = complement_tests::unique_name("taken");
    alice
        .create_room(&json!({ "preset": "public_chat", "room_alias_name": alias }))
        .await;
    let (status, body) = bob
        .post(
            "/_matrix/client/v3/createRoom",
            &json!({ "preset": "private_chat", "room_alias_name": alias, "name": "half",
                     "invite": [alice.user_id()] }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_ROOM_IN_USE", "{body}");
    let (_, after) = bob.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(before, after, "a failed creation left a room behind");
    let (_, sync) = alice.sync(None, 0).await;
    assert!(
        sync["rooms"]["invite"]
            .as_object()
            .is_none_or(|i| i.is_empty()),
        "a failed creation sent an invite: {}",
        sync["rooms"]["invite"]
    );
}

/// From room version 12 a room's ID is its create event's hash: one user creating several
/// rooms with the same body at once (the same creator, content and millisecond) must still
/// get as many different rooms. It used to fail some of them with `M_ROOM_IN_USE`.
async fn concurrent_identical_room_creations_get_distinct_rooms(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            alice
                .post(
                    "/_matrix/client/v3/createRoom",
                    &json!({ "preset": "public_chat" }),
                )
                .await
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        ids.insert(body["room_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 16, "{ids:?}");
    let (_, joined) = alice.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(joined["joined_rooms"].as_array().unwrap().len(), 16);
}

/// `m.room.redaction` sent through `/send` is a redaction like one from `/redact`: a member
/// without the `redact` level cannot redact someone else's event (403), and a redaction that
/// is allowed removes the original's content on the server.
async fn a31_redaction_through_send_is_checked_and_applied(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let secret = alice.send_text(&room, "alice's secret").await;
    let path = |txn: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.redaction/{txn}",
            encode(&room)
        )
    };
    let (status, body) = bob.put(&path("bob-1"), &json!({ "redacts": secret })).await;
    assert_eq!(
        status, 403,
        "bob redacted alice's event through /send: {body}"
    );
    let (_, event) = alice.get_event(&room, &secret).await;
    assert_eq!(event["content"]["body"], "alice's secret", "{event}");

    let (status, body) = alice
        .put(
            &path("alice-1"),
            &json!({ "redacts": secret, "reason": "oops" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, event) = bob.get_event(&room, &secret).await;
    assert_eq!(status, 200, "{event}");
    assert!(
        event["content"].as_object().is_some_and(|c| c.is_empty()),
        "the original kept its content: {event}"
    );
    assert!(event["unsigned"]["redacted_because"].is_object(), "{event}");

    // A redaction naming an event of another room is refused.
    let other = bob.create_room(&json!({ "preset": "public_chat" })).await;
    let elsewhere = bob.send_text(&other, "elsewhere").await;
    let (status, body) = bob
        .put(&path("bob-2"), &json!({ "redacts": elsewhere }))
        .await;
    assert_eq!(status, 404, "{body}");
}

/// A profile change is carried into every joined room even if the server is killed while it
/// is doing so: after a restart every room's member event shows the profile.
async fn a10_profile_reaches_every_room_after_a_crash(backend: Backend) {
    let Some(mut hs) = TestServer::start(backend, ServerOptions::default().durable()).await else {
        return;
    };
    if hs.is_external() {
        return;
    }
    let alice = hs.register_user("alice").await;
    let mut rooms = Vec::new();
    for _ in 0..30 {
        rooms.push(
            alice
                .create_room(&json!({ "preset": "private_chat" }))
                .await,
        );
    }
    let token = alice.access_token.clone().unwrap();
    let profile_path = format!(
        "/_matrix/client/v3/profile/{}/displayname",
        encode(alice.user_id())
    );
    for (i, delay) in [30u64, 90, 200].into_iter().enumerate() {
        let name = format!("Alice {i}");
        let body = json!({ "displayname": name }).to_string();
        hang_up(
            &hs,
            "PUT",
            &profile_path,
            &token,
            &body,
            Duration::from_millis(delay),
        )
        .await;
        hs.signal("KILL");
        hs.wait_exit(Duration::from_secs(10))
            .await
            .expect("the server did not die");
        hs.restart().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, profile) = alice.get(&profile_path).await;
            let mut stale = Vec::new();
            for room in &rooms {
                let (status, member) = alice
                    .get_state(room, "m.room.member", alice.user_id())
                    .await;
                assert_eq!(status, 200, "{member}");
                if member["displayname"] != profile["displayname"] {
                    stale.push(room.clone());
                }
            }
            if stale.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "killed {delay} ms into a profile change: {} of {} rooms still show another name than {}",
                stale.len(),
                rooms.len(),
                profile["displayname"]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A room upgrade finishes even if the server is killed while it runs: after a restart,
/// every room that names the old room as its predecessor is the one the old room's tombstone
/// points to, and the old room's alias has moved with it.
async fn room_upgrade_finishes_after_a_crash(backend: Backend) {
    let Some(mut hs) = TestServer::start(backend, ServerOptions::default().durable()).await else {
        return;
    };
    if hs.is_external() {
        return;
    }
    let alice = hs.register_user("alice").await;
    let token = alice.access_token.clone().unwrap();
    for (i, delay) in [5u64, 15, 30, 60].into_iter().enumerate() {
        let alias_name = complement_tests::unique_name("upgraded");
        let old = alice
            .create_room(&json!({ "preset": "public_chat", "room_alias_name": alias_name, "room_version": "11" }))
            .await;
        let path = format!("/_matrix/client/v3/rooms/{}/upgrade", encode(&old));
        hang_up(
            &hs,
            "POST",
            &path,
            &token,
            r#"{"new_version":"12"}"#,
            Duration::from_millis(delay),
        )
        .await;
        hs.signal("KILL");
        hs.wait_exit(Duration::from_secs(10))
            .await
            .expect("the server did not die");
        hs.restart().await;

        // The rooms alice is in that replace `old`.
        let (_, joined) = alice.get("/_matrix/client/v3/joined_rooms").await;
        let mut successors = Vec::new();
        for room in joined["joined_rooms"].as_array().unwrap() {
            let room = room.as_str().unwrap();
            let (status, create) = alice.get_state(room, "m.room.create", "").await;
            assert_eq!(status, 200, "{create}");
            if create["predecessor"]["room_id"] == old.as_str() {
                successors.push(room.to_owned());
            }
        }
        assert!(
            successors.len() <= 1,
            "round {i}: two successors {successors:?}"
        );
        let Some(new) = successors.first() else {
            continue; // killed before the new room was committed: nothing happened
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, tombstone) = alice.get_state(&old, "m.room.tombstone", "").await;
            if status == 200 && tombstone["replacement_room"] == new.as_str() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {i}, killed {delay} ms into the upgrade: {new} replaces {old}, but the old room has no tombstone for it ({status} {tombstone})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let alias = format!("#{alias_name}:{}", hs.server_name());
        let (status, resolved) = alice
            .get(&format!(
                "/_matrix/client/v3/directory/room/{}",
                encode(&alias)
            ))
            .await;
        assert_eq!(status, 200, "{resolved}");
        assert_eq!(
            resolved["room_id"],
            new.as_str(),
            "round {i}: the alias did not move"
        );
    }
}

backend_tests!(
    concurrent_identical_room_creations_get_distinct_rooms,
    room_upgrade_finishes_after_a_crash,
    a10_profile_reaches_every_room_after_a_crash,
    a11_create_room_is_all_or_nothing,
    a31_redaction_through_send_is_checked_and_applied,
    a25_sync_delivers_every_event_exactly_once_under_concurrent_rooms,
    a07_logout_holds_when_the_client_hangs_up,
    a34_account_data_holds_when_the_client_hangs_up
);
