//! Room features beyond the core scenarios: knocking, restricted joins,
//! room upgrades, relations (reactions, edits) and `/context`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, encode, unique_name, Backend, Client,
    ServerOptions, TestServer,
};
use serde_json::{json, Value};

/// How long to wait for something that should show up promptly.
const WAIT: Duration = Duration::from_secs(10);

/// A syntactically valid event ID that names no event.
const UNKNOWN_EVENT: &str = "$NoSuchEventNoSuchEventNoSuchEventNoSuchEven";

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend, ServerOptions::default()).await
}

/// The content of one state event, asserting 200.
async fn state_content(client: &Client, room: &str, event_type: &str, key: &str) -> Value {
    let response = client.get_state(room, event_type, key).await;
    assert_ok(
        &response,
        &format!(
            "GET state {event_type}/{key:?} in {room} as {}",
            client.user_id()
        ),
    )
    .clone()
}

/// `user_id -> membership` from `GET /rooms/{id}/members`.
async fn memberships(client: &Client, room: &str) -> BTreeMap<String, String> {
    let response = client.get(&Client::room_path(room, "/members")).await;
    let body = assert_ok(&response, "GET /members");
    body["chunk"]
        .as_array()
        .unwrap_or_else(|| panic!("/members without chunk: {body}"))
        .iter()
        .map(|ev| {
            (
                ev["state_key"].as_str().expect("state_key").to_string(),
                ev["content"]["membership"]
                    .as_str()
                    .expect("membership")
                    .to_string(),
            )
        })
        .collect()
}

/// Joins and asserts 200 with the room ID.
async fn join_ok(client: &Client, room: &str) {
    let response = client.join(room).await;
    let body = assert_ok(&response, &format!("{} joins {room}", client.user_id()));
    assert_eq!(body["room_id"], room, "join answer names the room: {body}");
}

fn event_id(event: &Value) -> String {
    event["event_id"]
        .as_str()
        .unwrap_or_else(|| panic!("event without event_id: {event}"))
        .to_string()
}

fn event_ids(events: &[Value]) -> Vec<String> {
    events.iter().map(event_id).collect()
}

/// The event array `body[field]`, panicking if it is missing.
fn events_of(body: &Value, field: &str) -> Vec<Value> {
    body[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} array in {body}"))
        .clone()
}

fn string_of(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field} in {body}"))
        .to_string()
}

fn knock_path(room: &str) -> String {
    format!("/_matrix/client/v3/knock/{}", encode(room))
}

/// `/_matrix/client/v1/rooms/{room}/relations/{event}{suffix}`.
fn relations_path(room: &str, event: &str, suffix: &str) -> String {
    format!(
        "/_matrix/client/v1/rooms/{}/relations/{}{suffix}",
        encode(room),
        encode(event)
    )
}

/// Knocking: a knock shows in the knocker's `/sync` under `knock` and in
/// `/members` as `knock`; an invite lets the knocker in. Knocking on a room
/// whose join rule is not `knock` is refused.
async fn knock_flow(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let carol = hs.register_user("carol").await;
    let room = alice
        .create_room(&json!({
            "preset": "private_chat",
            "name": "Knock knock",
            "initial_state": [{
                "type": "m.room.join_rules",
                "content": { "join_rule": "knock" },
            }],
        }))
        .await;
    let response = carol.sync(None, 0).await;
    let carol_token = string_of(assert_ok(&response, "carol's initial sync"), "next_batch");

    // Without a knock, carol cannot just join.
    assert_error(
        &carol.join(&room).await,
        403,
        "M_FORBIDDEN",
        "join a knock room",
    );

    let response = carol
        .post(&knock_path(&room), &json!({ "reason": "please" }))
        .await;
    assert_eq!(
        assert_ok(&response, "carol knocks")["room_id"],
        room.as_str(),
        "the knock answer names the room"
    );

    let body = carol
        .sync_until(Some(&carol_token), WAIT, |b| {
            b["rooms"]["knock"].get(&room).is_some()
        })
        .await;
    let knocked = &body["rooms"]["knock"][&room];
    let stripped = events_of(&knocked["knock_state"], "events");
    assert!(!stripped.is_empty(), "empty knock_state: {body}");
    let own = stripped
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == carol.user_id())
        .unwrap_or_else(|| panic!("carol's knock missing from knock_state: {knocked}"));
    assert_eq!(own["content"]["membership"], "knock", "{own}");
    assert!(
        stripped
            .iter()
            .any(|e| e["type"] == "m.room.join_rules" && e["content"]["join_rule"] == "knock"),
        "the join rules missing from knock_state: {knocked}"
    );
    assert!(
        body["rooms"]["join"].get(&room).is_none(),
        "knocked room under join: {body}"
    );

    let members = memberships(&alice, &room).await;
    assert_eq!(
        members.get(carol.user_id()).map(String::as_str),
        Some("knock"),
        "/members as alice: {members:?}"
    );
    let knock = state_content(&alice, &room, "m.room.member", carol.user_id()).await;
    assert_eq!(knock["membership"], "knock", "{knock}");
    assert_eq!(
        knock["reason"], "please",
        "the knock keeps its reason: {knock}"
    );

    assert_ok_object(
        &alice.invite(&room, carol.user_id()).await,
        "alice invites carol",
    );
    join_ok(&carol, &room).await;
    let members = memberships(&alice, &room).await;
    assert_eq!(
        members.get(carol.user_id()).map(String::as_str),
        Some("join"),
        "{members:?}"
    );

    // A public room does not take knocks.
    let public = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let dave = hs.register_user("dave").await;
    assert_error(
        &dave.post(&knock_path(&public), &json!({})).await,
        403,
        "M_FORBIDDEN",
        "knock on a public room",
    );
}

/// Restricted join rules: members of the allowed room may join, others not,
/// and the join names a local user who could have invited them.
async fn restricted_join(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let space = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Space" }))
        .await;
    join_ok(&bob, &space).await;
    let room = alice
        .create_room(&json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{ "type": "m.room_membership", "room_id": space }],
                },
            }],
        }))
        .await;
    let rules = state_content(&alice, &room, "m.room.join_rules", "").await;
    assert_eq!(rules["join_rule"], "restricted", "{rules}");

    assert_error(
        &carol.join(&room).await,
        403,
        "M_FORBIDDEN",
        "carol (not in the allowed room) joins",
    );
    join_ok(&bob, &room).await;
    let join = state_content(&alice, &room, "m.room.member", bob.user_id()).await;
    assert_eq!(join["membership"], "join", "{join}");
    assert_eq!(
        join["join_authorised_via_users_server"],
        alice.user_id(),
        "bob's restricted join names alice as authoriser: {join}"
    );

    // Once in the allowed room, carol may join too.
    join_ok(&carol, &space).await;
    join_ok(&carol, &room).await;
}

/// Room upgrades: the old room gets a tombstone, the new one a predecessor
/// and the transferable state; aliases move; ordinary members can follow but
/// can no longer talk in the old room.
async fn room_upgrade(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let alias_name = unique_name("upgrade");
    let alias = format!("#{alias_name}:{}", hs.server_name());
    let old = alice
        .create_room(&json!({
            "preset": "public_chat",
            "room_version": "10",
            "name": "Old",
            "topic": "Before the upgrade",
            "room_alias_name": alias_name,
        }))
        .await;
    join_ok(&bob, &old).await;
    let upgrade_path = Client::room_path(&old, "/upgrade");

    assert_error(
        &bob.post(&upgrade_path, &json!({ "new_version": "12" }))
            .await,
        403,
        "M_FORBIDDEN",
        "bob (power 0) upgrades",
    );
    assert_error(
        &alice
            .post(&upgrade_path, &json!({ "new_version": "999" }))
            .await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
        "upgrade to an unknown version",
    );

    let response = alice
        .post(&upgrade_path, &json!({ "new_version": "12" }))
        .await;
    let new = string_of(assert_ok(&response, "alice upgrades"), "replacement_room");
    assert_ne!(new, old);

    let tombstone = state_content(&alice, &old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new.as_str(), "{tombstone}");
    let create = state_content(&alice, &new, "m.room.create", "").await;
    assert_eq!(create["room_version"], "12", "{create}");
    assert_eq!(create["predecessor"]["room_id"], old.as_str(), "{create}");
    assert_eq!(
        state_content(&alice, &new, "m.room.name", "").await["name"],
        "Old"
    );
    assert_eq!(
        state_content(&alice, &new, "m.room.topic", "").await["topic"],
        "Before the upgrade"
    );
    assert_eq!(
        state_content(&alice, &new, "m.room.join_rules", "").await["join_rule"],
        "public"
    );
    let response = alice
        .get(&format!(
            "/_matrix/client/v3/directory/room/{}",
            encode(&alias)
        ))
        .await;
    assert_eq!(
        assert_ok(&response, "resolve the alias")["room_id"],
        new.as_str(),
        "the alias points at the new room"
    );

    // Bob sees the tombstone, can follow, and can no longer talk in the old
    // room.
    let tombstone = state_content(&bob, &old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new.as_str(), "{tombstone}");
    assert_error(
        &bob.send_event(
            &old,
            "m.room.message",
            &unique_name("txn"),
            &json!({ "msgtype": "m.text", "body": "still here?" }),
        )
        .await,
        403,
        "M_FORBIDDEN",
        "bob sends in the old room after the upgrade",
    );
    join_ok(&bob, &new).await;
    bob.send_text(&new, "hello in the new room").await;

    // An invite-only room: its joined members are invited to the new room.
    let private = alice
        .create_room(&json!({ "preset": "private_chat", "name": "Private" }))
        .await;
    assert_ok_object(&alice.invite(&private, bob.user_id()).await, "invite bob");
    join_ok(&bob, &private).await;
    let response = alice
        .post(
            &Client::room_path(&private, "/upgrade"),
            &json!({ "new_version": "12" }),
        )
        .await;
    let new_private = string_of(
        assert_ok(&response, "alice upgrades the private room"),
        "replacement_room",
    );
    assert_eq!(
        state_content(&alice, &new_private, "m.room.join_rules", "").await["join_rule"],
        "invite"
    );
    let members = memberships(&alice, &new_private).await;
    assert_eq!(
        members.get(bob.user_id()).map(String::as_str),
        Some("invite"),
        "bob is invited to the upgraded private room: {members:?}"
    );
    join_ok(&bob, &new_private).await;
}

/// A public room with alice and bob: five messages, a target message, bob's
/// reaction to it, alice's edit of it and five more messages.
struct RelatedRoom {
    alice: Client,
    bob: Client,
    room: String,
    target: String,
    reaction: String,
    edit: String,
    edit_content: Value,
}

async fn related_room(hs: &TestServer) -> RelatedRoom {
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    join_ok(&bob, &room).await;
    for i in 0..5 {
        alice.send_text(&room, &format!("before {i}")).await;
    }
    let target = alice.send_text(&room, "the target").await;
    let response = bob
        .send_event(
            &room,
            "m.reaction",
            &unique_name("txn"),
            &json!({
                "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": "👍" },
            }),
        )
        .await;
    let reaction = string_of(assert_ok(&response, "bob reacts"), "event_id");
    let edit_content = json!({
        "msgtype": "m.text",
        "body": "* the edited target",
        "m.new_content": { "msgtype": "m.text", "body": "the edited target" },
        "m.relates_to": { "rel_type": "m.replace", "event_id": target },
    });
    let response = alice
        .send_event(&room, "m.room.message", &unique_name("txn"), &edit_content)
        .await;
    let edit = string_of(assert_ok(&response, "alice edits"), "event_id");
    for i in 0..5 {
        alice.send_text(&room, &format!("after {i}")).await;
    }
    RelatedRoom {
        alice,
        bob,
        room,
        target,
        reaction,
        edit,
        edit_content,
    }
}

/// `/relations` with and without relation and event type filters, paging
/// with `limit` and `next_batch`; an edit keeps its relation in `/event`.
async fn relations(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let RelatedRoom {
        bob,
        room,
        target,
        reaction,
        edit,
        edit_content,
        ..
    } = related_room(&hs).await;

    // /relations, unfiltered and filtered.
    let ids_at = |suffix: &'static str| {
        let path = relations_path(&room, &target, suffix);
        let bob = bob.clone();
        async move {
            let response = bob.get(&path).await;
            let body = assert_ok(&response, &path).clone();
            event_ids(&events_of(&body, "chunk"))
                .into_iter()
                .collect::<BTreeSet<_>>()
        }
    };
    assert_eq!(
        ids_at("").await,
        BTreeSet::from([reaction.clone(), edit.clone()]),
        "all relations"
    );
    assert_eq!(
        ids_at("/m.annotation").await,
        BTreeSet::from([reaction.clone()]),
        "annotations"
    );
    assert_eq!(
        ids_at("/m.annotation/m.reaction").await,
        BTreeSet::from([reaction.clone()]),
        "annotations of type m.reaction"
    );
    assert_eq!(
        ids_at("/m.replace").await,
        BTreeSet::from([edit.clone()]),
        "replacements"
    );
    assert_eq!(
        ids_at("/m.annotation/m.room.message").await,
        BTreeSet::new(),
        "annotations of type m.room.message"
    );

    // Paging one at a time.
    let path = relations_path(&room, &target, "?limit=1");
    let response = bob.get(&path).await;
    let page = assert_ok(&response, "relations limit=1").clone();
    let mut seen = event_ids(&events_of(&page, "chunk"));
    assert_eq!(seen.len(), 1, "limit=1 page: {page}");
    let next = string_of(&page, "next_batch");
    let response = bob.get(&format!("{path}&from={}", encode(&next))).await;
    let page = assert_ok(&response, "relations page 2").clone();
    seen.extend(event_ids(&events_of(&page, "chunk")));
    seen.sort();
    let mut expected = vec![reaction.clone(), edit.clone()];
    expected.sort();
    assert_eq!(seen, expected, "two pages of one relation each: {page}");

    // The edit itself keeps its relation and new content.
    let response = bob.get_event(&room, &edit).await;
    let fetched = assert_ok(&response, "GET the edit");
    assert_eq!(
        fetched["content"], edit_content,
        "the edit's content: {fetched}"
    );

    // A redacted reaction relates to nothing any more.
    let response = bob.redact(&room, &reaction, "oops").await;
    assert_ok(&response, "bob redacts his reaction");
    assert_eq!(
        ids_at("/m.annotation").await,
        BTreeSet::new(),
        "annotations after the reaction's redaction"
    );
    assert_eq!(
        ids_at("").await,
        BTreeSet::from([edit.clone()]),
        "all relations after the reaction's redaction"
    );
}

/// `/context`: the event, up to `limit` events around it in the right
/// order, state, and `start`/`end` tokens that continue with `/messages`.
async fn context(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let RelatedRoom {
        alice,
        bob,
        room,
        target,
        ..
    } = related_room(&hs).await;

    let mut timeline = alice.paginate_all(&room, "b", 50).await;
    timeline.reverse();
    let timeline = event_ids(&timeline);
    let at = timeline
        .iter()
        .position(|id| *id == target)
        .expect("the target in /messages");
    let response = bob
        .get(&Client::room_path(
            &room,
            &format!("/context/{}?limit=4", encode(&target)),
        ))
        .await;
    let context = assert_ok(&response, "/context").clone();
    assert_eq!(context["event"]["event_id"], target.as_str(), "{context}");
    assert_eq!(
        context["event"]["content"]["body"], "the target",
        "{context}"
    );
    let before = event_ids(&events_of(&context, "events_before"));
    let after = event_ids(&events_of(&context, "events_after"));
    assert!(
        !before.is_empty() && !after.is_empty() && before.len() + after.len() <= 4,
        "limit=4 around an event with history on both sides: {context}"
    );
    let mut expected_before = timeline[at - before.len()..at].to_vec();
    expected_before.reverse();
    assert_eq!(
        before, expected_before,
        "events_before, newest first: {context}"
    );
    assert_eq!(
        after,
        timeline[at + 1..at + 1 + after.len()].to_vec(),
        "events_after, oldest first: {context}"
    );
    assert!(
        !events_of(&context, "state").is_empty(),
        "/context without state: {context}"
    );

    let start = string_of(&context, "start");
    let response = bob.messages(&room, "b", Some(&start), None, Some(2)).await;
    let page = assert_ok(&response, "/messages dir=b from the context start");
    let mut expected: Vec<String> = timeline[at - before.len() - 2..at - before.len()].to_vec();
    expected.reverse();
    assert_eq!(
        event_ids(&events_of(page, "chunk")),
        expected,
        "the events right before events_before: {page}"
    );
    let end = string_of(&context, "end");
    let response = bob.messages(&room, "f", Some(&end), None, Some(2)).await;
    let page = assert_ok(&response, "/messages dir=f from the context end");
    let from = at + 1 + after.len();
    assert_eq!(
        event_ids(&events_of(page, "chunk")),
        timeline[from..from + 2].to_vec(),
        "the events right after events_after: {page}"
    );

    let response = bob
        .get(&Client::room_path(
            &room,
            &format!("/context/{}", encode(UNKNOWN_EVENT)),
        ))
        .await;
    assert_error(
        &response,
        404,
        "M_NOT_FOUND",
        "/context of an unknown event",
    );
}

/// A state event that replaced another carries `unsigned.prev_content`, `prev_sender` and
/// `replaces_state` (clients use them to say what changed), in `/messages` and in `/sync`.
async fn replaced_state_says_what_it_replaced(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    let (_, first) = bob.sync_with(None, 0, &[]).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let set_topic = |topic: &'static str| {
        let alice = alice.clone();
        let room = room.clone();
        async move {
            let response = alice
                .put_state(&room, "m.room.topic", "", &json!({ "topic": topic }))
                .await;
            assert_ok(&response, "PUT topic")["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let old = set_topic("old").await;
    let new = set_topic("new").await;
    let check = |event: &Value, source: &str| {
        let unsigned = &event["unsigned"];
        assert_eq!(
            unsigned["prev_content"],
            json!({ "topic": "old" }),
            "{source}: {event}"
        );
        assert_eq!(
            unsigned["prev_sender"],
            alice.user_id(),
            "{source}: {event}"
        );
        assert_eq!(
            unsigned["replaces_state"],
            old.as_str(),
            "{source}: {event}"
        );
        assert!(unsigned["age"].is_u64(), "{source}: {event}");
    };

    let response = bob
        .get(&Client::room_path(&room, "/messages?dir=b&limit=5"))
        .await;
    let body = assert_ok(&response, "GET /messages");
    let chunk = body["chunk"].as_array().unwrap();
    let by_id = |id: &str| chunk.iter().find(|e| e["event_id"] == id).cloned();
    check(
        &by_id(&new).expect("the new topic in /messages"),
        "/messages",
    );
    // The first topic replaced nothing.
    let first_topic = by_id(&old).expect("the old topic in /messages");
    assert!(
        first_topic["unsigned"].get("replaces_state").is_none(),
        "{first_topic}"
    );

    let body = bob
        .sync_until(Some(&since), WAIT, |b| {
            b["rooms"]["join"][&room]["timeline"]["events"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["event_id"] == new.as_str()))
        })
        .await;
    let events = body["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap();
    let in_sync = events
        .iter()
        .find(|e| e["event_id"] == new.as_str())
        .unwrap();
    check(in_sync, "/sync");
}

backend_tests!(
    knock_flow,
    restricted_join,
    room_upgrade,
    relations,
    context,
    replaced_state_says_what_it_replaced,
);
