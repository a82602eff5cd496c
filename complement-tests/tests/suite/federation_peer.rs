//! Federation with a scripted peer (`fake_peer.rs`): what it sends is checked, what it asks
//! is answered only as far as it may see, and what Myelin sends it is signed.

use complement_tests::{backend_tests, encode, Backend, ServerOptions, TestServer};
use reqwest::Method;
use ruma::RoomVersionId;
use serde_json::{json, Value};

use crate::fake_peer::{now_ms, FakePeer};

/// Waits (up to 15 s) until `found` holds for alice's view of the room's messages.
async fn wait_messages(
    client: &complement_tests::Client,
    room_id: &str,
    what: &str,
    found: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let path = complement_tests::Client::room_path(room_id, "/messages?dir=b&limit=100");
    for _ in 0..150 {
        let (_, page) = client.get(&path).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        if found(&chunk) {
            return chunk;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("never saw {what}");
}

/// Scenarios 54, 55, 57 and 58 (in part) with a scripted peer F: F joins alice's room
/// (`make_join`, `send_join`; a join sent to `send_leave` is refused); alice's message reaches
/// F in a transaction, signed by hs1 and hashed; F's message appears in alice's timeline and
/// a replayed transaction adds nothing; an event whose content was changed after signing is
/// kept redacted, a forged or unsigned one is refused and never shown; F reads events, state
/// IDs and auth chains, and a server with nobody in the room reads nothing.
async fn a55_scripted_peer_is_checked(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let base = hs1
        .federation_tls_url()
        .expect("federation listener")
        .to_owned();
    let dest = hs1.server_name().to_owned();
    let alice = hs1.register_user("alice").await;
    let room_id = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let peer = FakePeer::start().await;
    let fred = peer.user_id("fred");
    let version = RoomVersionId::V12;

    // Join.
    let (status, template) = peer
        .request(
            &base,
            &dest,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/make_join/{}/{}?ver=11&ver=12",
                encode(&room_id),
                encode(&fred)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{template}");
    assert_eq!(template["room_version"], "12");
    let (join_id, join) = peer.sign_event(template["event"].clone(), &version);
    let send_join = |kind: &str| {
        format!(
            "/_matrix/federation/v2/{kind}/{}/{}",
            encode(&room_id),
            encode(&join_id)
        )
    };
    let (status, body) = peer
        .request(
            &base,
            &dest,
            Method::PUT,
            &send_join("send_leave"),
            Some(&join),
        )
        .await;
    assert_eq!(status, 400, "a join sent to send_leave: {body}");
    let (status, answer) = peer
        .request(
            &base,
            &dest,
            Method::PUT,
            &send_join("send_join"),
            Some(&join),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["state"].as_array().is_some_and(|s| s.len() >= 4),
        "{answer}"
    );
    assert!(answer["auth_chain"]
        .as_array()
        .is_some_and(|s| !s.is_empty()));

    // Scenario 54: alice's message reaches F, signed by hs1 with a matching hash.
    let alice_msg = alice.send_text(&room_id, "to the peer").await;
    let mut delivered = None;
    for _ in 0..150 {
        delivered = peer
            .received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|t| t["pdus"].as_array().cloned().unwrap_or_default())
            .find(|p| p["content"]["body"] == "to the peer");
        if delivered.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let delivered = delivered.expect("hs1 never sent alice's message to the peer");
    let (_, keys) = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!("{base}/_matrix/key/v2/server"))
        .send()
        .await
        .map(|r| (0, r))
        .unwrap();
    let keys: Value = keys.json().await.unwrap();
    let mut key_set = ruma::signatures::PublicKeySet::new();
    for (id, key) in keys["verify_keys"].as_object().unwrap() {
        key_set.insert(
            id.clone(),
            ruma::serde::Base64::parse(key["key"].as_str().unwrap()).unwrap(),
        );
    }
    let mut key_map = ruma::signatures::PublicKeyMap::new();
    key_map.insert(dest.clone(), key_set);
    let object: ruma::CanonicalJsonObject = serde_json::from_value(delivered.clone()).unwrap();
    assert_eq!(
        ruma::signatures::verify_event(&key_map, &object, &version.rules().unwrap()).unwrap(),
        ruma::signatures::Verified::All
    );

    // The room's power levels, to cite as auth events.
    let (_, state) = alice
        .get(&complement_tests::Client::room_path(&room_id, "/state"))
        .await;
    let power_levels = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.power_levels")
        .unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let message = |body: &str| {
        json!({
            "type": "m.room.message",
            "room_id": room_id,
            "sender": fred,
            "origin_server_ts": now_ms(),
            "content": { "msgtype": "m.text", "body": body },
            "depth": delivered["depth"].as_u64().unwrap() + 1,
            "prev_events": [alice_msg],
            "auth_events": [power_levels, join_id],
        })
    };
    let send = |txn: &str, pdus: Vec<Value>| {
        let body =
            json!({ "origin": peer.server_name, "origin_server_ts": now_ms(), "pdus": pdus });
        (format!("/_matrix/federation/v1/send/{txn}"), body)
    };

    // Scenario 55: F's message shows; a replayed transaction adds nothing.
    let (msg_id, msg) = peer.sign_event(message("from the peer"), &version);
    let (path, body) = send("t1", vec![msg.clone()]);
    let (status, first) = peer
        .request(&base, &dest, Method::PUT, &path, Some(&body))
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["pdus"][&msg_id], json!({}), "{first}");
    let (status, again) = peer
        .request(&base, &dest, Method::PUT, &path, Some(&body))
        .await;
    assert_eq!((status, &again), (200, &first));
    let chunk = wait_messages(&alice, &room_id, "F's message", |c| {
        c.iter().any(|e| e["event_id"] == msg_id.as_str())
    })
    .await;
    assert_eq!(
        chunk
            .iter()
            .filter(|e| e["content"]["body"] == "from the peer")
            .count(),
        1
    );

    // Content changed after signing: kept, redacted.
    let (tampered_id, mut tampered) = peer.sign_event(message("original"), &version);
    tampered["content"]["body"] = "changed on the way".into();
    // Forged: a signed field changed (the ID changes with it); unsigned: no signatures.
    let (_, mut forged) = peer.sign_event(message("forged"), &version);
    forged["origin_server_ts"] = (now_ms() + 1).into();
    let (_, mut unsigned) = peer.sign_event(message("unsigned"), &version);
    unsigned.as_object_mut().unwrap().remove("signatures");
    let (path, body) = send("t2", vec![tampered, forged, unsigned]);
    let (status, answer) = peer
        .request(&base, &dest, Method::PUT, &path, Some(&body))
        .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["pdus"].as_object().unwrap();
    assert_eq!(results[&tampered_id], json!({}), "{answer}");
    assert_eq!(
        results
            .values()
            .filter(|r| r.get("error").is_some())
            .count(),
        2,
        "{answer}"
    );
    let chunk = wait_messages(&alice, &room_id, "the tampered event", |c| {
        c.iter().any(|e| e["event_id"] == tampered_id.as_str())
    })
    .await;
    let shown = chunk
        .iter()
        .find(|e| e["event_id"] == tampered_id.as_str())
        .unwrap();
    assert!(shown["content"].get("body").is_none(), "{shown}");
    for hidden in ["changed on the way", "forged", "unsigned"] {
        assert!(
            !chunk.iter().any(|e| e["content"]["body"] == hidden),
            "{hidden} was shown"
        );
    }

    // A PDU whose parent hs1 lacks: hs1 fetches the parent from F (`/event`) first.
    let mut first = message("gap 1");
    first["prev_events"] = json!([msg_id]);
    let (first_id, first) = peer.sign_event(first, &version);
    let mut second = message("gap 2");
    second["prev_events"] = json!([first_id]);
    second["depth"] = (first["depth"].as_u64().unwrap() + 1).into();
    let (second_id, second) = peer.sign_event(second, &version);
    let second_depth = second["depth"].as_u64().unwrap();
    peer.events.lock().unwrap().insert(first_id.clone(), first);
    let (path, body) = send("t3", vec![second]);
    let (status, answer) = peer
        .request(&base, &dest, Method::PUT, &path, Some(&body))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&second_id], json!({}), "{answer}");
    wait_messages(&alice, &room_id, "both events of the gap", |c| {
        c.iter().any(|e| e["content"]["body"] == "gap 1")
            && c.iter().any(|e| e["content"]["body"] == "gap 2")
    })
    .await;

    // A run of messages in one transaction, each on the one before (committed together):
    // all before a forged one are accepted and read in order; the forged one is refused, and
    // so are those built on it (their parent cannot be had), none of them shown.
    let mut run = Vec::new();
    let mut run_ids = Vec::new();
    let mut prev = second_id.clone();
    for n in 1..=6u64 {
        let mut event = message(&format!("run {n}"));
        event["prev_events"] = json!([prev]);
        event["depth"] = (second_depth + n).into();
        let (id, mut signed) = peer.sign_event(event, &version);
        if n == 4 {
            signed["origin_server_ts"] = (now_ms() + 1).into();
        }
        prev = id.clone();
        run_ids.push(id);
        run.push(signed);
    }
    let (path, body) = send("t3-run", run);
    let (status, answer) = peer
        .request(&base, &dest, Method::PUT, &path, Some(&body))
        .await;
    assert_eq!(status, 200, "{answer}");
    for id in &run_ids[..3] {
        assert_eq!(answer["pdus"][id], json!({}), "{answer}");
    }
    for id in &run_ids[4..] {
        assert!(answer["pdus"][id].get("error").is_some(), "{answer}");
    }
    let chunk = wait_messages(&alice, &room_id, "the accepted run", |c| {
        c.iter().any(|e| e["content"]["body"] == "run 3")
    })
    .await;
    let bodies: Vec<&str> = chunk
        .iter()
        .rev()
        .filter_map(|e| e["content"]["body"].as_str())
        .filter(|b| b.starts_with("run "))
        .collect();
    assert_eq!(bodies, ["run 1", "run 2", "run 3"], "{chunk:?}");

    // F may redact its own event but not alice's (another server's user, and F has no
    // power): both redactions are stored, only the first applies.
    let redaction = |target: &str| {
        let mut event = message("unused");
        event["type"] = "m.room.redaction".into();
        event["content"] = json!({ "redacts": target });
        event["redacts"] = target.into();
        event["prev_events"] = json!([second_id]);
        event
    };
    let (_, own) = peer.sign_event(redaction(&msg_id), &version);
    let (_, others) = peer.sign_event(redaction(&alice_msg), &version);
    let (path, body) = send("t4", vec![own, others]);
    let (status, answer) = peer
        .request(&base, &dest, Method::PUT, &path, Some(&body))
        .await;
    assert_eq!(status, 200, "{answer}");
    let event_path =
        |id: &str| complement_tests::Client::room_path(&room_id, &format!("/event/{}", encode(id)));
    let mut applied = false;
    for _ in 0..150 {
        let (_, event) = alice.get(&event_path(&msg_id)).await;
        if event["content"].get("body").is_none() {
            applied = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(applied, "F's redaction of its own event was not applied");
    let (_, kept) = alice.get(&event_path(&alice_msg)).await;
    assert_eq!(kept["content"]["body"], "to the peer", "{kept}");

    // Scenario 57: F reads what it may.
    let (status, event) = peer
        .request(
            &base,
            &dest,
            Method::GET,
            &format!("/_matrix/federation/v1/event/{}", encode(&alice_msg)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["pdus"][0]["content"]["body"], "to the peer");
    let (status, ids) = peer
        .request(
            &base,
            &dest,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/state_ids/{}?event_id={}",
                encode(&room_id),
                encode(&alice_msg)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{ids}");
    assert!(
        ids["pdu_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| *i == join_id.as_str()),
        "{ids}"
    );
    assert!(
        ids["auth_chain_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| *i == power_levels.as_str()),
        "{ids}"
    );
    let (status, auth) = peer
        .request(
            &base,
            &dest,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/event_auth/{}/{}",
                encode(&room_id),
                encode(&msg_id)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{auth}");
    let chain: Vec<&str> = auth["auth_chain"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(
        chain.contains(&"m.room.power_levels") && chain.contains(&"m.room.member"),
        "{chain:?}"
    );
    // A server with nobody in the room reads nothing.
    let stranger = FakePeer::start().await;
    let (status, _) = stranger
        .request(
            &base,
            &dest,
            Method::GET,
            &format!("/_matrix/federation/v1/event/{}", encode(&alice_msg)),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // Nor may it send into the room.
    let (_, stray) = stranger.sign_event(
        json!({
            "type": "m.room.message",
            "room_id": room_id,
            "sender": stranger.user_id("eve"),
            "origin_server_ts": now_ms(),
            "content": { "msgtype": "m.text", "body": "intruder" },
            "depth": 100,
            "prev_events": [alice_msg],
            "auth_events": [power_levels],
        }),
        &version,
    );
    let body =
        json!({ "origin": stranger.server_name, "origin_server_ts": now_ms(), "pdus": [stray] });
    let (status, answer) = stranger
        .request(
            &base,
            &dest,
            Method::PUT,
            "/_matrix/federation/v1/send/x1",
            Some(&body),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        answer["pdus"]
            .as_object()
            .unwrap()
            .values()
            .all(|r| r.get("error").is_some()),
        "{answer}"
    );
}

/// F joins `room_id` on the server at `base` as `user` (make_join, send_join); the join's
/// event ID.
async fn peer_joins(peer: &FakePeer, base: &str, dest: &str, room_id: &str, user: &str) -> String {
    let (status, template) = peer
        .request(
            base,
            dest,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/make_join/{}/{}?ver=12",
                encode(room_id),
                encode(user)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{template}");
    let (join_id, join) = peer.sign_event(template["event"].clone(), &RoomVersionId::V12);
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        encode(room_id),
        encode(&join_id)
    );
    let (status, answer) = peer
        .request(base, dest, Method::PUT, &path, Some(&join))
        .await;
    assert_eq!(status, 200, "{answer}");
    join_id
}

/// What a peer sends and asks about end-to-end encryption is checked: a to-device message
/// claiming a sender of another server is dropped, one from the peer's own user arrives once
/// even when the peer sends the same message ID again; a device-list update about another
/// server's user changes nothing, one about the peer's joined user reaches alice's
/// `device_lists`; key queries answer only for hs1's users and refuse bad bodies; unknown media
/// is 404.
async fn hostile_peer_e2ee_and_media(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let base = hs1
        .federation_tls_url()
        .expect("federation listener")
        .to_owned();
    let dest = hs1.server_name().to_owned();
    let alice = hs1.register_user("alice").await;
    let key = crate::e2ee::new_key();
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            &json!({ "device_keys": crate::e2ee::device_keys(&alice, &key) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room_id = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let peer = FakePeer::start().await;
    let fred = peer.user_id("fred");
    peer_joins(&peer, &base, &dest, &room_id, &fred).await;
    let since = crate::e2ee::initial_token(&alice).await;

    let to_device = |sender: &str, n: i64, message_id: &str| {
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": sender, "type": "m.test.message", "message_id": message_id,
            "messages": { alice.user_id(): { alice.device_id(): { "n": n } } },
        }})
    };
    let device_update = |user: &str| {
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": user, "device_id": "DEV", "stream_id": 1, "prev_id": [], "deleted": false,
        }})
    };
    let spoofed = format!("@mallory:{dest}");
    let txn = |id: &str, edus: Vec<Value>| {
        let body = json!({ "origin": peer.server_name, "origin_server_ts": now_ms(), "pdus": [], "edus": edus });
        (format!("/_matrix/federation/v1/send/{id}"), body)
    };
    let (path, body) = txn(
        "e1",
        vec![
            to_device(&spoofed, 1, "m1"),
            to_device(&fred, 2, "m2"),
            device_update("@someone:elsewhere.example"),
        ],
    );
    let (status, answer) = peer
        .request(&base, &dest, Method::PUT, &path, Some(&body))
        .await;
    assert_eq!(status, 200, "{answer}");
    // The same message again, in a new transaction, then fred's device change.
    let (path, body) = txn("e2", vec![to_device(&fred, 2, "m2"), device_update(&fred)]);
    let (status, answer) = peer
        .request(&base, &dest, Method::PUT, &path, Some(&body))
        .await;
    assert_eq!(status, 200, "{answer}");

    let response = alice
        .sync_until(Some(&since), crate::e2ee::WAIT, |r| {
            crate::e2ee::listed(r, "changed", &fred)
        })
        .await;
    assert!(
        !crate::e2ee::listed(&response, "changed", "@someone:elsewhere.example"),
        "{response}"
    );
    let mut seen = crate::e2ee::to_device_events(&response);
    let next = response["next_batch"].as_str().unwrap().to_owned();
    // Whatever else is on its way.
    let (_, more) = alice.sync(Some(&next), 1000).await;
    seen.extend(crate::e2ee::to_device_events(&more));
    let numbers: Vec<i64> = seen
        .iter()
        .filter_map(|e| e["content"]["n"].as_i64())
        .collect();
    assert_eq!(numbers, [2], "only fred's message, once: {seen:?}");
    assert_eq!(seen[0]["sender"], fred.as_str());

    // Keys: hs1's users only.
    let query = json!({ "device_keys": { alice.user_id(): [], "@x:elsewhere.example": [] } });
    let (status, keys) = peer
        .request(
            &base,
            &dest,
            Method::POST,
            "/_matrix/federation/v1/user/keys/query",
            Some(&query),
        )
        .await;
    assert_eq!(status, 200, "{keys}");
    assert!(
        keys["device_keys"][alice.user_id()][alice.device_id()].is_object(),
        "{keys}"
    );
    assert!(
        keys["device_keys"]["@x:elsewhere.example"].is_null(),
        "{keys}"
    );
    let devices_path = format!(
        "/_matrix/federation/v1/user/devices/{}",
        encode(alice.user_id())
    );
    let (status, devices) = peer
        .request(&base, &dest, Method::GET, &devices_path, None)
        .await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["user_id"], alice.user_id());
    assert!(
        devices["stream_id"].as_i64().is_some_and(|s| s > 0),
        "{devices}"
    );
    assert_eq!(
        devices["devices"][0]["device_id"],
        alice.device_id(),
        "{devices}"
    );
    let (status, body) = peer
        .request(
            &base,
            &dest,
            Method::GET,
            &format!(
                "/_matrix/federation/v1/user/devices/{}",
                encode("@x:elsewhere.example")
            ),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    for bad in [
        json!({}),
        json!({ "device_keys": "no" }),
        json!({ "device_keys": { "not a user": [] } }),
    ] {
        let (status, body) = peer
            .request(
                &base,
                &dest,
                Method::POST,
                "/_matrix/federation/v1/user/keys/query",
                Some(&bad),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let mut many = serde_json::Map::new();
    for i in 0..1001 {
        many.insert(format!("D{i}"), json!("signed_curve25519"));
    }
    let claim = json!({ "one_time_keys": { alice.user_id(): many } });
    let (status, body) = peer
        .request(
            &base,
            &dest,
            Method::POST,
            "/_matrix/federation/v1/user/keys/claim",
            Some(&claim),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = peer
        .request(
            &base,
            &dest,
            Method::GET,
            "/_matrix/federation/v1/media/download/NoSuchMedia",
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

backend_tests!(
    a55_scripted_peer_is_checked,
    hostile_peer_e2ee_and_media,
    restarted_server_tells_peers_it_is_back,
    peer_is_sent_only_what_follows_its_join,
    gaps_are_filled_with_get_missing_events,
    a_peer_back_from_an_outage_is_caught_up
);

/// A server that restarts sends each server it federates with a transaction at once, even
/// with nothing queued for it: a peer that backed off from it while it was away resets its
/// back-off when it hears from it, and sends what it queued without waiting (the outage
/// benchmark's "everything queued arrives within 5 s of it answering").
async fn restarted_server_tells_peers_it_is_back(backend: Backend) {
    let Some(mut hs1) = TestServer::start(backend, ServerOptions::default().federating()).await
    else {
        return;
    };
    let base = hs1
        .federation_tls_url()
        .expect("federation listener")
        .to_owned();
    let dest = hs1.server_name().to_owned();
    let alice = hs1.register_user("alice").await;
    let room_id = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let peer = FakePeer::start().await;
    let fred = peer.user_id("fred");
    peer_joins(&peer, &base, &dest, &room_id, &fred).await;
    alice.send_text(&room_id, "before the restart").await;
    let delivered = |body: &'static str| {
        peer.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|t| t["pdus"].as_array().cloned().unwrap_or_default())
            .any(|p| p["content"]["body"] == body)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !delivered("before the restart") {
        assert!(
            std::time::Instant::now() < deadline,
            "hs1 never sent alice's message to the peer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Everything was accepted: after the restart nothing is queued for the peer.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    peer.received.lock().unwrap().clear();
    hs1.restart().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let announced = loop {
        if let Some(txn) = peer.received.lock().unwrap().first().cloned() {
            break txn;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted server sent the peer nothing within 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(announced["origin"], dest, "{announced}");
    assert!(
        announced["pdus"].as_array().is_some_and(|p| p.is_empty()),
        "nothing was queued, so nothing is resent: {announced}"
    );
}

/// A server is sent a room's events only while one of its users is in the room: not the
/// messages from before its first join (a backlog it never had a right to read), not those
/// from while its user was kicked out, but the kick itself and everything after each join.
async fn peer_is_sent_only_what_follows_its_join(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let base = hs1
        .federation_tls_url()
        .expect("federation listener")
        .to_owned();
    let dest = hs1.server_name().to_owned();
    let alice = hs1.register_user("alice").await;
    let room_a = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let room_b = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let peer = FakePeer::start().await;
    let fred = peer.user_id("fred");
    let pdus = || -> Vec<Value> {
        peer.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|t| t["pdus"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    async fn until(pdus: &dyn Fn() -> Vec<Value>, what: &str, found: impl Fn(&Value) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !pdus().iter().any(&found) {
            assert!(
                std::time::Instant::now() < deadline,
                "hs1 never sent the peer {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let body_is = |body: &'static str| move |p: &Value| p["content"]["body"] == body;

    // The peer is in room A, and has been sent everything of it.
    peer_joins(&peer, &base, &dest, &room_a, &fred).await;
    alice.send_text(&room_a, "in A").await;
    until(&pdus, "the message in A", body_is("in A")).await;

    // What room B said before the peer joined it is not the peer's to read.
    alice.send_text(&room_b, "B before the join").await;
    peer_joins(&peer, &base, &dest, &room_b, &fred).await;
    alice.send_text(&room_b, "B after the join").await;
    until(
        &pdus,
        "the message after its join",
        body_is("B after the join"),
    )
    .await;

    // Kicked: the kick reaches it, what is said while it is out does not, even once it is
    // back.
    let (status, body) = alice
        .post(
            &complement_tests::Client::room_path(&room_b, "/kick"),
            &json!({ "user_id": fred }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    until(&pdus, "the kick", |p| {
        p["type"] == "m.room.member"
            && p["state_key"] == fred.as_str()
            && p["content"]["membership"] == "leave"
    })
    .await;
    alice.send_text(&room_b, "B while the peer is out").await;
    peer_joins(&peer, &base, &dest, &room_b, &fred).await;
    alice.send_text(&room_b, "B after the rejoin").await;
    until(
        &pdus,
        "the message after its rejoin",
        body_is("B after the rejoin"),
    )
    .await;

    let bodies: Vec<Value> = pdus()
        .iter()
        .map(|p| p["content"]["body"].clone())
        .filter(|b| b.is_string())
        .collect();
    assert!(
        !bodies.contains(&json!("B before the join")),
        "the peer was sent what room B said before it joined: {bodies:?}"
    );
    assert!(
        !bodies.contains(&json!("B while the peer is out")),
        "the peer was sent what room B said while it was kicked out: {bodies:?}"
    );
}

/// Gaps in the DAG both ways. F sends only the last of 150 messages built one on another:
/// hs1 asks F for the rest (`/get_missing_events`, in pages, far more than it would fetch one
/// by one) and alice reads all 150 in order. F asks hs1 for what lies before an event: it gets at most
/// `limit`, newest kept, oldest first, stopping at `earliest_events`, with what it may not
/// see (history from before its join in a `joined` room) redacted; a server with nobody in
/// the room is refused.
async fn gaps_are_filled_with_get_missing_events(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let base = hs1
        .federation_tls_url()
        .expect("federation listener")
        .to_owned();
    let dest = hs1.server_name().to_owned();
    let alice = hs1.register_user("alice").await;
    let room_id = alice
        .create_room(&json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": { "history_visibility": "joined" },
            }],
        }))
        .await;
    let secret_id = alice.send_text(&room_id, "before the peer joined").await;
    let peer = FakePeer::start().await;
    let fred = peer.user_id("fred");
    let join_id = peer_joins(&peer, &base, &dest, &room_id, &fred).await;
    let after_id = alice.send_text(&room_id, "after the join").await;
    let mut delivered = None;
    for _ in 0..150 {
        delivered = peer
            .received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|t| t["pdus"].as_array().cloned().unwrap_or_default())
            .find(|p| p["content"]["body"] == "after the join");
        if delivered.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let delivered = delivered.expect("hs1 never sent alice's message to the peer");
    let (_, state) = alice
        .get(&complement_tests::Client::room_path(&room_id, "/state"))
        .await;
    let power_levels = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.power_levels")
        .unwrap()["event_id"]
        .clone();

    // F's 150 messages (more than one answer of hs1's asking holds), only the last sent.
    let version = RoomVersionId::V12;
    let mut prev = after_id.clone();
    let mut last = None;
    let mut chain_ids = Vec::new();
    for n in 1..=150u64 {
        let event = json!({
            "type": "m.room.message",
            "room_id": room_id,
            "sender": fred,
            "origin_server_ts": now_ms(),
            "content": { "msgtype": "m.text", "body": format!("chain {n}") },
            "depth": delivered["depth"].as_u64().unwrap() + n,
            "prev_events": [prev],
            "auth_events": [power_levels, join_id],
        });
        let (id, signed) = peer.sign_event(event, &version);
        peer.events
            .lock()
            .unwrap()
            .insert(id.clone(), signed.clone());
        chain_ids.push(id.clone());
        prev = id;
        last = Some(signed);
    }
    let body = json!({
        "origin": peer.server_name,
        "origin_server_ts": now_ms(),
        "pdus": [last.unwrap()],
    });
    let (status, answer) = peer
        .request(
            &base,
            &dest,
            Method::PUT,
            "/_matrix/federation/v1/send/gap",
            Some(&body),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&prev], json!({}), "{answer}");
    let chunk = wait_messages(&alice, &room_id, "the chain's last 100", |c| {
        c.iter()
            .filter(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("chain "))
            })
            .count()
            == 100
    })
    .await;
    let bodies: Vec<&str> = chunk
        .iter()
        .rev()
        .filter_map(|e| e["content"]["body"].as_str())
        .filter(|b| b.starts_with("chain "))
        .collect();
    let expected: Vec<String> = (51..=150).map(|n| format!("chain {n}")).collect();
    assert_eq!(bodies, expected, "read in order");
    let (status, first) = alice
        .get(&complement_tests::Client::room_path(
            &room_id,
            &format!("/event/{}", encode(&chain_ids[0])),
        ))
        .await;
    assert_eq!(status, 200, "the chain's first message: {first}");
    assert_eq!(first["content"]["body"], "chain 1", "{first}");

    // F asks hs1.
    let ask = |earliest: Vec<&str>, latest: Vec<&str>, limit: u64| json!({ "earliest_events": earliest, "latest_events": latest, "limit": limit });
    let path = format!(
        "/_matrix/federation/v1/get_missing_events/{}",
        encode(&room_id)
    );
    let (status, answer) = peer
        .request(
            &base,
            &dest,
            Method::POST,
            &path,
            Some(&ask(vec![], vec![&after_id], 50)),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let events = answer["events"].as_array().unwrap();
    let depths: Vec<u64> = events
        .iter()
        .map(|e| e["depth"].as_u64().unwrap())
        .collect();
    assert!(
        depths.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {depths:?}"
    );
    assert_eq!(events.first().unwrap()["type"], "m.room.create", "{answer}");
    assert!(
        !events
            .iter()
            .any(|e| e["content"]["body"] == "after the join"),
        "latest_events are not repeated"
    );
    // PDUs of room version 12 carry no event_id: find them by type.
    let secret = events
        .iter()
        .find(|e| e["type"] == "m.room.message")
        .expect("alice's earlier message is in the DAG's answer");
    assert!(
        secret["content"].get("body").is_none(),
        "history from before F joined a `joined` room is redacted: {secret}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == fred.as_str()),
        "{answer}"
    );
    let (status, answer) = peer
        .request(
            &base,
            &dest,
            Method::POST,
            &path,
            Some(&ask(vec![], vec![&after_id], 2)),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{answer}");
    assert_eq!(
        events[0]["type"], "m.room.message",
        "the newest two: {answer}"
    );
    assert_eq!(
        events[1]["state_key"],
        fred.as_str(),
        "the newest two: {answer}"
    );
    let (status, answer) = peer
        .request(
            &base,
            &dest,
            Method::POST,
            &path,
            Some(&ask(vec![&secret_id], vec![&after_id], 50)),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "only F's join lies between: {answer}");

    // A server with nobody in the room.
    let stranger = FakePeer::start().await;
    let (status, answer) = stranger
        .request(
            &base,
            &dest,
            Method::POST,
            &path,
            Some(&ask(vec![], vec![&after_id], 50)),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["errcode"], "M_FORBIDDEN", "{answer}");
    let (status, answer) = peer
        .request(
            &base,
            &dest,
            Method::POST,
            &path,
            Some(&json!({ "limit": 3 })),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
}

/// A peer that was down while 80 messages were sent in a room is, once it answers again,
/// sent the latest of them (not the 80 in order; it may ask for the rest with
/// `/get_missing_events`), and is then sent the next messages one by one as before.
async fn a_peer_back_from_an_outage_is_caught_up(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let base = hs1
        .federation_tls_url()
        .expect("federation listener")
        .to_owned();
    let dest = hs1.server_name().to_owned();
    let alice = hs1.register_user("alice").await;
    let room_id = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let peer = FakePeer::start().await;
    let fred = peer.user_id("fred");
    peer_joins(&peer, &base, &dest, &room_id, &fred).await;
    let bodies = || -> Vec<String> {
        peer.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|t| t["pdus"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["content"]["body"].as_str().map(str::to_owned))
            .collect()
    };
    let wait_for = |body: &'static str| {
        let bodies = &bodies;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !bodies().iter().any(|b| b == body) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "hs1 never sent the peer {body}: {:?}",
                    bodies()
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    alice.send_text(&room_id, "before the outage").await;
    wait_for("before the outage").await;

    peer.refusing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for n in 1..=80 {
        alice.send_text(&room_id, &format!("outage {n}")).await;
    }
    peer.refusing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for("outage 80").await;
    let during: Vec<String> = bodies()
        .into_iter()
        .filter(|b| b.starts_with("outage "))
        .collect();
    assert_eq!(during, ["outage 80"], "caught up with the latest only");

    alice.send_text(&room_id, "after 1").await;
    alice.send_text(&room_id, "after 2").await;
    wait_for("after 2").await;
    assert!(bodies().iter().any(|b| b == "after 1"), "{:?}", bodies());
}
