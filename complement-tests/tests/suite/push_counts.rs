//! Issue 11, evaluation and unread counts: every new event is evaluated against the push rules
//! of each joined local member but the sender, and `/sync` reports
//! `unread_notifications` (and per thread `unread_thread_notifications`) consistent with the
//! timeline it carries, cleared by `m.read` and `m.read.private`; `/notifications` lists them.

use std::time::Duration;

use complement_tests::{
    assert_ok, assert_ok_object, backend_tests, encode, unique_name, Backend, Client,
    ServerOptions, TestServer,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend, ServerOptions::default()).await
}

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().unwrap().to_owned()
}

fn timeline_ids(body: &Value, room: &str) -> Vec<String> {
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `(notification_count, highlight_count)` of a room in a sync body.
fn counts(body: &Value, room: &str) -> Option<(i64, i64)> {
    let unread = &body["rooms"]["join"][room]["unread_notifications"];
    Some((
        unread["notification_count"].as_i64()?,
        unread["highlight_count"].as_i64()?,
    ))
}

/// Syncs until the response carries `event` in `room`'s timeline; returns the counts of that
/// very response (they must include the event) and the next token.
async fn counts_with(
    client: &Client,
    since: &str,
    room: &str,
    event: &str,
) -> ((i64, i64), String) {
    let body = client
        .sync_until(Some(since), WAIT, |b| {
            timeline_ids(b, room).iter().any(|e| e == event)
        })
        .await;
    let c = counts(&body, room).unwrap_or_else(|| panic!("no unread_notifications: {body}"));
    (c, next_batch(&body))
}

/// Syncs until `room`'s counts are `expected` (after a receipt).
async fn counts_become(client: &Client, since: &str, room: &str, expected: (i64, i64)) -> String {
    let body = client
        .sync_until(Some(since), WAIT, |b| counts(b, room) == Some(expected))
        .await;
    next_batch(&body)
}

async fn send(client: &Client, room: &str, event_type: &str, content: Value) -> String {
    let response = client
        .send_event(room, event_type, &unique_name("txn"), &content)
        .await;
    assert_ok(&response, "send")["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn receipt(client: &Client, room: &str, receipt_type: &str, event: &str, body: Value) {
    let path = Client::room_path(
        room,
        &format!("/receipt/{}/{}", encode(receipt_type), encode(event)),
    );
    assert_ok_object(&client.post(&path, &body).await, "receipt");
}

fn text(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

/// A room of `creator` that every one of `others` joins.
async fn room_with(creator: &Client, others: &[&Client]) -> String {
    let room = creator
        .create_room(&json!({ "preset": "public_chat" }))
        .await;
    for other in others {
        assert_ok(&other.join(&room).await, "join");
    }
    room
}

/// DM and group messages notify; mentions and `@room` (from someone allowed) highlight;
/// notices and one's own messages do not count; encrypted events notify; `m.read` and
/// `m.read.private` clear the counts up to their event.
async fn push_counts_rise_and_are_cleared_by_receipts(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;

    // A DM (two members).
    let dm = room_with(&alice, &[&bob]).await;
    let token = next_batch(&bob.sync(None, 0).await.1);
    let initial = bob.sync(None, 0).await.1;
    assert_eq!(
        counts(&initial, &dm),
        Some((0, 0)),
        "a new room has no unread: {initial}"
    );

    let e1 = bob_sees(&alice, &dm, "m.room.message", text("hi")).await;
    let ((n, h), token) = counts_with(&bob, &token, &dm, &e1).await;
    assert_eq!((n, h), (1, 0), "a DM message notifies");
    let e2 = send(
        &alice,
        &dm,
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "bob, look",
            "m.mentions": { "user_ids": [bob.user_id()] },
        }),
    )
    .await;
    let (c, token) = counts_with(&bob, &token, &dm, &e2).await;
    assert_eq!(c, (2, 1), "a mention notifies and highlights");
    let e3 = send(
        &alice,
        &dm,
        "m.room.message",
        json!({ "msgtype": "m.notice", "body": "bot" }),
    )
    .await;
    let (c, token) = counts_with(&bob, &token, &dm, &e3).await;
    assert_eq!(c, (2, 1), "a notice does not count");
    let e4 = send(&bob, &dm, "m.room.message", text("my own")).await;
    let (c, token) = counts_with(&bob, &token, &dm, &e4).await;
    assert_eq!(c, (2, 1), "one's own message does not count");
    let e5 = send(
        &alice,
        &dm,
        "m.room.encrypted",
        json!({
            "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA", "sender_key": "k",
            "device_id": "D", "session_id": "s",
        }),
    )
    .await;
    let (c, token) = counts_with(&bob, &token, &dm, &e5).await;
    assert_eq!(c, (3, 1), "an encrypted event notifies");
    // Alice's own counts are untouched by her messages, and bob's message counts for her.
    let alice_body = alice.sync(None, 0).await.1;
    assert_eq!(
        counts(&alice_body, &dm),
        Some((1, 0)),
        "alice: {alice_body}"
    );

    // A receipt on e2 clears e1 and e2 (the mention), not e5.
    receipt(&bob, &dm, "m.read", &e2, json!({})).await;
    let token = counts_become(&bob, &token, &dm, (1, 0)).await;
    receipt(&bob, &dm, "m.read.private", &e5, json!({})).await;
    let token = counts_become(&bob, &token, &dm, (0, 0)).await;
    // An older receipt does not bring counts back.
    receipt(&bob, &dm, "m.read", &e1, json!({})).await;
    let e6 = send(&alice, &dm, "m.room.message", text("again")).await;
    let (c, _) = counts_with(&bob, &token, &dm, &e6).await;
    assert_eq!(c, (1, 0), "counts after a stale receipt");

    // A group room (three members).
    let group = room_with(&alice, &[&bob, &carol]).await;
    let token = next_batch(&bob.sync(None, 0).await.1);
    let g1 = send(&alice, &group, "m.room.message", text("hello all")).await;
    let (c, token) = counts_with(&bob, &token, &group, &g1).await;
    assert_eq!(c, (1, 0), "a group message notifies");
    // @room from the creator (power 100) highlights; from carol (power 0) it does not.
    let at_room =
        json!({ "msgtype": "m.text", "body": "@room hi", "m.mentions": { "room": true } });
    let g2 = send(&alice, &group, "m.room.message", at_room.clone()).await;
    let (c, token) = counts_with(&bob, &token, &group, &g2).await;
    assert_eq!(c, (2, 1), "@room from an admin");
    let g3 = send(&carol, &group, "m.room.message", at_room).await;
    let (c, token) = counts_with(&bob, &token, &group, &g3).await;
    assert_eq!(c, (3, 1), "@room from a member without the power");
    receipt(&bob, &group, "m.read.private", &g3, json!({})).await;
    counts_become(&bob, &token, &group, (0, 0)).await;
    // The DM's counts are their own.
    let body = bob.sync(None, 0).await.1;
    assert_eq!(counts(&body, &dm), Some((1, 0)), "{body}");
    assert_eq!(counts(&body, &group), Some((0, 0)), "{body}");
}

/// Sends and returns the event ID (a helper so the first send reads like the others).
async fn bob_sees(sender: &Client, room: &str, event_type: &str, content: Value) -> String {
    send(sender, room, event_type, content).await
}

/// A room rule with no actions (or `dont_notify`) mutes a room; a keyword rule highlights.
async fn push_counts_follow_the_users_rules(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let muted = room_with(&alice, &[&bob, &carol]).await;
    let dont = room_with(&alice, &[&bob, &carol]).await;
    let loud = room_with(&alice, &[&bob, &carol]).await;
    let rules = "/_matrix/client/v3/pushrules/global";
    assert_ok_object(
        &bob.put(
            &format!("{rules}/room/{}", encode(&muted)),
            &json!({ "actions": [] }),
        )
        .await,
        "mute a room",
    );
    assert_ok_object(
        &bob.put(
            &format!("{rules}/room/{}", encode(&dont)),
            &json!({ "actions": ["dont_notify"] }),
        )
        .await,
        "dont_notify a room",
    );
    assert_ok_object(
        &bob.put(
            &format!("{rules}/content/cake"),
            &json!({ "pattern": "cake", "actions": ["notify", { "set_tweak": "highlight" }] }),
        )
        .await,
        "keyword rule",
    );
    let token = next_batch(&bob.sync(None, 0).await.1);
    let m = send(&alice, &muted, "m.room.message", text("psst")).await;
    let (c, token) = counts_with(&bob, &token, &muted, &m).await;
    assert_eq!(c, (0, 0), "a muted room");
    let d = send(&alice, &dont, "m.room.message", text("psst")).await;
    let (c, token) = counts_with(&bob, &token, &dont, &d).await;
    assert_eq!(c, (0, 0), "a dont_notify room");
    let k = send(&carol, &loud, "m.room.message", text("who wants cake?")).await;
    let (c, token) = counts_with(&bob, &token, &loud, &k).await;
    assert_eq!(c, (1, 1), "a keyword highlights");
    let k2 = send(
        &carol,
        &loud,
        "m.room.message",
        text("cakes are not cake-like"),
    )
    .await;
    let (c, token) = counts_with(&bob, &token, &loud, &k2).await;
    assert_eq!(c, (2, 2), "the keyword as a word");
    let k3 = send(&carol, &loud, "m.room.message", text("pancakes")).await;
    let (c, token) = counts_with(&bob, &token, &loud, &k3).await;
    assert_eq!(c, (3, 2), "not a word match");
    // Disabling the room rule unmutes the room.
    assert_ok_object(
        &bob.put(
            &format!("{rules}/room/{}/enabled", encode(&muted)),
            &json!({ "enabled": false }),
        )
        .await,
        "unmute",
    );
    let m2 = send(&alice, &muted, "m.room.message", text("hello")).await;
    let (c, _) = counts_with(&bob, &token, &muted, &m2).await;
    assert_eq!(c, (1, 0), "an unmuted room");
    // The master rule mutes everything.
    assert_ok_object(
        &carol
            .put(
                &format!("{rules}/override/.m.rule.master/enabled"),
                &json!({ "enabled": true }),
            )
            .await,
        "master on",
    );
    let ctoken = next_batch(&carol.sync(None, 0).await.1);
    let x = send(&alice, &loud, "m.room.message", text("anyone?")).await;
    let (c, _) = counts_with(&carol, &ctoken, &loud, &x).await;
    assert_eq!(c, (0, 0), "master rule on");
}

/// Threads: with `unread_thread_notifications` the thread's events are counted apart, and a
/// threaded receipt clears only its thread; counts survive a restart.
async fn push_counts_threads_and_restart(backend: Backend) {
    let Some(mut hs) = start(backend).await else {
        return;
    };
    if hs.is_external() {
        return;
    }
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = room_with(&alice, &[&bob, &carol]).await;
    let filter =
        json!({ "room": { "timeline": { "unread_thread_notifications": true } } }).to_string();
    let params = [("filter", filter.as_str())];
    let token = next_batch(&bob.sync_with(None, 0, &params).await.1);
    let root = send(&alice, &room, "m.room.message", text("root")).await;
    let in_thread = json!({
        "msgtype": "m.text", "body": "in thread",
        "m.relates_to": { "rel_type": "m.thread", "event_id": root },
    });
    let t1 = send(&alice, &room, "m.room.message", in_thread.clone()).await;
    let t2 = send(&alice, &room, "m.room.message", in_thread).await;
    let body = bob
        .sync_until_with(Some(&token), WAIT, &params, |b| {
            timeline_ids(b, &room).contains(&t2)
        })
        .await;
    assert_eq!(counts(&body, &room), Some((1, 0)), "main timeline: {body}");
    let threads = &body["rooms"]["join"][&room]["unread_thread_notifications"];
    assert_eq!(
        threads[&root],
        json!({ "notification_count": 2, "highlight_count": 0 }),
        "{body}"
    );
    // Without the filter flag, everything counts in one.
    let plain = bob.sync(None, 0).await.1;
    assert_eq!(counts(&plain, &room), Some((3, 0)), "{plain}");
    assert!(plain["rooms"]["join"][&room]
        .get("unread_thread_notifications")
        .is_none());

    // A receipt in the thread clears only the thread.
    receipt(&bob, &room, "m.read", &t1, json!({ "thread_id": root })).await;
    let plain = bob
        .sync_until(None, WAIT, |b| counts(b, &room) == Some((2, 0)))
        .await;
    assert_eq!(counts(&plain, &room), Some((2, 0)));
    // A main-timeline receipt clears the main timeline only.
    receipt(&bob, &room, "m.read", &root, json!({ "thread_id": "main" })).await;
    bob.sync_until(None, WAIT, |b| counts(b, &room) == Some((1, 0)))
        .await;

    // Counts are the same after a restart.
    let carol_token = next_batch(&carol.sync(None, 0).await.1);
    let c1 = send(&alice, &room, "m.room.message", text("one")).await;
    let (before, _) = counts_with(&carol, &carol_token, &room, &c1).await;
    assert_eq!(before, (4, 0));
    hs.restart().await;
    let body = carol.sync(None, 0).await.1;
    assert_eq!(
        counts(&body, &room),
        Some((4, 0)),
        "carol after restart: {body}"
    );
    let body = bob.sync(None, 0).await.1;
    assert_eq!(
        counts(&body, &room),
        Some((2, 0)),
        "bob after restart: {body}"
    );
    // An unthreaded receipt clears everything up to it.
    receipt(&bob, &room, "m.read", &c1, json!({})).await;
    bob.sync_until(None, WAIT, |b| counts(b, &room) == Some((0, 0)))
        .await;
}

/// `/notifications` lists notifying events newest first, with `read`, `only=highlight` and
/// paging.
async fn push_notifications_endpoint(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = room_with(&alice, &[&bob, &carol]).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send(&alice, &room, "m.room.message", text(&format!("m{i}"))).await);
    }
    let mention = send(
        &alice,
        &room,
        "m.room.message",
        json!({
            "msgtype": "m.text", "body": "hey", "m.mentions": { "user_ids": [bob.user_id()] },
        }),
    )
    .await;
    send(
        &alice,
        &room,
        "m.room.message",
        json!({ "msgtype": "m.notice", "body": "n" }),
    )
    .await;
    receipt(&bob, &room, "m.read", &sent[1], json!({})).await;

    let (status, body) = bob.get("/_matrix/client/v3/notifications").await;
    assert_eq!(status, 200, "{body}");
    let list = body["notifications"].as_array().unwrap();
    let ids: Vec<&str> = list
        .iter()
        .map(|n| n["event"]["event_id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = vec![mention.as_str()];
    expected.extend(sent.iter().rev().map(String::as_str));
    assert_eq!(ids, expected, "{body}");
    let read: Vec<bool> = list.iter().map(|n| n["read"].as_bool().unwrap()).collect();
    assert_eq!(read, [false, false, false, false, true, true], "{body}");
    assert_eq!(list[0]["room_id"], room.as_str());
    assert!(list[0]["ts"].as_i64().unwrap() > 0);
    assert!(list[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["set_tweak"] == "highlight"));
    assert_eq!(list[1]["event"]["content"]["body"], "m4");

    let (_, body) = bob
        .get("/_matrix/client/v3/notifications?only=highlight")
        .await;
    let list = body["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["event"]["event_id"], mention.as_str());

    // Paging: 2 at a time covers all 6, in order.
    let mut paged = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let path = match &from {
            Some(f) => format!(
                "/_matrix/client/v3/notifications?limit=2&from={}",
                encode(f)
            ),
            None => "/_matrix/client/v3/notifications?limit=2".to_owned(),
        };
        let (status, body) = bob.get(&path).await;
        assert_eq!(status, 200, "{body}");
        for n in body["notifications"].as_array().unwrap() {
            paged.push(n["event"]["event_id"].as_str().unwrap().to_owned());
        }
        match body["next_token"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, expected, "paged");
    let (status, body) = bob
        .get("/_matrix/client/v3/notifications?from=nonsense")
        .await;
    assert_eq!(status, 400, "{body}");
    // Alice has none (her own messages).
    let (_, body) = alice.get("/_matrix/client/v3/notifications").await;
    assert_eq!(body["notifications"], json!([]), "{body}");
}

backend_tests!(
    push_counts_rise_and_are_cleared_by_receipts,
    push_counts_follow_the_users_rules,
    push_counts_threads_and_restart,
    push_notifications_endpoint,
);
