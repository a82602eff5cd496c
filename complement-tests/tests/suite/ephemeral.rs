//! Scenarios 32 and 33: typing notifications, read receipts (public,
//! private and threaded) and read markers, as seen through `/sync`.

use std::time::{Duration, Instant};

use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, encode, Backend, Client,
    ServerOptions, TestServer,
};
use serde_json::{json, Value};

/// How long to wait for something that should show up promptly.
const WAIT: Duration = Duration::from_secs(10);

/// A syntactically valid event ID that names no event.
const UNKNOWN_EVENT: &str = "$NoSuchEventNoSuchEventNoSuchEventNoSuchEven";

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend, ServerOptions::default()).await
}

/// One `/sync` call that must succeed; returns the body.
async fn sync_ok(client: &Client, since: Option<&str>, timeout_ms: u64) -> Value {
    let response = client.sync(since, timeout_ms).await;
    let body = assert_ok(
        &response,
        &format!("/sync as {} since {since:?}", client.user_id()),
    );
    assert!(body["next_batch"].is_string(), "no next_batch: {body}");
    body.clone()
}

fn next_batch(body: &Value) -> String {
    body["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("no next_batch in {body}"))
        .to_string()
}

/// Whether `room` appears in any room section of a sync body.
fn mentions_room(body: &Value, room: &str) -> bool {
    ["join", "leave", "invite", "knock"]
        .iter()
        .any(|s| body["rooms"][s].get(room).is_some_and(|r| !r.is_null()))
}

/// `rooms.join.{room}.{part}.events`, empty if absent.
fn joined_events(body: &Value, room: &str, part: &str) -> Vec<Value> {
    body["rooms"]["join"][room][part]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The ephemeral events of `room` with type `event_type`.
fn ephemeral(body: &Value, room: &str, event_type: &str) -> Vec<Value> {
    joined_events(body, room, "ephemeral")
        .into_iter()
        .filter(|e| e["type"] == event_type)
        .collect()
}

/// The `user_ids` of the last `m.typing` event of `room`, if there is one.
fn typing_users(body: &Value, room: &str) -> Option<Vec<String>> {
    let event = ephemeral(body, room, "m.typing").pop()?;
    let ids = event["content"]["user_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("m.typing without content.user_ids: {event}"));
    Some(
        ids.iter()
            .map(|id| {
                id.as_str()
                    .unwrap_or_else(|| panic!("non-string user ID in {event}"))
                    .to_string()
            })
            .collect(),
    )
}

/// The receipt of `user` for `event_id` with `receipt_type` in any
/// `m.receipt` event of `room`.
fn receipt(
    body: &Value,
    room: &str,
    event_id: &str,
    receipt_type: &str,
    user: &str,
) -> Option<Value> {
    ephemeral(body, room, "m.receipt")
        .into_iter()
        .find_map(|e| {
            e["content"][event_id][receipt_type]
                .get(user)
                .filter(|r| !r.is_null())
                .cloned()
        })
}

/// Whether any `m.receipt` of `room` has a receipt of `receipt_type`.
fn has_receipt_type(body: &Value, room: &str, receipt_type: &str) -> bool {
    ephemeral(body, room, "m.receipt").iter().any(|e| {
        e["content"]
            .as_object()
            .is_some_and(|events| events.values().any(|r| r.get(receipt_type).is_some()))
    })
}

fn typing_path(room: &str, user: &str) -> String {
    Client::room_path(room, &format!("/typing/{}", encode(user)))
}

fn receipt_path(room: &str, receipt_type: &str, event_id: &str) -> String {
    Client::room_path(
        room,
        &format!("/receipt/{}/{}", encode(receipt_type), encode(event_id)),
    )
}

/// Alice creates a public room that bob joins; returns the room.
async fn shared_room(alice: &Client, bob: &Client) -> String {
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    room
}

/// 32. Typing by one member appears as `m.typing` in the others' `/sync`,
///     stopping clears it, and non-members never see it.
async fn a32_typing(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = shared_room(&alice, &bob).await;
    let bob_token = next_batch(&sync_ok(&bob, None, 0).await);
    let carol_token = next_batch(&sync_ok(&carol, None, 0).await);

    let typing_on = json!({ "typing": true, "timeout": 30000 });
    assert_ok_object(
        &alice
            .put(&typing_path(&room, alice.user_id()), &typing_on)
            .await,
        "alice starts typing",
    );
    let body = bob
        .sync_until(Some(&bob_token), WAIT, |b| {
            typing_users(b, &room).is_some_and(|u| !u.is_empty())
        })
        .await;
    let event = ephemeral(&body, &room, "m.typing").pop().unwrap();
    assert_eq!(
        event,
        json!({ "type": "m.typing", "content": { "user_ids": [alice.user_id()] } }),
        "the typing event in bob's sync: {body}"
    );
    let bob_token = next_batch(&body);

    assert_ok_object(
        &alice
            .put(
                &typing_path(&room, alice.user_id()),
                &json!({ "typing": false }),
            )
            .await,
        "alice stops typing",
    );
    let body = bob
        .sync_until(Some(&bob_token), WAIT, |b| typing_users(b, &room).is_some())
        .await;
    assert_eq!(
        typing_users(&body, &room),
        Some(vec![]),
        "after stopping, the next m.typing is empty: {body}"
    );

    // Carol is not in the room: she may not type there, nor can anyone type
    // for someone else.
    assert_error(
        &carol
            .put(&typing_path(&room, carol.user_id()), &typing_on)
            .await,
        403,
        "M_FORBIDDEN",
        "a non-member sets typing",
    );
    assert_error(
        &bob.put(&typing_path(&room, alice.user_id()), &typing_on)
            .await,
        403,
        "M_FORBIDDEN",
        "bob sets alice's typing",
    );
    // Alice types again; carol's sync never shows the room.
    assert_ok_object(
        &alice
            .put(&typing_path(&room, alice.user_id()), &typing_on)
            .await,
        "alice types again",
    );
    let body = sync_ok(&carol, Some(&carol_token), 1000).await;
    assert!(
        !mentions_room(&body, &room),
        "a non-member sees the room in an incremental sync: {body}"
    );
    let body = sync_ok(&carol, None, 0).await;
    assert!(
        !mentions_room(&body, &room),
        "a non-member sees the room in an initial sync: {body}"
    );
}

/// 32, continued. A typing notification expires after its timeout, and a
/// long-polling `/sync` wakes up for the expiry.
async fn a32_typing_timeout_expires(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = shared_room(&alice, &bob).await;
    let bob_token = next_batch(&sync_ok(&bob, None, 0).await);

    assert_ok_object(
        &alice
            .put(
                &typing_path(&room, alice.user_id()),
                &json!({ "typing": true, "timeout": 1000 }),
            )
            .await,
        "alice types for one second",
    );
    let started = Instant::now();
    let body = bob
        .sync_until(Some(&bob_token), WAIT, |b| {
            typing_users(b, &room).is_some_and(|u| !u.is_empty())
        })
        .await;
    assert_eq!(
        typing_users(&body, &room),
        Some(vec![alice.user_id().to_string()]),
        "{body}"
    );

    // Long polls (20 s each) must come back with the expiry, not at their
    // timeout. Other ephemeral data (such as the server's own delivered
    // receipts) may wake one first, so follow next_batch until the expiry.
    let mut token = next_batch(&body);
    loop {
        let body = sync_ok(&bob, Some(&token), 20_000).await;
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(5),
            "the typing notification expired only after {waited:?} (timeout 1 s): {body}"
        );
        match typing_users(&body, &room) {
            Some(users) if users.is_empty() => break,
            Some(users) => assert_eq!(
                users,
                vec![alice.user_id().to_string()],
                "typing users before the expiry: {body}"
            ),
            None => {}
        }
        token = next_batch(&body);
    }
}

/// 33. Read receipts appear as `m.receipt` for co-members (private ones only
///     for their sender, threaded ones with their `thread_id`), and read
///     markers set `m.fully_read` room account data.
async fn a33_read_receipts_and_markers(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = shared_room(&alice, &bob).await;
    let first = bob.send_text(&room, "one").await;
    let second = bob.send_text(&room, "two").await;
    let third = bob.send_text(&room, "three").await;
    let fourth = bob.send_text(&room, "four").await;
    let bob_token = next_batch(&sync_ok(&bob, None, 0).await);
    let alice_token = next_batch(&sync_ok(&alice, None, 0).await);

    // A public receipt.
    assert_ok_object(
        &alice
            .post(&receipt_path(&room, "m.read", &first), &json!({}))
            .await,
        "alice's m.read receipt",
    );
    let body = bob
        .sync_until(Some(&bob_token), WAIT, |b| {
            receipt(b, &room, &first, "m.read", alice.user_id()).is_some()
        })
        .await;
    let read = receipt(&body, &room, &first, "m.read", alice.user_id()).unwrap();
    assert!(read["ts"].is_u64(), "receipt without an integer ts: {body}");
    assert!(
        read.get("thread_id").is_none(),
        "unthreaded receipt with a thread_id: {body}"
    );
    let bob_token = next_batch(&body);

    // A private receipt: alice sees it, bob does not (checked over the whole
    // span up to a later public receipt).
    assert_ok_object(
        &alice
            .post(&receipt_path(&room, "m.read.private", &second), &json!({}))
            .await,
        "alice's m.read.private receipt",
    );
    let body = alice
        .sync_until(Some(&alice_token), WAIT, |b| {
            receipt(b, &room, &second, "m.read.private", alice.user_id()).is_some()
        })
        .await;
    let private = receipt(&body, &room, &second, "m.read.private", alice.user_id()).unwrap();
    assert!(private["ts"].is_u64(), "{body}");
    let alice_token = next_batch(&body);

    // A threaded receipt on the main timeline.
    assert_ok_object(
        &alice
            .post(
                &receipt_path(&room, "m.read", &third),
                &json!({ "thread_id": "main" }),
            )
            .await,
        "alice's threaded receipt",
    );
    let body = bob
        .sync_until(Some(&bob_token), WAIT, |b| {
            receipt(b, &room, &third, "m.read", alice.user_id()).is_some()
        })
        .await;
    let threaded = receipt(&body, &room, &third, "m.read", alice.user_id()).unwrap();
    assert_eq!(threaded["thread_id"], "main", "{body}");
    assert!(threaded["ts"].is_u64(), "{body}");
    assert!(
        !has_receipt_type(&body, &room, "m.read.private"),
        "bob sees alice's private receipt: {body}"
    );
    let all_since = sync_ok(&bob, Some(&bob_token), 0).await;
    assert!(
        !has_receipt_type(&all_since, &room, "m.read.private"),
        "bob sees alice's private receipt: {all_since}"
    );
    assert!(
        !has_receipt_type(&sync_ok(&bob, None, 0).await, &room, "m.read.private"),
        "bob's initial sync shows alice's private receipt"
    );
    let bob_token = next_batch(&body);

    // Read markers: m.fully_read room account data for alice, an m.read
    // receipt for everyone.
    assert_ok_object(
        &alice
            .post(
                &Client::room_path(&room, "/read_markers"),
                &json!({ "m.fully_read": fourth, "m.read": fourth }),
            )
            .await,
        "alice sets read markers",
    );
    let body = alice
        .sync_until(Some(&alice_token), WAIT, |b| {
            joined_events(b, &room, "account_data")
                .iter()
                .any(|e| e["type"] == "m.fully_read")
        })
        .await;
    let fully_read = joined_events(&body, &room, "account_data")
        .into_iter()
        .find(|e| e["type"] == "m.fully_read")
        .unwrap();
    assert_eq!(
        fully_read["content"],
        json!({ "event_id": fourth }),
        "m.fully_read account data: {body}"
    );
    let response = alice
        .get(&format!(
            "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.fully_read",
            encode(alice.user_id()),
            encode(&room)
        ))
        .await;
    assert_eq!(
        assert_ok(&response, "GET m.fully_read")["event_id"],
        fourth.as_str()
    );
    let body = bob
        .sync_until(Some(&bob_token), WAIT, |b| {
            receipt(b, &room, &fourth, "m.read", alice.user_id()).is_some()
        })
        .await;
    assert!(
        receipt(&body, &room, &fourth, "m.read", alice.user_id()).unwrap()["ts"].is_u64(),
        "{body}"
    );

    // Errors.
    let response = alice
        .post(&receipt_path(&room, "m.read", UNKNOWN_EVENT), &json!({}))
        .await;
    assert_eq!(
        response.0, 404,
        "a receipt for an unknown event: expected 404, got {response:?}"
    );
    assert_error(
        &carol
            .post(&receipt_path(&room, "m.read", &first), &json!({}))
            .await,
        403,
        "M_FORBIDDEN",
        "a receipt in a room carol is not in",
    );
}

/// 33, continued. Receipts that move together are formatted once for every member who
/// syncs over the same range; a private receipt among them still reaches only its owner.
async fn a33_private_receipts_stay_private_among_shared_ones(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let dave = hs.register_user("dave").await;
    let room = shared_room(&alice, &bob).await;
    assert_ok(&carol.join(&room).await, "carol joins");
    assert_ok(&dave.join(&room).await, "dave joins");
    let event = alice.send_text(&room, "read me").await;
    // Everyone's token is taken after the last write, so all of them sync over the same
    // range below.
    let tokens: Vec<String> = {
        let mut tokens = Vec::new();
        for c in [&alice, &bob, &carol, &dave] {
            tokens.push(next_batch(&sync_ok(c, None, 0).await));
        }
        tokens
    };
    assert_ok_object(
        &bob.post(&receipt_path(&room, "m.read.private", &event), &json!({}))
            .await,
        "bob's private receipt",
    );
    assert_ok_object(
        &carol
            .post(&receipt_path(&room, "m.read", &event), &json!({}))
            .await,
        "carol's public receipt",
    );
    for (client, token) in [&alice, &bob, &carol, &dave].into_iter().zip(&tokens) {
        let body = client
            .sync_until(Some(token), WAIT, |b| {
                receipt(b, &room, &event, "m.read", carol.user_id()).is_some()
            })
            .await;
        let private = receipt(&body, &room, &event, "m.read.private", bob.user_id());
        if client.user_id() == bob.user_id() {
            assert!(
                private.is_some(),
                "bob does not see his private receipt: {body}"
            );
        } else {
            assert!(
                private.is_none(),
                "{} sees bob's private receipt: {body}",
                client.user_id()
            );
        }
    }
}

backend_tests!(
    a32_typing,
    a32_typing_timeout_expires,
    a33_read_receipts_and_markers,
    a33_private_receipts_stay_private_among_shared_ones,
);
