//! State over a long history: a room with many state changes (more than any snapshot
//! chain or checkpoint interval) reads the same state as a naive replay, at every point a
//! client can ask about: the current state, the state a member who left still sees,
//! `prev_content` of every state event in `/messages`, and which events history visibility
//! lets a former member page through.

use std::collections::BTreeMap;

use complement_tests::{assert_ok, backend_tests, Backend, Client, ServerOptions, TestServer};
use serde_json::{json, Value};

const TYPE: &str = "org.example.counter";

/// `state_key -> value` of the room's `TYPE` events in `GET /state`, as `who`.
async fn counters(who: &Client, room: &str) -> BTreeMap<String, u64> {
    let response = who.get(&Client::room_path(room, "/state")).await;
    let body = assert_ok(&response, "GET /state");
    body.as_array()
        .expect("a state array")
        .iter()
        .filter(|e| e["type"] == TYPE)
        .map(|e| {
            (
                e["state_key"].as_str().unwrap().to_owned(),
                e["content"]["value"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Every event of the room `who` may page through, oldest first, in pages of 100.
async fn whole_history(who: &Client, room: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = Client::room_path(room, "/messages?dir=b&limit=100");
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", complement_tests::encode(from)));
        }
        let response = who.get(&path).await;
        let body = assert_ok(&response, "GET /messages");
        events.extend(body["chunk"].as_array().unwrap().iter().cloned());
        match body["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    events.reverse();
    events
}

async fn many_state_changes_read_the_same_state(backend: Backend) {
    let Some(mut hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");

    // 320 changes over 45 keys (so most overwrite an earlier value), a message after every
    // third; bob leaves half way.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut at_leave = BTreeMap::new();
    let mut bob_saw = 0;
    for i in 0..320u64 {
        let key = format!("k{}", (i * 7) % 45);
        let response = alice
            .put_state(&room, TYPE, &key, &json!({ "value": i }))
            .await;
        assert_ok(&response, "PUT state");
        expected.insert(key, i);
        if i < 160 {
            bob_saw += 1;
        }
        if i % 3 == 0 {
            alice.send_text(&room, &format!("message {i}")).await;
        }
        if i == 159 {
            assert_ok(&bob.leave(&room).await, "bob leaves");
            at_leave = expected.clone();
        }
    }

    assert_eq!(counters(&alice, &room).await, expected, "current state");
    assert_eq!(
        counters(&bob, &room).await,
        at_leave,
        "the state bob left with"
    );

    // prev_content of every counter event is the value it replaced.
    let history = whole_history(&alice, &room).await;
    let mut replay: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut seen = 0;
    for event in history.iter().filter(|e| e["type"] == TYPE) {
        seen += 1;
        let key = event["state_key"].as_str().unwrap().to_owned();
        let unsigned = &event["unsigned"];
        match replay.get(&key) {
            Some((value, id)) => {
                assert_eq!(
                    unsigned["prev_content"],
                    json!({ "value": value }),
                    "{event}"
                );
                assert_eq!(unsigned["replaces_state"], id.as_str(), "{event}");
            }
            None => assert!(unsigned.get("prev_content").is_none(), "{event}"),
        }
        replay.insert(
            key,
            (
                event["content"]["value"].as_u64().unwrap(),
                event["event_id"].as_str().unwrap().to_owned(),
            ),
        );
    }
    assert_eq!(seen, 320, "alice pages through every change");

    // State events stored before migration 0015 carry no recorded `replaces_state`: readers
    // look it up in the state the event was placed on, with the same answer.
    if let Some(db) = hs.postgres_database() {
        db.query("UPDATE events SET replaces_state = NULL")
            .expect("clear the recorded replaced events");
        hs.restart().await;
        let looked_up = whole_history(&alice, &room).await;
        let replaced = |events: &[Value]| -> Vec<(Value, Value, Value)> {
            events
                .iter()
                .filter(|e| e["state_key"].is_string())
                .map(|e| {
                    let u = &e["unsigned"];
                    (
                        u["prev_content"].clone(),
                        u["prev_sender"].clone(),
                        u["replaces_state"].clone(),
                    )
                })
                .collect()
        };
        assert_eq!(replaced(&looked_up), replaced(&history));
    }

    // Bob (left, `shared` history) sees what happened while he was in, and nothing after.
    let bobs = whole_history(&bob, &room).await;
    let counters_seen: Vec<u64> = bobs
        .iter()
        .filter(|e| e["type"] == TYPE)
        .map(|e| e["content"]["value"].as_u64().unwrap())
        .collect();
    assert_eq!(
        counters_seen.len(),
        bob_saw,
        "bob's view: {counters_seen:?}"
    );
    assert!(counters_seen.iter().all(|v| *v < 160), "{counters_seen:?}");
    assert!(
        bobs.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id()
            && e["content"]["membership"] == "leave"),
        "bob sees his own leave"
    );
}

backend_tests!(many_state_changes_read_the_same_state);
