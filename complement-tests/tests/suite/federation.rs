//! The federation API's own listener (issue 14): TLS on `MYELIN_FEDERATION_LISTEN` with a
//! self-signed certificate made once in the data directory, the server's version and keys
//! there, Matrix errors for unknown paths, and nothing spoken in plain HTTP; and two Myelins
//! that reach each other (named after their federation listeners on loopback), sign their
//! requests and check each other's.

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, Backend, ServerOptions, TestServer,
};
use serde_json::Value;

/// A client that accepts the test server's self-signed certificate (tests only).
fn tls_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The federation listener answers over TLS: version, signing keys (the same as the client
/// listener publishes), `M_UNRECOGNIZED` for unknown paths; plain HTTP gets no answer; the
/// certificate is kept across a restart.
#[tokio::test]
async fn federation_listener_speaks_tls() {
    let Some(mut hs) = TestServer::start(Backend::Sqlite, ServerOptions::default()).await else {
        return;
    };
    let Some(base) = hs.federation_tls_url().map(str::to_owned) else {
        return; // an external server
    };
    let client = tls_client();
    let (status, version) =
        get_json(&client, &format!("{base}/_matrix/federation/v1/version")).await;
    assert_eq!(status, 200, "{version}");
    assert_eq!(version["server"]["name"], "Myelin", "{version}");
    assert!(version["server"]["version"].is_string(), "{version}");

    let (status, keys) = get_json(&client, &format!("{base}/_matrix/key/v2/server")).await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys["server_name"], "localhost", "{keys}");
    let (_, client_keys) = get_json(&client, &format!("{}/_matrix/key/v2/server", hs.url())).await;
    assert_eq!(
        keys["verify_keys"], client_keys["verify_keys"],
        "one signing key on both listeners"
    );
    assert!(keys["signatures"]["localhost"].is_object(), "{keys}");

    let (status, unknown) =
        get_json(&client, &format!("{base}/_matrix/federation/v1/nonsense")).await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(unknown["errcode"], "M_UNRECOGNIZED", "{unknown}");
    // The client API is not served there.
    let (status, _) = get_json(&client, &format!("{base}/_matrix/client/versions")).await;
    assert_eq!(status, 404);

    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = base.replacen("https://", "http://", 1);
    let answer = reqwest::Client::new()
        .get(format!("{plain}/_matrix/federation/v1/version"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await;
    assert!(
        answer.is_err() || !answer.unwrap().status().is_success(),
        "plain HTTP must not be served on the federation listener"
    );

    // A client that checks certificates refuses the self-signed one.
    let strict = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        strict
            .get(format!("{base}/_matrix/federation/v1/version"))
            .send()
            .await
            .is_err(),
        "a self-signed certificate is not trusted by default"
    );

    // After a restart the listener is back, with the same certificate and key.
    hs.restart().await;
    let (status, again) = get_json(&client, &format!("{base}/_matrix/federation/v1/version")).await;
    assert_eq!(status, 200, "{again}");
}

/// `MYELIN_FEDERATION_LISTEN=""` (or `MYELIN_FEDERATION_ENABLED=false`) turns the listener
/// off; the client API is unaffected.
#[tokio::test]
async fn federation_listener_can_be_turned_off() {
    for (key, value) in [
        ("MYELIN_FEDERATION_LISTEN", ""),
        ("MYELIN_FEDERATION_ENABLED", "false"),
    ] {
        let options = ServerOptions::default().env(key, value);
        let Some(hs) = TestServer::start(Backend::Sqlite, options).await else {
            return;
        };
        let Some(base) = hs.federation_tls_url() else {
            return;
        };
        assert!(
            tls_client()
                .get(format!("{base}/_matrix/federation/v1/version"))
                .send()
                .await
                .is_err(),
            "{key}={value:?}: nothing listens"
        );
        let (status, _) = get_json(
            &tls_client(),
            &format!("{}/_matrix/client/versions", hs.url()),
        )
        .await;
        assert_eq!(status, 200);
    }
}

/// A user on one server reads the profile of a user on another: the first server signs a
/// `query/profile` request, the second fetches the first's keys from it and checks the
/// signature. Unsigned or garbled requests are 401 `M_UNAUTHORIZED`; a server with the
/// default outbound policy does not reach loopback peers at all.
async fn remote_profile_over_federation(backend: Backend) {
    let Some(a) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(b) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(b_federation) = b.federation_tls_url().map(str::to_owned) else {
        return;
    };
    let alice = a.register_user("alice").await;
    let bob = b.register_user("bob").await;
    let set = format!(
        "/_matrix/client/v3/profile/{}/displayname",
        encode(bob.user_id())
    );
    assert_ok(
        &bob.put(&set, &serde_json::json!({ "displayname": "Bob of B" }))
            .await,
        "set name",
    );

    let path = format!("/_matrix/client/v3/profile/{}", encode(bob.user_id()));
    let profile = alice.get(&path).await;
    assert_eq!(
        assert_ok(&profile, "remote profile")["displayname"],
        "Bob of B"
    );
    let field = alice.get(&format!("{path}/displayname")).await;
    assert_eq!(assert_ok(&field, "remote field")["displayname"], "Bob of B");
    // Someone B does not have.
    let nobody = format!(
        "/_matrix/client/v3/profile/{}",
        encode(&b.user_id("nobody"))
    );
    assert_error(
        &alice.get(&nobody).await,
        404,
        "M_NOT_FOUND",
        "unknown remote user",
    );

    // B refuses what is not signed by a server it can check.
    let query = format!(
        "{b_federation}/_matrix/federation/v1/query/profile?user_id={}",
        encode(bob.user_id())
    );
    let client = tls_client();
    let unsigned = client.get(&query).send().await.expect("request");
    assert_eq!(unsigned.status().as_u16(), 401);
    let body: Value = unsigned.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
    for header in [
        "X-Matrix nonsense",
        "X-Matrix origin=\"127.0.0.1:1\",key=\"ed25519:x\",sig=\"dGVzdA\"",
        &format!(
            "X-Matrix origin=\"{}\",destination=\"elsewhere.example\",key=\"ed25519:x\",sig=\"dGVzdA\"",
            a.server_name()
        ),
        &format!(
            "X-Matrix origin=\"{}\",key=\"ed25519:x\",sig=\"dGVzdA\"",
            a.server_name()
        ),
    ] {
        let response = client
            .get(&query)
            .header("Authorization", header)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 401, "{header}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{header}: {body}");
    }

    // A server with the default outbound policy does not reach a loopback peer.
    let Some(c) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let carol = c.register_user("carol").await;
    assert_error(
        &carol.get(&path).await,
        404,
        "M_NOT_FOUND",
        "loopback peer refused",
    );
}

/// The operator's deny list (`MYELIN_FEDERATION_DENIED_SERVERS`) works both ways: the denying
/// server refuses the denied one's requests (403 `M_FORBIDDEN`) and never asks it anything,
/// while it still federates with everyone else.
#[tokio::test]
async fn denied_servers_are_refused_both_ways() {
    let backend = Backend::Sqlite;
    let Some(a) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(b) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(d) = TestServer::start(
        backend,
        ServerOptions::default()
            .federating()
            .env("MYELIN_FEDERATION_DENIED_SERVERS", a.server_name()),
    )
    .await
    else {
        return;
    };
    let alice = a.register_user("alice").await;
    let bob = b.register_user("bob").await;
    let dave = d.register_user("dave").await;
    let profile = |user: &str| format!("/_matrix/client/v3/profile/{}", encode(user));
    // A cannot read D's users (D refuses), D cannot read A's (D does not ask).
    assert_error(
        &alice.get(&profile(dave.user_id())).await,
        404,
        "M_NOT_FOUND",
        "denied inbound",
    );
    assert_error(
        &dave.get(&profile(alice.user_id())).await,
        404,
        "M_NOT_FOUND",
        "denied outbound",
    );
    // B is not denied: both directions work.
    assert_ok(&bob.get(&profile(dave.user_id())).await, "b reads d");
    assert_ok(&dave.get(&profile(bob.user_id())).await, "d reads b");
}

/// Myelin and Synapse (the reference implementation) read each other's users' profiles over
/// federation: each signs its `query/profile` request (X-Matrix), fetches the other's keys
/// from its TLS listener, checks the key document and the request's signature. CI installs
/// Synapse (`.ci/run`); elsewhere the test is skipped when it is missing.
#[tokio::test]
async fn profiles_between_myelin_and_synapse() {
    // CI installs Synapse (.ci/run); elsewhere it is optional.
    if !complement_tests::synapse::available_or_skip() {
        return;
    }
    let Some(myelin) =
        TestServer::start(Backend::Sqlite, ServerOptions::default().federating()).await
    else {
        return;
    };
    let synapse = complement_tests::synapse::Synapse::start_federating(Backend::Sqlite)
        .await
        .expect("Synapse starts");
    let alice = myelin.register_user("alice").await;
    let set = format!(
        "/_matrix/client/v3/profile/{}/displayname",
        encode(alice.user_id())
    );
    assert_ok(
        &alice
            .put(
                &set,
                &serde_json::json!({ "displayname": "Alice on Myelin" }),
            )
            .await,
        "alice's name",
    );
    let bob = synapse.register_user("bob").await;
    let set = format!(
        "/_matrix/client/v3/profile/{}/displayname",
        encode(bob.user_id())
    );
    assert_ok(
        &bob.put(
            &set,
            &serde_json::json!({ "displayname": "Bob on Synapse" }),
        )
        .await,
        "bob's name",
    );

    // Myelin asks Synapse.
    let path = format!("/_matrix/client/v3/profile/{}", encode(bob.user_id()));
    let profile = alice.get(&path).await;
    assert_eq!(
        assert_ok(
            &profile,
            &format!(
                "Bob's profile through Myelin; Synapse's log:\n{}",
                synapse.logs()
            )
        )["displayname"],
        "Bob on Synapse"
    );
    // Synapse asks Myelin.
    let path = format!("/_matrix/client/v3/profile/{}", encode(alice.user_id()));
    let profile = bob.get(&path).await;
    assert_eq!(
        assert_ok(
            &profile,
            &format!(
                "Alice's profile through Synapse; Synapse's log:\n{}",
                synapse.logs()
            )
        )["displayname"],
        "Alice on Myelin"
    );
}

/// The messages of `room_id` as `client` reads them with `/messages` (oldest first).
async fn bodies(client: &complement_tests::Client, room_id: &str) -> Vec<String> {
    let path = complement_tests::Client::room_path(room_id, "/messages?dir=b&limit=100");
    let (status, page) = client.get(&path).await;
    assert_eq!(status, 200, "{page}");
    let mut out: Vec<String> = page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    out.reverse();
    out
}

/// Waits (up to 15 s) until `client` reads `body` in `room_id`.
async fn wait_for_body(client: &complement_tests::Client, room_id: &str, body: &str) {
    for _ in 0..150 {
        if bodies(client, room_id).await.iter().any(|b| b == body) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "{} never saw {body:?} in {room_id}: {:?}",
        client.user_id(),
        bodies(client, room_id).await
    );
}

/// Waits (up to 15 s) until `user`'s membership in `room_id`, as `client` reads the room's
/// state, is `membership`.
async fn wait_for_membership(
    client: &complement_tests::Client,
    room_id: &str,
    user: &str,
    membership: &str,
) {
    let path = complement_tests::Client::room_path(
        room_id,
        &format!("/state/m.room.member/{}", encode(user)),
    );
    let mut last = Value::Null;
    for _ in 0..150 {
        let (status, content) = client.get(&path).await;
        if status == 200 && content["membership"] == membership {
            return;
        }
        last = content;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "{user} never became {membership} in {room_id} for {}: {last}",
        client.user_id()
    );
}

/// Scenario 47: a user on hs2 joins a public room on hs1 by alias (`query/directory`,
/// `make_join`, `send_join`); both sides see the join, and messages from either side appear
/// in the other's timeline, each once on both servers.
async fn a47_remote_user_joins_public_room_by_alias(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let room_id = alice
        .create_room(&serde_json::json!({
            "preset": "public_chat",
            "room_alias_name": "lobby",
            "name": "The lobby",
        }))
        .await;
    alice.send_text(&room_id, "before bob").await;
    let alias = format!("#lobby:{}", hs1.server_name());
    let (status, joined) = bob.join(&alias).await;
    assert_eq!(status, 200, "join by alias: {joined}");
    assert_eq!(joined["room_id"], room_id.as_str());
    // Joining again is a no-op.
    assert_eq!(bob.join(&alias).await.0, 200);

    // Both servers hold the join.
    wait_for_membership(&alice, &room_id, bob.user_id(), "join").await;
    wait_for_membership(&bob, &room_id, bob.user_id(), "join").await;
    let (_, name) = bob
        .get(&complement_tests::Client::room_path(
            &room_id,
            "/state/m.room.name/",
        ))
        .await;
    assert_eq!(name["name"], "The lobby", "bob reads the room's state");
    let (_, rooms) = bob.get("/_matrix/client/v3/joined_rooms").await;
    assert!(
        rooms["joined_rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == room_id.as_str()),
        "{rooms}"
    );

    // Messages both ways.
    alice.send_text(&room_id, "hello from hs1").await;
    wait_for_body(&bob, &room_id, "hello from hs1").await;
    bob.send_text(&room_id, "hello from hs2").await;
    wait_for_body(&alice, &room_id, "hello from hs2").await;
    for i in 0..5 {
        alice.send_text(&room_id, &format!("a{i}")).await;
        bob.send_text(&room_id, &format!("b{i}")).await;
    }
    wait_for_body(&bob, &room_id, "a4").await;
    wait_for_body(&alice, &room_id, "b4").await;
    // Each message once, in one order on both servers (after bob's join: bob's server does
    // not hold what came before it).
    let on_hs1 = bodies(&alice, &room_id).await;
    let on_hs2 = bodies(&bob, &room_id).await;
    for body in ["hello from hs1", "hello from hs2", "a0", "a4", "b0", "b4"] {
        assert_eq!(
            on_hs1.iter().filter(|b| *b == body).count(),
            1,
            "{on_hs1:?}"
        );
        assert_eq!(
            on_hs2.iter().filter(|b| *b == body).count(),
            1,
            "{on_hs2:?}"
        );
    }
    let tail = |v: &[String]| -> Vec<String> {
        let start = v.iter().position(|b| b == "hello from hs1").unwrap();
        v[start..].to_vec()
    };
    assert_eq!(tail(&on_hs1).len(), 12, "{on_hs1:?}");
    assert_eq!(tail(&on_hs2).len(), 12, "{on_hs2:?}");

    // Concurrent state changes fork the room; both servers resolve the forks to one state.
    // Alice lets bob change the topic, then both set it at the same moment.
    let levels_path = complement_tests::Client::room_path(&room_id, "/state/m.room.power_levels/");
    let (_, mut levels) = alice.get(&levels_path).await;
    levels["users"][bob.user_id()] = 100.into();
    assert_eq!(alice.put(&levels_path, &levels).await.0, 200);
    let topic_path = complement_tests::Client::room_path(&room_id, "/state/m.room.topic/");
    for _ in 0..150 {
        let (_, seen) = bob.get(&levels_path).await;
        if seen["users"][bob.user_id()] == 100 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (alice_topic, bob_topic) = (
        serde_json::json!({ "topic": "alice's topic" }),
        serde_json::json!({ "topic": "bob's topic" }),
    );
    let (a, b) = tokio::join!(
        alice.put(&topic_path, &alice_topic),
        bob.put(&topic_path, &bob_topic),
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    // Once each server holds both topic events, both resolve the same two tips to the same
    // state; the next messages (which cite both tips) keep it.
    for _ in 0..150 {
        let (_, on_1) = alice.get(&topic_path).await;
        let (_, on_2) = bob.get(&topic_path).await;
        if on_1["topic"] == on_2["topic"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    alice.send_text(&room_id, "after the fork").await;
    bob.send_text(&room_id, "after the fork too").await;
    wait_for_body(&bob, &room_id, "after the fork").await;
    wait_for_body(&alice, &room_id, "after the fork too").await;
    let (_, on_1) = alice.get(&topic_path).await;
    let (_, on_2) = bob.get(&topic_path).await;
    assert_eq!(
        on_1["topic"], on_2["topic"],
        "the servers disagree on the topic"
    );
    assert!(
        on_1["topic"] == "alice's topic" || on_1["topic"] == "bob's topic",
        "{on_1}"
    );
    // Bob's and alice's later messages still flow both ways.
    bob.send_text(&room_id, "still here").await;
    wait_for_body(&alice, &room_id, "still here").await;

    // Redactions cross servers: each redacts their own message, the other server applies it.
    let from_alice = alice.send_text(&room_id, "alice regrets this").await;
    let from_bob = bob.send_text(&room_id, "bob regrets this").await;
    wait_for_body(&bob, &room_id, "alice regrets this").await;
    wait_for_body(&alice, &room_id, "bob regrets this").await;
    assert_eq!(alice.redact(&room_id, &from_alice, "oops").await.0, 200);
    assert_eq!(bob.redact(&room_id, &from_bob, "oops").await.0, 200);
    for (client, event_id) in [(&bob, &from_alice), (&alice, &from_bob)] {
        let path =
            complement_tests::Client::room_path(&room_id, &format!("/event/{}", encode(event_id)));
        let mut redacted = false;
        for _ in 0..150 {
            let (status, event) = client.get(&path).await;
            if status == 200 && event["content"].get("body").is_none() {
                redacted = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            redacted,
            "{} still sees {event_id} unredacted",
            client.user_id()
        );
    }

    // Scenario 52: bob leaves; both sides see the leave.
    assert_eq!(bob.leave(&room_id).await.0, 200);
    wait_for_membership(&alice, &room_id, bob.user_id(), "leave").await;
}

/// Scenario 48: a user on hs2 joins by room ID through the given `via` servers; the first
/// (hs3) is not in the room and refuses, so the join fails over to the next (hs1). A join
/// with no server that can help is 404.
async fn a48_join_by_room_id_fails_over_via_servers(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs3) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let room_id = alice
        .create_room(&serde_json::json!({ "preset": "public_chat" }))
        .await;
    // No via and a room ID that names no server (room version 12): nothing to ask.
    assert_error(
        &bob.join(&room_id).await,
        404,
        "M_NOT_FOUND",
        "no server to join through",
    );
    let path = format!(
        "/_matrix/client/v3/join/{}?via={}&via={}",
        encode(&room_id),
        encode(hs3.server_name()),
        encode(hs1.server_name())
    );
    let (status, body) = bob.post(&path, &serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&alice, &room_id, bob.user_id(), "join").await;
    bob.send_text(&room_id, "made it").await;
    wait_for_body(&alice, &room_id, "made it").await;

    // hs1's public room directory, read from hs2 (federation `publicRooms`, GET and POST).
    let listed = alice
        .create_room(&serde_json::json!({ "visibility": "public", "name": "Listed room" }))
        .await;
    let (status, page) = bob
        .get(&format!(
            "/_matrix/client/v3/publicRooms?server={}",
            encode(hs1.server_name())
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == listed.as_str() && r["name"] == "Listed room"),
        "{page}"
    );
    let search = |term: &str| serde_json::json!({ "filter": { "generic_search_term": term } });
    let path = format!(
        "/_matrix/client/v3/publicRooms?server={}",
        encode(hs1.server_name())
    );
    let (status, found) = bob.post(&path, &search("listed")).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1, "{found}");
    let (_, none) = bob.post(&path, &search("nothing like it")).await;
    assert_eq!(none["chunk"].as_array().unwrap().len(), 0, "{none}");
}

/// Waits (up to 15 s) until `client`'s initial sync lists `room_id` among its invites, and
/// returns the invite's stripped state.
async fn wait_for_invite(client: &complement_tests::Client, room_id: &str) -> Vec<Value> {
    for _ in 0..150 {
        let (_, sync) = client.get("/_matrix/client/v3/sync?timeout=0").await;
        if let Some(events) = sync["rooms"]["invite"][room_id]["invite_state"]["events"].as_array()
        {
            return events.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{} never saw the invite to {room_id}", client.user_id());
}

/// Scenarios 49 and 50: hs1 invites users of hs2 into a private room (federation `invite`
/// v2, signed by both servers). The invitee's sync shows the invite with the room's name;
/// one invitee accepts (joining through the inviting server) and chats, another rejects
/// (`make_leave` / `send_leave`) and the inviter sees the leave; the inviter rescinds a third
/// invite.
async fn a49_remote_invites_are_accepted_and_rejected(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let carol = hs2.register_user("carol").await;
    let dave = hs2.register_user("dave").await;
    let room_id = alice
        .create_room(&serde_json::json!({ "preset": "private_chat", "name": "Secret" }))
        .await;
    // Someone hs2 does not have cannot be invited.
    let (status, _) = alice.invite(&room_id, &hs2.user_id("nobody")).await;
    assert_eq!(status, 404);

    let (status, body) = alice.invite(&room_id, bob.user_id()).await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&alice, &room_id, bob.user_id(), "invite").await;
    let stripped = wait_for_invite(&bob, &room_id).await;
    assert!(
        stripped
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Secret"),
        "{stripped:?}"
    );
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id()
            && e["content"]["membership"] == "invite"),
        "{stripped:?}"
    );
    let (status, body) = bob.join(&room_id).await;
    assert_eq!(status, 200, "accept: {body}");
    wait_for_membership(&alice, &room_id, bob.user_id(), "join").await;
    bob.send_text(&room_id, "thanks for the invite").await;
    wait_for_body(&alice, &room_id, "thanks for the invite").await;
    alice.send_text(&room_id, "welcome").await;
    wait_for_body(&bob, &room_id, "welcome").await;

    // Carol rejects.
    assert_eq!(alice.invite(&room_id, carol.user_id()).await.0, 200);
    wait_for_invite(&carol, &room_id).await;
    let (status, body) = carol.leave(&room_id).await;
    assert_eq!(status, 200, "reject: {body}");
    wait_for_membership(&alice, &room_id, carol.user_id(), "leave").await;
    let (_, sync) = carol.get("/_matrix/client/v3/sync?timeout=0").await;
    assert!(sync["rooms"]["invite"][&room_id].is_null(), "{sync}");

    // Alice rescinds dave's invite; bob (not a moderator) cannot.
    assert_eq!(alice.invite(&room_id, dave.user_id()).await.0, 200);
    wait_for_membership(&bob, &room_id, dave.user_id(), "invite").await;
    let kick = serde_json::json!({ "user_id": dave.user_id() });
    let path = complement_tests::Client::room_path(&room_id, "/kick");
    assert_eq!(bob.post(&path, &kick).await.0, 403);
    assert_eq!(alice.post(&path, &kick).await.0, 200);
    wait_for_membership(&bob, &room_id, dave.user_id(), "leave").await;

    // A direct chat as Element starts one: createRoom inviting a user of another server.
    let dm = alice
        .create_room(&serde_json::json!({
            "preset": "trusted_private_chat",
            "is_direct": true,
            "invite": [dave.user_id()],
        }))
        .await;
    let stripped = wait_for_invite(&dave, &dm).await;
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == dave.user_id()
            && e["content"]["is_direct"] == true),
        "{stripped:?}"
    );
    assert_eq!(dave.join(&dm).await.0, 200);
    dave.send_text(&dm, "hi alice").await;
    wait_for_body(&alice, &dm, "hi alice").await;
}

/// Nothing queued for a server that is down is lost, when the sending server restarts in
/// the meantime too: hs2 stops, hs1's users write three messages, hs1 restarts, hs2 comes
/// back; once hs2 talks to hs1 again (bob writes), hs1 stops backing off and hs2 gets the
/// three messages, each once, in order.
async fn queued_events_survive_restarts_of_both_sides(backend: Backend) {
    let Some(mut hs1) = TestServer::start(backend, ServerOptions::default().federating()).await
    else {
        return;
    };
    let Some(mut hs2) = TestServer::start(backend, ServerOptions::default().federating()).await
    else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let room_id = alice
        .create_room(&serde_json::json!({ "preset": "public_chat", "room_alias_name": "r" }))
        .await;
    let (status, body) = bob.join(&format!("#r:{}", hs1.server_name())).await;
    assert_eq!(status, 200, "{body}");
    alice.send_text(&room_id, "before").await;
    wait_for_body(&bob, &room_id, "before").await;

    hs2.stop().await;
    for i in 1..=3 {
        alice.send_text(&room_id, &format!("while down {i}")).await;
    }
    // Let hs1 fail at least once, then restart it with the messages unsent.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    hs1.restart().await;
    hs2.restart().await;
    bob.send_text(&room_id, "back").await;
    wait_for_body(&alice, &room_id, "back").await;
    wait_for_body(&bob, &room_id, "while down 3").await;
    let seen = bodies(&bob, &room_id).await;
    let expected: Vec<String> = ["before", "while down 1", "while down 2", "while down 3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let got: Vec<String> = seen
        .iter()
        .filter(|b| expected.contains(b))
        .cloned()
        .collect();
    assert_eq!(got, expected, "{seen:?}");
}

/// Waits (up to 15 s) until `client`'s sync shows an ephemeral event of `room_id` for which
/// `found` holds.
async fn wait_for_ephemeral(
    client: &complement_tests::Client,
    room_id: &str,
    what: &str,
    found: impl Fn(&Value) -> bool,
) {
    for _ in 0..150 {
        let (_, sync) = client.get("/_matrix/client/v3/sync?timeout=0").await;
        let events = sync["rooms"]["join"][room_id]["ephemeral"]["events"].clone();
        if events.as_array().into_iter().flatten().any(&found) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{} never saw {what} in {room_id}", client.user_id());
}

/// Scenario 59: alice on hs1 types and bob on hs2 sees it, then stops and bob sees that;
/// alice sees the delivered tick of her message once bob's device received it; bob reads
/// alice's message and alice sees bob's read receipt on it; bob's presence and status
/// message reach alice.
async fn a59_typing_and_receipts_cross_servers(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let room_id = alice
        .create_room(&serde_json::json!({ "preset": "public_chat", "room_alias_name": "t" }))
        .await;
    let (status, body) = bob.join(&format!("#t:{}", hs1.server_name())).await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&alice, &room_id, bob.user_id(), "join").await;

    let typing_path = complement_tests::Client::room_path(
        &room_id,
        &format!("/typing/{}", encode(alice.user_id())),
    );
    let start = serde_json::json!({ "typing": true, "timeout": 20000 });
    assert_eq!(alice.put(&typing_path, &start).await.0, 200);
    let alice_id = alice.user_id().to_owned();
    wait_for_ephemeral(&bob, &room_id, "alice typing", |e| {
        e["type"] == "m.typing"
            && e["content"]["user_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|u| *u == alice_id.as_str()))
    })
    .await;
    let stop = serde_json::json!({ "typing": false });
    assert_eq!(alice.put(&typing_path, &stop).await.0, 200);
    // An initial sync shows typing only while someone types.
    let mut stopped = false;
    for _ in 0..150 {
        let (_, sync) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
        let events = sync["rooms"]["join"][&room_id]["ephemeral"]["events"].clone();
        let typing = events.as_array().into_iter().flatten().any(|e| {
            e["type"] == "m.typing"
                && e["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|u| *u == alice_id.as_str()))
        });
        if !typing {
            stopped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(stopped, "bob still sees alice typing");

    let event_id = alice.send_text(&room_id, "read me").await;
    wait_for_body(&bob, &room_id, "read me").await;
    // Bob's sync takes it: the delivered tick (Myelin's receipt type) reaches alice.
    let (status, _) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(status, 200);
    let bob_id = bob.user_id().to_owned();
    wait_for_ephemeral(&alice, &room_id, "bob's delivered tick", |e| {
        e["type"] == "m.receipt"
            && !e["content"][&event_id]["io.myelin.delivered"][&bob_id].is_null()
    })
    .await;
    let receipt = complement_tests::Client::room_path(
        &room_id,
        &format!("/receipt/m.read/{}", encode(&event_id)),
    );
    assert_eq!(bob.post(&receipt, &serde_json::json!({})).await.0, 200);
    wait_for_ephemeral(&alice, &room_id, "bob's receipt", |e| {
        e["type"] == "m.receipt" && !e["content"][&event_id]["m.read"][&bob_id].is_null()
    })
    .await;

    let status_path = format!("/_matrix/client/v3/presence/{}/status", encode(&bob_id));
    let set = serde_json::json!({ "presence": "online", "status_msg": "on hs2" });
    assert_eq!(bob.put(&status_path, &set).await.0, 200);
    let mut last = Value::Null;
    for _ in 0..150 {
        let (status, seen) = alice.get(&status_path).await;
        if status == 200 && seen["presence"] == "online" && seen["status_msg"] == "on hs2" {
            return;
        }
        last = seen;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("alice never saw bob's presence: {last}");
}

/// Scenario 51: alice (hs1) bans bob (hs2): bob's server hears of the ban although it then has
/// nobody in the room (bob's sync shows the room as left), and nothing alice writes after it
/// reaches hs2; bob cannot come back by joining through hs1; once alice unbans and invites
/// him, he joins again and they chat.
async fn a51_banned_remote_user_cannot_rejoin(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let room_id = alice
        .create_room(&serde_json::json!({ "preset": "public_chat", "room_alias_name": "b" }))
        .await;
    let alias = format!("#b:{}", hs1.server_name());
    let (status, body) = bob.join(&alias).await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&alice, &room_id, bob.user_id(), "join").await;
    let since = bob.sync(None, 0).await.1["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();

    let ban = serde_json::json!({ "user_id": bob.user_id(), "reason": "spam" });
    let path = complement_tests::Client::room_path(&room_id, "/ban");
    assert_eq!(alice.post(&path, &ban).await.0, 200);
    alice.send_text(&room_id, "after the ban").await;
    let response = bob
        .sync_until(Some(&since), std::time::Duration::from_secs(15), |r| {
            r["rooms"]["leave"][&room_id].is_object()
        })
        .await;
    let events = response["rooms"]["leave"][&room_id]["timeline"]["events"].to_string();
    assert!(events.contains("\"ban\""), "{response}");
    assert!(!events.contains("after the ban"), "{response}");

    let (status, body) = bob.join(&alias).await;
    assert_eq!(status, 403, "a banned user joins again: {body}");

    let unban = serde_json::json!({ "user_id": bob.user_id() });
    let path = complement_tests::Client::room_path(&room_id, "/unban");
    assert_eq!(alice.post(&path, &unban).await.0, 200);
    let invite = serde_json::json!({ "user_id": bob.user_id() });
    let path = complement_tests::Client::room_path(&room_id, "/invite");
    let (status, body) = alice.post(&path, &invite).await;
    assert_eq!(status, 200, "{body}");
    wait_for_invite(&bob, &room_id).await;
    let (status, body) = bob.join(&room_id).await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&alice, &room_id, bob.user_id(), "join").await;
    bob.send_text(&room_id, "back again").await;
    wait_for_body(&alice, &room_id, "back again").await;
    alice.send_text(&room_id, "welcome back").await;
    wait_for_body(&bob, &room_id, "welcome back").await;
    assert!(
        !bodies(&bob, &room_id)
            .await
            .contains(&"after the ban".to_owned()),
        "hs2 got what was written while bob was banned"
    );
}

/// Knocking across servers (`make_knock` / `send_knock`): bob (hs2) knocks on alice's (hs1)
/// knock-only room by alias; alice sees the knock, bob's sync shows the room under `knock`
/// with its stripped state; alice lets him in with an invite and he joins. Carol (hs2) knocks
/// and withdraws, and alice sees her leave. A knock on a public room is refused.
async fn knocks_across_servers(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let carol = hs2.register_user("carol").await;
    let room_id = alice
        .create_room(&serde_json::json!({
            "preset": "private_chat",
            "room_alias_name": "k",
            "name": "Knock here",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "",
                                "content": { "join_rule": "knock" } }],
        }))
        .await;
    let alias = format!("#k:{}", hs1.server_name());
    let knock =
        |alias: String| async move { format!("/_matrix/client/v3/knock/{}", encode(&alias)) };

    let (status, body) = bob
        .post(
            &knock(alias.clone()).await,
            &serde_json::json!({ "reason": "let me in" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room_id.as_str());
    wait_for_membership(&alice, &room_id, bob.user_id(), "knock").await;
    let response = bob
        .sync_until(None, std::time::Duration::from_secs(15), |r| {
            r["rooms"]["knock"][&room_id].is_object()
        })
        .await;
    let knock_state = response["rooms"]["knock"][&room_id]["knock_state"]["events"].to_string();
    assert!(knock_state.contains("Knock here"), "{response}");
    assert!(knock_state.contains("\"knock\""), "{response}");

    let invite = serde_json::json!({ "user_id": bob.user_id() });
    let path = complement_tests::Client::room_path(&room_id, "/invite");
    let (status, body) = alice.post(&path, &invite).await;
    assert_eq!(status, 200, "{body}");
    wait_for_invite(&bob, &room_id).await;
    let (status, body) = bob.join(&room_id).await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&alice, &room_id, bob.user_id(), "join").await;

    let (status, body) = carol
        .post(&knock(alias.clone()).await, &serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&alice, &room_id, carol.user_id(), "knock").await;
    let (status, body) = carol.leave(&room_id).await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&alice, &room_id, carol.user_id(), "leave").await;

    alice
        .create_room(&serde_json::json!({ "preset": "public_chat", "room_alias_name": "p" }))
        .await;
    let (status, body) = carol
        .post(
            &knock(format!("#p:{}", hs1.server_name())).await,
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 403, "a knock on a public room: {body}");
}

/// Restricted joins through the room's server: bob (hs2) may join alice's (hs1) room that
/// admits members of her space only once he is in the space; hs1 names a member of its own who
/// may invite (`join_authorised_via_users_server`) in the template and signs the join.
async fn restricted_join_through_a_resident_server(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let space = alice
        .create_room(&serde_json::json!({
            "preset": "public_chat",
            "room_alias_name": "space",
            "creation_content": { "type": "m.space" },
        }))
        .await;
    let room_id = alice
        .create_room(&serde_json::json!({
            "preset": "private_chat",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": space }],
            }}],
        }))
        .await;
    let join_via = format!(
        "/_matrix/client/v3/join/{}?server_name={}",
        encode(&room_id),
        encode(hs1.server_name())
    );
    let (status, body) = bob.post(&join_via, &serde_json::json!({})).await;
    assert_eq!(status, 403, "not in the space yet: {body}");

    let (status, body) = bob.join(&format!("#space:{}", hs1.server_name())).await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&alice, &space, bob.user_id(), "join").await;
    let (status, body) = bob.post(&join_via, &serde_json::json!({})).await;
    assert_eq!(status, 200, "a member of the space joins: {body}");
    wait_for_membership(&alice, &room_id, bob.user_id(), "join").await;
    let path = complement_tests::Client::room_path(
        &room_id,
        &format!("/state/m.room.member/{}", encode(bob.user_id())),
    );
    let (_, member) = alice.get(&path).await;
    assert_eq!(
        member["join_authorised_via_users_server"],
        alice.user_id(),
        "{member}"
    );
    bob.send_text(&room_id, "in through the space").await;
    wait_for_body(&alice, &room_id, "in through the space").await;
}

/// The verify keys of a key document, as ruma's key set.
fn key_set(document: &Value) -> ruma::signatures::PublicKeySet {
    let mut set = ruma::signatures::PublicKeySet::new();
    for (id, key) in document["verify_keys"].as_object().expect("verify_keys") {
        set.insert(
            id.clone(),
            ruma::serde::Base64::parse(key["key"].as_str().expect("key")).expect("base64"),
        );
    }
    set
}

/// hs1 answers notary queries: once it has hs2's keys (from hs2's requests), `GET` and `POST
/// /_matrix/key/v2/query` give hs2's document as hs2 signed it, countersigned by hs1 (both
/// signatures check with ruma); its own document is its own; a server it cannot reach gives
/// an empty list; a bad body is 400.
async fn notary_answers_for_other_servers(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    alice
        .create_room(&serde_json::json!({ "preset": "public_chat", "room_alias_name": "n" }))
        .await;
    let (status, body) = bob.join(&format!("#n:{}", hs1.server_name())).await;
    assert_eq!(status, 200, "{body}");

    let client = tls_client();
    let base1 = hs1.federation_tls_url().expect("listener").to_owned();
    let base2 = hs2.federation_tls_url().expect("listener").to_owned();
    let (_, own1) = get_json(&client, &format!("{base1}/_matrix/key/v2/server")).await;
    let (_, own2) = get_json(&client, &format!("{base2}/_matrix/key/v2/server")).await;
    let mut keys = ruma::signatures::PublicKeyMap::new();
    keys.insert(hs1.server_name().to_owned(), key_set(&own1));
    keys.insert(hs2.server_name().to_owned(), key_set(&own2));

    let check = |answer: &Value, what: &str| {
        let docs = answer["server_keys"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: {answer}"));
        assert_eq!(docs.len(), 1, "{what}: {answer}");
        let doc = &docs[0];
        assert_eq!(doc["server_name"], hs2.server_name(), "{what}: {answer}");
        assert_eq!(doc["verify_keys"], own2["verify_keys"], "{what}: {answer}");
        let object: ruma::CanonicalJsonObject =
            serde_json::from_value(doc.clone()).expect("canonical JSON");
        ruma::signatures::verify_json(&keys, &object)
            .unwrap_or_else(|e| panic!("{what}: signatures do not check: {e}: {answer}"));
        assert!(
            doc["signatures"][hs1.server_name()].is_object(),
            "{what}: {answer}"
        );
        assert!(
            doc["signatures"][hs2.server_name()].is_object(),
            "{what}: {answer}"
        );
    };
    let (status, answer) = get_json(
        &client,
        &format!("{base1}/_matrix/key/v2/query/{}", encode(hs2.server_name())),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    check(&answer, "GET");
    let body = serde_json::json!({ "server_keys": {
        hs2.server_name(): {},
        "127.0.0.1:9": {},
    } });
    let response = client
        .post(format!("{base1}/_matrix/key/v2/query"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    check(&answer, "POST (the unreachable server left out)");

    let (status, answer) = get_json(
        &client,
        &format!("{base1}/_matrix/key/v2/query/{}", encode(hs1.server_name())),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["server_keys"][0]["verify_keys"], own1["verify_keys"],
        "{answer}"
    );
    let response = client
        .post(format!("{base1}/_matrix/key/v2/query"))
        .body("{\"server_keys\": 5}")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 400);
}

/// A space across servers: bob (hs2) joins alice's (hs1) space; his `/hierarchy` of it lists
/// the public child room hs2 does not hold (asked of hs1 through the child's `via`), with its
/// name, and leaves out the invite-only child (hs1 does not show it to hs2).
async fn space_hierarchy_across_servers(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let space = alice
        .create_room(&serde_json::json!({
            "preset": "public_chat",
            "room_alias_name": "sp",
            "creation_content": { "type": "m.space" },
        }))
        .await;
    let public = alice
        .create_room(&serde_json::json!({ "preset": "public_chat", "name": "Open room" }))
        .await;
    let private = alice
        .create_room(&serde_json::json!({ "preset": "private_chat", "name": "Secret room" }))
        .await;
    for child in [&public, &private] {
        let path = complement_tests::Client::room_path(
            &space,
            &format!("/state/m.space.child/{}", encode(child)),
        );
        let content = serde_json::json!({ "via": [hs1.server_name()] });
        assert_eq!(alice.put(&path, &content).await.0, 200);
    }
    let (status, body) = bob.join(&format!("#sp:{}", hs1.server_name())).await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/_matrix/client/v1/rooms/{}/hierarchy", encode(&space));
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, answer) = bob.get(&path).await;
        assert_eq!(status, 200, "{answer}");
        let ids: Vec<&str> = answer["rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["room_id"].as_str())
            .collect();
        if ids.contains(&public.as_str()) {
            assert_eq!(ids[0], space.as_str(), "{answer}");
            assert!(!ids.contains(&private.as_str()), "{answer}");
            let room = answer["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["room_id"] == public.as_str())
                .unwrap();
            assert_eq!(room["name"], "Open room", "{answer}");
            assert_eq!(room["join_rule"], "public", "{answer}");
            return;
        }
        last = answer;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("bob never saw the remote child: {last}");
}

backend_tests!(
    space_hierarchy_across_servers,
    notary_answers_for_other_servers,
    restricted_join_through_a_resident_server,
    knocks_across_servers,
    a51_banned_remote_user_cannot_rejoin,
    a59_typing_and_receipts_cross_servers,
    queued_events_survive_restarts_of_both_sides,
    a49_remote_invites_are_accepted_and_rejected,
    remote_profile_over_federation,
    a47_remote_user_joins_public_room_by_alias,
    a48_join_by_room_id_fails_over_via_servers
);

/// Rooms between Myelin and Synapse (scenario 47 against the reference implementation): a
/// Synapse user joins a room on Myelin by alias, and a Myelin user joins a room on Synapse
/// (Synapse's default room version) by alias; in both rooms messages go both ways. Each side
/// checks the other's events (signatures, hashes, auth), so this holds only if Myelin's
/// `make_join` / `send_join` answers, transactions and events are what Synapse accepts, and
/// Myelin accepts Synapse's.
#[tokio::test]
async fn rooms_between_myelin_and_synapse() {
    if !complement_tests::synapse::available_or_skip() {
        return;
    }
    let Some(myelin) =
        TestServer::start(Backend::Sqlite, ServerOptions::default().federating()).await
    else {
        return;
    };
    let synapse = complement_tests::synapse::Synapse::start_federating(Backend::Sqlite)
        .await
        .expect("Synapse starts");
    let alice = myelin.register_user("alice").await;
    let sam = synapse.register_user("sam").await;

    // A room on Myelin, joined from Synapse.
    let on_myelin = alice
        .create_room(&serde_json::json!({ "preset": "public_chat", "room_alias_name": "m" }))
        .await;
    let alias = format!("#m:{}", myelin.server_name());
    let (status, joined) = sam.join(&alias).await;
    assert_eq!(
        status,
        200,
        "Synapse joins Myelin's room: {joined}\n{}",
        synapse.logs()
    );
    wait_for_membership(&alice, &on_myelin, sam.user_id(), "join").await;
    alice.send_text(&on_myelin, "from myelin").await;
    wait_for_body(&sam, &on_myelin, "from myelin").await;
    sam.send_text(&on_myelin, "from synapse").await;
    wait_for_body(&alice, &on_myelin, "from synapse").await;

    // A room on Synapse, joined from Myelin.
    let on_synapse = sam
        .create_room(&serde_json::json!({ "preset": "public_chat", "room_alias_name": "s" }))
        .await;
    let (_, server) = sam.user_id().split_once(':').unwrap();
    let alias = format!("#s:{server}");
    let (status, joined) = alice.join(&alias).await;
    assert_eq!(status, 200, "Myelin joins Synapse's room: {joined}");
    wait_for_membership(&sam, &on_synapse, alice.user_id(), "join").await;
    sam.send_text(&on_synapse, "hello myelin").await;
    wait_for_body(&alice, &on_synapse, "hello myelin").await;
    alice.send_text(&on_synapse, "hello synapse").await;
    wait_for_body(&sam, &on_synapse, "hello synapse").await;
}

/// On a server whose name carries a port (as every federating test server's does), local
/// users are still local to push rules: a message counts as a notification for the other
/// member.
#[tokio::test]
async fn push_counts_on_a_server_name_with_a_port() {
    let Some(hs) = TestServer::start(Backend::Sqlite, ServerOptions::default().federating()).await
    else {
        return;
    };
    assert!(hs.server_name().contains(':'));
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room_id = alice
        .create_room(&serde_json::json!({ "preset": "public_chat" }))
        .await;
    assert_eq!(bob.join(&room_id).await.0, 200);
    alice.send_text(&room_id, "count me").await;
    let (_, sync) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(
        sync["rooms"]["join"][&room_id]["unread_notifications"]["notification_count"], 1,
        "{}",
        sync["rooms"]["join"][&room_id]
    );
}
