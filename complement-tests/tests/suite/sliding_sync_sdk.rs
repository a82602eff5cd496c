//! Issue 12 with a real client: matrix-sdk 0.18's own `SlidingSync` (the layer under
//! matrix-sdk-ui's `RoomListService`) grows a list over the user's rooms through Myelin,
//! with every extension on, and must end up with every room, named the way Element X names
//! them, with recency stamps in activity order and real unread counts.

use std::time::Duration;

use complement_tests::{assert_ok, backend_tests, Backend, ServerOptions, TestServer};
use futures_util::StreamExt;
use matrix_sdk::{
    ruma::{events::StateEventType, RoomId},
    Client, SlidingSyncList, SlidingSyncMode,
};
use serde_json::json;

const STEP: Duration = Duration::from_secs(30);

async fn sliding_sync_with_matrix_sdk(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let body = if i == 0 {
            json!({ "preset": "public_chat", "name": "Named room" })
        } else {
            json!({ "preset": "public_chat" })
        };
        let room = alice.create_room(&body).await;
        assert_ok(&bob.join(&room).await, "join");
        bob.send_text(&room, &format!("message {i}")).await;
        rooms.push(room);
    }

    let client = Client::builder()
        .homeserver_url(hs.url())
        .build()
        .await
        .expect("client");
    client
        .matrix_auth()
        .login_username(alice.user_id(), alice.password.as_deref().unwrap())
        .await
        .expect("login");
    let sliding = client
        .sliding_sync("room-list")
        .expect("sliding sync")
        .with_all_extensions()
        .add_list(
            SlidingSyncList::builder("all_rooms")
                // Two rooms a request: the list must grow over three responses.
                .sync_mode(SlidingSyncMode::new_growing(2))
                .timeline_limit(1)
                .required_state(vec![
                    (StateEventType::RoomName, String::new()),
                    (StateEventType::RoomAvatar, String::new()),
                    (StateEventType::RoomEncryption, String::new()),
                    (StateEventType::RoomMember, "$LAZY".to_owned()),
                    (StateEventType::RoomMember, "$ME".to_owned()),
                ]),
        )
        .build()
        .await
        .expect("build");
    let stream = sliding.sync();
    futures_util::pin_mut!(stream);
    let deadline = tokio::time::Instant::now() + STEP;
    while client.rooms().len() < rooms.len() {
        let update = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} rooms listed in time", client.rooms().len()))
            .expect("the stream goes on");
        update.unwrap_or_else(|e| panic!("a sliding sync request failed: {e}"));
    }
    let mut stamps = Vec::new();
    for (i, id) in rooms.iter().enumerate() {
        let room = client
            .get_room(&RoomId::parse(id).unwrap())
            .expect("every room is known");
        let name = room.display_name().await.expect("display name").to_string();
        if i == 0 {
            assert_eq!(name, "Named room");
        } else {
            assert!(
                name.contains("bob"),
                "an unnamed room is named after its hero: {name}"
            );
        }
        assert_eq!(
            room.unread_notification_counts().notification_count,
            1,
            "the server's count of bob's message in {id}"
        );
        stamps.push(u64::from(room.recency_stamp().expect("a recency stamp")));
    }
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "later activity, higher stamp: {stamps:?}"
    );
}

backend_tests!(sliding_sync_with_matrix_sdk);
