//! Threads (issue 13): the thread list of a room and the summaries thread roots carry in
//! `/sync`, `/messages`, `/event` and `/context`.

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, Backend, Client, ServerOptions, TestServer,
};
use serde_json::{json, Value};

/// Sends a reply in the thread of `root`; returns its event ID.
async fn reply(client: &Client, room: &str, root: &str, body: &str) -> String {
    let txn = complement_tests::unique_name("txn");
    let response = client
        .send_event(
            room,
            "m.room.message",
            &txn,
            &json!({
                "msgtype": "m.text", "body": body,
                "m.relates_to": { "rel_type": "m.thread", "event_id": root,
                                  "is_falling_back": true,
                                  "m.in_reply_to": { "event_id": root } }
            }),
        )
        .await;
    assert_ok(&response, "thread reply")["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned()
}

async fn threads(client: &Client, room: &str, query: &str) -> Value {
    let path = format!("/_matrix/client/v1/rooms/{}/threads{query}", encode(room));
    assert_ok(&client.get(&path).await, "threads").clone()
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

fn summary(event: &Value) -> &Value {
    &event["unsigned"]["m.relations"]["m.thread"]
}

/// Scenario 76. Thread roots are listed by latest activity; each root carries its summary
/// (latest reply, count, whether the viewer took part) in /threads, /event, /messages,
/// /context and /sync; `include=participated` keeps the viewer's threads; pages of one walk
/// every thread once; a redacted reply stops counting; a stranger to a private room is
/// refused.
async fn a76_threads_list_by_latest_activity_with_summaries(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    assert_ok(&alice.invite(&room, bob.user_id()).await, "invite");
    assert_ok(&bob.join(&room).await, "join");

    let root1 = alice.send_text(&room, "first topic").await;
    let root2 = alice.send_text(&room, "second topic").await;
    let root3 = bob.send_text(&room, "bob's topic").await;
    let plain = alice.send_text(&room, "not a thread").await;
    reply(&bob, &room, &root1, "reply 1a").await;
    reply(&bob, &room, &root2, "reply 2a").await;
    reply(&bob, &room, &root3, "reply 3a").await;
    let latest1 = reply(&alice, &room, &root1, "reply 1b").await;

    // By latest activity: root1 (latest reply), root3, root2.
    let all = threads(&alice, &room, "").await;
    assert_eq!(
        ids(&all),
        [root1.as_str(), root3.as_str(), root2.as_str()],
        "{all}"
    );
    assert!(all.get("next_batch").is_none(), "{all}");
    let s = summary(&all["chunk"][0]);
    assert_eq!(s["count"], 2, "{all}");
    assert_eq!(s["latest_event"]["event_id"], latest1.as_str(), "{all}");
    assert_eq!(s["current_user_participated"], true, "{all}");
    // Alice did not take part in root3 (Bob's root, Bob's reply).
    assert_eq!(
        summary(&all["chunk"][1])["current_user_participated"],
        false
    );

    let mine = threads(&alice, &room, "?include=participated").await;
    assert_eq!(ids(&mine), [root1.as_str(), root2.as_str()], "{mine}");
    let bobs = threads(&bob, &room, "?include=participated").await;
    assert_eq!(
        ids(&bobs),
        [root1.as_str(), root3.as_str(), root2.as_str()],
        "{bobs}"
    );

    // Pages of one.
    let mut seen = Vec::new();
    let mut query = "?limit=1".to_owned();
    loop {
        let page = threads(&alice, &room, &query).await;
        seen.extend(ids(&page));
        match page["next_batch"].as_str() {
            Some(next) => query = format!("?limit=1&from={}", encode(next)),
            None => break,
        }
        assert!(seen.len() < 10, "pagination does not end");
    }
    assert_eq!(seen, [root1.as_str(), root3.as_str(), root2.as_str()]);

    // The summary on /event, /messages, /context and /sync.
    let event = assert_ok(&alice.get_event(&room, &root1).await, "event").clone();
    assert_eq!(summary(&event)["count"], 2, "{event}");
    let messages = alice
        .get(&Client::room_path(&room, "/messages?dir=b&limit=20"))
        .await;
    let chunk = assert_ok(&messages, "messages")["chunk"].clone();
    let root_in_page = chunk
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root1.as_str())
        .expect("root in /messages");
    assert_eq!(summary(root_in_page)["count"], 2, "{root_in_page}");
    let context = alice
        .get(&Client::room_path(
            &room,
            &format!("/context/{}?limit=2", encode(&root2)),
        ))
        .await;
    let context = assert_ok(&context, "context");
    assert_eq!(summary(&context["event"])["count"], 1, "{context}");
    let (_, sync) = alice.sync(None, 0).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .expect("timeline")
        .clone();
    let root_in_sync = timeline
        .iter()
        .find(|e| e["event_id"] == root3.as_str())
        .expect("root in sync");
    assert_eq!(summary(root_in_sync)["count"], 1, "{root_in_sync}");
    assert_eq!(summary(root_in_sync)["current_user_participated"], false);
    let plain_in_sync = timeline
        .iter()
        .find(|e| e["event_id"] == plain.as_str())
        .expect("plain in sync");
    assert!(plain_in_sync["unsigned"].get("m.relations").is_none());

    // A redacted reply no longer counts; the thread's latest reply moves back.
    assert_ok(&alice.redact(&room, &latest1, "oops").await, "redact");
    let all = threads(&alice, &room, "").await;
    assert_eq!(
        ids(&all),
        [root3.as_str(), root2.as_str(), root1.as_str()],
        "{all}"
    );
    let first = all["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root1.as_str())
        .unwrap()
        .clone();
    assert_eq!(summary(&first)["count"], 1, "{first}");
    // Alice still took part: she sent the root.
    assert_eq!(
        summary(&first)["current_user_participated"],
        true,
        "{first}"
    );
    assert_eq!(
        summary(&first)["latest_event"]["content"]["body"],
        "reply 1a",
        "{first}"
    );

    // Strangers and bad input.
    let carol = hs.register_user("carol").await;
    assert_error(
        &carol
            .get(&format!(
                "/_matrix/client/v1/rooms/{}/threads",
                encode(&room)
            ))
            .await,
        403,
        "M_FORBIDDEN",
        "a stranger to a private room",
    );
    assert_error(
        &alice
            .get(&format!(
                "/_matrix/client/v1/rooms/{}/threads?from=zzz",
                encode(&room)
            ))
            .await,
        400,
        "M_INVALID_PARAM",
        "bad token",
    );
}

backend_tests!(a76_threads_list_by_latest_activity_with_summaries);
