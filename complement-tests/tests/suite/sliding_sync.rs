//! Issue 12, simplified sliding sync (MSC4186) over HTTP: lists ordered by recency with their
//! counts and windows, room fields, `pos` handling and `M_UNKNOWN_POS`, long-polling,
//! required-state wildcards and lazy members, invites, the extensions, and bad input.

use std::time::{Duration, Instant};

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode,
    ws::{next_text_frame as next_frame, Socket},
    Backend, Client, ServerOptions, TestServer,
};
use reqwest::Method;
use serde_json::{json, Value};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend, ServerOptions::default()).await
}

/// One sliding-sync request; `pos` and `timeout` go in the query, as matrix-sdk sends them.
async fn ss(client: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> (u16, Value) {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", encode(pos)));
    }
    client.post(&path, body).await
}

async fn ss_ok(client: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
    let response = ss(client, pos, timeout_ms, body).await;
    let body = assert_ok(&response, "sliding sync").clone();
    assert!(body["pos"].is_string(), "no pos: {body}");
    body
}

fn pos(body: &Value) -> String {
    body["pos"].as_str().unwrap().to_owned()
}

fn rooms(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = body["rooms"]
        .as_object()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

fn list_body(range: (u64, u64), timeline_limit: u64, required_state: Value) -> Value {
    json!({
        "conn_id": "room-list",
        "lists": { "all": {
            "ranges": [[range.0, range.1]],
            "timeline_limit": timeline_limit,
            "required_state": required_state,
        }},
    })
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// The server list is ordered by the newest message; a window shows its part of it, with
/// names, heroes, counts and the latest event; widening the window sends only the rooms not
/// sent yet; a new message comes to a waiting request as an incremental update.
async fn sliding_sync_lists_rooms_by_recency(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let named = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Project X" }))
        .await;
    let dm = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let third = alice.create_room(&json!({ "preset": "public_chat" })).await;
    for room in [&named, &dm, &third] {
        assert_ok(&bob.join(room).await, "join");
    }
    // Activity order, newest first: third, dm, named.
    bob.send_text(&named, "one").await;
    bob.send_text(&dm, "two").await;
    let newest = bob.send_text(&third, "three").await;

    let required = json!([["m.room.create", ""], ["m.room.member", "$LAZY"]]);
    let first = ss_ok(&alice, None, 0, &list_body((0, 1), 1, required.clone())).await;
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    assert_eq!(
        rooms(&first),
        sorted(vec![dm.clone(), third.clone()]),
        "{first}"
    );
    let r = &first["rooms"][&third];
    assert_eq!(r["initial"], true);
    assert_eq!(r["membership"], "join");
    assert_eq!(r["joined_count"], 2);
    assert_eq!(
        r["notification_count"], 1,
        "bob's message notifies alice: {r}"
    );
    let timeline = r["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "timeline_limit 1: {r}");
    assert_eq!(timeline[0]["event_id"], newest.as_str());
    assert_eq!(r["limited"], true, "older events were left out");
    assert!(r["prev_batch"].is_string());
    let heroes = r["heroes"].as_array().expect("an unnamed room has heroes");
    assert_eq!(heroes[0]["user_id"], bob.user_id());
    let state_types: Vec<(String, String)> = r["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["state_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        state_types.contains(&("m.room.create".into(), String::new())),
        "{state_types:?}"
    );
    assert!(
        state_types.contains(&("m.room.member".into(), bob.user_id().to_owned())),
        "the timeline's sender's member event, lazily: {state_types:?}"
    );
    assert!(
        !state_types.contains(&("m.room.member".into(), alice.user_id().to_owned())),
        "no other members: {state_types:?}"
    );
    let bumps = (
        first["rooms"][&third]["bump_stamp"].as_i64().unwrap(),
        first["rooms"][&dm]["bump_stamp"].as_i64().unwrap(),
    );
    assert!(
        bumps.0 > bumps.1,
        "newer activity, higher bump stamp: {bumps:?}"
    );

    // Widen the window: only the room not sent yet comes.
    let wider = ss_ok(
        &alice,
        Some(&pos(&first)),
        0,
        &list_body((0, 2), 1, required.clone()),
    )
    .await;
    assert_eq!(rooms(&wider), vec![named.clone()], "{wider}");
    assert_eq!(wider["rooms"][&named]["name"], "Project X");
    assert!(
        wider["rooms"][&named].get("heroes").is_none(),
        "a named room has no heroes"
    );

    // Nothing new: a request with a timeout waits, and a message ends the wait.
    let token = pos(&wider);
    let waiting = {
        let alice = alice.clone();
        let required = required.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let body = ss_ok(
                &alice,
                Some(&token),
                10_000,
                &list_body((0, 2), 1, required),
            )
            .await;
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = bob.send_text(&named, "wake up").await;
    let (update, waited) = waiting.await.unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "woken by the message, not the timeout"
    );
    assert_eq!(rooms(&update), vec![named.clone()], "{update}");
    let r = &update["rooms"][&named];
    assert!(
        r.get("initial").is_none(),
        "an update, not a first send: {r}"
    );
    assert_eq!(r["timeline"][0]["event_id"], late.as_str());
    assert_eq!(r["num_live"], 1);
    assert_eq!(r["notification_count"], 2);
    assert!(r.get("name").is_none(), "the name did not change: {r}");
    assert!(
        r["bump_stamp"].as_i64().unwrap() > bumps.0,
        "the room moved to the top: {r}"
    );

    // An empty request with nothing new answers at the timeout with the same lists.
    let started = Instant::now();
    let idle = ss_ok(
        &alice,
        Some(&pos(&update)),
        300,
        &list_body((0, 2), 1, required),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(rooms(&idle).is_empty(), "{idle}");
    assert_eq!(idle["lists"]["all"]["count"], 3);
}

/// `pos`: a retried one answers again from the same point; an unknown, foreign or superseded
/// one is `M_UNKNOWN_POS`, after which a fresh start gives everything again.
async fn sliding_sync_pos_and_unknown_pos(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let body = list_body((0, 9), 5, json!([["m.room.name", ""]]));
    let first = ss_ok(&alice, None, 0, &body).await;
    let p1 = pos(&first);
    alice.send_text(&room, "hello").await;
    let second = ss_ok(&alice, Some(&p1), 0, &body).await;
    assert_eq!(rooms(&second), vec![room.clone()]);
    // The client never got `second`: it retries with p1 and gets the message again.
    let retried = ss_ok(&alice, Some(&p1), 0, &body).await;
    let ids = |b: &Value| -> Vec<Value> {
        b["rooms"][&room]["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].clone())
            .collect()
    };
    assert_eq!(ids(&retried), ids(&second));
    assert_eq!(ids(&retried).len(), 1, "{retried}");
    let p2 = pos(&retried);
    ss_ok(&alice, Some(&p2), 0, &body).await;
    // p1 is superseded once p2 was used.
    assert_error(
        &ss(&alice, Some(&p1), 0, &body).await,
        400,
        "M_UNKNOWN_POS",
        "old pos",
    );
    for bad in ["nonsense", "0_0", "ffffffff_1"] {
        assert_error(
            &ss(&alice, Some(bad), 0, &body).await,
            400,
            "M_UNKNOWN_POS",
            bad,
        );
    }
    // Another connection ID, or another device, does not share the connection.
    let mut other = body.clone();
    other["conn_id"] = "other".into();
    assert_error(
        &ss(&alice, Some(&p2), 0, &other).await,
        400,
        "M_UNKNOWN_POS",
        "conn_id",
    );
    let second_device = alice.new_device().await;
    assert_error(
        &ss(&second_device, Some(&p2), 0, &body).await,
        400,
        "M_UNKNOWN_POS",
        "another device",
    );
    // Starting over sends the room whole again.
    let again = ss_ok(&alice, None, 0, &body).await;
    assert_eq!(again["rooms"][&room]["initial"], true, "{again}");

    // Logging out forgets the device's connections: a later login that reuses the device
    // ID does not resume the old session's connection.
    let password = alice.password.clone().unwrap();
    let (status, login) = alice
        .anonymous()
        .login_with_device(alice.user_id(), &password, Some("REUSED"))
        .await;
    assert_eq!(status, 200, "{login}");
    let reused = alice.authed(&login, &password);
    let old = pos(&ss_ok(&reused, None, 0, &body).await);
    assert_ok(
        &reused.post("/_matrix/client/v3/logout", &json!({})).await,
        "logout",
    );
    let (status, login) = alice
        .anonymous()
        .login_with_device(alice.user_id(), &password, Some("REUSED"))
        .await;
    assert_eq!(status, 200, "{login}");
    let relogged = alice.authed(&login, &password);
    assert_error(
        &ss(&relogged, Some(&old), 0, &body).await,
        400,
        "M_UNKNOWN_POS",
        "a connection of the logged-out session",
    );
}

/// An invite shows its stripped state and can be accepted; a room one left is not listed;
/// a subscription to a room one is not in gets nothing; `*` and `$ME` in required state.
async fn sliding_sync_invites_visibility_and_required_state(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "name": "Secret" }))
        .await;
    let not_mine = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    assert_ok(&alice.invite(&room, bob.user_id()).await, "invite");
    let mut body = list_body((0, 9), 3, json!([["*", "*"]]));
    body["room_subscriptions"] =
        json!({ not_mine.clone(): { "timeline_limit": 5, "required_state": [["*", "*"]] } });
    let first = ss_ok(&bob, None, 0, &body).await;
    assert_eq!(
        rooms(&first),
        vec![room.clone()],
        "only the invite: {first}"
    );
    let invite = &first["rooms"][&room];
    assert_eq!(invite["membership"], "invite");
    let stripped = invite["invite_state"].as_array().expect("stripped state");
    assert!(stripped
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Secret"));
    assert!(
        invite.get("timeline").is_none(),
        "nothing of the room's history: {invite}"
    );

    assert_ok(&bob.join(&room).await, "accept");
    let joined = ss_ok(&bob, Some(&pos(&first)), 5_000, &body).await;
    let r = &joined["rooms"][&room];
    assert_eq!(r["membership"], "join", "{joined}");
    assert_eq!(r["initial"], true, "a new membership sends the room whole");
    assert_eq!(r["name"], "Secret");
    let state = r["required_state"].as_array().unwrap();
    for t in ["m.room.create", "m.room.power_levels", "m.room.join_rules"] {
        assert!(
            state.iter().any(|e| e["type"] == t),
            "`*` includes {t}: {r}"
        );
    }

    // `$ME`: only bob's own member event among the members.
    let me = ss_ok(
        &bob,
        None,
        0,
        &list_body((0, 9), 0, json!([["m.room.member", "$ME"]])),
    )
    .await;
    let members: Vec<&Value> = me["rooms"][&room]["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(members.len(), 1, "{me}");
    assert_eq!(members[0]["state_key"], bob.user_id());

    // Leaving: a connection that had the room hears of it, a new one does not list it.
    let before = ss_ok(&bob, None, 0, &list_body((0, 9), 1, json!([]))).await;
    assert_ok(&bob.leave(&room).await, "leave");
    let after = ss_ok(
        &bob,
        Some(&pos(&before)),
        5_000,
        &list_body((0, 9), 1, json!([])),
    )
    .await;
    assert_eq!(after["rooms"][&room]["membership"], "leave", "{after}");
    let fresh = ss_ok(&bob, None, 0, &list_body((0, 9), 1, json!([]))).await;
    assert!(rooms(&fresh).is_empty(), "{fresh}");
    assert_eq!(fresh["lists"]["all"]["count"], 0);

    // Kicked and banned: listed even on a new connection, so the user sees why, with the
    // timeline ending at the kick or ban; forgetting the room removes it.
    let kicked_from = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Kicked" }))
        .await;
    let banned_from = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Banned" }))
        .await;
    for r in [&kicked_from, &banned_from] {
        assert_ok(&bob.join(r).await, "join");
    }
    let kick = format!("/_matrix/client/v3/rooms/{}/kick", encode(&kicked_from));
    assert_ok(
        &alice
            .post(
                &kick,
                &json!({ "user_id": bob.user_id(), "reason": "spam" }),
            )
            .await,
        "kick",
    );
    let ban = format!("/_matrix/client/v3/rooms/{}/ban", encode(&banned_from));
    assert_ok(
        &alice
            .post(
                &ban,
                &json!({ "user_id": bob.user_id(), "reason": "abuse" }),
            )
            .await,
        "ban",
    );
    alice.send_text(&kicked_from, "after the kick").await;
    // Banned while only invited: never shown the room, so not listed (MSC4186).
    let banned_invited = alice
        .create_room(&json!({ "preset": "private_chat", "name": "Never joined" }))
        .await;
    assert_ok(
        &alice.invite(&banned_invited, bob.user_id()).await,
        "invite",
    );
    let ban = format!("/_matrix/client/v3/rooms/{}/ban", encode(&banned_invited));
    assert_ok(
        &alice.post(&ban, &json!({ "user_id": bob.user_id() })).await,
        "ban an invitee",
    );
    let fresh = ss_ok(&bob, None, 0, &list_body((0, 9), 5, json!([]))).await;
    assert_eq!(
        rooms(&fresh),
        sorted(vec![kicked_from.clone(), banned_from.clone()]),
        "{fresh}"
    );
    for (r, membership, reason) in [
        (&kicked_from, "leave", "spam"),
        (&banned_from, "ban", "abuse"),
    ] {
        let sent = &fresh["rooms"][r];
        assert_eq!(sent["membership"], membership, "{sent}");
        let timeline = sent["timeline"].as_array().expect("timeline");
        let last = timeline.last().expect("events up to the removal");
        assert_eq!(last["type"], "m.room.member", "ends at the removal: {sent}");
        assert_eq!(last["content"]["reason"], reason);
        assert!(
            timeline
                .iter()
                .all(|e| e["content"]["body"] != "after the kick"),
            "nothing after the kick: {sent}"
        );
    }
    let forget = format!("/_matrix/client/v3/rooms/{}/forget", encode(&kicked_from));
    assert_ok(&bob.post(&forget, &json!({})).await, "forget");
    let fresh = ss_ok(&bob, None, 0, &list_body((0, 9), 5, json!([]))).await;
    assert_eq!(rooms(&fresh), vec![banned_from.clone()], "{fresh}");
}

/// Filters: `is_invite`, `is_dm` (from `m.direct`), `not_room_types` (spaces).
async fn sliding_sync_filters(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let dm = bob
        .create_room(&json!({ "preset": "trusted_private_chat", "is_direct": true }))
        .await;
    assert_ok(&bob.invite(&dm, alice.user_id()).await, "invite");
    let group = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let space = alice
        .create_room(&json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } }))
        .await;
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/m.direct",
        encode(alice.user_id())
    );
    assert_ok(
        &alice
            .put(&path, &json!({ bob.user_id(): [dm.clone()] }))
            .await,
        "m.direct",
    );
    let list = |filters: Value| json!({ "lists": { "l": { "ranges": [[0, 99]], "timeline_limit": 0, "required_state": [], "filters": filters } } });
    let invites = ss_ok(&alice, None, 0, &list(json!({ "is_invite": true }))).await;
    assert_eq!(rooms(&invites), vec![dm.clone()], "{invites}");
    let dms = ss_ok(&alice, None, 0, &list(json!({ "is_dm": true }))).await;
    assert_eq!(rooms(&dms), vec![dm.clone()], "{dms}");
    assert_eq!(dms["rooms"][&dm]["is_dm"], true);
    let no_spaces = ss_ok(
        &alice,
        None,
        0,
        &list(json!({ "not_room_types": ["m.space"] })),
    )
    .await;
    assert_eq!(
        rooms(&no_spaces),
        sorted(vec![dm.clone(), group.clone()]),
        "{no_spaces}"
    );
    let spaces = ss_ok(&alice, None, 0, &list(json!({ "room_types": ["m.space"] }))).await;
    assert_eq!(rooms(&spaces), vec![space.clone()], "{spaces}");
    let plain = ss_ok(
        &alice,
        None,
        0,
        &list(json!({ "room_types": [null], "is_invite": false })),
    )
    .await;
    assert_eq!(rooms(&plain), vec![group.clone()], "{plain}");

    // `spaces`: the space's children with a `via` (not the removed one, not the space
    // itself); a space one is not in names no rooms.
    let removed = alice.create_room(&json!({ "preset": "public_chat" })).await;
    for (child, via) in [(&group, json!(["localhost"])), (&removed, json!([]))] {
        let (status, body) = alice
            .put_state(&space, "m.space.child", child, &json!({ "via": via }))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let in_space = ss_ok(&alice, None, 0, &list(json!({ "spaces": [space.clone()] }))).await;
    assert_eq!(rooms(&in_space), vec![group.clone()], "{in_space}");
    let foreign_space = bob
        .create_room(&json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } }))
        .await;
    bob.put_state(
        &foreign_space,
        "m.space.child",
        &group,
        &json!({ "via": ["localhost"] }),
    )
    .await;
    let not_joined = ss_ok(
        &alice,
        None,
        0,
        &list(json!({ "spaces": [foreign_space.clone()] })),
    )
    .await;
    assert!(rooms(&not_joined).is_empty(), "{not_joined}");

    // `tags` and `not_tags` (which wins).
    for (room, tags) in [
        (&group, json!({ "m.favourite": {}, "u.work": {} })),
        (&removed, json!({ "m.favourite": {} })),
    ] {
        let path = format!(
            "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.tag",
            encode(alice.user_id()),
            encode(room)
        );
        assert_ok(&alice.put(&path, &json!({ "tags": tags })).await, "tags");
    }
    let favourites = ss_ok(&alice, None, 0, &list(json!({ "tags": ["m.favourite"] }))).await;
    assert_eq!(
        rooms(&favourites),
        sorted(vec![group.clone(), removed.clone()]),
        "{favourites}"
    );
    let not_work = ss_ok(
        &alice,
        None,
        0,
        &list(json!({ "tags": ["m.favourite"], "not_tags": ["u.work"] })),
    )
    .await;
    assert_eq!(rooms(&not_work), vec![removed.clone()], "{not_work}");
    // Bad filter values are a 400.
    assert_error(
        &ss(&alice, None, 0, &list(json!({ "spaces": "not a list" }))).await,
        400,
        "M_BAD_JSON",
        "spaces must be a list",
    );
}

/// Extensions: to-device messages once per `since` (and again when the client retries with
/// the old one), e2ee key counts, account data with the push rules, typing and receipts.
async fn sliding_sync_extensions(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "join");
    let event = bob.send_text(&room, "hi").await;
    let send = format!(
        "/_matrix/client/v3/sendToDevice/m.test/{}",
        complement_tests::unique_name("txn")
    );
    let messages = json!({ "messages": { alice.user_id(): { alice.device_id(): { "n": 1 } } } });
    assert_ok(&bob.put(&send, &messages).await, "to-device");
    let receipt = Client::room_path(&room, &format!("/receipt/m.read/{}", encode(&event)));
    assert_ok(&bob.post(&receipt, &json!({})).await, "receipt");
    let typing = Client::room_path(&room, &format!("/typing/{}", encode(bob.user_id())));
    assert_ok(
        &bob.put(&typing, &json!({ "typing": true, "timeout": 30000 }))
            .await,
        "typing",
    );

    let body = |since: Option<&str>| {
        json!({
            "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1, "required_state": [] } },
            "extensions": {
                "to_device": { "enabled": true, "since": since },
                "e2ee": { "enabled": true },
                "account_data": { "enabled": true },
                "receipts": { "enabled": true },
                "typing": { "enabled": true },
            },
        })
    };
    let first = ss_ok(&alice, None, 0, &body(None)).await;
    let ext = &first["extensions"];
    let events = ext["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{ext}");
    assert_eq!(events[0]["content"]["n"], 1);
    let next = ext["to_device"]["next_batch"].as_str().unwrap().to_owned();
    assert!(
        ext["e2ee"]["device_one_time_keys_count"].is_object(),
        "{ext}"
    );
    let global = ext["account_data"]["global"].as_array().unwrap();
    assert!(global.iter().any(|e| e["type"] == "m.push_rules"), "{ext}");
    let receipts = &ext["receipts"]["rooms"][&room];
    assert!(
        receipts["content"][&event]["m.read"][bob.user_id()].is_object(),
        "{ext}"
    );
    assert_eq!(
        ext["typing"]["rooms"][&room]["content"]["user_ids"],
        json!([bob.user_id()])
    );

    // Retrying without acknowledging gives the message again; presenting its token does not.
    let mut other = body(None);
    other["conn_id"] = "other".into();
    let retry = ss_ok(&alice, None, 0, &other).await;
    assert_eq!(
        retry["extensions"]["to_device"]["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let acked = ss_ok(&alice, Some(&pos(&first)), 0, &body(Some(&next))).await;
    assert!(
        acked["extensions"]["to_device"]["events"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{acked}"
    );
    // Typing stops: an incremental response says so.
    assert_ok(
        &bob.put(&typing, &json!({ "typing": false })).await,
        "typing",
    );
    let stopped = ss_ok(&alice, Some(&pos(&acked)), 5_000, &body(Some(&next))).await;
    assert_eq!(
        stopped["extensions"]["typing"]["rooms"][&room]["content"]["user_ids"],
        json!([]),
        "{stopped}"
    );
}

/// A message shown through sliding sync counts as delivered, as through `/sync`: its sender
/// sees the `io.myelin.delivered` receipt of the reader.
async fn sliding_sync_marks_messages_delivered(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "join");
    let event = bob.send_text(&room, "did you get this?").await;
    let shown = ss_ok(&alice, None, 0, &list_body((0, 9), 1, json!([]))).await;
    assert_eq!(
        shown["rooms"][&room]["timeline"][0]["event_id"],
        event.as_str()
    );
    let body = bob
        .sync_until(None, Duration::from_secs(10), |b| {
            b["rooms"]["join"][&room]["ephemeral"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["content"][&event]["io.myelin.delivered"][alice.user_id()].is_object())
        })
        .await;
    assert!(body["rooms"]["join"][&room].is_object());
}

async fn send_frame(socket: &mut Socket, frame: Value) {
    use futures_util::SinkExt;
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            frame.to_string().into(),
        ))
        .await
        .expect("send frame");
}

/// Sliding sync over the WebSocket: the first request is answered at once, news is pushed
/// without asking, a new request (a wider window) changes what comes, to-device messages come
/// once, a bad request gets an error frame and the socket stays, and a reconnect resumes
/// from the last `pos` received.
async fn sliding_sync_over_websocket(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let older = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let newer = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&older).await, "join");
    assert_ok(&bob.join(&newer).await, "join");
    bob.send_text(&older, "old").await;
    bob.send_text(&newer, "new").await;
    let url = format!(
        "{}/_matrix/client/unstable/io.myelin/sliding_sync/ws?access_token={}",
        hs.url().replacen("http://", "ws://", 1),
        encode(alice.access_token.as_deref().unwrap())
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect");
    let request = |range: u64| {
        json!({
            "type": "request",
            "request": {
                "conn_id": "ws",
                "lists": { "all": { "ranges": [[0, range]], "timeline_limit": 1, "required_state": [] } },
                "extensions": { "to_device": { "enabled": true } },
            },
        })
    };
    send_frame(&mut socket, request(0)).await;
    let first = next_frame(&mut socket, Duration::from_secs(10))
        .await
        .expect("first frame");
    assert_eq!(rooms(&first), vec![newer.clone()], "{first}");
    assert_eq!(first["lists"]["all"]["count"], 2);

    // News is pushed without a new request.
    let send = format!(
        "/_matrix/client/v3/sendToDevice/m.test/{}",
        complement_tests::unique_name("txn")
    );
    let to_alice = json!({ "messages": { alice.user_id(): { alice.device_id(): { "n": 7 } } } });
    assert_ok(&bob.put(&send, &to_alice).await, "to-device");
    let pushed = next_frame(&mut socket, Duration::from_secs(10))
        .await
        .expect("pushed frame");
    let events = pushed["extensions"]["to_device"]["events"]
        .as_array()
        .unwrap();
    assert_eq!(events.len(), 1, "{pushed}");
    let event = bob.send_text(&newer, "pushed").await;
    let mut frame = next_frame(&mut socket, Duration::from_secs(10))
        .await
        .expect("frame");
    while rooms(&frame).is_empty() {
        frame = next_frame(&mut socket, Duration::from_secs(10))
            .await
            .expect("frame");
    }
    assert_eq!(
        frame["rooms"][&newer]["timeline"][0]["event_id"],
        event.as_str(),
        "{frame}"
    );
    assert!(
        frame["extensions"]["to_device"]["events"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a to-device message comes once: {frame}"
    );

    // A wider window: the other room comes.
    send_frame(&mut socket, request(1)).await;
    let wider = next_frame(&mut socket, Duration::from_secs(10))
        .await
        .expect("frame");
    assert_eq!(rooms(&wider), vec![older.clone()], "{wider}");
    let last_pos = pos(&wider);

    // A bad request: an error frame, and the socket goes on.
    send_frame(
        &mut socket,
        json!({ "type": "request", "request": { "lists": "nope" } }),
    )
    .await;
    let error = next_frame(&mut socket, Duration::from_secs(10))
        .await
        .expect("error frame");
    assert!(error["errcode"].is_string(), "{error}");
    drop(socket);

    // Reconnect with the last pos: only what is new since.
    let later = bob.send_text(&older, "while away").await;
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("reconnect");
    let mut resume = request(1);
    resume["pos"] = last_pos.into();
    send_frame(&mut socket, resume).await;
    let resumed = next_frame(&mut socket, Duration::from_secs(10))
        .await
        .expect("frame");
    assert_eq!(rooms(&resumed), vec![older.clone()], "{resumed}");
    assert_eq!(
        resumed["rooms"][&older]["timeline"][0]["event_id"],
        later.as_str()
    );
    assert!(
        resumed["rooms"][&older].get("initial").is_none(),
        "{resumed}"
    );
    // An unknown pos is an error frame.
    let mut stale = request(1);
    stale["request"]["conn_id"] = "other".into();
    stale["pos"] = "0_1".into();
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect");
    send_frame(&mut socket, stale).await;
    let error = next_frame(&mut socket, Duration::from_secs(10))
        .await
        .expect("error frame");
    assert_eq!(error["errcode"], "M_UNKNOWN_POS", "{error}");
}

/// Bad input is a 400 with the spec's code, never a 500.
async fn sliding_sync_bad_input(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    alice.create_room(&json!({})).await;
    let (status, _) = alice
        .request_raw(
            Method::POST,
            PATH,
            Some((b"{not json".to_vec(), "application/json")),
        )
        .await;
    assert_eq!(status, 400, "malformed body");
    let cases = [
        json!({ "lists": { "l": { "ranges": [[5, 1]], "timeline_limit": 1 } } }),
        json!({ "lists": { "l": { "ranges": "all", "timeline_limit": 1 } } }),
        json!({ "lists": { "l": { "ranges": [[0, 1]], "timeline_limit": -1 } } }),
        json!({ "lists": (0..101).map(|i| (format!("l{i}"), json!({ "ranges": [[0, 1]], "timeline_limit": 1 }))).collect::<serde_json::Map<_, _>>() }),
        json!({ "lists": { "l": { "ranges": (0..101).map(|_| json!([0, 1])).collect::<Vec<_>>(), "timeline_limit": 1 } } }),
        json!({ "extensions": { "to_device": { "enabled": true, "since": "yesterday" } } }),
        json!({ "room_subscriptions": { "not a room id": { "timeline_limit": 1 } } }),
    ];
    for case in cases {
        let (status, body) = ss(&alice, None, 0, &case).await;
        assert_eq!(status, 400, "{case}: {body}");
        assert!(body["errcode"].is_string(), "{body}");
    }
    // Huge ranges and limits are cut, not refused.
    let huge = json!({ "lists": { "l": { "ranges": [[0, 9007199254740991u64]], "timeline_limit": 9007199254740991u64, "required_state": [] } } });
    let body = ss_ok(&alice, None, 0, &huge).await;
    assert_eq!(body["lists"]["l"]["count"], 1);
    // Without authentication.
    let (status, body) = alice.anonymous().post(PATH, &json!({})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_MISSING_TOKEN"))
    );
}

/// The member events in a response's `required_state`, by state key.
fn member_keys(room: &Value) -> Vec<String> {
    let mut keys: Vec<String> = room["required_state"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|e| e["type"] == "m.room.member")
                .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

/// Lazy members (MSC4186): a sender's member event comes with their first message on the
/// connection, also in an incremental response long after they joined, and not again while
/// the client holds it; a limited timeline sends them again (the client drops its cache).
async fn sliding_sync_lazy_members_across_responses(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Lazy" }))
        .await;
    for u in [&bob, &carol] {
        assert_ok(&u.join(&room).await, "join");
    }
    // Three messages by bob: carol's join is not in the first timeline.
    for n in 0..3 {
        bob.send_text(&room, &format!("bob {n}")).await;
    }
    let body = list_body((0, 9), 3, json!([["m.room.member", "$LAZY"]]));
    let first = ss_ok(&alice, None, 0, &body).await;
    let r = &first["rooms"][&room];
    assert!(
        member_keys(r).contains(&bob.user_id().to_owned()),
        "bob's member event with his message: {r}"
    );
    assert!(
        !member_keys(r).contains(&carol.user_id().to_owned()),
        "carol has not spoken: {r}"
    );

    // Carol joined before the connection started; her first message is incremental.
    carol.send_text(&room, "carol speaks").await;
    let second = ss_ok(&alice, Some(&pos(&first)), 5_000, &body).await;
    let r = &second["rooms"][&room];
    assert!(r.get("initial").is_none(), "{r}");
    assert_eq!(
        member_keys(r),
        vec![carol.user_id().to_owned()],
        "carol's member event, so the client can show her name: {r}"
    );

    // Both speak again: the client holds both member events already.
    bob.send_text(&room, "bob again").await;
    carol.send_text(&room, "carol again").await;
    let third = ss_ok(&alice, Some(&pos(&second)), 5_000, &body).await;
    let r = &third["rooms"][&room];
    assert_eq!(r["timeline"].as_array().unwrap().len(), 2, "{r}");
    assert!(member_keys(r).is_empty(), "nothing sent twice: {r}");

    // A gap (more than the limit) makes the timeline limited: members come again.
    for n in 0..5 {
        bob.send_text(&room, &format!("burst {n}")).await;
    }
    let fourth = ss_ok(&alice, Some(&pos(&third)), 5_000, &body).await;
    let r = &fourth["rooms"][&room];
    assert_eq!(r["limited"], true, "{r}");
    assert_eq!(member_keys(r), vec![bob.user_id().to_owned()], "{r}");

    // A retried pos answers the same.
    let retried = ss_ok(&alice, Some(&pos(&third)), 5_000, &body).await;
    assert_eq!(
        member_keys(&retried["rooms"][&room]),
        vec![bob.user_id().to_owned()]
    );
}

/// A grown config (MSC4186 "Changing room configs"): a larger timeline limit sends the
/// latest events again at once, marked `expanded_timeline` (and `limited`, so the client
/// replaces its timeline), not as a first send; a larger required state sends the state it
/// adds, and nothing else again.
async fn sliding_sync_expanded_config(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "name": "Grow", "topic": "growing" }))
        .await;
    let mut sent = Vec::new();
    for n in 0..6 {
        sent.push(alice.send_text(&room, &format!("message {n}")).await);
    }
    let small = list_body((0, 9), 1, json!([["m.room.name", ""]]));
    let first = ss_ok(&alice, None, 0, &small).await;
    assert_eq!(
        first["rooms"][&room]["timeline"].as_array().unwrap().len(),
        1
    );

    // Timeline limit 1 -> 4: answered at once, without waiting for news.
    let larger = list_body((0, 9), 4, json!([["m.room.name", ""]]));
    let started = Instant::now();
    let expanded = ss_ok(&alice, Some(&pos(&first)), 10_000, &larger).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not a wait for news"
    );
    let r = &expanded["rooms"][&room];
    assert!(r.get("initial").is_none(), "not a first send: {r}");
    assert_eq!(r["expanded_timeline"], true, "{r}");
    assert_eq!(r["limited"], true, "{r}");
    let ids: Vec<&str> = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        sent[2..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(r["num_live"], 0, "nothing new: {r}");
    assert!(r.get("name").is_none(), "the name is not sent again: {r}");
    assert!(
        r["required_state"].as_array().unwrap().is_empty(),
        "no state again: {r}"
    );

    // The same config again: nothing to send.
    let same = ss_ok(&alice, Some(&pos(&expanded)), 0, &larger).await;
    assert!(rooms(&same).is_empty(), "{same}");

    // Required state grows by the topic: only the topic comes, no timeline again.
    let more_state = list_body(
        (0, 9),
        4,
        json!([["m.room.name", ""], ["m.room.topic", ""]]),
    );
    let grown = ss_ok(&alice, Some(&pos(&same)), 10_000, &more_state).await;
    let r = &grown["rooms"][&room];
    assert!(r.get("initial").is_none(), "{r}");
    assert!(r.get("expanded_timeline").is_none(), "{r}");
    let state = r["required_state"].as_array().unwrap();
    assert_eq!(state.len(), 1, "{r}");
    assert_eq!(state[0]["type"], "m.room.topic");
    assert_eq!(state[0]["content"]["topic"], "growing");
    assert!(r["timeline"].as_array().unwrap().is_empty(), "{r}");

    // Shrinking sends nothing.
    let shrunk = ss_ok(&alice, Some(&pos(&grown)), 0, &small).await;
    assert!(rooms(&shrunk).is_empty(), "{shrunk}");
}

backend_tests!(
    sliding_sync_lazy_members_across_responses,
    sliding_sync_expanded_config,
    sliding_sync_lists_rooms_by_recency,
    sliding_sync_pos_and_unknown_pos,
    sliding_sync_invites_visibility_and_required_state,
    sliding_sync_filters,
    sliding_sync_extensions,
    sliding_sync_marks_messages_delivered,
    sliding_sync_over_websocket,
    sliding_sync_bad_input,
);
