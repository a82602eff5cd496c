//! End-to-end encryption across servers (scenarios 60 and 61), between two Myelins: to-device
//! messages, device-list changes, and keys queried and claimed at the user's own server.
//! Keys are real ed25519 keys signed as a client does (helpers from `e2ee`).

use std::time::Duration;

use complement_tests::{assert_ok, backend_tests, Backend, Client, ServerOptions, TestServer};
use serde_json::{json, Value};

use crate::e2ee::{
    claim, device_keys, initial_token, listed, new_key, one_time_key, query, send_to_device,
    set_up_cross_signing, to_device_events, WAIT,
};

/// Two federating servers with alice on the first and bob on the second, in a room of
/// alice's that bob joined.
async fn pair(backend: Backend) -> Option<(TestServer, TestServer, Client, Client, String)> {
    let hs1 = TestServer::start(backend, ServerOptions::default().federating()).await?;
    let hs2 = TestServer::start(backend, ServerOptions::default().federating()).await?;
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;
    let alias = complement_tests::unique_name("e2ee");
    let room_id = alice
        .create_room(&json!({ "preset": "public_chat", "room_alias_name": alias }))
        .await;
    let (status, body) = bob.join(&format!("#{alias}:{}", hs1.server_name())).await;
    assert_eq!(status, 200, "{body}");
    Some((hs1, hs2, alice, bob, room_id))
}

/// Follows `client`'s sync from `since` until `done` holds for the to-device messages seen
/// so far (each response's, in order); returns them and the token after them.
async fn to_device_until(
    client: &Client,
    since: &str,
    wait: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, String) {
    let deadline = std::time::Instant::now() + wait;
    let mut since = since.to_owned();
    let mut seen = Vec::new();
    loop {
        let (status, body) = client.sync(Some(&since), 500).await;
        assert_eq!(status, 200, "{body}");
        seen.extend(to_device_events(&body));
        since = body["next_batch"].as_str().expect("next_batch").to_owned();
        if done(&seen) {
            return (seen, since);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} saw only {seen:?}",
            client.user_id()
        );
    }
}

fn numbers(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| e["content"]["n"].as_i64())
        .collect()
}

/// 60. To-device messages from hs1 reach bob's devices on hs2 once each: to one device and
///     to all (`*`); a retried transaction sends nothing again; and a message sent while hs2
///     is down, with hs1 restarted before hs2 is back, arrives once hs2 is up.
async fn a60_to_device_across_servers(backend: Backend) {
    let Some((mut hs1, mut hs2, alice, bob, room_id)) = pair(backend).await else {
        return;
    };
    let phone = bob.new_device().await;
    let bob_since = initial_token(&bob).await;
    let phone_since = initial_token(&phone).await;

    let to_laptop = json!({ bob.user_id(): { bob.device_id(): { "n": 1 } } });
    assert_ok(&send_to_device(&alice, "t1", &to_laptop).await, "send");
    assert_ok(&send_to_device(&alice, "t1", &to_laptop).await, "retry");
    let to_all = json!({ bob.user_id(): { "*": { "n": 2 } } });
    assert_ok(&send_to_device(&alice, "t2", &to_all).await, "send to all");
    let (seen, bob_since) =
        to_device_until(&bob, &bob_since, WAIT, |seen| numbers(seen).contains(&2)).await;
    assert_eq!(numbers(&seen), [1, 2], "{seen:?}");
    assert!(
        seen.iter()
            .all(|e| e["sender"] == alice.user_id() && e["type"] == "m.test.message"),
        "{seen:?}"
    );
    let (seen, _) = to_device_until(&phone, &phone_since, WAIT, |seen| {
        numbers(seen).contains(&2)
    })
    .await;
    assert_eq!(
        numbers(&seen),
        [2],
        "the phone gets only what was for all: {seen:?}"
    );

    hs2.stop().await;
    let to_laptop = json!({ bob.user_id(): { bob.device_id(): { "n": 3 } } });
    assert_ok(
        &send_to_device(&alice, "t3", &to_laptop).await,
        "send while down",
    );
    // Let hs1 fail at least once, then restart it with the message unsent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    hs1.restart().await;
    hs2.restart().await;
    // hs2 talking to hs1 ends hs1's back-off.
    bob.send_text(&room_id, "back").await;
    let (seen, bob_since) =
        to_device_until(&bob, &bob_since, WAIT, |seen| numbers(seen).contains(&3)).await;
    assert_eq!(numbers(&seen), [3], "{seen:?}");
    // And nothing comes twice afterwards.
    let (status, body) = bob.sync(Some(&bob_since), 1500).await;
    assert_eq!(status, 200);
    assert!(to_device_events(&body).is_empty(), "{body}");
}

fn device_listed(answer: &Value, user: &str, device: &str) -> bool {
    answer["device_keys"][user][device].is_object()
}

/// 61. When alice (hs1) adds a device, bob (hs2) sees her in `device_lists.changed`;
///     bob's `/keys/query` then returns the new device and her cross-signing keys, and his
///     `/keys/claim` hands out its one-time key once. When the device is deleted, bob hears
///     of it and the device is gone from his query (no stale cached list). A user of a server
///     that does not answer is named in `failures`.
async fn a61_device_lists_and_keys_across_servers(backend: Backend) {
    let Some((_hs1, _hs2, alice, bob, _room_id)) = pair(backend).await else {
        return;
    };
    let key = new_key();
    assert_ok(
        &alice
            .post(
                "/_matrix/client/v3/keys/upload",
                &json!({ "device_keys": device_keys(&alice, &key) }),
            )
            .await,
        "alice's keys",
    );
    // The first query fills hs2's cache with alice's one device.
    let answer = query(&bob, &[alice.user_id()]).await;
    assert!(
        device_listed(&answer, alice.user_id(), alice.device_id()),
        "{answer}"
    );
    assert!(
        answer["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{answer}"
    );
    let since = initial_token(&bob).await;

    let phone = alice.new_device().await;
    let phone_key = new_key();
    let body = json!({
        "device_keys": device_keys(&phone, &phone_key),
        "one_time_keys": { "signed_curve25519:AAAAAQ": one_time_key(&phone, &phone_key, false) },
    });
    assert_ok(
        &phone.post("/_matrix/client/v3/keys/upload", &body).await,
        "phone keys",
    );
    let _cross_signing = set_up_cross_signing(&alice).await;
    let response = bob
        .sync_until(Some(&since), WAIT, |r| {
            listed(r, "changed", alice.user_id())
        })
        .await;
    let since = response["next_batch"].as_str().unwrap().to_owned();
    // The change may have been told before the keys were: ask until both show.
    let mut answer = Value::Null;
    for _ in 0..100 {
        answer = query(&bob, &[alice.user_id()]).await;
        if device_listed(&answer, alice.user_id(), phone.device_id())
            && answer["master_keys"][alice.user_id()].is_object()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        device_listed(&answer, alice.user_id(), phone.device_id())
            && device_listed(&answer, alice.user_id(), alice.device_id()),
        "both of alice's devices: {answer}"
    );
    assert!(
        answer["master_keys"][alice.user_id()].is_object()
            && answer["self_signing_keys"][alice.user_id()].is_object(),
        "{answer}"
    );
    assert!(
        answer["user_signing_keys"][alice.user_id()].is_null(),
        "the user-signing key stays with its owner: {answer}"
    );
    assert!(
        answer["device_keys"][alice.user_id()][phone.device_id()]["unsigned"]
            ["device_display_name"]
            .is_null(),
        "device names stay on their server: {answer}"
    );

    let claimed = claim(&bob, alice.user_id(), phone.device_id()).await;
    assert!(
        claimed["signed_curve25519:AAAAAQ"].is_object(),
        "the phone's one-time key: {claimed}"
    );
    let claimed = claim(&bob, alice.user_id(), phone.device_id()).await;
    assert!(claimed.is_null(), "handed out once: {claimed}");

    assert_ok(
        &phone.post("/_matrix/client/v3/logout", &json!({})).await,
        "phone logs out",
    );
    bob.sync_until(Some(&since), WAIT, |r| {
        listed(r, "changed", alice.user_id())
    })
    .await;
    let mut answer = Value::Null;
    for _ in 0..100 {
        answer = query(&bob, &[alice.user_id()]).await;
        if !device_listed(&answer, alice.user_id(), phone.device_id()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !device_listed(&answer, alice.user_id(), phone.device_id())
            && device_listed(&answer, alice.user_id(), alice.device_id()),
        "the deleted device is gone: {answer}"
    );

    // Nothing listens on port 9 of loopback.
    let started = std::time::Instant::now();
    let answer = assert_ok(
        &bob.post(
            "/_matrix/client/v3/keys/query",
            &json!({ "device_keys": { "@nobody:127.0.0.1:9": [] }, "timeout": 3000 }),
        )
        .await,
        "query of an unreachable server",
    )
    .clone();
    assert!(answer["failures"]["127.0.0.1:9"].is_object(), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(8), "{answer}");
}

backend_tests!(
    a60_to_device_across_servers,
    a61_device_lists_and_keys_across_servers
);
