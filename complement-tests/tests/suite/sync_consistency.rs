//! Issue 10, "Consistency": what an incremental `/sync` reports after changes that are not
//! messages. A profile change is not a join; account data wakes a waiting sync like
//! everything else it reports; receipts and the read marker never move backwards.

use std::time::{Duration, Instant};

use complement_tests::{
    assert_ok, backend_tests, encode, Backend, Client, ServerOptions, TestServer,
};
use serde_json::{json, Value};

/// How long a woken long-poll may take to answer (it waits up to 20 s otherwise).
const PROMPT: Duration = Duration::from_secs(5);

/// Presence is off: coming online would wake a waiting sync by itself, and these tests ask
/// whether *their* change does.
async fn start(backend: Backend) -> Option<TestServer> {
    let options = ServerOptions::default().env("MYELIN_PRESENCE_ENABLED", "false");
    TestServer::start(backend, options).await
}

async fn sync_ok(client: &Client, since: Option<&str>, timeout_ms: u64) -> Value {
    let response = client.sync(since, timeout_ms).await;
    assert_ok(&response, &format!("/sync as {}", client.user_id())).clone()
}

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().expect("next_batch").to_owned()
}

fn joined<'a>(body: &'a Value, room: &str) -> Option<&'a Value> {
    body["rooms"]["join"].get(room).filter(|r| !r.is_null())
}

fn events<'a>(room: &'a Value, part: &str) -> Vec<&'a Value> {
    room[part]["events"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Alice creates a room, Bob joins, Alice sends `n` messages; returns the room and the IDs.
async fn room_with_messages(alice: &Client, bob: &Client, n: usize) -> (String, Vec<String>) {
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(alice.send_text(&room, &format!("message {i}")).await);
    }
    (room, ids)
}

/// Starts a long-poll sync (20 s) after `since` and returns its handle and start time.
fn long_poll(client: &Client, since: &str) -> (tokio::task::JoinHandle<(u16, Value)>, Instant) {
    let client = client.clone();
    let since = since.to_owned();
    let started = Instant::now();
    (
        tokio::spawn(async move { client.sync(Some(&since), 20_000).await }),
        started,
    )
}

/// Waits for the long-poll and checks it answered promptly with something.
async fn answered_promptly(
    handle: tokio::task::JoinHandle<(u16, Value)>,
    started: Instant,
    what: &str,
) -> Value {
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("the long-poll answered within its timeout")
        .expect("the long-poll task");
    assert_eq!(status, 200, "{what}: {body}");
    assert!(
        started.elapsed() < PROMPT,
        "{what}: the waiting sync was not woken (answered after {:?}): {body}",
        started.elapsed()
    );
    body
}

/// A display-name change is a `join` → `join` member event: the next incremental sync
/// carries it in the timeline like any state change, and does not treat the room as newly
/// joined (no repeated messages, no `limited`, no full state).
async fn display_name_change_is_not_a_new_join(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let (room, messages) = room_with_messages(&alice, &bob, 3).await;
    let token = next_batch(&sync_ok(&bob, None, 0).await);

    for (who, name) in [(&bob, "Bob B."), (&alice, "Alice A.")] {
        let path = format!(
            "/_matrix/client/v3/profile/{}/displayname",
            encode(who.user_id())
        );
        assert_ok(
            &who.put(&path, &json!({ "displayname": name })).await,
            "set displayname",
        );
    }
    // Both member events land (Alice's too, so Bob's room has something new either way).
    let body = bob
        .sync_until(Some(&token), Duration::from_secs(10), |b| {
            joined(b, &room).is_some_and(|r| {
                events(r, "timeline")
                    .iter()
                    .any(|e| e["content"]["displayname"] == "Alice A.")
            })
        })
        .await;
    let r = joined(&body, &room).unwrap();
    assert_eq!(
        r["timeline"]["limited"], false,
        "a profile change made the room look newly joined: {r}"
    );
    let timeline = events(r, "timeline");
    assert!(
        timeline.iter().all(|e| e["type"] == "m.room.member"),
        "delivered messages were sent again: {r}"
    );
    for id in &messages {
        assert!(
            !timeline.iter().any(|e| e["event_id"] == id.as_str()),
            "message {id} repeated: {r}"
        );
    }
    let state = events(r, "state");
    assert!(
        !state.iter().any(|e| e["type"] == "m.room.create"),
        "full state sent again: {r}"
    );
    // The new display names are in the member events.
    assert!(
        timeline
            .iter()
            .any(|e| e["state_key"] == bob.user_id() && e["content"]["displayname"] == "Bob B."),
        "{r}"
    );
}

/// Global account data set on another device wakes a waiting sync at once.
async fn global_account_data_wakes_waiting_sync(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let other = alice.new_device().await;
    let token = next_batch(&sync_ok(&alice, None, 0).await);
    let (handle, started) = long_poll(&alice, &token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/m.direct",
        encode(alice.user_id())
    );
    let content = json!({ "@bob:example.org": ["!r:example.org"] });
    assert_ok(&other.put(&path, &content).await, "PUT m.direct");
    let body = answered_promptly(handle, started, "global account data").await;
    let events = body["account_data"]["events"].as_array().cloned();
    assert!(
        events
            .unwrap_or_default()
            .iter()
            .any(|e| e["type"] == "m.direct" && e["content"] == content),
        "m.direct missing from the woken sync: {body}"
    );
}

/// Room account data and tags set on another device wake a waiting sync at once.
async fn room_account_data_and_tags_wake_waiting_sync(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let other = alice.new_device().await;
    let room = alice.create_room(&json!({})).await;
    let user = encode(alice.user_id());
    let room_enc = encode(&room);

    let token = next_batch(&sync_ok(&alice, None, 0).await);
    let (handle, started) = long_poll(&alice, &token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let path =
        format!("/_matrix/client/v3/user/{user}/rooms/{room_enc}/account_data/org.example.x");
    assert_ok(&other.put(&path, &json!({ "a": 1 })).await, "PUT room data");
    let body = answered_promptly(handle, started, "room account data").await;
    let r = joined(&body, &room).unwrap_or_else(|| panic!("room missing: {body}"));
    assert!(
        events(r, "account_data")
            .iter()
            .any(|e| e["type"] == "org.example.x" && e["content"]["a"] == 1),
        "{r}"
    );

    let token = next_batch(&body);
    let (handle, started) = long_poll(&alice, &token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let path = format!("/_matrix/client/v3/user/{user}/rooms/{room_enc}/tags/u.work");
    assert_ok(&other.put(&path, &json!({ "order": 0.5 })).await, "PUT tag");
    let body = answered_promptly(handle, started, "tag").await;
    let r = joined(&body, &room).unwrap_or_else(|| panic!("room missing: {body}"));
    assert!(
        events(r, "account_data")
            .iter()
            .any(|e| e["type"] == "m.tag" && e["content"]["tags"]["u.work"]["order"] == 0.5),
        "{r}"
    );

    let token = next_batch(&body);
    let (handle, started) = long_poll(&alice, &token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ok(&other.delete(&path).await, "DELETE tag");
    let body = answered_promptly(handle, started, "tag removed").await;
    let r = joined(&body, &room).unwrap_or_else(|| panic!("room missing: {body}"));
    assert!(
        events(r, "account_data")
            .iter()
            .any(|e| e["type"] == "m.tag" && e["content"]["tags"] == json!({})),
        "{r}"
    );
}

/// The event a user's receipt of `receipt_type` (in `thread`, `None` for unthreaded) points
/// at, from an initial sync of `viewer`.
async fn receipt_of(
    viewer: &Client,
    room: &str,
    user: &str,
    receipt_type: &str,
    thread: Option<&str>,
) -> Option<String> {
    let body = sync_ok(viewer, None, 0).await;
    let r = joined(&body, room)?;
    for event in events(r, "ephemeral") {
        if event["type"] != "m.receipt" {
            continue;
        }
        for (event_id, types) in event["content"].as_object()? {
            if let Some(receipt) = types[receipt_type].get(user) {
                if receipt["thread_id"].as_str() == thread {
                    return Some(event_id.clone());
                }
            }
        }
    }
    None
}

fn receipt_path(room: &str, receipt_type: &str, event_id: &str) -> String {
    Client::room_path(
        room,
        &format!("/receipt/{}/{}", encode(receipt_type), encode(event_id)),
    )
}

/// A receipt (public, private, threaded) or read marker for an earlier event than the
/// user's current one is accepted (200 `{}`, as Synapse answers) but ignored: the stored
/// receipt stays and nothing is sent.
async fn receipts_never_move_backwards(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let (room, ids) = room_with_messages(&alice, &bob, 3).await;
    let (early, late) = (&ids[0], &ids[2]);

    for receipt_type in ["m.read", "m.read.private"] {
        let response = bob
            .post(&receipt_path(&room, receipt_type, late), &json!({}))
            .await;
        assert_ok(&response, "receipt for the later event");
    }
    // The threaded receipt on another event: an `m.receipt` holds one receipt per event,
    // type and user.
    let thread_late = &ids[1];
    let thread_body = json!({ "thread_id": "main" });
    assert_ok(
        &bob.post(&receipt_path(&room, "m.read", thread_late), &thread_body)
            .await,
        "threaded receipt",
    );
    let token = next_batch(&sync_ok(&alice, None, 0).await);
    let bob_token = next_batch(&sync_ok(&bob, None, 0).await);

    for receipt_type in ["m.read", "m.read.private"] {
        let response = bob
            .post(&receipt_path(&room, receipt_type, early), &json!({}))
            .await;
        let body = assert_ok(&response, "receipt for an earlier event");
        assert_eq!(*body, json!({}), "{body}");
    }
    assert_ok(
        &bob.post(&receipt_path(&room, "m.read", early), &thread_body)
            .await,
        "earlier threaded receipt",
    );
    // Through /read_markers as well, with the fully-read marker.
    let markers = Client::room_path(&room, "/read_markers");
    assert_ok(
        &bob.post(&markers, &json!({ "m.fully_read": late })).await,
        "fully read (late)",
    );
    let bob_token = next_batch(&sync_ok(&bob, Some(&bob_token), 0).await);
    assert_ok(
        &bob.post(
            &markers,
            &json!({ "m.fully_read": early, "m.read": early, "m.read.private": early }),
        )
        .await,
        "read markers (early)",
    );

    // Stored receipts did not move back.
    let b = bob.user_id();
    assert_eq!(
        receipt_of(&alice, &room, b, "m.read", None)
            .await
            .as_deref(),
        Some(late.as_str())
    );
    assert_eq!(
        receipt_of(&alice, &room, b, "m.read", Some("main"))
            .await
            .as_deref(),
        Some(thread_late.as_str())
    );
    assert_eq!(
        receipt_of(&bob, &room, b, "m.read.private", None)
            .await
            .as_deref(),
        Some(late.as_str())
    );
    let path = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.fully_read",
        encode(b),
        encode(&room)
    );
    let fully_read = bob.get(&path).await;
    assert_eq!(
        assert_ok(&fully_read, "m.fully_read")["event_id"],
        late.as_str()
    );

    // And nothing was sent: no receipt (or marker) pointing at the earlier event.
    let body = sync_ok(&alice, Some(&token), 0).await;
    assert!(
        !body.to_string().contains(early.as_str()),
        "a backward receipt was sent to alice: {body}"
    );
    let body = sync_ok(&bob, Some(&bob_token), 0).await;
    assert!(
        !body.to_string().contains(early.as_str()),
        "a backward receipt or marker was sent to bob: {body}"
    );

    // Forward still works.
    let late2 = alice.send_text(&room, "later").await;
    assert_ok(
        &bob.post(&receipt_path(&room, "m.read", &late2), &json!({}))
            .await,
        "receipt forward",
    );
    assert_eq!(
        receipt_of(&alice, &room, b, "m.read", None)
            .await
            .as_deref(),
        Some(late2.as_str())
    );
}

backend_tests!(
    display_name_change_is_not_a_new_join,
    global_account_data_wakes_waiting_sync,
    room_account_data_and_tags_wake_waiting_sync,
    receipts_never_move_backwards,
);
