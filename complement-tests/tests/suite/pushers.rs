//! Issue 11, pushers and delivery: `GET /pushers` and `POST /pushers/set` with the spec's
//! errors, and notifications delivered to a (fake) push gateway in the Push Gateway API's
//! format: once each, in order, through a failing gateway and a restart, with badge updates
//! after a read receipt, a rejected pushkey deleting its pusher, and a pusher going with the
//! device that set it.

use std::time::Duration;

use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, encode, unique_name, Backend, Client,
    FakeGateway, ServerOptions, TestServer,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

/// A server whose pushers may reach the loopback gateway.
async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(
        backend,
        ServerOptions::default().env("MYELIN_PUSH_IP_RANGE_ALLOWLIST", "127.0.0.0/8"),
    )
    .await
}

fn pusher_body(url: &str, pushkey: &str) -> Value {
    json!({
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": pushkey,
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "data": { "url": url, "extra": "kept" },
    })
}

async fn set_pusher(client: &Client, body: &Value) {
    assert_ok_object(
        &client.post("/_matrix/client/v3/pushers/set", body).await,
        "pushers/set",
    );
}

async fn pushers(client: &Client) -> Vec<Value> {
    let response = client.get("/_matrix/client/v3/pushers").await;
    assert_ok(&response, "GET /pushers")["pushers"]
        .as_array()
        .expect("a pushers array")
        .clone()
}

/// A room of `alice` that `bob` joined, with a name.
async fn room_with(alice: &Client, bob: &Client) -> String {
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Lunch plans" }))
        .await;
    assert_ok(&bob.join(&room).await, "join");
    room
}

/// The event IDs of the notifications that carry one (badge updates do not).
fn event_ids(notifications: &[Value]) -> Vec<String> {
    notifications
        .iter()
        .filter_map(|n| n["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits a moment and checks that nothing more arrived.
async fn nothing_more(gateway: &FakeGateway, expected: usize) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = gateway.received();
    assert_eq!(
        received.len(),
        expected,
        "unexpected notifications: {received:#?}"
    );
}

/// CRUD with the spec's errors: a bad URL, email and unknown kinds, oversized keys, missing
/// fields; update in place; `append: false` taking a pushkey from another user; delete with
/// `kind: null`.
async fn pushers_set_get_and_delete(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    assert!(pushers(&alice).await.is_empty());

    let set = "/_matrix/client/v3/pushers/set";
    let url = "https://push.example.org/_matrix/push/v1/notify";
    let mut bad_url = pusher_body("https://push.example.org/notify", "k1");
    assert_error(
        &alice.post(set, &bad_url).await,
        400,
        "M_INVALID_PARAM",
        "pushers/set",
    );
    bad_url["data"]["url"] = json!("not a url");
    assert_error(
        &alice.post(set, &bad_url).await,
        400,
        "M_INVALID_PARAM",
        "pushers/set",
    );
    let mut email = pusher_body(url, "alice@example.org");
    email["kind"] = json!("email");
    assert_eq!(
        alice.post(set, &email).await.0,
        400,
        "email pushers are refused"
    );
    let mut custom = pusher_body(url, "k1");
    custom["kind"] = json!("carrier-pigeon");
    assert_eq!(alice.post(set, &custom).await.0, 400);
    let long_key = pusher_body(url, &"k".repeat(513));
    assert_error(
        &alice.post(set, &long_key).await,
        400,
        "M_INVALID_PARAM",
        "pushers/set",
    );
    let mut long_app = pusher_body(url, "k1");
    long_app["app_id"] = json!("a".repeat(65));
    assert_error(
        &alice.post(set, &long_app).await,
        400,
        "M_INVALID_PARAM",
        "pushers/set",
    );
    let mut no_name = pusher_body(url, "k1");
    no_name.as_object_mut().unwrap().remove("app_display_name");
    assert_eq!(alice.post(set, &no_name).await.0, 400);
    let mut no_url = pusher_body(url, "k1");
    no_url["data"] = json!({});
    assert_eq!(alice.post(set, &no_url).await.0, 400);
    let mut bad_format = pusher_body(url, "k1");
    bad_format["data"]["format"] = json!("full_event");
    assert_error(
        &alice.post(set, &bad_format).await,
        400,
        "M_INVALID_PARAM",
        "pushers/set",
    );
    assert!(pushers(&alice).await.is_empty(), "nothing bad was stored");

    // http:// is accepted, as Synapse does.
    set_pusher(
        &alice,
        &pusher_body("http://push.example.org/_matrix/push/v1/notify", "k1"),
    )
    .await;
    let list = pushers(&alice).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["pushkey"], "k1");
    assert_eq!(list[0]["kind"], "http");
    assert_eq!(list[0]["app_display_name"], "Example");
    assert_eq!(
        list[0]["data"]["url"],
        "http://push.example.org/_matrix/push/v1/notify"
    );
    assert_eq!(list[0]["data"]["extra"], "kept");

    // The same app and pushkey updates the pusher.
    let mut renamed = pusher_body(url, "k1");
    renamed["device_display_name"] = json!("New phone");
    set_pusher(&alice, &renamed).await;
    let list = pushers(&alice).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["device_display_name"], "New phone");
    assert_eq!(list[0]["data"]["url"], url);

    // Another pushkey is another pusher.
    set_pusher(&alice, &pusher_body(url, "k2")).await;
    assert_eq!(pushers(&alice).await.len(), 2);

    // Bob registers k2 with `append: true`: Alice keeps hers.
    let mut appended = pusher_body(url, "k2");
    appended["append"] = json!(true);
    set_pusher(&bob, &appended).await;
    assert_eq!(pushers(&alice).await.len(), 2);
    // Bob registers k1 without `append`: the device changed hands, Alice's k1 goes.
    set_pusher(&bob, &pusher_body(url, "k1")).await;
    let list = pushers(&alice).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["pushkey"], "k2");
    assert_eq!(pushers(&bob).await.len(), 2);

    // Deletion with kind null; deleting an unknown pusher is not an error.
    let delete = json!({ "kind": null, "app_id": "org.example.app", "pushkey": "k2" });
    set_pusher(&alice, &delete).await;
    assert!(pushers(&alice).await.is_empty());
    set_pusher(&alice, &delete).await;
    assert_eq!(pushers(&bob).await.len(), 2, "bob's pushers are his own");
}

/// A message notifies the pusher's gateway in the spec's format; one's own message does not;
/// `event_id_only` leaves the content out; a mention is high priority with tweaks.
async fn pushers_deliver_notifications(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let gateway = FakeGateway::start().await;
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    assert_ok(
        &alice
            .put(
                &format!(
                    "/_matrix/client/v3/profile/{}/displayname",
                    encode(alice.user_id())
                ),
                &json!({ "displayname": "Alice A." }),
            )
            .await,
        "displayname",
    );
    let room = room_with(&alice, &bob).await;
    set_pusher(&bob, &pusher_body(&gateway.url(), "bob-key")).await;

    let first = alice.send_text(&room, "hello bob").await;
    let received = gateway.wait_for(1, WAIT).await;
    let n = &received[0];
    assert_eq!(n["event_id"], first.as_str());
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.user_id());
    assert_eq!(n["sender_display_name"], "Alice A.");
    assert_eq!(n["room_name"], "Lunch plans");
    assert_eq!(n["content"]["body"], "hello bob");
    assert_eq!(n["counts"]["unread"], 1);
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "org.example.app");
    assert_eq!(device["pushkey"], "bob-key");
    assert!(device["pushkey_ts"].as_i64().unwrap() > 1_600_000_000);
    assert!(
        device["pushkey_ts"].as_i64().unwrap() < 100_000_000_000,
        "in seconds"
    );
    assert_eq!(
        device["data"],
        json!({ "extra": "kept" }),
        "the url is not sent"
    );
    assert!(device["tweaks"].is_object());

    // Bob's own message does not notify him.
    bob.send_text(&room, "my own").await;
    // A mention highlights: high priority with the highlight tweak.
    let mention = alice
        .send_event(
            &room,
            "m.room.message",
            &unique_name("txn"),
            &json!({ "msgtype": "m.text", "body": "bob!", "m.mentions": { "user_ids": [bob.user_id()] } }),
        )
        .await;
    let mention = assert_ok(&mention, "send")["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let received = gateway.wait_for(2, WAIT).await;
    assert_eq!(event_ids(&received), vec![first.clone(), mention.clone()]);
    assert_eq!(received[1]["prio"], "high");
    assert_eq!(received[1]["devices"][0]["tweaks"]["highlight"], true);
    assert_eq!(received[1]["counts"]["unread"], 1, "one room is unread");

    // event_id_only: no content, no sender.
    let mut minimal = pusher_body(&gateway.url(), "bob-key-2");
    minimal["data"]["format"] = json!("event_id_only");
    set_pusher(&bob, &minimal).await;
    let third = alice.send_text(&room, "secret text").await;
    let n = gateway
        .wait_until(WAIT, |n| {
            n["event_id"] == third.as_str() && n["devices"][0]["pushkey"] == "bob-key-2"
        })
        .await;
    assert!(
        n.get("content").is_none() && n.get("sender").is_none(),
        "{n}"
    );
    assert_eq!(n["room_id"], room.as_str());
    gateway
        .wait_until(WAIT, |n| {
            n["event_id"] == third.as_str() && n["devices"][0]["pushkey"] == "bob-key"
        })
        .await;
    nothing_more(&gateway, 4).await;
}

/// The gateway fails twice, then recovers: the notification arrives exactly once, after the
/// retries.
async fn pushers_retry_a_failing_gateway(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let gateway = FakeGateway::start().await;
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = room_with(&alice, &bob).await;
    set_pusher(&bob, &pusher_body(&gateway.url(), "bob-key")).await;
    gateway.fail_next(2);
    let event = alice.send_text(&room, "through the outage").await;
    let received = gateway.wait_for(1, WAIT).await;
    assert_eq!(event_ids(&received), vec![event]);
    assert_eq!(gateway.attempts(), 3, "two failures, then the accepted one");
    nothing_more(&gateway, 1).await;
}

/// A pushkey the gateway rejects deletes its pusher.
async fn pushers_rejected_pushkey_is_deleted(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let gateway = FakeGateway::start().await;
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = room_with(&alice, &bob).await;
    set_pusher(&bob, &pusher_body(&gateway.url(), "stale-key")).await;
    gateway.reject("stale-key");
    alice.send_text(&room, "one").await;
    gateway.wait_for(1, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !pushers(&bob).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pusher was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.send_text(&room, "two").await;
    nothing_more(&gateway, 1).await;
}

/// A pusher belongs to the device that set it: logging that device out removes it, and a
/// password change that logs the other devices out removes theirs.
async fn pushers_go_with_their_device(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let gateway = FakeGateway::start().await;
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = room_with(&alice, &bob).await;
    let phone = bob.new_device().await;
    set_pusher(&phone, &pusher_body(&gateway.url(), "phone-key")).await;
    set_pusher(&bob, &pusher_body(&gateway.url(), "laptop-key")).await;
    assert_eq!(pushers(&bob).await.len(), 2);
    assert_ok(
        &phone.post("/_matrix/client/v3/logout", &json!({})).await,
        "logout",
    );
    let list = pushers(&bob).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["pushkey"], "laptop-key");
    alice.send_text(&room, "after logout").await;
    let received = gateway.wait_for(1, WAIT).await;
    assert_eq!(received[0]["devices"][0]["pushkey"], "laptop-key");
    nothing_more(&gateway, 1).await;

    // A password change from a third device logs the laptop out, and its pusher goes.
    let tablet = bob.new_device().await;
    assert_ok(
        &tablet
            .with_password_uia(
                http_post(),
                "/_matrix/client/v3/account/password",
                json!({ "new_password": "another-password-1", "logout_devices": true }),
            )
            .await,
        "password change",
    );
    assert!(pushers(&tablet).await.is_empty());
    alice.send_text(&room, "after the password change").await;
    nothing_more(&gateway, 1).await;
}

fn http_post() -> reqwest::Method {
    reqwest::Method::POST
}

/// Reading the room on one device sends the other devices a badge update: the new count, low
/// priority, no event.
async fn pushers_send_badge_updates_on_read(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let gateway = FakeGateway::start().await;
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = room_with(&alice, &bob).await;
    set_pusher(&bob, &pusher_body(&gateway.url(), "bob-key")).await;
    let event = alice.send_text(&room, "read me").await;
    let received = gateway.wait_for(1, WAIT).await;
    assert_eq!(received[0]["counts"]["unread"], 1);
    let path = Client::room_path(&room, &format!("/receipt/m.read/{}", encode(&event)));
    assert_ok_object(&bob.post(&path, &json!({})).await, "receipt");
    let badge = gateway
        .wait_until(WAIT, |n| n.get("event_id").is_none())
        .await;
    assert_eq!(badge["counts"]["unread"], 0);
    assert_eq!(badge["prio"], "low");
    assert_eq!(badge["devices"][0]["pushkey"], "bob-key");
    // The same receipt again changes nothing: no second badge update.
    assert_ok_object(&bob.post(&path, &json!({})).await, "receipt");
    nothing_more(&gateway, 2).await;
    // The next message is pushed with the new count.
    let messages = alice.send_text(&room, "new one").await;
    let received = gateway.wait_for(3, WAIT).await;
    assert_eq!(received[2]["event_id"], messages.as_str());
    assert_eq!(received[2]["counts"]["unread"], 1);
}

/// With the gateway down, messages pile up; the server restarts in the middle; when the
/// gateway comes back every notification arrives once, in order. Those the gateway took
/// before the restart are not sent again.
async fn pushers_resume_after_restart(backend: Backend) {
    let Some(mut hs) = start(backend).await else {
        return;
    };
    let gateway = FakeGateway::start().await;
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = room_with(&alice, &bob).await;
    set_pusher(&bob, &pusher_body(&gateway.url(), "bob-key")).await;
    let mut sent = Vec::new();
    for i in 0..2 {
        sent.push(alice.send_text(&room, &format!("before {i}")).await);
    }
    gateway.wait_for(2, WAIT).await;
    gateway.set_down(true);
    for i in 0..5 {
        sent.push(alice.send_text(&room, &format!("backlog {i}")).await);
    }
    // Let the worker fail on the backlog at least once.
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway.attempts() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no retry happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hs.restart().await;
    gateway.set_down(false);
    let received = gateway.wait_for(sent.len(), Duration::from_secs(30)).await;
    assert_eq!(event_ids(&received), sent, "each once, in order");
    nothing_more(&gateway, sent.len()).await;
}

/// Without `push.ip_range_allowlist` a pusher's loopback URL is never requested.
async fn pushers_refuse_private_addresses_by_default(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let gateway = FakeGateway::start().await;
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = room_with(&alice, &bob).await;
    // Setting it is fine (as on Synapse); sending to it is refused.
    set_pusher(&bob, &pusher_body(&gateway.url(), "bob-key")).await;
    alice.send_text(&room, "not to loopback").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        gateway.attempts(),
        0,
        "the gateway on loopback was contacted"
    );
}

backend_tests!(
    pushers_set_get_and_delete,
    pushers_deliver_notifications,
    pushers_retry_a_failing_gateway,
    pushers_rejected_pushkey_is_deleted,
    pushers_go_with_their_device,
    pushers_send_badge_updates_on_read,
    pushers_resume_after_restart,
    pushers_refuse_private_addresses_by_default,
);
