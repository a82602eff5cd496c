//! Scenarios 10 (profile changes in member events), 19 (alias lifecycle),
//! 20 (canonical alias validation) and 40 (public room directory), plus room
//! account data and tags.
//!
//! The room helpers here are private on purpose: they use only the raw
//! request methods of [`Client`], so this file does not depend on helpers
//! that other suites add.

use std::collections::HashSet;

use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, encode, unique_name, Backend, Client,
    ServerOptions, TestServer,
};
use serde_json::{json, Value};

const PUBLIC_ROOMS: &str = "/_matrix/client/v3/publicRooms";

// ----- helpers --------------------------------------------------------------

/// `/_matrix/client/v3/rooms/{roomId}{suffix}`.
fn room_path(room_id: &str, suffix: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}{suffix}", encode(room_id))
}

/// `/_matrix/client/v3/directory/room/{roomAlias}`.
fn alias_path(alias: &str) -> String {
    format!("/_matrix/client/v3/directory/room/{}", encode(alias))
}

/// `/_matrix/client/v3/directory/list/room/{roomId}`.
fn visibility_path(room_id: &str) -> String {
    format!("/_matrix/client/v3/directory/list/room/{}", encode(room_id))
}

/// `/_matrix/client/v3/user/{userId}/rooms/{roomId}{suffix}`.
fn user_room_path(user_id: &str, room_id: &str, suffix: &str) -> String {
    format!(
        "/_matrix/client/v3/user/{}/rooms/{}{suffix}",
        encode(user_id),
        encode(room_id)
    )
}

fn state_path(room_id: &str, event_type: &str, state_key: &str) -> String {
    room_path(
        room_id,
        &format!("/state/{}/{}", encode(event_type), encode(state_key)),
    )
}

/// A fresh alias `#prefix-…:server` on the test server.
fn new_alias(hs: &TestServer, prefix: &str) -> String {
    format!("#{}:{}", unique_name(prefix), hs.server_name())
}

/// `POST /createRoom`; returns the room ID. Panics on failure.
async fn create_room(client: &Client, body: Value) -> String {
    let response = client.post("/_matrix/client/v3/createRoom", &body).await;
    let answer = assert_ok(&response, &format!("createRoom {body}"));
    answer["room_id"]
        .as_str()
        .unwrap_or_else(|| panic!("createRoom answered without room_id: {answer}"))
        .to_string()
}

/// `POST /join/{roomIdOrAlias}`.
async fn join(client: &Client, target: &str) -> (u16, Value) {
    let path = format!("/_matrix/client/v3/join/{}", encode(target));
    client.post(&path, &json!({})).await
}

/// Joins and asserts success.
async fn join_ok(client: &Client, target: &str) {
    assert_ok(
        &join(client, target).await,
        &format!("{} joining {target}", client.user_id()),
    );
}

/// `PUT /directory/room/{alias}` pointing at `room_id`.
async fn put_alias(client: &Client, alias: &str, room_id: &str) -> (u16, Value) {
    client
        .put(&alias_path(alias), &json!({ "room_id": room_id }))
        .await
}

/// The `joined` map of `GET /rooms/{roomId}/joined_members`.
async fn joined_members(client: &Client, room_id: &str) -> Value {
    let response = client.get(&room_path(room_id, "/joined_members")).await;
    assert_ok(&response, &format!("joined_members of {room_id}"))["joined"].clone()
}

/// The content of someone's `m.room.member` state event.
async fn member_content(client: &Client, room_id: &str, user_id: &str) -> Value {
    let response = client
        .get(&state_path(room_id, "m.room.member", user_id))
        .await;
    assert_ok(
        &response,
        &format!("member event of {user_id} in {room_id}"),
    )
    .clone()
}

/// Every entry of the directory, following `next_batch` with `limit` per page;
/// `filter` (a `POST /publicRooms` filter) switches from GET to POST. Panics
/// on an error, an oversized page or more than 200 pages.
async fn all_public_rooms(client: &Client, limit: u32, filter: Option<Value>) -> Vec<Value> {
    let mut rooms = Vec::new();
    let mut since: Option<String> = None;
    for _ in 0..200 {
        let response = match &filter {
            None => {
                let mut path = format!("{PUBLIC_ROOMS}?limit={limit}");
                if let Some(since) = &since {
                    path.push_str(&format!("&since={}", encode(since)));
                }
                client.get(&path).await
            }
            Some(filter) => {
                let mut body = json!({ "limit": limit, "filter": filter });
                if let Some(since) = &since {
                    body["since"] = json!(since);
                }
                client.post(PUBLIC_ROOMS, &body).await
            }
        };
        let page = assert_ok(&response, &format!("publicRooms since {since:?}"));
        let chunk = page["chunk"]
            .as_array()
            .unwrap_or_else(|| panic!("publicRooms without chunk: {page}"));
        assert!(
            chunk.len() <= limit as usize,
            "publicRooms returned {} rooms for limit {limit}: {page}",
            chunk.len()
        );
        rooms.extend(chunk.iter().cloned());
        match page.get("next_batch").and_then(Value::as_str) {
            None => return rooms,
            Some(next) => {
                assert!(
                    !chunk.is_empty(),
                    "publicRooms returned an empty page with a next_batch: {page}"
                );
                since = Some(next.to_string());
            }
        }
    }
    panic!("publicRooms did not finish within 200 pages");
}

/// The directory entry of `room_id` (from all of `GET /publicRooms`), if any.
async fn directory_entry(client: &Client, room_id: &str) -> Option<Value> {
    all_public_rooms(client, 50, None)
        .await
        .into_iter()
        .find(|r| r["room_id"] == room_id)
}

fn room_ids(rooms: &[Value]) -> Vec<String> {
    rooms
        .iter()
        .map(|r| {
            r["room_id"]
                .as_str()
                .unwrap_or_else(|| panic!("directory entry without room_id: {r}"))
                .to_string()
        })
        .collect()
}

// ----- scenario 10 ----------------------------------------------------------

/// 10. Setting display name and avatar updates the profile and sends a new
///     member event into every joined room (and not into rooms the user left).
async fn a10_profile_change_updates_member_events(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let bob_id = bob.user_id().to_string();

    // Bob is in two rooms (one his own, one of Alice's) and has left a third.
    let own = create_room(&bob, json!({ "preset": "private_chat" })).await;
    let shared = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join_ok(&bob, &shared).await;
    let left = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join_ok(&bob, &left).await;
    assert_ok(
        &bob.post(&room_path(&left, "/leave"), &json!({})).await,
        "bob leaving",
    );
    let left_before = member_content(&alice, &left, &bob_id).await;
    assert_eq!(
        left_before["membership"], "leave",
        "bob's member event after leaving: {left_before}"
    );

    let name = format!("Bob {}", unique_name("name"));
    let avatar = format!("mxc://{}/{}", hs.server_name(), unique_name("avatar"));
    let profile = format!("/_matrix/client/v3/profile/{}", encode(&bob_id));
    assert_ok_object(
        &bob.put(
            &format!("{profile}/displayname"),
            &json!({ "displayname": name }),
        )
        .await,
        "PUT displayname",
    );
    assert_ok_object(
        &bob.put(
            &format!("{profile}/avatar_url"),
            &json!({ "avatar_url": avatar }),
        )
        .await,
        "PUT avatar_url",
    );

    // The profile itself, readable without auth.
    let read = hs.client().get(&profile).await;
    let read = assert_ok(&read, "anonymous GET profile");
    assert_eq!(read["displayname"], name.as_str(), "profile: {read}");
    assert_eq!(read["avatar_url"], avatar.as_str(), "profile: {read}");

    // Both joined rooms carry the new profile, as seen by each member.
    for (room, viewer) in [(&own, &bob), (&shared, &alice), (&shared, &bob)] {
        let content = member_content(viewer, room, &bob_id).await;
        assert_eq!(content["membership"], "join", "member event: {content}");
        assert_eq!(
            content["displayname"],
            name.as_str(),
            "member event: {content}"
        );
        assert_eq!(
            content["avatar_url"],
            avatar.as_str(),
            "member event: {content}"
        );

        let joined = joined_members(viewer, room).await;
        let entry = &joined[bob_id.as_str()];
        assert_eq!(
            entry["display_name"],
            name.as_str(),
            "joined_members: {joined}"
        );
        assert_eq!(
            entry["avatar_url"],
            avatar.as_str(),
            "joined_members: {joined}"
        );
    }

    // The room Bob left keeps his leave event as it was.
    let left_after = member_content(&alice, &left, &bob_id).await;
    assert_eq!(
        left_after, left_before,
        "a profile change touched the member event of a room bob had left"
    );
    let joined = joined_members(&alice, &left).await;
    assert!(
        joined.get(bob_id.as_str()).is_none(),
        "bob is back in the room he left: {joined}"
    );
}

// ----- scenario 19 ----------------------------------------------------------

/// 19. Alias lifecycle: create, resolve to room ID plus server list, duplicate
///     gives 409, the creator can delete, others cannot, missing alias gives
///     404; joining by alias works.
async fn a19_alias_lifecycle(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let other_room = create_room(&alice, json!({ "preset": "public_chat" })).await;

    // Create and resolve (also for a non-member and without a token).
    let alias = new_alias(&hs, "lifecycle");
    assert_ok_object(&put_alias(&alice, &alias, &room).await, "PUT alias");
    for (who, client) in [
        ("creator", &alice),
        ("non-member", &bob),
        ("anonymous", &hs.client()),
    ] {
        let response = client.get(&alias_path(&alias)).await;
        let body = assert_ok(&response, &format!("GET alias as {who}"));
        assert_eq!(body["room_id"], room.as_str(), "GET alias as {who}: {body}");
        let servers = body["servers"]
            .as_array()
            .unwrap_or_else(|| panic!("GET alias as {who}: no servers list: {body}"));
        assert!(
            servers.contains(&json!(hs.server_name())),
            "GET alias as {who}: own server not listed: {body}"
        );
    }

    // Members may list the room's local aliases; non-members may not.
    let response = alice.get(&room_path(&room, "/aliases")).await;
    let aliases = assert_ok(&response, "GET /aliases");
    assert!(
        aliases["aliases"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(alias))),
        "GET /aliases does not list {alias}: {aliases}"
    );
    assert_error(
        &bob.get(&room_path(&room, "/aliases")).await,
        403,
        "M_FORBIDDEN",
        "GET /aliases as a non-member",
    );

    // Duplicates conflict, whatever room they name, and change nothing.
    let (status, body) = put_alias(&alice, &alias, &room).await;
    assert_eq!(status, 409, "duplicate alias, same room: {status} {body}");
    let (status, body) = put_alias(&alice, &alias, &other_room).await;
    assert_eq!(status, 409, "duplicate alias, other room: {status} {body}");
    let response = bob.get(&alias_path(&alias)).await;
    assert_eq!(
        assert_ok(&response, "GET alias after duplicates")["room_id"],
        room.as_str()
    );

    // Joining by alias.
    let response = join(&bob, &alias).await;
    assert_eq!(
        assert_ok(&response, "join by alias")["room_id"],
        room.as_str()
    );
    let joined = joined_members(&alice, &room).await;
    assert!(
        joined.get(bob.user_id()).is_some(),
        "bob not joined after joining by alias: {joined}"
    );
    join_ok(&carol, &room).await;

    // Neither an outsider nor a member without power may delete it.
    let outsider = hs.register_user("dave").await;
    assert_error(
        &outsider.delete(&alias_path(&alias)).await,
        403,
        "M_FORBIDDEN",
        "non-member deleting someone else's alias",
    );
    assert_error(
        &bob.delete(&alias_path(&alias)).await,
        403,
        "M_FORBIDDEN",
        "member without power deleting someone else's alias",
    );
    assert_ok(
        &bob.get(&alias_path(&alias)).await,
        "alias after refused deletes",
    );

    // The creator may delete their alias even without power in the room...
    let bobs = new_alias(&hs, "bobs");
    assert_ok_object(&put_alias(&bob, &bobs, &room).await, "bob's PUT alias");
    assert_error(
        &carol.delete(&alias_path(&bobs)).await,
        403,
        "M_FORBIDDEN",
        "member without power deleting bob's alias",
    );
    assert_ok_object(
        &bob.delete(&alias_path(&bobs)).await,
        "bob deleting his alias",
    );
    assert_error(
        &alice.get(&alias_path(&bobs)).await,
        404,
        "M_NOT_FOUND",
        "GET deleted alias",
    );

    // ...and a member with the power to set the canonical alias may delete
    // anyone's.
    let carols = new_alias(&hs, "carols");
    assert_ok_object(
        &put_alias(&carol, &carols, &room).await,
        "carol's PUT alias",
    );
    assert_ok_object(
        &alice.delete(&alias_path(&carols)).await,
        "room admin deleting carol's alias",
    );
    assert_error(
        &carol.get(&alias_path(&carols)).await,
        404,
        "M_NOT_FOUND",
        "GET alias deleted by the room admin",
    );

    // The creator deletes the first alias; it is gone, and can be reused.
    assert_ok_object(
        &alice.delete(&alias_path(&alias)).await,
        "creator DELETE alias",
    );
    assert_error(
        &bob.get(&alias_path(&alias)).await,
        404,
        "M_NOT_FOUND",
        "GET alias after deletion",
    );
    assert_error(
        &join(&outsider, &alias).await,
        404,
        "M_NOT_FOUND",
        "join by deleted alias",
    );
    assert_ok_object(
        &put_alias(&alice, &alias, &other_room).await,
        "re-creating a deleted alias",
    );
    let response = bob.get(&alias_path(&alias)).await;
    assert_eq!(
        assert_ok(&response, "GET re-created alias")["room_id"],
        other_room.as_str()
    );

    // Missing aliases.
    let missing = new_alias(&hs, "missing");
    assert_error(
        &alice.get(&alias_path(&missing)).await,
        404,
        "M_NOT_FOUND",
        "GET missing alias",
    );
    assert_error(
        &alice.delete(&alias_path(&missing)).await,
        404,
        "M_NOT_FOUND",
        "DELETE missing alias",
    );
}

/// 19. A server admin may delete any alias, even outside the room.
async fn a19_server_admin_deletes_alias(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let Some(admin) = hs.register_admin().await else {
        complement_tests::skip(
            "a19_server_admin_deletes_alias",
            "no shared secret for an external server",
        );
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = create_room(&alice, json!({ "preset": "private_chat" })).await;
    let alias = new_alias(&hs, "admin");
    assert_ok_object(&put_alias(&alice, &alias, &room).await, "PUT alias");

    assert_ok_object(
        &admin.delete(&alias_path(&alias)).await,
        "admin DELETE alias",
    );
    assert_error(
        &alice.get(&alias_path(&alias)).await,
        404,
        "M_NOT_FOUND",
        "GET alias deleted by an admin",
    );
}

// ----- scenario 20 ----------------------------------------------------------

/// 20. `m.room.canonical_alias` is accepted only if it names aliases that
///     really point at this room.
async fn a20_canonical_alias_validation(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = create_room(&alice, json!({ "preset": "private_chat" })).await;
    let other = create_room(&alice, json!({ "preset": "private_chat" })).await;
    let main = new_alias(&hs, "main");
    let alt = new_alias(&hs, "alt");
    let foreign = new_alias(&hs, "foreign");
    let missing = new_alias(&hs, "missing");
    assert_ok_object(&put_alias(&alice, &main, &room).await, "PUT main alias");
    assert_ok_object(&put_alias(&alice, &alt, &room).await, "PUT alt alias");
    assert_ok_object(
        &put_alias(&alice, &foreign, &other).await,
        "PUT foreign alias",
    );
    let path = state_path(&room, "m.room.canonical_alias", "");

    let good = json!({ "alias": main });
    let response = alice.put(&path, &good).await;
    assert!(
        assert_ok(&response, "canonical alias naming an alias of this room")["event_id"]
            .is_string(),
        "no event_id: {response:?}"
    );
    let with_alt = json!({ "alias": main, "alt_aliases": [alt] });
    assert_ok(
        &alice.put(&path, &with_alt).await,
        "canonical alias with a valid alt alias",
    );
    let response = alice.get(&path).await;
    assert_eq!(
        assert_ok(&response, "GET canonical alias"),
        &with_alt,
        "stored canonical alias"
    );

    let bad = [
        ("alias of another room", json!({ "alias": foreign })),
        ("alias that does not exist", json!({ "alias": missing })),
        (
            "alt alias of another room",
            json!({ "alias": main, "alt_aliases": [alt, foreign] }),
        ),
        (
            "alt alias that does not exist",
            json!({ "alias": main, "alt_aliases": [missing] }),
        ),
        ("only a bad alt alias", json!({ "alt_aliases": [foreign] })),
    ];
    for (what, content) in &bad {
        assert_error(
            &alice.put(&path, content).await,
            400,
            "M_BAD_ALIAS",
            &format!("canonical alias naming an {what}: {content}"),
        );
    }
    assert_error(
        &alice.put(&path, &json!({ "alias": "not-an-alias" })).await,
        400,
        "M_INVALID_PARAM",
        "canonical alias with invalid syntax",
    );
    let response = alice.get(&path).await;
    assert_eq!(
        assert_ok(&response, "GET canonical alias after rejections"),
        &with_alt,
        "a rejected canonical alias changed the state"
    );

    // Once the foreign alias moves to this room it is accepted.
    assert_ok_object(&alice.delete(&alias_path(&foreign)).await, "DELETE foreign");
    assert_ok_object(
        &put_alias(&alice, &foreign, &room).await,
        "re-point foreign",
    );
    assert_ok(
        &alice
            .put(
                &path,
                &json!({ "alias": foreign, "alt_aliases": [main, alt] }),
            )
            .await,
        "canonical alias after the alias was moved here",
    );

    // Clearing it needs no alias at all.
    assert_ok(&alice.put(&path, &json!({})).await, "empty canonical alias");
    let response = alice.get(&path).await;
    assert_eq!(
        assert_ok(&response, "GET cleared canonical alias"),
        &json!({})
    );
}

/// 20. Per the spec, servers validate only *new* aliases in
///     `m.room.canonical_alias`: ones already present in the current event
///     are not checked again (so deleting a listed alias from the directory
///     does not block later edits of the event).
async fn a20_canonical_alias_keeps_existing_aliases(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let room = create_room(&alice, json!({ "preset": "private_chat" })).await;
    let main = new_alias(&hs, "main");
    let alt = new_alias(&hs, "alt");
    assert_ok_object(&put_alias(&alice, &main, &room).await, "PUT main alias");
    assert_ok_object(&put_alias(&alice, &alt, &room).await, "PUT alt alias");
    let path = state_path(&room, "m.room.canonical_alias", "");
    assert_ok(
        &alice.put(&path, &json!({ "alias": main })).await,
        "canonical alias",
    );
    assert_ok_object(&alice.delete(&alias_path(&main)).await, "DELETE main alias");
    assert_ok(
        &alice
            .put(&path, &json!({ "alias": main, "alt_aliases": [alt] }))
            .await,
        "adding a valid alt alias while the (already present) main alias no longer resolves",
    );
}

// ----- scenario 40 ----------------------------------------------------------

/// 40. A room published with public visibility appears in `/publicRooms`
///     with name, topic and member count; private rooms do not; search and
///     pagination work.
async fn a40_public_rooms_directory(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let anonymous = hs.client();
    let token = unique_name("zebra");
    let name = format!("Directory {token}");
    let topic = format!("All about {}", unique_name("topic"));
    let alias_local = unique_name("dir");
    let alias = format!("#{alias_local}:{}", hs.server_name());
    let room = create_room(
        &alice,
        json!({
            "visibility": "public",
            "preset": "public_chat",
            "name": name,
            "topic": topic,
            "room_alias_name": alias_local,
        }),
    )
    .await;

    let response = alice.get(&visibility_path(&room)).await;
    assert_eq!(
        assert_ok(&response, "GET directory visibility")["visibility"],
        "public"
    );

    // Listed, with its summary (the directory is readable without a token).
    let entry = directory_entry(&anonymous, &room)
        .await
        .unwrap_or_else(|| panic!("public room {room} not in /publicRooms"));
    assert_eq!(entry["name"], name.as_str(), "entry: {entry}");
    assert_eq!(entry["topic"], topic.as_str(), "entry: {entry}");
    assert_eq!(entry["canonical_alias"], alias.as_str(), "entry: {entry}");
    assert_eq!(entry["num_joined_members"], 1, "entry: {entry}");
    assert_eq!(entry["world_readable"], false, "entry: {entry}");
    assert_eq!(entry["guest_can_join"], false, "entry: {entry}");
    if let Some(rule) = entry.get("join_rule") {
        assert_eq!(rule, "public", "entry: {entry}");
    }
    let response = anonymous.get(PUBLIC_ROOMS).await;
    let page = assert_ok(&response, "GET /publicRooms");
    if let Some(estimate) = page.get("total_room_count_estimate") {
        assert!(
            estimate.as_u64().is_some_and(|n| n >= 1),
            "total_room_count_estimate: {page}"
        );
    }

    // The member count follows joins.
    join_ok(&bob, &room).await;
    let entry = directory_entry(&anonymous, &room)
        .await
        .expect("room still listed");
    assert_eq!(
        entry["num_joined_members"], 2,
        "entry after bob joined: {entry}"
    );

    // Private rooms are not listed: neither explicitly private ones nor the
    // default.
    let private = create_room(
        &alice,
        json!({ "visibility": "private", "preset": "public_chat", "name": format!("Hidden {token}") }),
    )
    .await;
    let default = create_room(&alice, json!({ "name": format!("Default {token}") })).await;
    for id in [&private, &default] {
        let response = alice.get(&visibility_path(id)).await;
        assert_eq!(
            assert_ok(&response, "GET visibility of a private room")["visibility"],
            "private"
        );
    }
    let listed = room_ids(&all_public_rooms(&anonymous, 50, None).await);
    assert!(
        !listed.contains(&private) && !listed.contains(&default),
        "a private room is listed: {listed:?}"
    );

    // Only members with power may change the visibility.
    assert_error(
        &bob.put(&visibility_path(&room), &json!({ "visibility": "private" }))
            .await,
        403,
        "M_FORBIDDEN",
        "member without power unpublishing",
    );
    assert_ok_object(
        &alice
            .put(&visibility_path(&room), &json!({ "visibility": "private" }))
            .await,
        "unpublishing",
    );
    let response = alice.get(&visibility_path(&room)).await;
    assert_eq!(
        assert_ok(&response, "GET visibility after unpublishing")["visibility"],
        "private"
    );
    assert!(
        directory_entry(&anonymous, &room).await.is_none(),
        "unpublished room is still listed"
    );
    assert_ok_object(
        &alice
            .put(&visibility_path(&room), &json!({ "visibility": "public" }))
            .await,
        "publishing again",
    );
    assert!(
        directory_entry(&anonymous, &room).await.is_some(),
        "re-published room is not listed"
    );

    // Search by a term from the name.
    let found = all_public_rooms(&alice, 50, Some(json!({ "generic_search_term": token }))).await;
    assert_eq!(
        room_ids(&found),
        vec![room.clone()],
        "search for {token} should find exactly the public room: {found:?}"
    );
    let unrelated = unique_name("nothing");
    let found = all_public_rooms(
        &alice,
        50,
        Some(json!({ "generic_search_term": unrelated })),
    )
    .await;
    assert!(
        !room_ids(&found).contains(&room),
        "search for {unrelated} found the room: {found:?}"
    );

    // Pagination: three more public rooms sharing a topic word.
    let tag = unique_name("page");
    let mut mine = vec![room.clone()];
    for i in 0..3 {
        mine.push(
            create_room(
                &alice,
                json!({
                    "visibility": "public",
                    "preset": "public_chat",
                    "name": format!("Page room {i}"),
                    "topic": format!("pagination {tag}"),
                }),
            )
            .await,
        );
    }
    let response = anonymous.get(&format!("{PUBLIC_ROOMS}?limit=2")).await;
    let first = assert_ok(&response, "GET /publicRooms?limit=2");
    assert_eq!(
        first["chunk"].as_array().map(Vec::len),
        Some(2),
        "first page with limit 2: {first}"
    );
    let next = first["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("no next_batch with 4 public rooms and limit 2: {first}"));
    let response = anonymous
        .get(&format!("{PUBLIC_ROOMS}?limit=2&since={}", encode(next)))
        .await;
    let second = assert_ok(&response, "GET /publicRooms second page");
    let prev = second["prev_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("second page without prev_batch: {second}"));
    let response = anonymous
        .get(&format!("{PUBLIC_ROOMS}?limit=2&since={}", encode(prev)))
        .await;
    let back = assert_ok(&response, "GET /publicRooms from prev_batch");
    assert_eq!(
        room_ids(back["chunk"].as_array().expect("chunk")),
        room_ids(first["chunk"].as_array().expect("chunk")),
        "following prev_batch from the second page should give the first page"
    );

    let everything = room_ids(&all_public_rooms(&anonymous, 2, None).await);
    let unique: HashSet<&String> = everything.iter().collect();
    assert_eq!(
        unique.len(),
        everything.len(),
        "a room appears twice across pages: {everything:?}"
    );
    for id in &mine {
        assert!(
            everything.contains(id),
            "{id} missing from the paginated directory: {everything:?}"
        );
    }

    // The same with POST and a filter: exactly the three tagged rooms.
    let response = alice
        .post(
            PUBLIC_ROOMS,
            &json!({ "limit": 2, "filter": { "generic_search_term": tag } }),
        )
        .await;
    let page = assert_ok(&response, "POST /publicRooms limit 2");
    assert_eq!(
        page["chunk"].as_array().map(Vec::len),
        Some(2),
        "filtered first page: {page}"
    );
    assert!(
        page["next_batch"].is_string(),
        "filtered first page: {page}"
    );
    let tagged =
        room_ids(&all_public_rooms(&alice, 2, Some(json!({ "generic_search_term": tag }))).await);
    let mut expected = mine[1..].to_vec();
    expected.sort();
    let mut got = tagged.clone();
    got.sort();
    assert_eq!(got, expected, "filtered pages: {tagged:?}");
}

// ----- room account data and tags -------------------------------------------

/// Room account data and tags round-trip; they belong to their user and need
/// room membership (scenario 34's per-room half, without `/sync`).
async fn room_account_data_and_tags(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let alice_id = alice.user_id().to_string();
    let bob_id = bob.user_id().to_string();
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let other = create_room(&alice, json!({ "preset": "private_chat" })).await;
    let data_type = "org.example.custom";
    let path = user_room_path(&alice_id, &room, &format!("/account_data/{data_type}"));

    // Round trip, overwrite.
    assert_error(
        &alice.get(&path).await,
        404,
        "M_NOT_FOUND",
        "GET unset room account data",
    );
    let content = json!({ "colour": "blue", "n": [1, 2] });
    assert_ok_object(&alice.put(&path, &content).await, "PUT room account data");
    assert_eq!(
        assert_ok(&alice.get(&path).await, "GET room account data"),
        &content
    );
    let content = json!({ "colour": "green" });
    assert_ok_object(
        &alice.put(&path, &content).await,
        "overwrite room account data",
    );
    assert_eq!(
        assert_ok(&alice.get(&path).await, "GET overwritten room account data"),
        &content
    );

    // It belongs to that room only, not to other rooms or the global scope.
    assert_error(
        &alice
            .get(&user_room_path(
                &alice_id,
                &other,
                &format!("/account_data/{data_type}"),
            ))
            .await,
        404,
        "M_NOT_FOUND",
        "room account data read in another room",
    );
    assert_error(
        &alice
            .get(&format!(
                "/_matrix/client/v3/user/{}/account_data/{data_type}",
                encode(&alice_id)
            ))
            .await,
        404,
        "M_NOT_FOUND",
        "room account data read as global account data",
    );

    // Another user's data is off limits, even for a member of the room.
    join_ok(&bob, &room).await;
    assert_error(
        &bob.get(&path).await,
        403,
        "M_FORBIDDEN",
        "GET another user's room account data",
    );
    assert_error(
        &bob.put(&path, &json!({ "colour": "red" })).await,
        403,
        "M_FORBIDDEN",
        "PUT another user's room account data",
    );
    assert_eq!(
        assert_ok(&alice.get(&path).await, "GET after refused PUT"),
        &content
    );

    // A room the user is not in.
    assert_error(
        &bob.put(
            &user_room_path(&bob_id, &other, &format!("/account_data/{data_type}")),
            &json!({ "x": 1 }),
        )
        .await,
        403,
        "M_FORBIDDEN",
        "PUT room account data for a room the user is not in",
    );

    // Server-managed types.
    for managed in ["m.fully_read", "m.push_rules"] {
        assert_error(
            &alice
                .put(
                    &user_room_path(&alice_id, &room, &format!("/account_data/{managed}")),
                    &json!({ "event_id": "$x" }),
                )
                .await,
            405,
            "M_BAD_JSON",
            &format!("PUT {managed} room account data"),
        );
    }

    // Tags.
    let tags_path = user_room_path(&alice_id, &room, "/tags");
    let tag_path = |tag: &str| format!("{tags_path}/{}", encode(tag));
    let response = alice.get(&tags_path).await;
    assert_eq!(
        assert_ok(&response, "GET tags before any")["tags"],
        json!({}),
        "tags before any were set"
    );
    assert_ok_object(
        &alice
            .put(&tag_path("u.work"), &json!({ "order": 0.5 }))
            .await,
        "PUT tag u.work",
    );
    assert_ok_object(
        &alice.put(&tag_path("m.favourite"), &json!({})).await,
        "PUT tag m.favourite",
    );
    let response = alice.get(&tags_path).await;
    assert_eq!(
        assert_ok(&response, "GET tags")["tags"],
        json!({ "u.work": { "order": 0.5 }, "m.favourite": {} })
    );
    assert_ok_object(
        &alice
            .put(&tag_path("u.work"), &json!({ "order": 0.25 }))
            .await,
        "re-PUT tag u.work",
    );
    assert_ok_object(&alice.delete(&tag_path("m.favourite")).await, "DELETE tag");
    let response = alice.get(&tags_path).await;
    assert_eq!(
        assert_ok(&response, "GET tags after delete")["tags"],
        json!({ "u.work": { "order": 0.25 } })
    );

    // Tags are per room and per user.
    let response = alice.get(&user_room_path(&alice_id, &other, "/tags")).await;
    assert_eq!(
        assert_ok(&response, "GET tags of another room")["tags"],
        json!({})
    );
    let response = bob.get(&user_room_path(&bob_id, &room, "/tags")).await;
    assert_eq!(
        assert_ok(&response, "GET bob's own tags")["tags"],
        json!({})
    );
    assert_error(
        &bob.get(&tags_path).await,
        403,
        "M_FORBIDDEN",
        "GET another user's tags",
    );
    assert_error(
        &bob.put(&tag_path("u.evil"), &json!({})).await,
        403,
        "M_FORBIDDEN",
        "PUT another user's tag",
    );
    assert_error(
        &bob.delete(&tag_path("u.work")).await,
        403,
        "M_FORBIDDEN",
        "DELETE another user's tag",
    );
    assert_error(
        &bob.put(
            &format!("{}/u.x", user_room_path(&bob_id, &other, "/tags")),
            &json!({}),
        )
        .await,
        403,
        "M_FORBIDDEN",
        "PUT a tag on a room the user is not in",
    );
    let response = alice.get(&tags_path).await;
    assert_eq!(
        assert_ok(&response, "GET tags after refused changes")["tags"],
        json!({ "u.work": { "order": 0.25 } })
    );
}

backend_tests!(
    a10_profile_change_updates_member_events,
    a19_alias_lifecycle,
    a19_server_admin_deletes_alias,
    a20_canonical_alias_keeps_existing_aliases,
    a20_canonical_alias_validation,
    a40_public_rooms_directory,
    room_account_data_and_tags,
);
