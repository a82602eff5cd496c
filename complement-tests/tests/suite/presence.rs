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

/// Syncing marks a user online, visible to co-members with last_active_ago.
async fn presence_online_by_syncing(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let (_, _) = alice.sync_with(None, 0, &[]).await;
    let got = bob
        .get(&format!(
            "/_matrix/client/v3/presence/{}/status",
            encode(alice.user_id())
        ))
        .await;
    let content = assert_ok(&got, "GET presence");
    assert_eq!(content["presence"], "online");
    assert!(content["last_active_ago"].is_u64(), "{content}");
}

backend_tests!(a39_presence_get_and_sync, presence_online_by_syncing);
