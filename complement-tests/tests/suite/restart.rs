//! Scenario 42 (state survives a restart) and graceful shutdown.

use std::time::Duration;

use complement_tests::{
    assert_ok, assert_ok_object, backend_tests, encode, Backend, ServerOptions, TestServer,
};
use serde_json::{json, Value};

/// Fetches the server's published keys and checks their shape; returns
/// `verify_keys`.
async fn verify_keys(hs: &TestServer) -> Value {
    let client = complement_tests::Client::new(hs.federation_url());
    let response = client.get("/_matrix/key/v2/server").await;
    let body = assert_ok(&response, "GET /_matrix/key/v2/server");
    assert_eq!(body["server_name"], hs.server_name(), "{body}");
    assert!(body["valid_until_ts"].is_u64(), "no valid_until_ts: {body}");
    let keys = body["verify_keys"]
        .as_object()
        .unwrap_or_else(|| panic!("no verify_keys: {body}"));
    assert!(!keys.is_empty(), "verify_keys is empty: {body}");
    for (id, key) in keys {
        assert!(id.starts_with("ed25519:"), "unexpected key id {id}: {body}");
        assert!(key["key"].is_string(), "key {id} has no base64 key: {body}");
    }
    body["verify_keys"].clone()
}

/// 42. After a restart, users, tokens, rooms and history are unchanged and
///     the signing key is the same. (Rooms and history join this test once
///     the server has them.)
async fn a42_restart_keeps_users_tokens_signing_key(backend: Backend) {
    let Some(mut hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    if hs.is_external() {
        complement_tests::skip("a42", "cannot restart an external server");
        return;
    }
    let alice = hs.register_user("alice").await;
    let second = alice.new_device().await;
    let password = alice.password.clone().unwrap();
    let data_path = format!(
        "/_matrix/client/v3/user/{}/account_data/org.example.persist",
        encode(alice.user_id())
    );
    assert_ok_object(
        &alice.put(&data_path, &json!({ "kept": true })).await,
        "PUT account data",
    );
    let profile_path = format!(
        "/_matrix/client/v3/profile/{}/displayname",
        encode(alice.user_id())
    );
    assert_ok_object(
        &alice
            .put(&profile_path, &json!({ "displayname": "Persistent Alice" }))
            .await,
        "PUT displayname",
    );
    let keys_before = verify_keys(&hs).await;

    hs.restart().await;

    for client in [&alice, &second] {
        let whoami = client.whoami().await;
        let who = assert_ok(&whoami, "whoami with a token from before the restart");
        assert_eq!(who["user_id"], alice.user_id(), "{who}");
        assert_eq!(who["device_id"], client.device_id(), "{who}");
    }
    let login = hs.client().login(alice.user_id(), &password).await;
    assert_ok(&login, "password login after the restart");
    assert_eq!(
        assert_ok(&alice.get(&data_path).await, "account data after restart"),
        &json!({ "kept": true })
    );
    assert_eq!(
        assert_ok(
            &hs.client().get(&profile_path).await,
            "profile after restart"
        )["displayname"],
        "Persistent Alice"
    );
    assert_eq!(
        verify_keys(&hs).await,
        keys_before,
        "the signing key changed across a restart"
    );
}

backend_tests!(a42_restart_keeps_users_tokens_signing_key);

/// SIGINT, like SIGTERM, shuts the server down cleanly (exit status 0).
#[tokio::test]
async fn sigint_graceful_shutdown() {
    let Some(mut hs) = TestServer::start(Backend::Sqlite, ServerOptions::default()).await else {
        return;
    };
    if hs.is_external() {
        complement_tests::skip("sigint_graceful_shutdown", "external server");
        return;
    }
    hs.register_user("alice").await;
    hs.signal("INT");
    let status = hs
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("server did not exit within 30 s of SIGINT");
    assert!(status.success(), "exit status after SIGINT: {status}");
}
