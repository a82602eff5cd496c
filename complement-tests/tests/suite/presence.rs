//! Presence: scenario 39, and that strangers see nothing.

use std::time::Duration;

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, Backend, ServerOptions, TestServer,
};
use serde_json::{json, Value};

fn presence_of<'a>(sync: &'a Value, user: &str) -> Option<&'a Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["type"] == "m.presence" && e["sender"] == user)
        .map(|e| &e["content"])
}

/// 39. Setting presence is reflected by GET presence and in co-members' /sync.
async fn a39_presence_get_and_sync(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;

    let (_, first) = bob.sync_with(None, 0, &[]).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();

    let path = format!(
        "/_matrix/client/v3/presence/{}/status",
        encode(alice.user_id())
    );
    let set = alice
        .put(
            &path,
            &json!({ "presence": "unavailable", "status_msg": "in a meeting" }),
        )
        .await;
    assert_ok(&set, "PUT presence");
    let got = bob.get(&path).await;
    let content = assert_ok(&got, "GET presence as a co-member");
    assert_eq!(content["presence"], "unavailable");
    assert_eq!(content["status_msg"], "in a meeting");

    // Bob's sync shows it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, sync) = bob.sync_with(Some(&since), 2000, &[]).await;
        assert_eq!(status, 200, "{sync}");
        if let Some(p) = presence_of(&sync, alice.user_id()) {
            if p["presence"] == "unavailable" {
                assert_eq!(p["status_msg"], "in a meeting");
                break;
            }
        }
        since = sync["next_batch"].as_str().unwrap().to_owned();
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never saw alice's presence"
        );
    }

    // Carol shares no room: GET is refused and her sync never mentions alice.
    assert_error(
        &carol.get(&path).await,
        403,
        "M_FORBIDDEN",
        "a stranger's GET presence",
    );
    let (_, carol_sync) = carol.sync_with(None, 0, &[]).await;
    assert!(
        presence_of(&carol_sync, alice.user_id()).is_none(),
        "{carol_sync}"
    );

    // Nobody sets another user's presence; unknown users are 404.
    let bob_path = format!(
        "/_matrix/client/v3/presence/{}/status",
        encode(bob.user_id())
    );
    assert_error(
        &alice.put(&bob_path, &json!({ "presence": "online" })).await,
        403,
        "M_FORBIDDEN",
        "set another's presence",
    );
    let nobody = format!(
        "/_matrix/client/v3/presence/{}/status",
        encode(&hs.user_id("nobody-here"))
    );
    assert_error(
        &alice.get(&nobody).await,
        404,
        "M_NOT_FOUND",
        "presence of an unknown user",
    );
}

async fn presence_content(client: &complement_tests::Client, user: &str) -> Value {
    let got = client
        .get(&format!(
            "/_matrix/client/v3/presence/{}/status",
            encode(user)
        ))
        .await;
    assert_ok(&got, "GET presence").clone()
}

/// Polls `user`'s presence as `client` sees it until it is `want` (or fails after 10 s).
async fn wait_for_presence(client: &complement_tests::Client, user: &str, want: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let content = presence_content(client, user).await;
        if content["presence"] == want {
            return content;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never became {want}: {content}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Syncing brings a user online, visible to co-members with last_active_ago, but only after
/// the online debounce: a connection is not announced at once.
async fn presence_online_by_syncing_after_debounce(backend: Backend) {
    let options = ServerOptions::default().env("MYELIN_PRESENCE_ONLINE_DEBOUNCE_MS", "1500");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let started = tokio::time::Instant::now();
    let (_, _) = alice.sync_with(None, 0, &[]).await;
    let early = presence_content(&bob, alice.user_id()).await;
    if started.elapsed() < Duration::from_millis(1000) {
        assert_eq!(
            early["presence"], "offline",
            "announced before the debounce"
        );
    }
    // Still "connected": a long-poll sync is open through the debounce.
    let alice_sync = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.sync_with(None, 3000, &[]).await })
    };
    let content = wait_for_presence(&bob, alice.user_id(), "online").await;
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "online was announced after {:?}, before the 1.5 s debounce",
        started.elapsed()
    );
    assert!(content["last_active_ago"].is_u64(), "{content}");
    alice_sync.await.unwrap();
}

/// An online user who does nothing becomes unavailable (idle); activity such as sending a
/// message brings them back online at once.
async fn presence_idle_becomes_unavailable_until_activity(backend: Backend) {
    let options = ServerOptions::default().env("MYELIN_PRESENCE_UNAVAILABLE_AFTER_SECONDS", "1");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let path = format!(
        "/_matrix/client/v3/presence/{}/status",
        encode(alice.user_id())
    );
    assert_ok(
        &alice.put(&path, &json!({ "presence": "online" })).await,
        "PUT presence",
    );
    let idle = wait_for_presence(&bob, alice.user_id(), "unavailable").await;
    assert_eq!(idle["currently_active"], false, "{idle}");
    alice.send_text(&room, "back").await;
    let content = presence_content(&bob, alice.user_id()).await;
    assert_eq!(content["presence"], "online", "{content}");
    assert_eq!(content["currently_active"], true, "{content}");
}

backend_tests!(
    a39_presence_get_and_sync,
    presence_online_by_syncing_after_debounce,
    presence_idle_becomes_unavailable_until_activity
);
