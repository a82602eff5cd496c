//! Pagination while others write: walking `/messages` from a token returns every event
//! before it exactly once, in order, however many events are sent meanwhile; `/members?at=`
//! gives the member list as of a token.

use std::collections::HashSet;

use complement_tests::{assert_ok, backend_tests, Backend, Client, ServerOptions, TestServer};
use serde_json::{json, Value};

fn ids(chunk: &Value) -> Vec<String> {
    chunk["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// Walks backward from `from` to the start of the room, page by page.
async fn walk_back(client: &Client, room: &str, from: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = from.to_owned();
    for _ in 0..500 {
        let response = client
            .messages(room, "b", Some(&token), None, Some(7))
            .await;
        let page = assert_ok(&response, "/messages dir=b");
        out.extend(ids(page));
        match page["end"].as_str() {
            Some(end) => token = end.to_owned(),
            None => return out,
        }
    }
    panic!("pagination did not end");
}

async fn pagination_with_concurrent_writers(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    for i in 0..30 {
        alice.send_text(&room, &format!("before {i}")).await;
    }
    // The history as of now, and a token for this point.
    let before_all = alice.paginate_all(&room, "b", 10).await;
    let expected: Vec<String> = before_all
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    let (status, top) = alice.messages(&room, "b", None, None, Some(1)).await;
    assert_eq!(status, 200, "{top}");
    let newest = ids(&top);
    assert_eq!(
        newest.first(),
        expected.first(),
        "the newest event heads both walks"
    );
    let from = top["start"].as_str().expect("start token").to_owned();

    // Bob writes while alice walks back from the token.
    let writer = {
        let bob = bob.clone();
        let room = room.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                bob.send_text(&room, &format!("during {i}")).await;
            }
        })
    };
    let walked = walk_back(&alice, &room, &from).await;
    writer.await.expect("writer");

    assert_eq!(
        walked, expected,
        "every event before the token, once, newest first"
    );
    let unique: HashSet<&String> = walked.iter().collect();
    assert_eq!(unique.len(), walked.len(), "no event twice");

    // Forward from the start sees the whole room once, oldest first, including the new events.
    let forward = alice.paginate_all(&room, "f", 9).await;
    let forward_ids: Vec<String> = forward
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(
        &forward_ids[..reversed.len()],
        &reversed[..],
        "the old history comes first, in order"
    );
    assert_eq!(
        forward_ids.len(),
        expected.len() + 40,
        "and then the 40 new events"
    );
}

async fn members_at_token(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    alice.send_text(&room, "only alice so far").await;
    let (_, page) = alice.messages(&room, "b", None, None, Some(1)).await;
    let token = page["start"].as_str().expect("start").to_owned();
    bob.join(&room).await;

    let path = format!(
        "{}?at={}",
        Client::room_path(&room, "/members"),
        complement_tests::encode(&token)
    );
    let members = assert_ok(&alice.get(&path).await, "/members?at").clone();
    let users: Vec<&str> = members["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(users, vec![alice.user_id()], "before bob joined: {members}");

    let now = assert_ok(
        &alice.get(&Client::room_path(&room, "/members")).await,
        "/members",
    )
    .clone();
    assert_eq!(now["chunk"].as_array().unwrap().len(), 2, "{now}");
}

backend_tests!(
    pagination_with_concurrent_writers,
    members_at_token,
    empty_body_means_no_fields
);

/// Some clients (matrix-nio's join) send an empty body where every field is optional; like
/// Synapse, the server reads it as `{}`.
async fn empty_body_means_no_fields(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let path = format!(
        "/_matrix/client/v3/join/{}",
        complement_tests::encode(&room)
    );
    let response = bob
        .request_raw(
            reqwest::Method::POST,
            &path,
            Some((Vec::new(), "application/json")),
        )
        .await;
    assert_eq!(
        assert_ok(&response, "join with an empty body")["room_id"],
        room.as_str()
    );
}
