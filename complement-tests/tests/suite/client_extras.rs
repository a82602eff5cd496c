//! The smaller client-server endpoints clients call at start-up or now and then (issue 13):
//! third-party protocols, 3PIDs, TURN credentials and MatrixRTC foci, mutual rooms and
//! timestamp-to-event. Each is checked for its real answer, permissions and bad input.

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine};
use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, Backend, Client, ServerOptions, TestServer,
};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;

/// `GET /thirdparty/protocols` is `{}` and `GET /account/3pid` an empty list, for a
/// logged-in user; both need a token.
async fn startup_endpoints_answer(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let response = alice.get("/_matrix/client/v3/thirdparty/protocols").await;
    assert_eq!(assert_ok(&response, "protocols"), &json!({}));
    let response = alice.get("/_matrix/client/v3/account/3pid").await;
    assert_eq!(assert_ok(&response, "3pids"), &json!({ "threepids": [] }));
    let anonymous = hs.client();
    for path in [
        "/_matrix/client/v3/thirdparty/protocols",
        "/_matrix/client/v3/account/3pid",
        "/_matrix/client/v3/voip/turnServer",
    ] {
        assert_error(&anonymous.get(path).await, 401, "M_MISSING_TOKEN", path);
    }
}

/// Without TURN configured, `/voip/turnServer` is `{}`; with it, credentials in coturn's
/// REST API scheme (`<expiry>:<user>`, base64 HMAC-SHA1 under the shared secret) that expire
/// after the configured lifetime. The LiveKit focus shows in `.well-known` and the MSC4143
/// transports endpoint only when configured.
async fn turn_credentials_and_rtc_foci(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let response = alice.get("/_matrix/client/v3/voip/turnServer").await;
    assert_eq!(assert_ok(&response, "turnServer, unconfigured"), &json!({}));
    let well_known = hs.client().get("/.well-known/matrix/client").await;
    assert!(
        assert_ok(&well_known, "well-known")
            .get("org.matrix.msc4143.rtc_foci")
            .is_none(),
        "{}",
        well_known.1
    );
    drop(hs);

    let options = ServerOptions::default()
        .env(
            "MYELIN_VOIP_TURN_URIS",
            "turn:turn.example.org:3478?transport=udp, turns:turn.example.org:5349?transport=tcp",
        )
        .env("MYELIN_VOIP_TURN_SHARED_SECRET", "north wind")
        .env("MYELIN_VOIP_TURN_USER_LIFETIME", "600")
        .env(
            "MYELIN_RTC_LIVEKIT_SERVICE_URLS",
            "https://livekit-jwt.example.org",
        );
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let response = alice.get("/_matrix/client/v3/voip/turnServer").await;
    let body = assert_ok(&response, "turnServer").clone();
    assert_eq!(
        body["uris"],
        json!([
            "turn:turn.example.org:3478?transport=udp",
            "turns:turn.example.org:5349?transport=tcp"
        ])
    );
    assert_eq!(body["ttl"], 600);
    let username = body["username"].as_str().expect("username");
    let (expiry, user) = username.split_once(':').expect("<expiry>:<user>");
    assert_eq!(user, alice.user_id());
    let expiry: u64 = expiry.parse().expect("expiry in seconds");
    assert!(
        (now + 595..=now + 605).contains(&expiry),
        "expiry {expiry} for now {now}"
    );
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"north wind").expect("key");
    mac.update(username.as_bytes());
    assert_eq!(
        body["password"],
        STANDARD.encode(mac.finalize().into_bytes()),
        "{body}"
    );

    let foci =
        json!([{ "type": "livekit", "livekit_service_url": "https://livekit-jwt.example.org" }]);
    let well_known = hs.client().get("/.well-known/matrix/client").await;
    assert_eq!(
        assert_ok(&well_known, "well-known")["org.matrix.msc4143.rtc_foci"],
        foci
    );
    let transports = alice
        .get("/_matrix/client/unstable/org.matrix.msc4143/rtc/transports")
        .await;
    assert_eq!(assert_ok(&transports, "transports")["rtc_transports"], foci);
}

/// `GET /v1/mutual_rooms` (and MSC2666's unstable path): the rooms both users are joined
/// to, not rooms one of them left or was only invited to; asking about oneself is refused.
async fn mutual_rooms(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let mut shared = Vec::new();
    for _ in 0..3 {
        let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
        assert_ok(&bob.join(&room).await, "bob joins");
        shared.push(room);
    }
    // Bob left one, was only invited to another, and is not in alice's private room.
    let left = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&left).await, "bob joins");
    assert_ok(&bob.leave(&left).await, "bob leaves");
    let invited = alice
        .create_room(&json!({ "invite": [bob.user_id()] }))
        .await;
    let _alone = alice.create_room(&json!({})).await;
    let _ = invited;
    shared.sort();

    let path = |user: &str| format!("/_matrix/client/v1/mutual_rooms?user_id={}", encode(user));
    let response = alice.get(&path(bob.user_id())).await;
    let body = assert_ok(&response, "mutual rooms").clone();
    let mut joined: Vec<String> = serde_json::from_value(body["joined"].clone()).expect("ids");
    joined.sort();
    assert_eq!(joined, shared, "{body}");
    assert_eq!(body["count"], 3, "{body}");
    assert!(body.get("next_batch").is_none(), "{body}");
    let response = bob.get(&path(alice.user_id())).await;
    assert_eq!(assert_ok(&response, "from bob's side")["count"], 3);
    let response = alice.get(&path(carol.user_id())).await;
    assert_eq!(
        assert_ok(&response, "no shared rooms"),
        &json!({ "count": 0, "joined": [] })
    );
    let unstable = format!(
        "/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms?user_id={}",
        encode(bob.user_id())
    );
    let response = alice.get(&unstable).await;
    let mut joined: Vec<String> =
        serde_json::from_value(assert_ok(&response, "unstable path")["joined"].clone())
            .expect("ids");
    joined.sort();
    assert_eq!(joined, shared);
    let (status, body) = alice.get(&path(alice.user_id())).await;
    assert_eq!(status, 400, "oneself: {body}");
    let (status, body) = alice
        .get("/_matrix/client/v1/mutual_rooms?user_id=notauser")
        .await;
    assert_eq!(status, 400, "a bad user ID: {body}");
    let (status, body) = alice.get("/_matrix/client/v1/mutual_rooms").await;
    assert_eq!(status, 400, "no user ID: {body}");
}

/// `GET /v1/rooms/{id}/timestamp_to_event`: the nearest event at or after (`f`) or at or
/// before (`b`) a time, by `origin_server_ts`; 404 past either end; a user outside a private
/// room learns nothing (404, as for a room with no events there); a bad `dir` is 400.
async fn timestamp_to_event(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let mallory = hs.register_user("mallory").await;
    let room = alice.create_room(&json!({})).await;
    let mut sent: Vec<(String, i64)> = Vec::new();
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let id = alice.send_text(&room, &format!("message {i}")).await;
        let event = alice.get_event(&room, &id).await;
        let ts = assert_ok(&event, "the event")["origin_server_ts"]
            .as_i64()
            .expect("ts");
        sent.push((id, ts));
    }
    let ask = |client: &Client, ts: i64, dir: &str| {
        let path = Client::room_path(&room, &format!("/timestamp_to_event?ts={ts}&dir={dir}"))
            .replace("/v3/", "/v1/");
        let client = client.clone();
        async move { client.get(&path).await }
    };
    let found = |response: &(u16, Value)| -> (String, i64) {
        let body = assert_ok(response, "timestamp_to_event");
        (
            body["event_id"].as_str().expect("event_id").to_owned(),
            body["origin_server_ts"].as_i64().expect("ts"),
        )
    };
    // Exactly at an event's time: that event, either way.
    assert_eq!(found(&ask(&alice, sent[1].1, "f").await), sent[1]);
    assert_eq!(found(&ask(&alice, sent[1].1, "b").await), sent[1]);
    // Between two events: the later going forward, the earlier going backward.
    assert_eq!(found(&ask(&alice, sent[1].1 + 1, "f").await), sent[2]);
    assert_eq!(found(&ask(&alice, sent[2].1 - 1, "b").await), sent[1]);
    // Past the end forward: nothing; before the room backward: nothing.
    assert_error(
        &ask(&alice, sent[3].1 + 60_000, "f").await,
        404,
        "M_NOT_FOUND",
        "after the last event",
    );
    assert_error(
        &ask(&alice, 1, "b").await,
        404,
        "M_NOT_FOUND",
        "before the room",
    );
    // Far in the future backward: the last event.
    assert_eq!(found(&ask(&alice, sent[3].1 + 60_000, "b").await), sent[3]);
    // Someone outside the private room learns nothing.
    assert_error(
        &ask(&mallory, sent[1].1, "f").await,
        404,
        "M_NOT_FOUND",
        "mallory is not in the room",
    );
    let (status, body) = ask(&alice, sent[1].1, "sideways").await;
    assert_eq!(status, 400, "a bad dir: {body}");
    let (status, body) = ask(&alice, -5, "f").await;
    assert_eq!(status, 400, "a negative ts: {body}");
}

/// Reporting an event, a room and a user stores the reports for the admins (read back
/// through `GET /_synapse/admin/v1/event_reports`); an event the reporter may not see (a room
/// they were never in), an unknown event, room or local user is 404 and stores nothing.
async fn reports_are_stored_for_admins(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let mallory = hs.register_user("mallory").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    let rude = alice.send_text(&room, "something rude").await;
    let private = alice.create_room(&json!({})).await;
    let secret = alice.send_text(&private, "a secret").await;

    let event_report =
        |room: &str, event: &str| Client::room_path(room, &format!("/report/{}", encode(event)));
    assert_ok(
        &bob.post(
            &event_report(&room, &rude),
            &json!({ "reason": "rude", "score": -100 }),
        )
        .await,
        "bob reports alice's event",
    );
    assert_ok(
        &bob.post(
            &Client::room_path(&room, "/report"),
            &json!({ "reason": "a bad room" }),
        )
        .await,
        "bob reports the room",
    );
    let user_report = format!(
        "/_matrix/client/v3/users/{}/report",
        encode(alice.user_id())
    );
    assert_ok(
        &bob.post(&user_report, &json!({ "reason": "a bad user" }))
            .await,
        "bob reports alice",
    );

    // Refused, and nothing stored.
    assert_error(
        &mallory
            .post(&event_report(&private, &secret), &json!({ "reason": "x" }))
            .await,
        404,
        "M_NOT_FOUND",
        "an event in a room mallory was never in",
    );
    assert_error(
        &mallory
            .post(&event_report(&room, &rude), &json!({ "reason": "x" }))
            .await,
        404,
        "M_NOT_FOUND",
        "an event in a public room mallory is not in",
    );
    assert_error(
        &bob.post(
            &event_report(&room, "$nosuchevent"),
            &json!({ "reason": "x" }),
        )
        .await,
        404,
        "M_NOT_FOUND",
        "an unknown event",
    );
    assert_error(
        &bob.post(&event_report(&room, &secret), &json!({ "reason": "x" }))
            .await,
        404,
        "M_NOT_FOUND",
        "an event of another room",
    );
    assert_error(
        &bob.post(
            &Client::room_path("!nosuchroom:localhost", "/report"),
            &json!({ "reason": "x" }),
        )
        .await,
        404,
        "M_NOT_FOUND",
        "an unknown room",
    );
    let nobody = format!(
        "/_matrix/client/v3/users/{}/report",
        encode(&hs.user_id("nobody-here"))
    );
    assert_error(
        &bob.post(&nobody, &json!({ "reason": "x" })).await,
        404,
        "M_NOT_FOUND",
        "an unknown local user",
    );
    let (status, body) = bob.post(&user_report, &json!({})).await;
    assert_eq!(status, 400, "a user report without a reason: {body}");

    // What the admins see: the three reports, in order, and nothing else.
    let Some(admin) = hs.register_admin().await else {
        complement_tests::skip(
            "reports_are_stored_for_admins",
            "no shared secret for an external server",
        );
        return;
    };
    let response = admin.get("/_synapse/admin/v1/event_reports").await;
    let reports = assert_ok(&response, "event_reports")["event_reports"]
        .as_array()
        .expect("a list")
        .clone();
    assert_eq!(reports.len(), 3, "{reports:?}");
    assert_eq!(reports[0]["event_id"], rude.as_str());
    assert_eq!(reports[0]["room_id"], room.as_str());
    assert_eq!(reports[0]["user_id"], bob.user_id());
    assert_eq!(reports[0]["reason"], "rude");
    assert_eq!(reports[1]["room_id"], room.as_str());
    assert!(reports[1]["event_id"].is_null(), "{:?}", reports[1]);
    assert_eq!(reports[1]["reason"], "a bad room");
    assert_eq!(reports[2]["target_user_id"], alice.user_id());
    assert_eq!(reports[2]["reason"], "a bad user");
    // Paging, and only admins.
    let response = admin.get("/_synapse/admin/v1/event_reports?limit=2").await;
    let page = assert_ok(&response, "page 1").clone();
    assert_eq!(page["event_reports"].as_array().map(Vec::len), Some(2));
    let next = page["next_token"].as_i64().expect("next_token");
    let response = admin
        .get(&format!(
            "/_synapse/admin/v1/event_reports?limit=2&from={next}"
        ))
        .await;
    assert_eq!(
        assert_ok(&response, "page 2")["event_reports"][0]["reason"],
        "a bad user"
    );
    assert_error(
        &bob.get("/_synapse/admin/v1/event_reports").await,
        403,
        "M_FORBIDDEN",
        "a non-admin",
    );
}

/// `POST /user/{me}/openid/request_token` gives a token a third party exchanges at
/// `GET /_matrix/federation/v1/openid/userinfo` for the user ID; another user's ID is 403, and
/// an unknown token (or an access token) is 401 `M_UNKNOWN_TOKEN`.
async fn openid_tokens(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let path = |user: &str| {
        format!(
            "/_matrix/client/v3/user/{}/openid/request_token",
            encode(user)
        )
    };
    let response = alice.post(&path(alice.user_id()), &json!({})).await;
    let body = assert_ok(&response, "request_token").clone();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(
        Some(body["matrix_server_name"].as_str().expect("server name")),
        alice.user_id().split_once(':').map(|(_, s)| s)
    );
    let token = body["access_token"].as_str().expect("token").to_owned();
    let third_party = hs.client();
    let userinfo = |token: &str| {
        format!(
            "/_matrix/federation/v1/openid/userinfo?access_token={}",
            encode(token)
        )
    };
    let response = third_party.get(&userinfo(&token)).await;
    assert_eq!(
        assert_ok(&response, "userinfo"),
        &json!({ "sub": alice.user_id() })
    );
    assert_error(
        &third_party.get(&userinfo("not-a-token")).await,
        401,
        "M_UNKNOWN_TOKEN",
        "an unknown token",
    );
    assert_error(
        &third_party.get(&userinfo(alice.access_token())).await,
        401,
        "M_UNKNOWN_TOKEN",
        "an access token is not an OpenID token",
    );
    assert_error(
        &third_party
            .get("/_matrix/federation/v1/openid/userinfo")
            .await,
        401,
        "M_UNKNOWN_TOKEN",
        "no token",
    );
    assert_error(
        &bob.post(&path(alice.user_id()), &json!({})).await,
        403,
        "M_FORBIDDEN",
        "a token for another user",
    );
}

/// `GET /rooms/{id}/initialSync`: the latest messages in order with tokens, the state, the
/// membership and the directory visibility; a user who left sees up to the leave; a stranger
/// to a private room is refused.
async fn room_initial_sync(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "name": "Old" }))
        .await;
    assert_ok(&alice.invite(&room, bob.user_id()).await, "invite");
    assert_ok(&bob.join(&room).await, "join");
    let first = alice.send_text(&room, "one").await;
    let second = alice.send_text(&room, "two").await;
    // Bob's own account data for the room comes along (a tag), not another room's.
    let tag = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/tags/u.work",
        encode(bob.user_id()),
        encode(&room)
    );
    assert_ok(&bob.put(&tag, &json!({ "order": 0.5 })).await, "tag");
    let other = bob.create_room(&json!({})).await;
    let other_data = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.other",
        encode(bob.user_id()),
        encode(&other)
    );
    assert_ok(
        &bob.put(&other_data, &json!({ "x": 1 })).await,
        "other room's data",
    );
    let path = Client::room_path(&room, "/initialSync");
    let response = bob.get(&path).await;
    let body = assert_ok(&response, "initialSync");
    assert_eq!(
        body["account_data"],
        json!([{ "type": "m.tag", "content": { "tags": { "u.work": { "order": 0.5 } } } }]),
        "{body}"
    );
    assert_eq!(body["room_id"], room.as_str(), "{body}");
    assert_eq!(body["membership"], "join", "{body}");
    assert_eq!(body["visibility"], "private", "{body}");
    let chunk = body["messages"]["chunk"].as_array().expect("chunk");
    let ids: Vec<&str> = chunk
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(
        &ids[ids.len() - 2..],
        [first.as_str(), second.as_str()],
        "{body}"
    );
    assert!(body["messages"]["start"].is_string() && body["messages"]["end"].is_string());
    let state = body["state"].as_array().expect("state");
    assert!(state
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Old"));

    // The `start` token pages further back with /messages.
    let start = body["messages"]["start"].as_str().unwrap();
    let older = bob
        .get(&Client::room_path(
            &room,
            &format!("/messages?dir=b&from={}", encode(start)),
        ))
        .await;
    assert_ok(&older, "messages from initialSync's start");

    // Bob leaves; what comes after is not his to see, nor is the later state.
    assert_ok(&bob.leave(&room).await, "leave");
    let later = alice.send_text(&room, "after bob left").await;
    assert_ok(
        &alice
            .put_state(&room, "m.room.name", "", &json!({ "name": "New" }))
            .await,
        "rename",
    );
    let response = bob.get(&path).await;
    let body = assert_ok(&response, "initialSync after leaving");
    assert_eq!(body["membership"], "leave", "{body}");
    let text = body.to_string();
    assert!(
        !text.contains(&later) && !text.contains("\"New\""),
        "{body}"
    );
    let ids: Vec<&str> = body["messages"]["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert!(ids.contains(&second.as_str()), "{body}");

    let carol = hs.register_user("carol").await;
    assert_error(&carol.get(&path).await, 403, "M_FORBIDDEN", "stranger");
}

backend_tests!(
    room_initial_sync,
    startup_endpoints_answer,
    turn_credentials_and_rtc_foci,
    mutual_rooms,
    timestamp_to_event,
    reports_are_stored_for_admins,
    openid_tokens,
);
