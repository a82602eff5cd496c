//! The user directory (`POST /user_directory/search`, issue 13): who a searcher finds, by
//! which words, and who they never find.

use complement_tests::{
    assert_error, assert_ok, backend_tests, Backend, Client, ServerOptions, TestServer,
};
use reqwest::Method;
use serde_json::{json, Value};

const SEARCH: &str = "/_matrix/client/v3/user_directory/search";

/// The user IDs a search by `searcher` finds, in order, and `limited`.
async fn search_limit(searcher: &Client, term: &str, limit: u64) -> (Vec<String>, bool) {
    let response = searcher
        .post(SEARCH, &json!({ "search_term": term, "limit": limit }))
        .await;
    let body = assert_ok(&response, &format!("search {term:?}"));
    let ids = body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("results must be a list: {body}"))
        .iter()
        .map(|user| user["user_id"].as_str().expect("user_id").to_owned())
        .collect();
    (
        ids,
        body["limited"].as_bool().expect("limited is a boolean"),
    )
}

async fn search(searcher: &Client, term: &str) -> Vec<String> {
    search_limit(searcher, term, 10).await.0
}

async fn set_displayname(client: &Client, name: &str) {
    let path = format!(
        "/_matrix/client/v3/profile/{}/displayname",
        complement_tests::encode(client.user_id())
    );
    assert_ok(
        &client.put(&path, &json!({ "displayname": name })).await,
        "set displayname",
    );
}

fn ids(clients: &[&Client]) -> Vec<String> {
    clients.iter().map(|c| c.user_id().to_owned()).collect()
}

/// Scenario 74. Alice finds Bob (they share a private room) and Carol (in a public room Alice
/// is not in), by display name or user ID, whole words or their starts, case and accents
/// ignored, every word of the term matching; she never finds Dave (a private room of his
/// own), Erin (only invited to Alice's room) or herself. Leaving the shared room, closing the
/// public room and deactivating take users out; opening a room's history to the world puts
/// its members in. A new display name replaces the old one at once.
async fn a74_user_directory_finds_shared_and_public_users(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let dave = hs.register_user("dave").await;
    let erin = hs.register_user("erin").await;
    set_displayname(&bob, "Bobby Tables").await;
    set_displayname(&carol, "Zoë Carter").await;
    set_displayname(&dave, "Dave Hidden").await;
    set_displayname(&erin, "Erin Invited").await;

    let shared = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    assert_ok(&alice.invite(&shared, bob.user_id()).await, "invite bob");
    assert_ok(&bob.join(&shared).await, "bob joins");
    assert_ok(&alice.invite(&shared, erin.user_id()).await, "invite erin");
    let public = carol.create_room(&json!({ "preset": "public_chat" })).await;
    let hidden = dave.create_room(&json!({ "preset": "private_chat" })).await;

    assert_eq!(
        search(&alice, "bobby").await,
        ids(&[&bob]),
        "whole display name word"
    );
    assert_eq!(search(&alice, "tab").await, ids(&[&bob]), "start of a word");
    assert_eq!(
        search(&alice, bob.localpart()).await,
        ids(&[&bob]),
        "localpart"
    );
    assert_eq!(
        search(&alice, bob.user_id()).await,
        ids(&[&bob]),
        "full user ID"
    );
    assert_eq!(
        search(&alice, "BOBBY tables").await,
        ids(&[&bob]),
        "case, two words"
    );
    assert!(
        search(&alice, "bobby carter").await.is_empty(),
        "every word must match"
    );
    assert_eq!(
        search(&alice, "zoe").await,
        ids(&[&carol]),
        "accent ignored"
    );
    assert_eq!(
        search(&alice, "ZOË CART").await,
        ids(&[&carol]),
        "accent and case"
    );
    assert!(
        search(&alice, "dave").await.is_empty(),
        "dave shares no room"
    );
    assert!(
        search(&alice, "hidden").await.is_empty(),
        "dave by display name"
    );
    assert!(
        search(&alice, "erin").await.is_empty(),
        "erin is only invited"
    );
    assert!(
        search(&alice, "alice").await.is_empty(),
        "the searcher is not listed"
    );
    assert!(
        search(&alice, "  ...  ").await.is_empty(),
        "a term without words"
    );
    // Everyone can find Carol (public room), but only Alice finds Bob.
    assert_eq!(
        search(&dave, "zoe").await,
        ids(&[&carol]),
        "dave finds carol"
    );
    assert!(
        search(&dave, "bobby").await.is_empty(),
        "dave does not find bob"
    );

    // Once Erin joins she is found.
    assert_ok(&erin.join(&shared).await, "erin joins");
    assert_eq!(search(&alice, "erin").await, ids(&[&erin]), "erin joined");

    // A new display name: the old words are gone, the new ones found.
    set_displayname(&bob, "Robert Paulson").await;
    assert!(search(&alice, "bobby").await.is_empty(), "old display name");
    assert_eq!(
        search(&alice, "paul").await,
        ids(&[&bob]),
        "new display name"
    );

    // Bob leaves: no longer shares a room with Alice.
    assert_ok(&bob.leave(&shared).await, "bob leaves");
    assert!(search(&alice, "paul").await.is_empty(), "bob left");

    // Carol's room becomes invite-only: she is no longer in a public room.
    assert_ok(
        &carol
            .put_state(
                &public,
                "m.room.join_rules",
                "",
                &json!({ "join_rule": "invite" }),
            )
            .await,
        "close the room",
    );
    assert!(
        search(&alice, "zoe").await.is_empty(),
        "carol's room closed"
    );
    // Dave's room becomes world-readable: he is now in a public room.
    assert_ok(
        &dave
            .put_state(
                &hidden,
                "m.room.history_visibility",
                "",
                &json!({ "history_visibility": "world_readable" }),
            )
            .await,
        "open dave's history",
    );
    assert_eq!(
        search(&alice, "hidden").await,
        ids(&[&dave]),
        "dave's room readable"
    );

    // A deactivated user is never found.
    assert_ok(
        &dave
            .with_password_uia(
                Method::POST,
                "/_matrix/client/v3/account/deactivate",
                json!({}),
            )
            .await,
        "deactivate dave",
    );
    assert!(search(&alice, "dave").await.is_empty(), "dave deactivated");
    assert!(
        search(&erin, "dave").await.is_empty(),
        "dave deactivated, erin"
    );
}

/// Results come with display name and avatar; `limit` cuts the list and `limited` says so;
/// the shortest matching words come first. Bad requests are refused.
async fn user_directory_limits_and_bad_input(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let mut members = Vec::new();
    for name in ["Sam", "Samantha", "Samuel"] {
        let member = hs.register_user("member").await;
        set_displayname(&member, name).await;
        assert_ok(&member.join(&room).await, "join");
        members.push(member);
    }
    let avatar = "mxc://example.org/avatar";
    let path = format!(
        "/_matrix/client/v3/profile/{}/avatar_url",
        complement_tests::encode(members[0].user_id())
    );
    assert_ok(
        &members[0]
            .put(&path, &json!({ "avatar_url": avatar }))
            .await,
        "set avatar",
    );

    let response = alice.post(SEARCH, &json!({ "search_term": "sam" })).await;
    let body = assert_ok(&response, "search sam");
    let results: &Vec<Value> = body["results"].as_array().expect("results");
    let names: Vec<&str> = results
        .iter()
        .map(|u| u["display_name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["Sam", "Samantha", "Samuel"], "{body}");
    assert_eq!(results[0]["avatar_url"], avatar, "{body}");
    assert_eq!(body["limited"], false, "{body}");

    let (first, limited) = search_limit(&alice, "sam", 2).await;
    assert_eq!(first, ids(&[&members[0], &members[1]]));
    assert!(limited, "two of three");
    let (all, limited) = search_limit(&alice, "sam", 3).await;
    assert_eq!(all.len(), 3);
    assert!(!limited, "three of three");

    assert_error(
        &alice.post(SEARCH, &json!({ "limit": 5 })).await,
        400,
        "M_BAD_JSON",
        "no search_term",
    );
    assert_error(
        &alice
            .post(SEARCH, &json!({ "search_term": "sam", "limit": -1 }))
            .await,
        400,
        "M_BAD_JSON",
        "negative limit",
    );
    assert_error(
        &hs.client()
            .post(SEARCH, &json!({ "search_term": "sam" }))
            .await,
        401,
        "M_MISSING_TOKEN",
        "no token",
    );
}

/// With `user_directory.search_all_users`, every local user is found, even one who shares
/// no room with the searcher; a deactivated one still is not.
async fn user_directory_search_all_users(backend: Backend) {
    let options = ServerOptions::default().env("MYELIN_USER_DIRECTORY_SEARCH_ALL_USERS", "true");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let loner = hs.register_user("loner").await;
    assert_eq!(search(&alice, "loner").await, ids(&[&loner]));
    assert_ok(
        &loner
            .with_password_uia(
                Method::POST,
                "/_matrix/client/v3/account/deactivate",
                json!({}),
            )
            .await,
        "deactivate",
    );
    assert!(search(&alice, "loner").await.is_empty(), "deactivated");
}

backend_tests!(
    a74_user_directory_finds_shared_and_public_users,
    user_directory_limits_and_bad_input,
    user_directory_search_all_users,
);
