//! Security and privacy (issue 10): what a user may no longer see or do once their session,
//! membership or account ends, and what one room may not learn of another.
//!
//! Each test states the behaviour the spec (and Synapse) require; each failed on the server
//! before the fix it covers.

use std::time::Duration;

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode,
    ws::{next_text_frame as next_text, Socket},
    Backend, Client, ServerOptions, TestServer,
};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend, ServerOptions::default()).await
}

fn ws_base(hs: &TestServer) -> String {
    format!(
        "{}/_matrix/client/unstable/io.myelin/sync/ws",
        hs.url().replacen("http://", "ws://", 1)
    )
}

/// Opens `client`'s sync socket (token in the query) and reads the initial frame.
async fn open_socket(hs: &TestServer, client: &Client) -> Socket {
    let url = format!(
        "{}?access_token={}",
        ws_base(hs),
        encode(client.access_token.as_deref().expect("logged in"))
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    next_text(&mut socket, Duration::from_secs(10))
        .await
        .expect("initial frame");
    socket
}

/// Whether any timeline of `frame` holds a message with `body`.
fn has_message(frame: &Value, body: &str) -> bool {
    frame["rooms"]["join"]
        .as_object()
        .into_iter()
        .flat_map(|rooms| rooms.values())
        .flat_map(|room| room["timeline"]["events"].as_array().into_iter().flatten())
        .any(|e| e["content"]["body"] == body)
}

/// Reads frames until one carries a message with `body` (within 10 s).
async fn expect_message(socket: &mut Socket, body: &str, what: &str) {
    while let Some(frame) = next_text(socket, Duration::from_secs(10)).await {
        if has_message(&frame, body) {
            return;
        }
    }
    panic!("{what}: {body:?} never arrived");
}

/// Waits for the server to close `socket` (close frame 1008, or the end of the stream),
/// failing if a frame carrying `body` arrives first or nothing happens within 10 s.
async fn expect_closed(socket: &mut Socket, body: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, socket.next()).await {
            Err(_) => panic!("{what}: the socket stayed open"),
            Ok(None) | Ok(Some(Err(_))) => return,
            Ok(Some(Ok(Message::Close(frame)))) => {
                if let Some(frame) = frame {
                    assert_eq!(u16::from(frame.code), 1008, "{what}: close code");
                    assert_eq!(frame.reason.as_str(), "M_UNKNOWN_TOKEN", "{what}");
                }
                return;
            }
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
                assert!(
                    !has_message(&frame, body),
                    "{what}: the socket received {body:?} after its token was revoked"
                );
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A refreshable access token's socket is closed when the token expires, like its requests
/// (the client refreshes and opens a new one), even with nothing to send.
async fn expired_token_closes_the_websocket(backend: Backend) {
    let options =
        ServerOptions::default().env("MYELIN_REFRESHABLE_ACCESS_TOKEN_LIFETIME_SECONDS", "2");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    if hs.is_external() {
        return; // Myelin's own transport.
    }
    let alice = hs.register_user("alice").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let login = hs
        .client()
        .post(
            "/_matrix/client/v3/login",
            &json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": alice.localpart() },
                "password": alice.password.clone().unwrap(),
                "refresh_token": true,
            }),
        )
        .await;
    let token = assert_ok(&login, "refreshable login")["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let device = alice.with_token(&token);
    let started = std::time::Instant::now();
    let mut socket = open_socket(&hs, &device).await;
    alice.send_text(&room, "while valid").await;
    expect_message(&mut socket, "while valid", "before expiry").await;
    expect_closed(&mut socket, "never sent", "expiry").await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed before the token expired: {:?}",
        started.elapsed()
    );
}

/// A logged-out, deleted or deactivated device's open sync socket is closed at once, and
/// receives nothing more; another device's logout leaves the socket open.
async fn revoked_token_closes_the_websocket(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    if hs.is_external() {
        return; // Myelin's own transport.
    }
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");

    // Logout of this device.
    let mut socket = open_socket(&hs, &bob).await;
    let device = bob.new_device().await;
    let (status, body) = device.post("/_matrix/client/v3/logout", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    // Another device's logout leaves this socket open: it still gets news.
    alice.send_text(&room, "between").await;
    expect_message(&mut socket, "between", "after another device's logout").await;
    let (status, body) = bob.post("/_matrix/client/v3/logout", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    alice.send_text(&room, "after logout").await;
    expect_closed(&mut socket, "after logout", "logout").await;

    // The socket of a device that another device logs out stays open until it is deleted.
    let bob = bob.new_device().await;
    let mut socket = open_socket(&hs, &bob).await;
    let admin_device = bob.new_device().await;
    let path = format!("/_matrix/client/v3/devices/{}", encode(bob.device_id()));
    let (status, body) = admin_device
        .with_password_uia(Method::DELETE, &path, json!({}))
        .await;
    assert_eq!(status, 200, "delete device: {body}");
    alice.send_text(&room, "after delete").await;
    expect_closed(&mut socket, "after delete", "device deletion").await;

    // Logout of all devices.
    let bob = admin_device;
    let mut socket = open_socket(&hs, &bob).await;
    let (status, body) = bob.post("/_matrix/client/v3/logout/all", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    alice.send_text(&room, "after logout all").await;
    expect_closed(&mut socket, "after logout all", "logout/all").await;

    // A password change that logs out the other devices.
    let bob = bob.new_device().await;
    let mut socket = open_socket(&hs, &bob).await;
    let keeper = bob.new_device().await;
    let (status, body) = keeper
        .with_password_uia(
            Method::POST,
            "/_matrix/client/v3/account/password",
            json!({ "new_password": "a new password", "logout_devices": true }),
        )
        .await;
    assert_eq!(status, 200, "change password: {body}");
    alice.send_text(&room, "after password").await;
    expect_closed(&mut socket, "after password", "password change").await;

    // Deactivation.
    let mut socket = open_socket(&hs, &keeper).await;
    let carol = hs.register_user("carol").await;
    let (status, body) = carol
        .with_password_uia(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "carol deactivates: {body}");
    // Another user's deactivation leaves the socket alone: it still gets news.
    alice.send_text(&room, "still here").await;
    expect_message(
        &mut socket,
        "still here",
        "after another user's deactivation",
    )
    .await;
    let (status, body) = keeper
        .with_uia(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            json!({}),
            keeper.user_id(),
            "a new password",
        )
        .await;
    assert_eq!(status, 200, "deactivate: {body}");
    alice.send_text(&room, "after deactivation").await;
    expect_closed(&mut socket, "after deactivation", "deactivation").await;
}

/// The socket takes the `Authorization` header over an `access_token` in the query, as every
/// other endpoint does.
async fn websocket_prefers_the_authorization_header(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    if hs.is_external() {
        return;
    }
    let bob = hs.register_user("bob").await;
    let url = format!("{}?access_token=not-a-token", ws_base(&hs));
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", bob.access_token.as_deref().unwrap())
            .parse()
            .unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the header's valid token is used");
    assert!(next_text(&mut socket, Duration::from_secs(10))
        .await
        .is_some());
}

fn relations_path(room: &str, event: &str) -> String {
    format!(
        "/_matrix/client/v1/rooms/{}/relations/{}",
        encode(room),
        encode(event)
    )
}

/// Relations are only ever within one room: an event of another room that names a parent
/// (private text, or a reaction injected from elsewhere) is not among its relations.
async fn relations_stay_in_their_room(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let eve = hs.register_user("eve").await;
    let alice = hs.register_user("alice").await;
    let public = eve.create_room(&json!({ "preset": "public_chat" })).await;
    let parent = eve.send_text(&public, "parent").await;
    let private = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let content = json!({
        "msgtype": "m.text",
        "body": "private text",
        "m.relates_to": { "rel_type": "m.reference", "event_id": parent },
    });
    assert_ok(
        &alice
            .send_event(&private, "m.room.message", "t1", &content)
            .await,
        "alice relates from her room",
    );
    let reaction = json!({
        "m.relates_to": { "rel_type": "m.annotation", "event_id": parent, "key": "x" },
    });
    assert_ok(
        &alice
            .send_event(&private, "m.reaction", "t2", &reaction)
            .await,
        "alice reacts from her room",
    );
    // One relation inside the room, to show the endpoint works.
    assert_ok(&alice.join(&public).await, "alice joins");
    assert_ok(
        &alice
            .send_event(&public, "m.reaction", "t3", &reaction)
            .await,
        "alice reacts in the room",
    );

    let response = eve.get(&relations_path(&public, &parent)).await;
    let chunk = assert_ok(&response, "relations")["chunk"].clone();
    let chunk = chunk.as_array().expect("chunk");
    assert_eq!(chunk.len(), 1, "only the relation in the room: {chunk:?}");
    assert_eq!(chunk[0]["room_id"], public.as_str());
    // The parent is looked up in the named room only.
    assert_error(
        &alice.get(&relations_path(&private, &parent)).await,
        404,
        "M_NOT_FOUND",
        "relations of another room's event",
    );
}

/// `/context` for a user who left shows the state at the last event they may see, not the
/// room's later name, topic and members, and no event after their leave.
async fn context_after_leave_shows_the_state_at_the_leave(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "name": "before" }))
        .await;
    assert_ok(&bob.join(&room).await, "bob joins");
    let seen = alice.send_text(&room, "seen").await;
    assert_ok(&bob.leave(&room).await, "bob leaves");
    assert_ok(
        &alice
            .put_state(&room, "m.room.name", "", &json!({ "name": "after" }))
            .await,
        "rename",
    );
    assert_ok(
        &alice
            .put_state(
                &room,
                "m.room.topic",
                "",
                &json!({ "topic": "later topic" }),
            )
            .await,
        "topic",
    );
    assert_ok(&carol.join(&room).await, "carol joins");
    alice.send_text(&room, "unseen").await;

    let path = Client::room_path(&room, &format!("/context/{}?limit=20", encode(&seen)));
    let response = bob.get(&path).await;
    let body = assert_ok(&response, "context");
    let after: Vec<&Value> = body["events_after"].as_array().unwrap().iter().collect();
    assert!(
        after.iter().all(|e| e["content"]["body"] != "unseen"
            && e["type"] != "m.room.name"
            && e["type"] != "m.room.topic"),
        "events after the leave: {after:?}"
    );
    let state = body["state"].as_array().expect("state");
    let name = state
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .expect("the name in the state");
    assert_eq!(name["content"]["name"], "before", "{state:?}");
    assert!(
        state.iter().all(|e| e["type"] != "m.room.topic"),
        "a topic set after the leave: {state:?}"
    );
    assert!(
        state.iter().all(|e| e["state_key"] != carol.user_id()),
        "a member who joined after the leave: {state:?}"
    );
}

/// `PUT /send/m.room.redaction` is a redaction like `/redact`: the same power check, and
/// the server redacts its copy of the event.
async fn redaction_through_send_is_checked_and_applied(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    let alices = alice.send_text(&room, "alice's words").await;
    let bobs = bob.send_text(&room, "bob's words").await;

    assert_error(
        &bob.send_event(
            &room,
            "m.room.redaction",
            "r1",
            &json!({ "redacts": alices }),
        )
        .await,
        403,
        "M_FORBIDDEN",
        "bob redacts alice's event through /send",
    );
    let (_, event) = alice.get_event(&room, &alices).await;
    assert_eq!(event["content"]["body"], "alice's words", "{event}");

    // Own events, and others' with the power to.
    for (who, target) in [(&bob, &bobs), (&alice, &alices)] {
        let response = who
            .send_event(
                &room,
                "m.room.redaction",
                "r2",
                &json!({ "redacts": target, "reason": "oops" }),
            )
            .await;
        let redaction = assert_ok(&response, "redaction through /send")["event_id"].clone();
        let (status, event) = alice.get_event(&room, target).await;
        assert_eq!(status, 200, "{event}");
        assert_eq!(
            event["content"],
            json!({}),
            "the server redacted its copy: {event}"
        );
        assert_eq!(
            event["unsigned"]["redacted_because"]["event_id"], redaction,
            "{event}"
        );
    }
    // A redaction without a target is refused.
    assert_error(
        &alice
            .send_event(&room, "m.room.redaction", "r3", &json!({}))
            .await,
        400,
        "M_BAD_JSON",
        "redaction without redacts",
    );
}

/// The state events of a room's timeline in an initial sync with a long timeline.
async fn synced_events(client: &Client, room: &str) -> Vec<Value> {
    let filter = json!({ "room": { "timeline": { "limit": 50 } } }).to_string();
    let (status, body) = client.sync_with(None, 0, &[("filter", &filter)]).await;
    assert_eq!(status, 200, "{body}");
    let room = &body["rooms"]["join"][room];
    room["timeline"]["events"]
        .as_array()
        .into_iter()
        .chain(room["state"]["events"].as_array())
        .flatten()
        .cloned()
        .collect()
}

/// A redacted state event's content does not survive in the `prev_content` of the state
/// event that replaced it (in `/sync`, also after the event was formatted before, and in
/// `/messages`).
async fn redacted_content_leaves_prev_content(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    let (_, secret) = alice
        .put_state(
            &room,
            "m.room.topic",
            "",
            &json!({ "topic": "secret topic" }),
        )
        .await;
    let secret = secret["event_id"].as_str().unwrap().to_owned();
    alice
        .put_state(
            &room,
            "m.room.topic",
            "",
            &json!({ "topic": "public topic" }),
        )
        .await;
    // Both see the replacing event with what it replaced (formatted once, shared).
    for client in [&alice, &bob] {
        let events = synced_events(client, &room).await;
        let topic = events
            .iter()
            .find(|e| e["content"]["topic"] == "public topic")
            .expect("the new topic");
        assert_eq!(topic["unsigned"]["prev_content"]["topic"], "secret topic");
    }
    let path = Client::room_path(&room, &format!("/redact/{}/t1", encode(&secret)));
    assert_ok(&alice.put(&path, &json!({})).await, "redact the old topic");

    for client in [&alice, &bob] {
        let events = synced_events(client, &room).await;
        let topic = events
            .iter()
            .find(|e| e["content"]["topic"] == "public topic")
            .expect("the new topic");
        assert!(
            !topic.to_string().contains("secret topic"),
            "redacted content in sync: {topic}"
        );
        let (status, page) = client
            .get(&Client::room_path(&room, "/messages?dir=b&limit=50"))
            .await;
        assert_eq!(status, 200, "{page}");
        assert!(
            !page.to_string().contains("secret topic"),
            "redacted content in /messages: {page}"
        );
    }
}

fn state_path(room: &str, suffix: &str) -> String {
    Client::room_path(room, suffix)
}

/// Only members, former members (up to their leave) and, in a world-readable room, anyone
/// read `/members` and `/state`: a user banned (or invited) without ever having joined reads
/// nothing of a private room.
async fn state_and_members_need_to_have_been_joined(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let dave = hs.register_user("dave").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "name": "secret name" }))
        .await;
    assert_ok(
        &alice.membership_action(&room, "ban", bob.user_id()).await,
        "alice bans bob",
    );
    assert_ok(&alice.invite(&room, dave.user_id()).await, "invite dave");
    for (who, user) in [("banned", &bob), ("invited", &dave)] {
        for suffix in ["/members", "/state", "/state/m.room.name/"] {
            assert_error(
                &user.get(&state_path(&room, suffix)).await,
                403,
                "M_FORBIDDEN",
                &format!("{who} user never joined reads {suffix}"),
            );
        }
    }

    // A former member reads the state as of their leave.
    assert_ok(&alice.invite(&room, carol.user_id()).await, "invite carol");
    assert_ok(&carol.join(&room).await, "carol joins");
    assert_ok(&carol.leave(&room).await, "carol leaves");
    alice
        .put_state(&room, "m.room.name", "", &json!({ "name": "renamed" }))
        .await;
    let (status, name) = carol.get(&state_path(&room, "/state/m.room.name/")).await;
    assert_eq!(status, 200, "{name}");
    assert_eq!(name["name"], "secret name");
    let response = carol.get(&state_path(&room, "/members")).await;
    assert_ok(&response, "a former member reads /members");

    // A world-readable room's members and state are readable by anyone.
    let open = alice
        .create_room(&json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "content": { "history_visibility": "world_readable" },
            }],
        }))
        .await;
    let response = dave.get(&state_path(&open, "/members")).await;
    let chunk = assert_ok(
        &response,
        "a stranger reads a world-readable room's /members",
    )["chunk"]
        .clone();
    assert!(
        chunk
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["state_key"] == alice.user_id()),
        "{chunk}"
    );
    assert_ok(
        &dave.get(&state_path(&open, "/state")).await,
        "a stranger reads a world-readable room's /state",
    );
}

/// A banned user who never joined sees nothing of the room's state in the `leave` section
/// of `/sync` either (the same leak through another door).
async fn sync_of_a_ban_without_join_shows_no_state(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "name": "secret name" }))
        .await;
    alice
        .put_state(
            &room,
            "m.room.topic",
            "",
            &json!({ "topic": "secret topic" }),
        )
        .await;
    assert_ok(
        &alice.membership_action(&room, "ban", bob.user_id()).await,
        "alice bans bob",
    );
    let filter = json!({ "room": { "include_leave": true } }).to_string();
    let (status, body) = bob.sync_with(None, 0, &[("filter", &filter)]).await;
    assert_eq!(status, 200, "{body}");
    let left = &body["rooms"]["leave"][&room];
    assert!(
        !left.to_string().contains("secret"),
        "the room's state reached a user who never joined: {left}"
    );
}

/// Deactivation leaves every joined room and rejects every pending invite and knock, with
/// events other members see.
async fn deactivation_leaves_every_room(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let joined = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&joined).await, "bob joins");
    let invited = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    assert_ok(&alice.invite(&invited, bob.user_id()).await, "invite bob");
    let knocked = alice
        .create_room(&json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.join_rules",
                "content": { "join_rule": "knock" },
            }],
        }))
        .await;
    let knock = format!("/_matrix/client/v3/knock/{}", encode(&knocked));
    assert_ok(&bob.post(&knock, &json!({})).await, "bob knocks");

    let (status, body) = bob
        .with_password_uia(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "deactivate: {body}");

    for room in [&joined, &invited, &knocked] {
        let (status, member) = alice.get_state(room, "m.room.member", bob.user_id()).await;
        assert_eq!(status, 200, "{member}");
        assert_eq!(member["membership"], "leave", "bob's membership in {room}");
    }
    let (_, members) = alice
        .get(&Client::room_path(&joined, "/joined_members"))
        .await;
    assert!(members["joined"].get(bob.user_id()).is_none(), "{members}");
}

backend_tests!(
    revoked_token_closes_the_websocket,
    expired_token_closes_the_websocket,
    websocket_prefers_the_authorization_header,
    relations_stay_in_their_room,
    context_after_leave_shows_the_state_at_the_leave,
    redaction_through_send_is_checked_and_applied,
    redacted_content_leaves_prev_content,
    state_and_members_need_to_have_been_joined,
    sync_of_a_ban_without_join_shows_no_state,
    deactivation_leaves_every_room,
);
