//! Issue 10, "Filters do what they say": `limit` counts the events a filter lets through
//! (in `/sync` and `/messages`), and every part of a sync filter is honoured: `room.state`,
//! `room.ephemeral`, `room.account_data`, `account_data`, `presence`, `event_fields`, and in
//! the timeline `senders` / `not_senders`, `contains_url`, `rooms` / `not_rooms`.

use complement_tests::{
    assert_ok, backend_tests, encode, unique_name, Backend, Client, ServerOptions, TestServer,
};
use serde_json::{json, Value};

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend, ServerOptions::default()).await
}

async fn sync_filtered(client: &Client, since: Option<&str>, filter: &Value) -> Value {
    let filter = filter.to_string();
    let response = client.sync_with(since, 0, &[("filter", &filter)]).await;
    assert_ok(&response, &format!("/sync with filter {filter}")).clone()
}

fn joined<'a>(body: &'a Value, room: &str) -> &'a Value {
    body["rooms"]["join"]
        .get(room)
        .unwrap_or_else(|| panic!("room {room} not joined in {body}"))
}

fn events(room: &Value, part: &str) -> Vec<Value> {
    room[part]["events"].as_array().cloned().unwrap_or_default()
}

fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap_or("-").to_owned())
        .collect()
}

async fn send(client: &Client, room: &str, event_type: &str, content: Value) -> String {
    let response = client
        .send_event(room, event_type, &unique_name("txn"), &content)
        .await;
    assert_ok(&response, &format!("send {event_type}"))["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn noise(client: &Client, room: &str, n: usize) {
    for i in 0..n {
        send(client, room, "org.example.noise", json!({ "i": i })).await;
    }
}

/// A timeline filter for messages with `limit: 3` gives the last three messages, however
/// many other events follow them (initial and incremental sync), and its `prev_batch`
/// continues with the earlier messages through `/messages` with the same filter.
async fn timeline_limit_counts_filtered_events(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = alice.create_room(&json!({})).await;
    for i in 0..5 {
        alice.send_text(&room, &format!("m{i}")).await;
    }
    noise(&alice, &room, 15).await;
    let filter = json!({ "room": { "timeline": { "types": ["m.room.message"], "limit": 3 } } });
    let body = sync_filtered(&alice, None, &filter).await;
    let r = joined(&body, &room);
    assert_eq!(bodies(&events(r, "timeline")), ["m2", "m3", "m4"], "{r}");
    assert_eq!(r["timeline"]["limited"], true, "{r}");

    // The rest through /messages, with the same event filter.
    let prev = r["timeline"]["prev_batch"].as_str().unwrap();
    let messages_filter = json!({ "types": ["m.room.message"] }).to_string();
    let path = Client::room_path(
        &room,
        &format!(
            "/messages?dir=b&limit=10&from={}&filter={}",
            encode(prev),
            encode(&messages_filter)
        ),
    );
    let page = alice.get(&path).await;
    let chunk = assert_ok(&page, "/messages")["chunk"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(bodies(&chunk), ["m1", "m0"], "{page:?}");

    // Incremental: two new messages among more noise.
    let token = body["next_batch"].as_str().unwrap().to_owned();
    alice.send_text(&room, "m5").await;
    noise(&alice, &room, 6).await;
    alice.send_text(&room, "m6").await;
    noise(&alice, &room, 6).await;
    let body = sync_filtered(&alice, Some(&token), &filter).await;
    let r = joined(&body, &room);
    assert_eq!(bodies(&events(r, "timeline")), ["m5", "m6"], "{r}");
    assert_eq!(r["timeline"]["limited"], false, "{r}");
}

/// `/messages` applies its filter (types, senders, not_senders, contains_url) before the
/// limit.
async fn messages_filter_applies_before_limit(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    for i in 0..4 {
        alice.send_text(&room, &format!("a{i}")).await;
        bob.send_text(&room, &format!("b{i}")).await;
    }
    send(
        &alice,
        &room,
        "m.room.message",
        json!({ "msgtype": "m.image", "body": "pic", "url": "mxc://x/y" }),
    )
    .await;
    noise(&alice, &room, 12).await;
    let page = |filter: Value, limit: u32| {
        let alice = alice.clone();
        let room = room.clone();
        async move {
            let path = Client::room_path(
                &room,
                &format!(
                    "/messages?dir=b&limit={limit}&filter={}",
                    encode(&filter.to_string())
                ),
            );
            let response = alice.get(&path).await;
            let body = assert_ok(&response, "/messages").clone();
            bodies(body["chunk"].as_array().unwrap())
        }
    };
    assert_eq!(
        page(json!({ "types": ["m.room.message"] }), 3).await,
        ["pic", "b3", "a3"]
    );
    let bob_id = bob.user_id().to_owned();
    assert_eq!(
        page(
            json!({ "types": ["m.room.message"], "senders": [bob_id.clone()] }),
            2
        )
        .await,
        ["b3", "b2"]
    );
    assert_eq!(
        page(
            json!({ "types": ["m.room.message"], "not_senders": [bob_id] }),
            2
        )
        .await,
        ["pic", "a3"]
    );
    assert_eq!(page(json!({ "contains_url": true }), 5).await, ["pic"]);
    assert_eq!(
        page(
            json!({ "types": ["m.room.message"], "contains_url": false }),
            1
        )
        .await,
        ["b3"]
    );
    // A room excluded by the filter gives nothing.
    assert!(page(json!({ "not_rooms": [room.clone()] }), 5)
        .await
        .is_empty());
}

/// The timeline's `senders`, `not_senders`, `contains_url` and `rooms` / `not_rooms`.
async fn sync_timeline_filter_parts(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let other = alice.create_room(&json!({})).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    alice.send_text(&room, "from alice").await;
    bob.send_text(&room, "from bob").await;
    send(
        &alice,
        &room,
        "m.room.message",
        json!({ "msgtype": "m.file", "body": "file", "url": "mxc://x/z" }),
    )
    .await;
    alice.send_text(&other, "elsewhere").await;

    let only_msgs = |extra: Value| {
        let mut t = json!({ "types": ["m.room.message"], "limit": 10 });
        for (k, v) in extra.as_object().unwrap() {
            t[k] = v.clone();
        }
        json!({ "room": { "timeline": t } })
    };
    let bob_id = bob.user_id().to_owned();
    let body = sync_filtered(&alice, None, &only_msgs(json!({ "senders": [bob_id] }))).await;
    assert_eq!(
        bodies(&events(joined(&body, &room), "timeline")),
        ["from bob"]
    );
    let body = sync_filtered(
        &alice,
        None,
        &only_msgs(json!({ "not_senders": [bob.user_id()] })),
    )
    .await;
    assert_eq!(
        bodies(&events(joined(&body, &room), "timeline")),
        ["from alice", "file"]
    );
    let body = sync_filtered(&alice, None, &only_msgs(json!({ "contains_url": true }))).await;
    assert_eq!(bodies(&events(joined(&body, &room), "timeline")), ["file"]);
    let body = sync_filtered(&alice, None, &only_msgs(json!({ "not_rooms": [other] }))).await;
    assert_eq!(bodies(&events(joined(&body, &room), "timeline")).len(), 3);
    assert!(
        events(joined(&body, &other), "timeline").is_empty(),
        "timeline.not_rooms ignored: {body}"
    );
    let body = sync_filtered(&alice, None, &only_msgs(json!({ "rooms": [room.clone()] }))).await;
    assert!(
        events(joined(&body, &other), "timeline").is_empty(),
        "timeline.rooms ignored: {body}"
    );
}

/// `room.state`, `room.ephemeral`, `room.account_data`, `account_data`, `presence`.
async fn sync_other_filter_parts(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Named", "topic": "T" }))
        .await;
    assert_ok(&bob.join(&room).await, "bob joins");
    let last = bob.send_text(&room, "hello").await;
    let receipt = Client::room_path(&room, &format!("/receipt/m.read/{}", encode(&last)));
    assert_ok(&alice.post(&receipt, &json!({})).await, "receipt");
    let typing = Client::room_path(&room, &format!("/typing/{}", encode(alice.user_id())));
    assert_ok(
        &alice
            .put(&typing, &json!({ "typing": true, "timeout": 30000 }))
            .await,
        "typing",
    );
    let user = encode(alice.user_id());
    let room_enc = encode(&room);
    for (path, what) in [
        (
            format!("/_matrix/client/v3/user/{user}/account_data/org.example.keep"),
            "global keep",
        ),
        (
            format!("/_matrix/client/v3/user/{user}/account_data/org.example.drop"),
            "global drop",
        ),
        (
            format!(
                "/_matrix/client/v3/user/{user}/rooms/{room_enc}/account_data/org.example.keep"
            ),
            "room keep",
        ),
        (
            format!(
                "/_matrix/client/v3/user/{user}/rooms/{room_enc}/account_data/org.example.drop"
            ),
            "room drop",
        ),
    ] {
        assert_ok(&alice.put(&path, &json!({ "v": 1 })).await, what);
    }
    for who in [&alice, &bob] {
        let presence = format!(
            "/_matrix/client/v3/presence/{}/status",
            encode(who.user_id())
        );
        assert_ok(
            &who.put(&presence, &json!({ "presence": "online" })).await,
            "presence",
        );
    }

    // Unfiltered, everything is there (so the filtered checks below can fail).
    let body = sync_filtered(
        &alice,
        None,
        &json!({ "room": { "timeline": { "limit": 1 } } }),
    )
    .await;
    let r = joined(&body, &room);
    let types = |events: Vec<Value>| -> Vec<String> {
        let mut t: Vec<String> = events
            .iter()
            .map(|e| e["type"].as_str().unwrap_or("").to_owned())
            .collect();
        t.sort();
        t.dedup();
        t
    };
    assert!(
        types(events(r, "state")).contains(&"m.room.topic".to_owned()),
        "{r}"
    );
    assert_eq!(
        types(events(r, "ephemeral")),
        ["m.receipt", "m.typing"],
        "{r}"
    );
    assert_eq!(
        types(events(r, "account_data")),
        ["org.example.drop", "org.example.keep"]
    );
    assert!(types(events(&body, "account_data")).contains(&"org.example.drop".to_owned()));
    assert!(!events(&body, "presence").is_empty(), "no presence: {body}");

    let filter = json!({
        "room": {
            "timeline": { "limit": 1 },
            "state": { "types": ["m.room.name", "m.room.member"], "not_senders": [bob.user_id()] },
            "ephemeral": { "not_types": ["m.receipt"] },
            "account_data": { "types": ["org.example.keep"] }
        },
        "account_data": { "not_types": ["org.example.drop"] },
        "presence": { "not_types": ["*"] }
    });
    let body = sync_filtered(&alice, None, &filter).await;
    let r = joined(&body, &room);
    let state = events(r, "state");
    assert_eq!(
        types(state.clone()),
        ["m.room.member", "m.room.name"],
        "{r}"
    );
    assert!(
        state.iter().all(|e| e["sender"] != bob.user_id()),
        "state.not_senders ignored: {r}"
    );
    assert_eq!(types(events(r, "ephemeral")), ["m.typing"], "{r}");
    assert_eq!(
        types(events(r, "account_data")),
        ["org.example.keep"],
        "{r}"
    );
    let global = types(events(&body, "account_data"));
    assert!(
        global.contains(&"org.example.keep".to_owned())
            && !global.contains(&"org.example.drop".to_owned()),
        "{global:?}"
    );
    assert!(
        events(&body, "presence").is_empty(),
        "presence filter ignored: {body}"
    );

    // Limits of the other parts.
    let filter = json!({
        "room": { "timeline": { "limit": 1 }, "ephemeral": { "limit": 1 }, "account_data": { "limit": 1 } },
        "account_data": { "types": ["org.example.*"], "limit": 1 }
    });
    let body = sync_filtered(&alice, None, &filter).await;
    let r = joined(&body, &room);
    assert_eq!(events(r, "ephemeral").len(), 1, "{r}");
    assert_eq!(events(r, "account_data").len(), 1, "{r}");
    assert_eq!(events(&body, "account_data").len(), 1, "{body}");
}

/// `event_fields` keeps only the named fields, with `\.` for a dot in a name.
async fn sync_event_fields(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = alice.create_room(&json!({})).await;
    let first = alice.send_text(&room, "first").await;
    send(
        &alice,
        &room,
        "m.room.message",
        json!({
            "msgtype": "m.text",
            "body": "reply",
            "m.relates_to": { "m.in_reply_to": { "event_id": first } }
        }),
    )
    .await;
    let filter = json!({
        "event_fields": ["type", "content.body", "content.m\\.relates_to"],
        "room": { "timeline": { "limit": 2, "types": ["m.room.message"] } }
    });
    let body = sync_filtered(&alice, None, &filter).await;
    let timeline = events(joined(&body, &room), "timeline");
    assert_eq!(
        timeline,
        [
            json!({ "type": "m.room.message", "content": { "body": "first" } }),
            json!({
                "type": "m.room.message",
                "content": { "body": "reply", "m.relates_to": { "m.in_reply_to": { "event_id": first } } }
            }),
        ],
        "{body}"
    );
    for event in events(joined(&body, &room), "state") {
        let keys: Vec<&String> = event.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(|k| *k == "type" || *k == "content"),
            "state event with more fields: {event}"
        );
    }
}

/// `room.ephemeral`'s `senders` / `not_senders` pick the users an ephemeral event reports:
/// who is typing, whose receipts.
async fn ephemeral_senders(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    assert_ok(&carol.join(&room).await, "carol joins");
    let last = alice.send_text(&room, "hello").await;
    for who in [&bob, &carol] {
        let receipt = Client::room_path(&room, &format!("/receipt/m.read/{}", encode(&last)));
        assert_ok(&who.post(&receipt, &json!({})).await, "receipt");
        let typing = Client::room_path(&room, &format!("/typing/{}", encode(who.user_id())));
        assert_ok(
            &who.put(&typing, &json!({ "typing": true, "timeout": 30000 }))
                .await,
            "typing",
        );
    }
    let reported = |body: &Value| -> (Vec<String>, Vec<String>) {
        let r = joined(body, &room);
        let mut typing = Vec::new();
        let mut receipts = Vec::new();
        for event in events(r, "ephemeral") {
            match event["type"].as_str() {
                Some("m.typing") => typing.extend(
                    event["content"]["user_ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|u| u.as_str().unwrap().to_owned()),
                ),
                Some("m.receipt") => {
                    for by_type in event["content"].as_object().unwrap().values() {
                        for users in by_type.as_object().unwrap().values() {
                            receipts.extend(users.as_object().unwrap().keys().cloned());
                        }
                    }
                }
                _ => {}
            }
        }
        typing.sort();
        receipts.sort();
        receipts.dedup();
        (typing, receipts)
    };
    let mut both = vec![bob.user_id().to_owned(), carol.user_id().to_owned()];
    both.sort();
    let body = sync_filtered(&alice, None, &json!({})).await;
    assert_eq!(reported(&body), (both.clone(), both), "{body}");

    let only_bob = json!({ "room": { "ephemeral": { "senders": [bob.user_id()] } } });
    let body = sync_filtered(&alice, None, &only_bob).await;
    let bob_only = vec![bob.user_id().to_owned()];
    assert_eq!(reported(&body), (bob_only.clone(), bob_only), "{body}");

    let not_bob = json!({ "room": { "ephemeral": { "not_senders": [bob.user_id()] } } });
    let body = sync_filtered(&alice, None, &not_bob).await;
    let token = body["next_batch"].as_str().unwrap().to_owned();
    let carol_only = vec![carol.user_id().to_owned()];
    assert_eq!(
        reported(&body),
        (carol_only.clone(), carol_only.clone()),
        "{body}"
    );

    // Incremental: bob stops typing and reads again; with bob filtered out, the typing list
    // still says carol and no receipt of bob's comes.
    let newer = alice.send_text(&room, "again").await;
    let receipt = Client::room_path(&room, &format!("/receipt/m.read/{}", encode(&newer)));
    assert_ok(&bob.post(&receipt, &json!({})).await, "receipt");
    let typing = Client::room_path(&room, &format!("/typing/{}", encode(bob.user_id())));
    assert_ok(
        &bob.put(&typing, &json!({ "typing": false })).await,
        "typing",
    );
    let body = sync_filtered(&alice, Some(&token), &not_bob).await;
    let (typing, receipts) = reported(&body);
    assert_eq!(typing, carol_only, "{body}");
    assert!(receipts.is_empty(), "{body}");
}

/// `/context` applies its `filter` to the events around the one asked for, before the limit
/// (like `/messages`), and leaves that event itself alone.
async fn context_filter(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    for i in 0..3 {
        alice.send_text(&room, &format!("before{i}")).await;
        noise(&alice, &room, 4).await;
    }
    let middle = send(
        &alice,
        &room,
        "org.example.noise",
        json!({ "middle": true }),
    )
    .await;
    for i in 0..3 {
        noise(&alice, &room, 4).await;
        alice.send_text(&room, &format!("after{i}")).await;
        bob.send_text(&room, &format!("bob{i}")).await;
    }
    let context = |filter: Value, limit: u32| {
        let alice = alice.clone();
        let room = room.clone();
        let middle = middle.clone();
        async move {
            let path = Client::room_path(
                &room,
                &format!(
                    "/context/{}?limit={limit}&filter={}",
                    encode(&middle),
                    encode(&filter.to_string())
                ),
            );
            let response = alice.get(&path).await;
            assert_ok(&response, "/context").clone()
        }
    };
    let body = context(json!({ "types": ["m.room.message"] }), 6).await;
    assert_eq!(body["event"]["event_id"], middle.as_str(), "{body}");
    assert_eq!(
        bodies(body["events_before"].as_array().unwrap()),
        ["before2", "before1", "before0"],
        "{body}"
    );
    assert_eq!(
        bodies(body["events_after"].as_array().unwrap()),
        ["after0", "bob0", "after1"],
        "{body}"
    );
    let body = context(
        json!({ "types": ["m.room.message"], "not_senders": [bob.user_id()] }),
        4,
    )
    .await;
    assert_eq!(
        bodies(body["events_after"].as_array().unwrap()),
        ["after0", "after1"],
        "{body}"
    );
    // The tokens continue the walk: forwards from `end` (same filter) gives the rest.
    let end = body["end"].as_str().unwrap();
    let path = Client::room_path(
        &room,
        &format!(
            "/messages?dir=f&limit=10&from={}&filter={}",
            encode(end),
            encode(
                &json!({ "types": ["m.room.message"], "not_senders": [bob.user_id()] }).to_string()
            )
        ),
    );
    let page = alice.get(&path).await;
    assert_eq!(
        bodies(assert_ok(&page, "/messages")["chunk"].as_array().unwrap()),
        ["after2"],
        "{page:?}"
    );
}

/// A user who left gets a `/context` whose `end` stops at their leave: paginating back from
/// it gives their leave, not an empty page of events they may not see.
async fn context_end_stops_at_the_leave(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "invite": [bob.user_id()] }))
        .await;
    let visibility = Client::room_path(&room, "/state/m.room.history_visibility/");
    assert_ok(
        &alice
            .put(&visibility, &json!({ "history_visibility": "joined" }))
            .await,
        "history visibility",
    );
    assert_ok(&bob.join(&room).await, "bob joins");
    let seen = alice.send_text(&room, "seen").await;
    assert_ok(&bob.leave(&room).await, "bob leaves");
    for i in 0..5 {
        alice.send_text(&room, &format!("secret{i}")).await;
    }
    let path = Client::room_path(&room, &format!("/context/{}?limit=10", encode(&seen)));
    let response = bob.get(&path).await;
    let body = assert_ok(&response, "/context").clone();
    let after = body["events_after"].as_array().unwrap();
    assert_eq!(after.len(), 1, "{body}");
    assert_eq!(after[0]["type"], "m.room.member", "{body}");
    assert!(!body.to_string().contains("secret"), "{body}");
    let end = body["end"].as_str().unwrap();
    let path = Client::room_path(
        &room,
        &format!("/messages?dir=b&limit=1&from={}", encode(end)),
    );
    let page = bob.get(&path).await;
    let chunk = assert_ok(&page, "/messages")["chunk"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(chunk.len(), 1, "{page:?}");
    assert_eq!(chunk[0]["content"]["membership"], "leave", "{page:?}");
}

backend_tests!(
    timeline_limit_counts_filtered_events,
    messages_filter_applies_before_limit,
    sync_timeline_filter_parts,
    sync_other_filter_parts,
    sync_event_fields,
    ephemeral_senders,
    context_filter,
    context_end_stops_at_the_leave,
);
