//! Scenarios 11–31 without `/sync`: room creation, membership, sending,
//! state, `/messages`, `/event`, history visibility and redaction; plus bad
//! input and concurrent sends.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, encode, unique_name, Backend, Client,
    ServerOptions, TestServer,
};
use reqwest::Method;
use serde_json::{json, Value};

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend, ServerOptions::default()).await
}

/// The content of one state event, asserting 200.
async fn state_content(client: &Client, room: &str, event_type: &str, key: &str) -> Value {
    let response = client.get_state(room, event_type, key).await;
    assert_ok(
        &response,
        &format!("GET state {event_type}/{key:?} as {}", client.user_id()),
    )
    .clone()
}

/// `user_id -> membership` from `GET /rooms/{id}/members` (with an optional
/// query string such as `?membership=leave`).
async fn memberships(client: &Client, room: &str, query: &str) -> BTreeMap<String, String> {
    let response = client
        .get(&Client::room_path(room, &format!("/members{query}")))
        .await;
    let body = assert_ok(&response, &format!("GET /members{query}"));
    body["chunk"]
        .as_array()
        .unwrap_or_else(|| panic!("/members without chunk: {body}"))
        .iter()
        .map(|ev| {
            assert_eq!(
                ev["type"], "m.room.member",
                "non-member event in /members: {ev}"
            );
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

/// The user IDs in `GET /rooms/{id}/joined_members`.
async fn joined_members(client: &Client, room: &str) -> BTreeSet<String> {
    let response = client
        .get(&Client::room_path(room, "/joined_members"))
        .await;
    let body = assert_ok(&response, "GET /joined_members");
    body["joined"]
        .as_object()
        .unwrap_or_else(|| panic!("/joined_members without joined: {body}"))
        .keys()
        .cloned()
        .collect()
}

async fn joined_rooms(client: &Client) -> Vec<String> {
    let response = client.get("/_matrix/client/v3/joined_rooms").await;
    let body = assert_ok(&response, "GET /joined_rooms");
    body["joined_rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("no joined_rooms: {body}"))
        .iter()
        .map(|r| r.as_str().expect("room ID").to_string())
        .collect()
}

fn set(users: &[&Client]) -> BTreeSet<String> {
    users.iter().map(|c| c.user_id().to_string()).collect()
}

/// Joins and asserts 200 with the room ID.
async fn join_ok(client: &Client, room_id_or_alias: &str, room_id: &str) {
    let response = client.join(room_id_or_alias).await;
    let body = assert_ok(
        &response,
        &format!("{} joins {room_id_or_alias}", client.user_id()),
    );
    assert_eq!(body["room_id"], room_id, "join answer names the room");
}

fn event_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e["event_id"]
                .as_str()
                .unwrap_or_else(|| panic!("event without event_id: {e}"))
                .to_string()
        })
        .collect()
}

/// Bodies of the `m.room.message` events, in the given order.
fn message_bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The IDs of all events visible to `client` in `/messages`, walking
/// backwards from the end.
async fn visible_ids(client: &Client, room: &str) -> HashSet<String> {
    event_ids(&client.paginate_all(room, "b", 50).await)
        .into_iter()
        .collect()
}

fn assert_unique(ids: &[String], what: &str) {
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "{what}: duplicate events in {ids:?}"
    );
}

/// 11. `createRoom` with `public_chat` gives join_rule `public`,
///     `private_chat` gives `invite`; name, topic, explicit room version and
///     `initial_state` are applied.
async fn a11_create_room_presets_and_options(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;

    // public_chat, room version 10, name, topic, initial_state (one custom
    // state event and one that overrides the preset), creation_content and
    // power_level_content_override.
    let public = alice
        .create_room(&json!({
            "preset": "public_chat",
            "name": "Public room",
            "topic": "All welcome",
            "room_version": "10",
            "creation_content": { "m.federate": false },
            "power_level_content_override": { "events": { "m.room.topic": 75 } },
            "initial_state": [
                { "type": "com.example.initial", "state_key": "k", "content": { "x": 1 } },
                { "type": "m.room.name", "content": { "name": "Overridden by name" } },
                { "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } },
            ],
        }))
        .await;
    assert!(public.starts_with('!'), "room ID {public}");
    assert_eq!(
        state_content(&alice, &public, "m.room.join_rules", "").await["join_rule"],
        "public"
    );
    assert_eq!(
        state_content(&alice, &public, "m.room.name", "").await["name"],
        "Public room",
        "`name` takes precedence over initial_state"
    );
    assert_eq!(
        state_content(&alice, &public, "m.room.topic", "").await["topic"],
        "All welcome"
    );
    let create = state_content(&alice, &public, "m.room.create", "").await;
    assert_eq!(create["room_version"], "10", "create content: {create}");
    assert_eq!(
        create["creator"],
        alice.user_id(),
        "v10 create content: {create}"
    );
    assert_eq!(create["m.federate"], false, "creation_content: {create}");
    assert_eq!(
        state_content(&alice, &public, "com.example.initial", "k").await,
        json!({ "x": 1 })
    );
    assert_eq!(
        state_content(&alice, &public, "m.room.history_visibility", "").await["history_visibility"],
        "joined",
        "initial_state takes precedence over the preset"
    );
    let power = state_content(&alice, &public, "m.room.power_levels", "").await;
    assert_eq!(power["events"]["m.room.topic"], 75, "override: {power}");
    assert_eq!(power["users"][alice.user_id()], 100, "v10 creator: {power}");
    // ?format=event gives the whole event.
    let response = alice
        .get(&Client::room_path(
            &public,
            "/state/m.room.create/?format=event",
        ))
        .await;
    let event = assert_ok(&response, "GET m.room.create ?format=event");
    assert_eq!(event["type"], "m.room.create", "{event}");
    assert_eq!(event["sender"], alice.user_id(), "{event}");
    assert_eq!(event["content"]["room_version"], "10", "{event}");
    assert!(event["event_id"].is_string(), "{event}");
    // The empty state key may also be left out of the path.
    let response = alice
        .get(&Client::room_path(&public, "/state/m.room.name"))
        .await;
    assert_eq!(
        assert_ok(&response, "GET /state/m.room.name")["name"],
        "Public room"
    );

    // private_chat, room version 11, inviting bob as a direct chat.
    let private = alice
        .create_room(&json!({
            "preset": "private_chat",
            "room_version": "11",
            "invite": [bob.user_id()],
            "is_direct": true,
        }))
        .await;
    assert_eq!(
        state_content(&alice, &private, "m.room.join_rules", "").await["join_rule"],
        "invite"
    );
    assert_eq!(
        state_content(&alice, &private, "m.room.create", "").await["room_version"],
        "11"
    );
    assert_eq!(
        state_content(&alice, &private, "m.room.history_visibility", "").await
            ["history_visibility"],
        "shared"
    );
    assert_eq!(
        state_content(&alice, &private, "m.room.guest_access", "").await["guest_access"],
        "can_join"
    );
    let invite = state_content(&alice, &private, "m.room.member", bob.user_id()).await;
    assert_eq!(invite["membership"], "invite", "{invite}");
    assert_eq!(invite["is_direct"], true, "{invite}");

    // trusted_private_chat with the default version.
    let trusted = alice
        .create_room(&json!({
            "preset": "trusted_private_chat",
            "invite": [bob.user_id()],
        }))
        .await;
    assert_eq!(
        state_content(&alice, &trusted, "m.room.join_rules", "").await["join_rule"],
        "invite"
    );
    let version =
        state_content(&alice, &trusted, "m.room.create", "").await["room_version"].clone();
    assert!(
        version.as_str().is_some_and(|v| !v.is_empty()),
        "default room version: {version}"
    );
    // In room versions before 12, invitees get the creator's power level.
    let trusted_v11 = alice
        .create_room(&json!({
            "preset": "trusted_private_chat",
            "room_version": "11",
            "invite": [bob.user_id()],
        }))
        .await;
    let power = state_content(&alice, &trusted_v11, "m.room.power_levels", "").await;
    assert_eq!(power["users"][alice.user_id()], 100, "v11 creator: {power}");
    assert_eq!(
        power["users"][bob.user_id()],
        100,
        "v11 trusted invitee: {power}"
    );

    // Without a preset, visibility picks it: public gives a public room.
    let by_visibility = alice.create_room(&json!({ "visibility": "public" })).await;
    assert_eq!(
        state_content(&alice, &by_visibility, "m.room.join_rules", "").await["join_rule"],
        "public"
    );
    let by_default = alice.create_room(&json!({})).await;
    assert_eq!(
        state_content(&alice, &by_default, "m.room.join_rules", "").await["join_rule"],
        "invite"
    );

    let mut rooms = joined_rooms(&alice).await;
    rooms.sort();
    let mut expected = vec![
        public,
        private,
        trusted,
        trusted_v11,
        by_visibility,
        by_default,
    ];
    expected.sort();
    assert_eq!(rooms, expected, "alice's joined rooms");
    assert!(joined_rooms(&bob).await.is_empty(), "bob only has invites");
}

/// 11, continued. Room version 12 (MSC4289, spec 1.16): the creator has
/// infinite power and is not listed in `m.room.power_levels`, and the
/// tombstone level is above `state_default`.
async fn a11_room_v12_creators(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;

    let room = alice
        .create_room(&json!({ "preset": "public_chat", "room_version": "12" }))
        .await;
    let create = state_content(&alice, &room, "m.room.create", "").await;
    assert_eq!(create["room_version"], "12", "{create}");
    assert!(
        create.get("creator").is_none(),
        "v11+ create content has no creator: {create}"
    );
    let power = state_content(&alice, &room, "m.room.power_levels", "").await;
    assert!(
        power["users"].get(alice.user_id()).is_none(),
        "v12: the creator must not be listed in users: {power}"
    );
    let state_default = power["state_default"].as_i64().unwrap_or(50);
    let tombstone = power["events"]["m.room.tombstone"].as_i64();
    assert!(
        tombstone.is_some_and(|level| level > state_default),
        "v12: m.room.tombstone level must be above state_default: {power}"
    );
    // The creator can still do everything, e.g. set the name.
    assert_ok(
        &alice
            .put_state(&room, "m.room.name", "", &json!({ "name": "v12" }))
            .await,
        "v12 creator sets the name",
    );
}

/// 11, continued. In room version 12 the spec says the server SHOULD add
/// `trusted_private_chat` invitees to `additional_creators` (and so must not
/// list them in `m.room.power_levels`).
async fn a11_v12_trusted_invitees_become_creators(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let trusted = alice
        .create_room(&json!({
            "preset": "trusted_private_chat",
            "room_version": "12",
            "invite": [bob.user_id()],
        }))
        .await;
    let create = state_content(&alice, &trusted, "m.room.create", "").await;
    let creators = create["additional_creators"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        creators.contains(&json!(bob.user_id())),
        "v12 trusted_private_chat: invitees should become additional_creators: {create}"
    );
    let power = state_content(&alice, &trusted, "m.room.power_levels", "").await;
    assert!(
        power["users"].get(bob.user_id()).is_none(),
        "v12: an additional creator must not be listed in users: {power}"
    );
}

/// 12. `createRoom` with an unknown room version is rejected with 400
///     `M_UNSUPPORTED_ROOM_VERSION`.
async fn a12_unsupported_room_version(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    for version in ["999", "org.example.nonexistent"] {
        assert_error(
            &alice
                .post(
                    "/_matrix/client/v3/createRoom",
                    &json!({ "room_version": version }),
                )
                .await,
            400,
            "M_UNSUPPORTED_ROOM_VERSION",
            &format!("createRoom with room_version {version}"),
        );
    }
    assert!(joined_rooms(&alice).await.is_empty(), "no room was created");
}

/// 14. A second local user joins a public room by ID and also by alias;
///     `/joined_members` shows both of them.
async fn a14_join_public_room_by_id_and_alias(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let alias_name = unique_name("lobby");
    let alias = format!("#{alias_name}:{}", hs.server_name());
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "room_alias_name": alias_name }))
        .await;
    assert_eq!(
        state_content(&alice, &room, "m.room.canonical_alias", "").await["alias"],
        alias
    );
    assert_eq!(joined_members(&alice, &room).await, set(&[&alice]));

    // By ID, through /rooms/{roomId}/join.
    let response = bob
        .post(&Client::room_path(&room, "/join"), &json!({}))
        .await;
    assert_eq!(
        assert_ok(&response, "bob joins by /rooms/{id}/join")["room_id"],
        room
    );
    assert_eq!(joined_members(&alice, &room).await, set(&[&alice, &bob]));
    assert_eq!(joined_members(&bob, &room).await, set(&[&alice, &bob]));
    assert_eq!(joined_rooms(&bob).await, vec![room.clone()]);
    // Joining again is harmless.
    join_ok(&bob, &room, &room).await;

    // By alias, through /join/{roomIdOrAlias}.
    join_ok(&carol, &alias, &room).await;
    assert_eq!(
        joined_members(&bob, &room).await,
        set(&[&alice, &bob, &carol])
    );
    let members = memberships(&carol, &room, "").await;
    for user in [&alice, &bob, &carol] {
        assert_eq!(members[user.user_id()], "join", "{members:?}");
    }
    assert_eq!(joined_rooms(&carol).await, vec![room.clone()]);
}

/// 15. In an invite-only room an uninvited join gets 403; after an invite
///     the invitee can join.
async fn a15_invite_only_room_join_rules(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;

    assert_error(
        &bob.join(&room).await,
        403,
        "M_FORBIDDEN",
        "uninvited join to an invite-only room",
    );
    assert_error(
        &carol.invite(&room, bob.user_id()).await,
        403,
        "M_FORBIDDEN",
        "a non-member invites",
    );
    assert_ok_object(
        &alice.invite(&room, bob.user_id()).await,
        "alice invites bob",
    );
    assert_eq!(
        memberships(&alice, &room, "").await[bob.user_id()],
        "invite"
    );
    assert_eq!(joined_members(&alice, &room).await, set(&[&alice]));
    join_ok(&bob, &room, &room).await;
    assert_eq!(joined_members(&alice, &room).await, set(&[&alice, &bob]));
    // Carol is still not invited.
    assert_error(
        &carol.join(&room).await,
        403,
        "M_FORBIDDEN",
        "carol joins without an invite",
    );
}

/// 16. An invitee can reject; the inviter then sees `leave`.
async fn a16_reject_invite(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat", "invite": [bob.user_id()] }))
        .await;
    assert_eq!(
        memberships(&alice, &room, "").await[bob.user_id()],
        "invite"
    );
    assert_ok_object(&bob.leave(&room).await, "bob rejects the invite");

    let members = memberships(&alice, &room, "").await;
    assert_eq!(members[bob.user_id()], "leave", "{members:?}");
    assert_eq!(members[alice.user_id()], "join", "{members:?}");
    let left = memberships(&alice, &room, "?membership=leave").await;
    assert_eq!(
        left.keys().cloned().collect::<BTreeSet<_>>(),
        set(&[&bob]),
        "membership=leave"
    );
    let not_left = memberships(&alice, &room, "?not_membership=leave").await;
    assert_eq!(
        not_left.keys().cloned().collect::<BTreeSet<_>>(),
        set(&[&alice]),
        "not_membership=leave"
    );
    assert_eq!(joined_members(&alice, &room).await, set(&[&alice]));
    assert!(joined_rooms(&bob).await.is_empty());
    // The invite is used up.
    assert_error(
        &bob.join(&room).await,
        403,
        "M_FORBIDDEN",
        "joining after rejecting the invite",
    );
}

/// 17. A user who leaves can still read state and messages up to their
///     leave, but nothing sent later.
async fn a17_leave_then_history_up_to_leave(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Before" }))
        .await;
    join_ok(&bob, &room, &room).await;
    let before1 = alice.send_text(&room, "before 1").await;
    let before2 = bob.send_text(&room, "before 2").await;
    assert_ok_object(&bob.leave(&room).await, "bob leaves");
    let after1 = alice.send_text(&room, "after 1").await;
    assert_ok(
        &alice
            .put_state(&room, "m.room.name", "", &json!({ "name": "After" }))
            .await,
        "rename after the leave",
    );
    let after2 = alice.send_text(&room, "after 2").await;

    let seen = bob.paginate_all(&room, "b", 10).await;
    let ids: HashSet<String> = event_ids(&seen).into_iter().collect();
    assert!(
        ids.contains(&before1) && ids.contains(&before2),
        "bob sees messages from before his leave: {seen:?}"
    );
    assert!(
        !ids.contains(&after1) && !ids.contains(&after2),
        "bob must not see messages sent after his leave: {seen:?}"
    );
    assert_eq!(
        message_bodies(&seen),
        vec!["before 2", "before 1"],
        "bob's view of the messages, newest first"
    );
    // Forwards gives the same, oldest first.
    let forward = bob.paginate_all(&room, "f", 10).await;
    assert_eq!(message_bodies(&forward), vec!["before 1", "before 2"]);

    assert_ok(
        &bob.get_event(&room, &before1).await,
        "GET /event from before the leave",
    );
    assert_error(
        &bob.get_event(&room, &after1).await,
        404,
        "M_NOT_FOUND",
        "GET /event sent after the leave",
    );

    // State as of the leave.
    assert_eq!(
        state_content(&bob, &room, "m.room.name", "").await["name"],
        "Before",
        "state as of bob's leave"
    );
    let response = bob.get(&Client::room_path(&room, "/state")).await;
    let state = assert_ok(&response, "bob GETs /state after leaving");
    let state = state.as_array().expect("state is an array");
    let name = state
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .expect("m.room.name in /state");
    assert_eq!(name["content"]["name"], "Before", "{name}");
    let own = state
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id())
        .expect("bob's member event in /state");
    assert_eq!(own["content"]["membership"], "leave", "{own}");
    // Alice sees the current state.
    assert_eq!(
        state_content(&alice, &room, "m.room.name", "").await["name"],
        "After"
    );
}

/// 17, continued. The spec's history visibility rules let a user see their
/// own membership events if their membership before *or* after the event
/// allows it, so a user who left sees their own leave in `/messages`.
async fn a17_left_user_sees_own_leave(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    join_ok(&bob, &room, &room).await;
    alice.send_text(&room, "before").await;
    assert_ok_object(&bob.leave(&room).await, "bob leaves");
    alice.send_text(&room, "after").await;

    let seen = bob.paginate_all(&room, "b", 10).await;
    let leave = seen
        .iter()
        .find(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id()
                && e["content"]["membership"] == "leave"
        })
        .unwrap_or_else(|| panic!("bob does not see his own leave in /messages: {seen:?}"));
    let leave_id = leave["event_id"].as_str().expect("event_id").to_string();
    assert_eq!(
        seen[0]["event_id"], leave_id,
        "the leave is the newest event bob sees: {seen:?}"
    );
    assert_ok(
        &bob.get_event(&room, &leave_id).await,
        "bob GETs his own leave event",
    );
}

/// 18. A sufficiently powerful member can kick or ban; a banned user cannot
///     rejoin until unbanned; non-present users cannot kick or ban.
async fn a18_kick_ban_unban(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let dave = hs.register_user("dave").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    join_ok(&bob, &room, &room).await;
    join_ok(&carol, &room, &room).await;

    // Power level 0 cannot kick or ban.
    for action in ["kick", "ban"] {
        assert_error(
            &bob.membership_action(&room, action, carol.user_id()).await,
            403,
            "M_FORBIDDEN",
            &format!("power-0 member {action}s"),
        );
    }
    // Someone not in the room cannot either.
    for action in ["kick", "ban"] {
        assert_error(
            &dave.membership_action(&room, action, carol.user_id()).await,
            403,
            "M_FORBIDDEN",
            &format!("non-member {action}s"),
        );
    }
    assert_eq!(
        joined_members(&alice, &room).await,
        set(&[&alice, &bob, &carol])
    );

    // The creator kicks; a kicked user may come back to a public room.
    let kick = alice
        .post(
            &Client::room_path(&room, "/kick"),
            &json!({ "user_id": carol.user_id(), "reason": "testing" }),
        )
        .await;
    assert_ok_object(&kick, "alice kicks carol");
    let member = state_content(&alice, &room, "m.room.member", carol.user_id()).await;
    assert_eq!(member["membership"], "leave", "{member}");
    assert_eq!(member["reason"], "testing", "{member}");
    join_ok(&carol, &room, &room).await;

    // Kicking someone who is not in the room fails.
    assert_error(
        &alice.membership_action(&room, "kick", dave.user_id()).await,
        403,
        "M_FORBIDDEN",
        "kick a user who is not in the room",
    );

    // Ban: out, and cannot rejoin.
    assert_ok_object(
        &alice.membership_action(&room, "ban", carol.user_id()).await,
        "alice bans carol",
    );
    assert_eq!(memberships(&alice, &room, "").await[carol.user_id()], "ban");
    assert_eq!(joined_members(&alice, &room).await, set(&[&alice, &bob]));
    assert_error(
        &carol.join(&room).await,
        403,
        "M_FORBIDDEN",
        "a banned user rejoins",
    );
    assert_error(
        &bob.membership_action(&room, "unban", carol.user_id()).await,
        403,
        "M_FORBIDDEN",
        "power-0 member unbans",
    );
    assert_error(
        &carol.join(&room).await,
        403,
        "M_FORBIDDEN",
        "a banned user rejoins after a failed unban",
    );

    // Unban: back to leave, and joining works again.
    assert_ok_object(
        &alice
            .membership_action(&room, "unban", carol.user_id())
            .await,
        "alice unbans carol",
    );
    assert_eq!(
        memberships(&alice, &room, "").await[carol.user_id()],
        "leave"
    );
    join_ok(&carol, &room, &room).await;
    assert_eq!(
        joined_members(&alice, &room).await,
        set(&[&alice, &bob, &carol])
    );

    // A ban also works on someone who never joined.
    assert_ok_object(
        &alice.membership_action(&room, "ban", dave.user_id()).await,
        "ban a user who never joined",
    );
    assert_error(
        &dave.join(&room).await,
        403,
        "M_FORBIDDEN",
        "pre-emptively banned user joins",
    );
}

/// 21. `PUT /send/m.room.message/{txn}` returns an event_id; the same txn on
///     the same device returns the same event_id, while another device gets
///     a new event.
async fn a21_send_txn_idempotency(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = alice.create_room(&json!({})).await;
    let content = json!({ "msgtype": "m.text", "body": "only once" });

    let first = alice
        .send_event(&room, "m.room.message", "txn-1", &content)
        .await;
    let first_id = assert_ok(&first, "first send")["event_id"].clone();
    assert!(
        first_id.as_str().is_some_and(|id| id.starts_with('$')),
        "event_id: {first_id}"
    );
    let again = alice
        .send_event(&room, "m.room.message", "txn-1", &content)
        .await;
    assert_eq!(
        assert_ok(&again, "same txn, same device")["event_id"],
        first_id,
        "a retried transaction returns the same event"
    );

    let other_device = alice.new_device().await;
    let other = other_device
        .send_event(&room, "m.room.message", "txn-1", &content)
        .await;
    let other_id = assert_ok(&other, "same txn, other device")["event_id"].clone();
    assert!(other_id.is_string(), "{other_id}");
    assert_ne!(other_id, first_id, "another device's txn is a new event");
    let other_again = other_device
        .send_event(&room, "m.room.message", "txn-1", &content)
        .await;
    assert_eq!(
        assert_ok(&other_again, "other device retries")["event_id"],
        other_id
    );

    let events = alice.paginate_all(&room, "f", 100).await;
    let messages: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().expect("event_id").to_string())
        .collect();
    assert_eq!(
        messages,
        vec![
            first_id.as_str().unwrap().to_string(),
            other_id.as_str().unwrap().to_string()
        ],
        "/messages shows exactly the two distinct events"
    );
}

/// 23. `/messages?dir=b` returns newest first with `start`/`end`; following
///     `end` walks the whole history exactly once, with no gaps; `dir=f`
///     works forwards.
async fn a23_messages_pagination(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let mut sent = Vec::new();
    for i in 0..25 {
        sent.push(alice.send_text(&room, &format!("msg {i}")).await);
    }

    // Backwards, page by page.
    let mut from: Option<String> = None;
    let mut backward = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 100, "backward pagination does not end");
        let response = alice
            .messages(&room, "b", from.as_deref(), None, Some(10))
            .await;
        let page = assert_ok(&response, "GET /messages dir=b").clone();
        assert!(page["start"].is_string(), "page without start: {page}");
        let chunk = page["chunk"].as_array().expect("chunk").clone();
        assert!(chunk.len() <= 10, "more than limit: {page}");
        backward.extend(chunk.iter().cloned());
        match page["end"].as_str() {
            Some(end) => {
                assert!(!chunk.is_empty(), "empty page with an end: {page}");
                from = Some(end.to_string());
            }
            None => break,
        }
    }
    let backward_ids = event_ids(&backward);
    assert_unique(&backward_ids, "backward pagination");
    let expected: Vec<String> = (0..25).rev().map(|i| format!("msg {i}")).collect();
    assert_eq!(message_bodies(&backward), expected, "newest first, no gaps");
    let mut newest_first = sent.clone();
    newest_first.reverse();
    assert_eq!(
        &backward_ids[..25],
        &newest_first[..],
        "the newest 25 events"
    );
    assert_eq!(
        backward.last().expect("events")["type"],
        "m.room.create",
        "history starts at m.room.create"
    );
    assert!(
        pages >= 3,
        "25 messages and setup events need 3+ pages of 10"
    );

    // Forwards from the beginning.
    let forward = alice.paginate_all(&room, "f", 10).await;
    let mut forward_ids = event_ids(&forward);
    assert_eq!(forward[0]["type"], "m.room.create");
    let expected: Vec<String> = (0..25).map(|i| format!("msg {i}")).collect();
    assert_eq!(message_bodies(&forward), expected, "oldest first, no gaps");
    forward_ids.reverse();
    assert_eq!(
        forward_ids, backward_ids,
        "both directions see the same events"
    );

    // A filter narrows the chunk to the given types.
    let filter = encode(&json!({ "types": ["m.room.message"] }).to_string());
    let response = alice
        .get(&Client::room_path(
            &room,
            &format!("/messages?dir=b&limit=5&filter={filter}"),
        ))
        .await;
    let page = assert_ok(&response, "/messages with a types filter");
    let chunk = page["chunk"].as_array().expect("chunk");
    assert_eq!(chunk.len(), 5, "{page}");
    assert!(
        chunk.iter().all(|e| e["type"] == "m.room.message"),
        "{page}"
    );
    let filter = encode(&json!({ "not_types": ["m.room.message"] }).to_string());
    let response = alice
        .get(&Client::room_path(
            &room,
            &format!("/messages?dir=b&limit=50&filter={filter}"),
        ))
        .await;
    let page = assert_ok(&response, "/messages with a not_types filter");
    let chunk = page["chunk"].as_array().expect("chunk");
    assert!(!chunk.is_empty(), "{page}");
    assert!(
        chunk.iter().all(|e| e["type"] != "m.room.message"),
        "{page}"
    );
}

/// 23, continued. A page's `start` and `end` bracket exactly its chunk: asking
/// again with `to` set to the page's `end` gives the same events, and
/// paginating forwards from `end` begins with the page's last event.
async fn a23_messages_to_bounds_page(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    for i in 0..25 {
        alice.send_text(&room, &format!("msg {i}")).await;
    }

    // `to` bounds a page: the second backward page of 5, asked for with
    // from = end of the first and to = end of the second.
    let first = alice.messages(&room, "b", None, None, Some(5)).await;
    let first = assert_ok(&first, "first page of 5").clone();
    let end1 = first["end"].as_str().expect("end of page 1").to_string();
    let second = alice.messages(&room, "b", Some(&end1), None, Some(5)).await;
    let second = assert_ok(&second, "second page of 5").clone();
    let end2 = second["end"].as_str().expect("end of page 2").to_string();
    let second_bodies = message_bodies(second["chunk"].as_array().expect("chunk"));
    assert_eq!(
        second_bodies,
        vec!["msg 19", "msg 18", "msg 17", "msg 16", "msg 15"]
    );
    let bounded = alice
        .messages(&room, "b", Some(&end1), Some(&end2), Some(20))
        .await;
    let bounded = assert_ok(&bounded, "dir=b with to").clone();
    assert_eq!(
        message_bodies(bounded["chunk"].as_array().expect("chunk")),
        second_bodies,
        "dir=b stops at `to`: {bounded}"
    );
    let bounded = alice
        .messages(&room, "f", Some(&end2), Some(&end1), Some(20))
        .await;
    let bounded = assert_ok(&bounded, "dir=f with to").clone();
    assert_eq!(
        message_bodies(bounded["chunk"].as_array().expect("chunk")),
        vec!["msg 15", "msg 16", "msg 17", "msg 18", "msg 19"],
        "dir=f from the older token stops at `to`: {bounded}"
    );
}

/// 24. `/rooms/{id}/event/{eid}` works for members, and history visibility
///     (`joined`, `shared`, `invited`, `world_readable`) decides access to
///     events from before joining.
async fn a24_event_and_history_visibility(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let dave = hs.register_user("dave").await;

    // shared (the default): a later joiner sees earlier messages.
    let shared = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let early = alice.send_text(&shared, "early").await;
    let response = alice.get_event(&shared, &early).await;
    let event = assert_ok(&response, "member GETs /event");
    assert_eq!(event["event_id"], early, "{event}");
    assert_eq!(event["room_id"], shared, "{event}");
    assert_eq!(event["sender"], alice.user_id(), "{event}");
    assert_eq!(event["content"]["body"], "early", "{event}");
    assert!(event["origin_server_ts"].is_u64(), "{event}");
    join_ok(&bob, &shared, &shared).await;
    assert_eq!(
        assert_ok(
            &bob.get_event(&shared, &early).await,
            "shared: later joiner GETs /event"
        )["content"]["body"],
        "early"
    );
    assert!(
        visible_ids(&bob, &shared).await.contains(&early),
        "shared: the later joiner sees the earlier message in /messages"
    );
    assert_error(
        &alice.get_event(&shared, "$doesnotexist").await,
        404,
        "M_NOT_FOUND",
        "GET /event of an unknown event",
    );
    // Not world-readable: a non-member reads nothing.
    assert_error(
        &dave.messages(&shared, "b", None, None, Some(10)).await,
        403,
        "M_FORBIDDEN",
        "a non-member reads /messages of a shared room",
    );

    // joined: a later joiner sees only what was sent after they joined.
    let joined = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(
        &alice
            .put_state(
                &joined,
                "m.room.history_visibility",
                "",
                &json!({ "history_visibility": "joined" }),
            )
            .await,
        "set history_visibility joined",
    );
    let hidden = alice.send_text(&joined, "before carol").await;
    join_ok(&carol, &joined, &joined).await;
    let shown = alice.send_text(&joined, "after carol").await;
    assert_error(
        &carol.get_event(&joined, &hidden).await,
        404,
        "M_NOT_FOUND",
        "joined: later joiner GETs an earlier event",
    );
    assert_ok(
        &carol.get_event(&joined, &shown).await,
        "joined: later joiner GETs a later event",
    );
    let seen = visible_ids(&carol, &joined).await;
    assert!(!seen.contains(&hidden), "joined: earlier message leaked");
    assert!(seen.contains(&shown), "joined: later message missing");
    assert_ok(
        &alice.get_event(&joined, &hidden).await,
        "the sender sees it",
    );

    // invited: visible from the invite on.
    let invited = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    assert_ok(
        &alice
            .put_state(
                &invited,
                "m.room.history_visibility",
                "",
                &json!({ "history_visibility": "invited" }),
            )
            .await,
        "set history_visibility invited",
    );
    let before_invite = alice.send_text(&invited, "before invite").await;
    assert_ok_object(
        &alice.invite(&invited, carol.user_id()).await,
        "invite carol",
    );
    let after_invite = alice.send_text(&invited, "after invite").await;
    join_ok(&carol, &invited, &invited).await;
    let after_join = alice.send_text(&invited, "after join").await;
    let seen = visible_ids(&carol, &invited).await;
    assert!(
        !seen.contains(&before_invite),
        "invited: pre-invite message leaked"
    );
    assert!(
        seen.contains(&after_invite),
        "invited: post-invite message missing"
    );
    assert!(
        seen.contains(&after_join),
        "invited: post-join message missing"
    );
    assert_error(
        &carol.get_event(&invited, &before_invite).await,
        404,
        "M_NOT_FOUND",
        "invited: GET an event from before the invite",
    );
    assert_ok(
        &carol.get_event(&invited, &after_invite).await,
        "invited: GET an event from after the invite",
    );

    // world_readable: anyone may read, member or not.
    let open = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    assert_ok(
        &alice
            .put_state(
                &open,
                "m.room.history_visibility",
                "",
                &json!({ "history_visibility": "world_readable" }),
            )
            .await,
        "set history_visibility world_readable",
    );
    let public_message = alice.send_text(&open, "for everyone").await;
    let seen = dave.paginate_all(&open, "b", 10).await;
    assert!(
        event_ids(&seen).contains(&public_message),
        "world_readable: a non-member reads /messages: {seen:?}"
    );
    assert_eq!(
        assert_ok(
            &dave.get_event(&open, &public_message).await,
            "world_readable: a non-member GETs /event"
        )["content"]["body"],
        "for everyone"
    );
}

/// 29. A state PUT followed by GET returns the content; an identical repeat
///     PUT is harmless; `GET /state` returns the full current state.
async fn a29_state_put_get_repeat(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let content = json!({ "colour": "blue", "n": 1 });

    let first = alice
        .put_state(&room, "com.example.colour", "sky", &content)
        .await;
    let first_id = assert_ok(&first, "PUT state")["event_id"].clone();
    assert!(first_id.is_string(), "{first_id}");
    assert_eq!(
        state_content(&alice, &room, "com.example.colour", "sky").await,
        content
    );
    let repeat = alice
        .put_state(&room, "com.example.colour", "sky", &content)
        .await;
    assert_eq!(
        assert_ok(&repeat, "identical repeat PUT")["event_id"],
        first_id,
        "an identical repeat gives the same event"
    );
    assert_eq!(
        state_content(&alice, &room, "com.example.colour", "sky").await,
        content
    );

    // A different value replaces it.
    let changed = json!({ "colour": "grey" });
    let second = alice
        .put_state(&room, "com.example.colour", "sky", &changed)
        .await;
    let second_id = assert_ok(&second, "changed PUT")["event_id"].clone();
    assert_ne!(second_id, first_id);
    assert_eq!(
        state_content(&alice, &room, "com.example.colour", "sky").await,
        changed
    );
    let response = alice
        .get(&Client::room_path(
            &room,
            "/state/com.example.colour/sky?format=event",
        ))
        .await;
    let event = assert_ok(&response, "GET state ?format=event");
    assert_eq!(event["event_id"], second_id, "{event}");
    assert_eq!(event["state_key"], "sky", "{event}");
    assert_eq!(event["content"], changed, "{event}");

    // Empty state key, without the trailing slash.
    let response = alice
        .put(
            &Client::room_path(&room, "/state/com.example.flag"),
            &json!({ "on": true }),
        )
        .await;
    assert_ok(&response, "PUT state with an empty key, no slash");
    assert_eq!(
        state_content(&alice, &room, "com.example.flag", "").await,
        json!({ "on": true })
    );

    assert_error(
        &alice
            .get_state(&room, "com.example.colour", "nosuchkey")
            .await,
        404,
        "M_NOT_FOUND",
        "GET unset state",
    );

    // The whole current state.
    let response = alice.get(&Client::room_path(&room, "/state")).await;
    let state = assert_ok(&response, "GET /state")
        .as_array()
        .expect("array")
        .clone();
    let mut keys = HashSet::new();
    for event in &state {
        let key = (
            event["type"].as_str().expect("type").to_string(),
            event["state_key"].as_str().expect("state_key").to_string(),
        );
        assert!(keys.insert(key.clone()), "{key:?} twice in /state");
        assert!(event["event_id"].is_string(), "{event}");
        assert!(event["sender"].is_string(), "{event}");
    }
    for key in [
        ("m.room.create", ""),
        ("m.room.member", alice.user_id()),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.history_visibility", ""),
        ("com.example.colour", "sky"),
        ("com.example.flag", ""),
    ] {
        assert!(
            keys.contains(&(key.0.to_string(), key.1.to_string())),
            "{key:?} missing from /state: {state:?}"
        );
    }
    let colour = state
        .iter()
        .find(|e| e["type"] == "com.example.colour")
        .expect("colour");
    assert_eq!(colour["content"], changed, "/state holds the current value");
    assert_eq!(colour["event_id"], second_id);
}

/// 30. State that needs a higher power level gives 403, and succeeds once
///     the user is promoted in `m.room.power_levels`.
async fn a30_state_needs_power_level(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    join_ok(&bob, &room, &room).await;

    assert_error(
        &bob.put_state(&room, "m.room.name", "", &json!({ "name": "Bob's" }))
            .await,
        403,
        "M_FORBIDDEN",
        "power-0 member sets the name",
    );
    // Ordinary messages need no power.
    bob.send_text(&room, "hello").await;

    let mut power = state_content(&alice, &room, "m.room.power_levels", "").await;
    power["users"][bob.user_id()] = json!(50);
    assert_ok(
        &alice
            .put_state(&room, "m.room.power_levels", "", &power)
            .await,
        "alice promotes bob to 50",
    );
    assert_eq!(
        state_content(&bob, &room, "m.room.power_levels", "").await["users"][bob.user_id()],
        50
    );
    assert_ok(
        &bob.put_state(&room, "m.room.name", "", &json!({ "name": "Bob's" }))
            .await,
        "bob at 50 sets the name",
    );
    assert_eq!(
        state_content(&alice, &room, "m.room.name", "").await["name"],
        "Bob's"
    );

    // Still not enough to change power levels, or to raise himself.
    let mut raise = power.clone();
    raise["users"][bob.user_id()] = json!(100);
    assert_error(
        &bob.put_state(&room, "m.room.power_levels", "", &raise)
            .await,
        403,
        "M_FORBIDDEN",
        "bob raises himself to 100",
    );
}

/// 31. After a redaction the original event loses its content in `/event`
///     and `/messages`, and the redaction event itself is visible.
async fn a31_redaction(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    join_ok(&bob, &room, &room).await;
    let secret = alice.send_text(&room, "secret").await;
    let alices_other = alice.send_text(&room, "alice's other").await;
    let bobs = bob.send_text(&room, "bob's own").await;

    let redact_path = |event_id: &str, txn: &str| {
        Client::room_path(
            &room,
            &format!("/redact/{}/{}", encode(event_id), encode(txn)),
        )
    };
    let response = alice
        .put(&redact_path(&secret, "r1"), &json!({ "reason": "oops" }))
        .await;
    let redaction_id = assert_ok(&response, "alice redacts her event")["event_id"]
        .as_str()
        .expect("redaction event_id")
        .to_string();
    assert_ne!(redaction_id, secret);

    let response = alice.get_event(&room, &secret).await;
    let redacted = assert_ok(&response, "GET the redacted event");
    assert_eq!(
        redacted["content"],
        json!({}),
        "content is gone: {redacted}"
    );
    assert_eq!(redacted["type"], "m.room.message", "{redacted}");
    let because = &redacted["unsigned"]["redacted_because"];
    assert_eq!(
        because["event_id"], redaction_id,
        "redacted_because: {redacted}"
    );
    assert_eq!(because["type"], "m.room.redaction", "{redacted}");

    let events = bob.paginate_all(&room, "b", 50).await;
    let in_timeline = events
        .iter()
        .find(|e| e["event_id"] == secret)
        .unwrap_or_else(|| panic!("redacted event missing from /messages: {events:?}"));
    assert!(
        in_timeline["content"].get("body").is_none(),
        "/messages still shows the body: {in_timeline}"
    );
    let redaction = events
        .iter()
        .find(|e| e["event_id"] == redaction_id)
        .unwrap_or_else(|| panic!("redaction event missing from /messages: {events:?}"));
    assert_eq!(redaction["type"], "m.room.redaction");
    // Room versions 11+ carry `redacts` in the content, older ones at the top
    // level; the spec asks servers to give both forms to clients.
    let redacts = redaction["content"]
        .get("redacts")
        .or(redaction.get("redacts"))
        .cloned();
    assert_eq!(redacts, Some(json!(secret)), "{redaction}");
    assert_eq!(redaction["content"]["reason"], "oops", "{redaction}");
    assert!(
        !message_bodies(&events).contains(&"secret".to_string()),
        "the body survives somewhere in /messages: {events:?}"
    );

    // Power 0 may redact only their own events.
    assert_error(
        &bob.put(&redact_path(&alices_other, "r2"), &json!({})).await,
        403,
        "M_FORBIDDEN",
        "power-0 member redacts someone else's event",
    );
    assert_eq!(
        assert_ok(
            &bob.get_event(&room, &alices_other).await,
            "unredacted event"
        )["content"]["body"],
        "alice's other"
    );
    assert_ok(
        &bob.put(&redact_path(&bobs, "r3"), &json!({})).await,
        "bob redacts his own event",
    );
    assert_eq!(
        assert_ok(&bob.get_event(&room, &bobs).await, "bob's redacted event")["content"],
        json!({})
    );
}

/// Bad input to the room endpoints.
async fn rooms_bad_input(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let outsider = hs.register_user("outsider").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let text = json!({ "msgtype": "m.text", "body": "hi" });

    // A room that does not exist: 403 M_FORBIDDEN (not in the room) or 404
    // M_NOT_FOUND are both reasonable.
    let unknown_room = format!("!doesnotexist:{}", hs.server_name());
    let (status, body) = alice
        .send_event(&unknown_room, "m.room.message", "t1", &text)
        .await;
    assert!(
        (status == 403 && body["errcode"] == "M_FORBIDDEN")
            || (status == 404 && body["errcode"] == "M_NOT_FOUND"),
        "send to an unknown room: expected 403 M_FORBIDDEN or 404 M_NOT_FOUND, got {status} {body}"
    );
    // An existing room the sender is not in.
    assert_error(
        &outsider
            .send_event(&room, "m.room.message", "t1", &text)
            .await,
        403,
        "M_FORBIDDEN",
        "non-member sends",
    );
    assert_error(
        &outsider
            .put_state(&room, "m.room.topic", "", &json!({ "topic": "x" }))
            .await,
        403,
        "M_FORBIDDEN",
        "non-member sets state",
    );

    // Content that is JSON but not an object, and a body that is not JSON.
    let send_path = |txn: &str| Client::room_path(&room, &format!("/send/m.room.message/{txn}"));
    assert_error(
        &alice
            .request_raw(
                Method::PUT,
                &send_path("array"),
                Some((b"[1, 2]".to_vec(), "application/json")),
            )
            .await,
        400,
        "M_BAD_JSON",
        "event content that is a JSON array",
    );
    assert_error(
        &alice
            .request_raw(
                Method::PUT,
                &send_path("notjson"),
                Some((b"{not json".to_vec(), "application/json")),
            )
            .await,
        400,
        "M_NOT_JSON",
        "event content that is not JSON",
    );

    // An event larger than the 64 KiB PDU limit.
    let big = json!({ "msgtype": "m.text", "body": "x".repeat(70 * 1024) });
    let (status, body) = alice.send_event(&room, "m.room.message", "big", &big).await;
    assert!(
        (status == 413 && body["errcode"] == "M_TOO_LARGE")
            || (status == 400 && body["errcode"].is_string()),
        "70 KB event: expected 413 M_TOO_LARGE or 400, got {status} {body}"
    );

    // m.room.canonical_alias must name aliases of this room.
    let missing = format!("#{}:{}", unique_name("nosuchalias"), hs.server_name());
    assert_error(
        &alice
            .put_state(
                &room,
                "m.room.canonical_alias",
                "",
                &json!({ "alias": missing }),
            )
            .await,
        400,
        "M_BAD_ALIAS",
        "canonical_alias naming a nonexistent alias",
    );
    let other_alias_name = unique_name("elsewhere");
    let other_alias = format!("#{other_alias_name}:{}", hs.server_name());
    alice
        .create_room(&json!({ "room_alias_name": other_alias_name }))
        .await;
    assert_error(
        &alice
            .put_state(
                &room,
                "m.room.canonical_alias",
                "",
                &json!({ "alias": other_alias }),
            )
            .await,
        400,
        "M_BAD_ALIAS",
        "canonical_alias naming another room's alias",
    );
    assert_error(
        &alice
            .put_state(
                &room,
                "m.room.canonical_alias",
                "",
                &json!({ "alt_aliases": [other_alias] }),
            )
            .await,
        400,
        "M_BAD_ALIAS",
        "alt_aliases naming another room's alias",
    );

    // Joining an alias that does not exist.
    assert_error(
        &alice.join(&missing).await,
        404,
        "M_NOT_FOUND",
        "join an unknown alias",
    );

    // Redacting an unknown event.
    assert_error(
        &alice
            .put(
                &Client::room_path(&room, "/redact/%24doesnotexist/r1"),
                &json!({}),
            )
            .await,
        404,
        "M_NOT_FOUND",
        "redact an unknown event",
    );

    // A pagination token that is not one.
    let (status, body) = alice
        .messages(&room, "b", Some("not-a-token"), None, Some(5))
        .await;
    assert_eq!(status, 400, "/messages with a bogus from token: {body}");
}

/// Concurrent senders lose nothing: four users send 25 messages each into
/// two rooms at once, and each room ends up with exactly their 100
/// messages, each once, every sender's in the order sent.
async fn rooms_concurrent_sends_no_loss(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        users.push(hs.register_user(name).await);
    }
    let mut rooms = Vec::new();
    for _ in 0..2 {
        let room = users[0]
            .create_room(&json!({ "preset": "public_chat" }))
            .await;
        for user in &users[1..] {
            join_ok(user, &room, &room).await;
        }
        rooms.push(room);
    }

    let mut tasks = tokio::task::JoinSet::new();
    for room in &rooms {
        for user in &users {
            let user = user.clone();
            let room = room.clone();
            tasks.spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25 {
                    ids.push(
                        user.send_text(&room, &format!("{} {i}", user.user_id()))
                            .await,
                    );
                }
                ids
            });
        }
    }
    let mut sent = HashSet::new();
    while let Some(result) = tasks.join_next().await {
        for id in result.expect("sender task") {
            assert!(sent.insert(id.clone()), "event ID {id} handed out twice");
        }
    }
    assert_eq!(sent.len(), 200);

    for room in &rooms {
        let events = users[0].paginate_all(room, "f", 30).await;
        let ids = event_ids(&events);
        assert_unique(&ids, "forward pagination after concurrent sends");
        let messages: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .collect();
        assert_eq!(messages.len(), 100, "messages in {room}");
        for user in &users {
            let bodies: Vec<&str> = messages
                .iter()
                .filter(|e| e["sender"] == user.user_id())
                .map(|e| e["content"]["body"].as_str().expect("body"))
                .collect();
            let expected: Vec<String> =
                (0..25).map(|i| format!("{} {i}", user.user_id())).collect();
            assert_eq!(bodies, expected, "{}'s messages in order", user.user_id());
        }
        for event in &messages {
            assert!(
                sent.contains(event["event_id"].as_str().expect("event_id")),
                "unexpected message {event}"
            );
        }
        // The setup events are all there too: create, four joins, ...
        let joins = events
            .iter()
            .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
            .count();
        assert_eq!(joins, 4, "join events in {room}");
        assert_eq!(events[0]["type"], "m.room.create");

        let mut backward = event_ids(&users[3].paginate_all(room, "b", 30).await);
        backward.reverse();
        assert_eq!(backward, ids, "backward pagination sees the same events");
    }
}

backend_tests!(
    a11_create_room_presets_and_options,
    a11_room_v12_creators,
    a11_v12_trusted_invitees_become_creators,
    a12_unsupported_room_version,
    a14_join_public_room_by_id_and_alias,
    a15_invite_only_room_join_rules,
    a16_reject_invite,
    a17_leave_then_history_up_to_leave,
    a17_left_user_sees_own_leave,
    a18_kick_ban_unban,
    a21_send_txn_idempotency,
    a23_messages_pagination,
    a23_messages_to_bounds_page,
    a24_event_and_history_visibility,
    a29_state_put_get_repeat,
    a30_state_needs_power_level,
    a31_redaction,
    rooms_bad_input,
    rooms_concurrent_sends_no_loss,
);
