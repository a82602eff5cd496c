//! The delivered receipt (`io.myelin.delivered`, docs/delivered-receipts.md): sent, delivered
//! and read ticks.

use complement_tests::{backend_tests, Backend, Client, ServerOptions, TestServer};
use serde_json::{json, Value};
use std::time::Duration;

/// The `m.receipt` content of a room in a sync response, merged over its ephemeral events.
fn receipts(sync: &Value, room_id: &str) -> Value {
    let mut merged = json!({});
    for event in sync["rooms"]["join"][room_id]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if event["type"] == "m.receipt" {
            for (event_id, by_type) in event["content"].as_object().into_iter().flatten() {
                for (receipt_type, by_user) in by_type.as_object().into_iter().flatten() {
                    for (user, receipt) in by_user.as_object().into_iter().flatten() {
                        merged[event_id][receipt_type][user] = receipt.clone();
                    }
                }
            }
        }
    }
    merged
}

/// A Myelin server (the receipt is Myelin's own extension, so an external server under
/// test is skipped) with alice and bob in a public room alice made.
async fn alice_and_bob(
    backend: Backend,
    options: ServerOptions,
) -> Option<(TestServer, Client, Client, String)> {
    let hs = TestServer::start(backend, options).await?;
    if hs.is_external() {
        return None;
    }
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    Some((hs, alice, bob, room))
}

async fn delivered_receipt_after_recipient_syncs(backend: Backend) {
    let Some((_hs, alice, bob, room)) = alice_and_bob(backend, ServerOptions::default()).await
    else {
        return;
    };

    let (_, first) = alice.sync_with(None, 0, &[]).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let event_id = alice.send_text(&room, "hello bob").await;

    // Bob's device receives the message.
    let (status, bob_sync) = bob.sync_with(None, 0, &[]).await;
    assert_eq!(status, 200);
    let timeline = &bob_sync["rooms"]["join"][&room]["timeline"]["events"];
    assert!(timeline
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event_id"] == event_id.as_str()));

    // Alice sees the delivered receipt for that event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, sync) = alice.sync_with(Some(&since), 2000, &[]).await;
        assert_eq!(status, 200, "{sync}");
        let r = receipts(&sync, &room);
        if let Some(receipt) = r[&event_id]["io.myelin.delivered"][bob.user_id()].as_object() {
            assert!(receipt["ts"].is_i64(), "ts is an integer: {receipt:?}");
            break;
        }
        since = sync["next_batch"].as_str().unwrap().to_owned();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivered receipt for {event_id}"
        );
    }

    // Alice's own sync of her own message does not mark it delivered to her.
    let (_, own) = alice.sync_with(None, 0, &[]).await;
    let r = receipts(&own, &room);
    assert!(
        r[&event_id]["io.myelin.delivered"][alice.user_id()].is_null(),
        "{r}"
    );
}

async fn delivered_receipts_can_be_turned_off(backend: Backend) {
    let options = ServerOptions::default().env("MYELIN_DELIVERY_RECEIPTS", "false");
    let Some((_hs, alice, bob, room)) = alice_and_bob(backend, options).await else {
        return;
    };
    let event_id = alice.send_text(&room, "hello").await;
    let (_, _) = bob.sync_with(None, 0, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, sync) = alice.sync_with(None, 0, &[]).await;
    let r = receipts(&sync, &room);
    assert!(r[&event_id]["io.myelin.delivered"].is_null(), "{r}");
}

/// In a group, every member's delivery reaches the sender (the server writes them in
/// batches, one wake-up of the room per batch).
async fn delivered_receipts_of_a_group_reach_the_sender(backend: Backend) {
    let Some((hs, alice, bob, room)) = alice_and_bob(backend, ServerOptions::default()).await
    else {
        return;
    };
    let carol = hs.register_user("carol").await;
    carol.join(&room).await;
    let (_, first) = alice.sync_with(None, 0, &[]).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let event_id = alice.send_text(&room, "hello both").await;
    for member in [&bob, &carol] {
        let (status, _) = member.sync_with(None, 0, &[]).await;
        assert_eq!(status, 200);
    }
    // `sync_until` takes a `Fn`: collect across responses through a cell.
    let seen = std::cell::RefCell::new(json!({}));
    alice
        .sync_until(Some(&since), Duration::from_secs(10), |sync| {
            for (event, by_type) in receipts(sync, &room).as_object().into_iter().flatten() {
                for (user, receipt) in by_type["io.myelin.delivered"]
                    .as_object()
                    .into_iter()
                    .flatten()
                {
                    seen.borrow_mut()[user] = json!({ "event": event, "ts": receipt["ts"] });
                }
            }
            let seen = seen.borrow();
            seen.get(bob.user_id()).is_some() && seen.get(carol.user_id()).is_some()
        })
        .await;
    let seen = seen.into_inner();
    assert_eq!(seen[bob.user_id()]["event"], event_id.as_str(), "{seen}");
    assert_eq!(seen[carol.user_id()]["event"], event_id.as_str(), "{seen}");
    // Alice's own watermark (what she received from the others) may come along with the
    // room's receipts; it never points at her own message.
    assert_ne!(seen[alice.user_id()]["event"], event_id.as_str(), "{seen}");
}

/// A member's own delivered receipt does not wake their waiting sync: it tells them
/// nothing, so a long-poll after receiving a message waits out its timeout.
async fn own_delivered_receipt_does_not_wake_its_owner(backend: Backend) {
    let Some((_hs, alice, bob, room)) = alice_and_bob(backend, ServerOptions::default()).await
    else {
        return;
    };
    let (_, first) = bob.sync_with(None, 0, &[]).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    alice.send_text(&room, "hello bob").await;
    // Bob receives the message; that records his delivered receipt shortly after.
    let (_, got) = bob.sync_with(Some(&since), 5000, &[]).await;
    let since = got["next_batch"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let (status, body) = bob.sync_with(Some(&since), 1500, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "bob's long-poll returned after {:?}: {body}",
        started.elapsed()
    );
    assert!(body["rooms"]["join"].get(&room).is_none(), "{body}");
}

backend_tests!(
    delivered_receipt_after_recipient_syncs,
    delivered_receipts_can_be_turned_off,
    delivered_receipts_of_a_group_reach_the_sender,
    own_delivered_receipt_does_not_wake_its_owner
);
