//! The WebSocket sync transport (docs/websocket.md): frames are /sync responses pushed as
//! soon as they are committed; resuming with the last next_batch loses and repeats nothing.

use std::time::Duration;

use complement_tests::{
    backend_tests, encode, ws::next_text_frame as next_frame, Backend, Client, ServerOptions,
    TestServer,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn ws_url(hs: &TestServer, client: &Client, since: Option<&str>) -> String {
    let base = hs.url().replacen("http://", "ws://", 1);
    let mut url = format!(
        "{base}/_matrix/client/unstable/io.myelin/sync/ws?access_token={}",
        encode(client.access_token.as_deref().expect("logged in"))
    );
    if let Some(since) = since {
        url.push_str(&format!("&since={}", encode(since)));
    }
    url
}

fn timeline_bodies(frame: &Value, room_id: &str) -> Vec<String> {
    frame["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

async fn websocket_receives_and_resumes(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    if hs.is_external() {
        return; // Myelin's own transport.
    }
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;

    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(&hs, &bob, None))
        .await
        .expect("connect");
    let initial = next_frame(&mut socket, Duration::from_secs(10))
        .await
        .expect("initial frame");
    assert!(
        initial["rooms"]["join"][&room].is_object(),
        "initial frame lists the room: {initial}"
    );
    let mut token = initial["next_batch"].as_str().unwrap().to_owned();

    // A message is pushed without polling.
    let sent = std::time::Instant::now();
    alice.send_text(&room, "one").await;
    // Frames carry whatever changed (receipts too): read until the message arrives.
    let mut pushed = Vec::new();
    while pushed.is_empty() {
        let frame = next_frame(&mut socket, Duration::from_secs(5))
            .await
            .expect("pushed frame");
        pushed = timeline_bodies(&frame, &room);
        token = frame["next_batch"].as_str().unwrap_or(&token).to_owned();
    }
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "pushed within 2 s, took {:?}",
        sent.elapsed()
    );
    assert_eq!(pushed, vec!["one"]);

    // Disconnect, miss two messages, reconnect with the token: both arrive once, in order.
    drop(socket);
    alice.send_text(&room, "two").await;
    alice.send_text(&room, "three").await;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(&hs, &bob, Some(&token)))
        .await
        .expect("reconnect");
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        let frame = next_frame(&mut socket, Duration::from_secs(5))
            .await
            .expect("resumed frame");
        bodies.extend(timeline_bodies(&frame, &room));
    }
    assert_eq!(
        bodies,
        vec!["two", "three"],
        "nothing lost, nothing repeated"
    );
    // Later frames (receipts, say) repeat no message.
    while let Some(frame) = next_frame(&mut socket, Duration::from_millis(700)).await {
        assert!(
            timeline_bodies(&frame, &room).is_empty(),
            "repeated: {frame}"
        );
    }
}

async fn websocket_refuses_bad_auth_and_garbage(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    if hs.is_external() {
        return;
    }
    let alice = hs.register_user("alice").await;

    // A bad token is refused before the upgrade.
    let bad = alice.with_token("not-a-token");
    let err = tokio_tungstenite::connect_async(ws_url(&hs, &bad, None))
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 401),
        other => panic!("expected an HTTP 401, got {other:?}"),
    }

    // Garbage closes that socket with a reason; another socket is unaffected.
    let (mut a, _) = tokio_tungstenite::connect_async(ws_url(&hs, &alice, None))
        .await
        .expect("connect a");
    let (mut b, _) = tokio_tungstenite::connect_async(ws_url(&hs, &alice, None))
        .await
        .expect("connect b");
    next_frame(&mut a, Duration::from_secs(10))
        .await
        .expect("a initial");
    let initial_b = next_frame(&mut b, Duration::from_secs(10))
        .await
        .expect("b initial");
    a.send(Message::Text("this is not json".into()))
        .await
        .expect("send garbage");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match a.next().await {
                Some(Ok(Message::Close(Some(frame)))) => break Some(frame),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the server closes the socket");
    let frame = closed.expect("a close frame with a reason");
    assert_eq!(u16::from(frame.code), 1003);
    assert!(!frame.reason.is_empty());

    let room = alice.create_room(&json!({})).await;
    let mut saw_room = false;
    for _ in 0..5 {
        match next_frame(&mut b, Duration::from_secs(5)).await {
            Some(frame) if frame["rooms"]["join"][&room].is_object() => {
                saw_room = true;
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    assert!(saw_room, "the other socket still works (after {initial_b})");
}

backend_tests!(
    websocket_receives_and_resumes,
    websocket_refuses_bad_auth_and_garbage
);
