//! Issue 12 as Element X sees it: matrix-sdk-ui 0.18 (`SyncService`, `RoomListService`,
//! `Timeline`), the layer Element X's native UI sits on, against Myelin.
//!
//! One user's room list (the dynamic entries Element X renders, non-left filter) must hold
//! every room, ordered by recency, named as Element X names them; a message moves its room
//! to the top; an invite shows and can be accepted; unread counts rise and clear; a
//! `Timeline` paginates back through 200 messages in order; stopping and restarting the sync
//! service resumes.

use std::time::Duration;

use complement_tests::{
    assert_ok, backend_tests, Backend, Client as HsClient, ServerOptions, TestServer,
};
use futures_util::{Stream, StreamExt};
use matrix_sdk::{ruma::RoomId, Client};
use matrix_sdk_ui::{
    eyeball_im::{Vector, VectorDiff},
    room_list_service::{filters::new_filter_non_left, RoomListItem},
    sync_service::SyncService,
    timeline::RoomExt,
};
use serde_json::json;

const STEP: Duration = Duration::from_secs(30);

async fn login(hs: &TestServer, account: &HsClient) -> Client {
    let client = Client::builder()
        .homeserver_url(hs.url())
        .build()
        .await
        .expect("client");
    client
        .matrix_auth()
        .login_username(account.user_id(), account.password.as_deref().unwrap())
        .await
        .expect("login");
    client
}

/// The room list as Element X renders it, kept up to date from the diffs.
struct Entries<S> {
    stream: S,
    items: Vector<RoomListItem>,
}

impl<S: Stream<Item = Vec<VectorDiff<RoomListItem>>> + Unpin> Entries<S> {
    fn ids(&self) -> Vec<String> {
        self.items.iter().map(|r| r.room_id().to_string()).collect()
    }

    /// Applies diffs until `done` holds of the room IDs, in order.
    async fn until(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = tokio::time::Instant::now() + STEP;
        while !done(&self.ids()) {
            let diffs = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("{what}: the list is {:?}", self.ids()))
                .expect("the entries stream goes on");
            for diff in diffs {
                diff.apply(&mut self.items);
            }
        }
    }
}

async fn element_x_room_list_timeline_and_resume(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    // Five rooms, oldest activity first; the first has a name and 200 messages.
    let mut rooms = Vec::new();
    for i in 0..5 {
        let body = if i == 0 {
            json!({ "preset": "public_chat", "name": "History" })
        } else {
            json!({ "preset": "public_chat" })
        };
        let room = alice.create_room(&body).await;
        assert_ok(&bob.join(&room).await, "join");
        rooms.push(room);
    }
    for n in 0..200 {
        bob.send_text(&rooms[0], &format!("history {n}")).await;
    }
    for room in &rooms[1..] {
        // Element X's sorter ranks by the latest event's timestamp: two sends in the same
        // millisecond would tie, and the order the test expects would be a coin toss.
        tokio::time::sleep(Duration::from_millis(5)).await;
        bob.send_text(room, "hello").await;
    }
    // And an invite, the newest activity of all.
    let invite = bob
        .create_room(&json!({ "preset": "private_chat", "name": "Invited" }))
        .await;
    assert_ok(&bob.invite(&invite, alice.user_id()).await, "invite");

    let client = login(&hs, &alice).await;
    let sync = SyncService::builder(client.clone())
        .build()
        .await
        .expect("sync service");
    sync.start().await;
    let service = sync.room_list_service();
    let all = service.all_rooms().await.expect("all rooms");
    let (stream, controller) = all.entries_with_dynamic_adapters(50);
    controller.set_filter(Box::new(new_filter_non_left()));
    let mut list = Entries {
        stream: Box::pin(stream),
        items: Vector::new(),
    };

    // Every room; the joined ones newest activity first. (Where the invite goes is the
    // sorter's business: it ranks by latest-event timestamp, which invites lack.)
    let expected: Vec<String> = rooms.iter().rev().cloned().collect();
    let what = format!("all six rooms, the joined in recency order {expected:?}");
    let invited = invite.clone();
    list.until(&what, |ids| {
        let joined: Vec<&String> = ids.iter().filter(|id| **id != invited).collect();
        ids.len() == 6 && ids.contains(&invited) && joined.iter().copied().eq(expected.iter())
    })
    .await;
    let room = |id: &str| {
        client
            .get_room(&RoomId::parse(id).unwrap())
            .expect("known room")
    };
    assert_eq!(
        room(&rooms[0]).display_name().await.unwrap().to_string(),
        "History"
    );
    let unnamed = room(&rooms[1]).display_name().await.unwrap().to_string();
    assert!(unnamed.contains("bob"), "named after its hero: {unnamed}");
    assert_eq!(room(&invite).state(), matrix_sdk::RoomState::Invited);
    assert_eq!(
        room(&rooms[1])
            .unread_notification_counts()
            .notification_count,
        1,
        "bob's message notifies"
    );

    // A message moves the oldest room to the top.
    bob.send_text(&rooms[0], "bump").await;
    let top = rooms[0].clone();
    list.until("the bumped room on top", |ids| ids.first() == Some(&top))
        .await;

    // The invite can be accepted.
    room(&invite).join().await.expect("accept the invite");
    let deadline = tokio::time::Instant::now() + STEP;
    while room(&invite).state() != matrix_sdk::RoomState::Joined {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the join never synced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The timeline paginates back through the whole history, in order.
    let timeline = room(&rooms[0]).timeline().await.expect("timeline");
    let deadline = tokio::time::Instant::now() + STEP * 2;
    loop {
        let at_start = timeline.paginate_backwards(50).await.expect("paginate");
        if at_start {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pagination never reached the start"
        );
    }
    let bodies: Vec<String> = timeline
        .items()
        .await
        .iter()
        .filter_map(|item| item.as_event())
        .filter_map(|event| event.content().as_message().map(|m| m.body().to_owned()))
        .collect();
    let history: Vec<String> = bodies
        .iter()
        .filter(|b| b.starts_with("history "))
        .cloned()
        .collect();
    let wanted: Vec<String> = (0..200).map(|n| format!("history {n}")).collect();
    assert_eq!(history, wanted, "every message once, in order");

    // Reading clears the unread count.
    let unread_room = room(&rooms[1]);
    let read_timeline = unread_room.timeline().await.expect("timeline");
    read_timeline
        .mark_as_read(matrix_sdk::ruma::api::client::receipt::create_receipt::v3::ReceiptType::Read)
        .await
        .expect("mark as read");
    let deadline = tokio::time::Instant::now() + STEP;
    while unread_room.unread_notification_counts().notification_count != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the count never cleared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The connection resumes after the sync service stops and starts again.
    sync.stop().await;
    bob.send_text(&rooms[2], "while you were away").await;
    sync.start().await;
    let resumed = rooms[2].clone();
    list.until("the room with news on top after a restart", |ids| {
        ids.first() == Some(&resumed)
    })
    .await;
    sync.stop().await;
}

/// Two Element X users (each its `SyncService`, so its encryption sync with the to-device
/// and e2ee extensions) in an encrypted DM: each reads what the other wrote, and the server
/// only ever held ciphertext.
async fn element_x_encrypted_dm(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let alice_sdk = login(&hs, &alice).await;
    let bob_sdk = login(&hs, &bob).await;
    let mut services = Vec::new();
    for client in [&alice_sdk, &bob_sdk] {
        let sync = SyncService::builder(client.clone())
            .build()
            .await
            .expect("sync service");
        sync.start().await;
        services.push(sync);
    }
    let dm = alice
        .create_room(&json!({
            "preset": "trusted_private_chat",
            "is_direct": true,
            "invite": [bob.user_id()],
            "initial_state": [{
                "type": "m.room.encryption", "state_key": "",
                "content": { "algorithm": "m.megolm.v1.aes-sha2" },
            }],
        }))
        .await;
    assert_ok(&bob.join(&dm).await, "join");
    let room_id = RoomId::parse(&dm).unwrap();

    // Both sides see the room joined, encrypted, with both members.
    for client in [&alice_sdk, &bob_sdk] {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            if let Some(room) = client.get_room(&room_id) {
                if room.state() == matrix_sdk::RoomState::Joined
                    && room.joined_members_count() == 2
                    && room
                        .latest_encryption_state()
                        .await
                        .is_ok_and(|s| s.is_encrypted())
                {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the DM never synced"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    for (writer, reader, text) in [
        (&alice_sdk, &bob_sdk, "a secret from alice"),
        (&bob_sdk, &alice_sdk, "and one from bob"),
    ] {
        let timeline = writer
            .get_room(&room_id)
            .unwrap()
            .timeline()
            .await
            .expect("timeline");
        timeline
            .send(
                matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(text)
                    .into(),
            )
            .await
            .expect("send");
        let reader_timeline = reader
            .get_room(&room_id)
            .unwrap()
            .timeline()
            .await
            .expect("timeline");
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let bodies: Vec<String> = reader_timeline
                .items()
                .await
                .iter()
                .filter_map(|item| item.as_event())
                .filter_map(|e| e.content().as_message().map(|m| m.body().to_owned()))
                .collect();
            if bodies.iter().any(|b| b == text) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{text:?} never decrypted; the reader has {bodies:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // What the server holds: ciphertext only.
    let events = alice.paginate_all(&dm, "b", 50).await;
    let messages: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "m.room.message" || e["type"] == "m.room.encrypted")
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages.iter().all(|e| e["type"] == "m.room.encrypted"),
        "{messages:?}"
    );
    for sync in services {
        sync.stop().await;
    }
}

backend_tests!(
    element_x_room_list_timeline_and_resume,
    element_x_encrypted_dm,
);
