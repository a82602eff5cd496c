//! Spaces (issue 13): `/hierarchy` under a space and `/room_summary` of a single room.

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, Backend, Client, ServerOptions, TestServer,
};
use serde_json::{json, Value};

async fn hierarchy(client: &Client, space: &str, query: &str) -> Value {
    let path = format!(
        "/_matrix/client/v1/rooms/{}/hierarchy{query}",
        encode(space)
    );
    assert_ok(&client.get(&path).await, &format!("hierarchy{query}")).clone()
}

fn room_ids(page: &Value) -> Vec<String> {
    page["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["room_id"].as_str().expect("room_id").to_owned())
        .collect()
}

async fn add_child(client: &Client, space: &str, child: &str, content: Value) {
    assert_ok(
        &client
            .put_state(space, "m.space.child", child, &content)
            .await,
        "m.space.child",
    );
}

/// Scenario 77. A space's hierarchy lists, depth first, the children the user may see, in
/// the spec's order (`order` first, then by when they were added), with each room's
/// `m.space.child` events; `max_depth`, `suggested_only` and pages of `limit` rooms work; a
/// private room is left out for a user who may not see it, and a private space is refused.
async fn a77_space_hierarchy_depth_suggested_and_pages(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let space_body = |name: &str| {
        json!({
            "preset": "public_chat", "name": name,
            "creation_content": { "type": "m.space" }
        })
    };
    let space = alice.create_room(&space_body("Space")).await;
    let sub = alice.create_room(&space_body("Sub-space")).await;
    let a = alice
        .create_room(&json!({ "preset": "public_chat", "name": "A" }))
        .await;
    let b = alice
        .create_room(&json!({ "preset": "private_chat", "name": "B" }))
        .await;
    let c = alice
        .create_room(&json!({ "preset": "public_chat", "name": "C" }))
        .await;
    let d = alice
        .create_room(&json!({ "preset": "public_chat", "name": "D" }))
        .await;
    let e = alice
        .create_room(&json!({ "preset": "public_chat", "name": "E" }))
        .await;
    let via = json!(["localhost"]);
    add_child(&alice, &space, &a, json!({ "via": via, "suggested": true })).await;
    add_child(&alice, &space, &b, json!({ "via": via })).await;
    add_child(&alice, &space, &sub, json!({ "via": via })).await;
    add_child(&alice, &space, &c, json!({ "via": via, "order": "a" })).await;
    // No `via`: not a child.
    add_child(&alice, &space, &e, json!({ "via": [] })).await;
    add_child(&alice, &sub, &d, json!({ "via": via })).await;

    let all = hierarchy(&alice, &space, "").await;
    assert_eq!(
        room_ids(&all),
        [
            space.as_str(),
            c.as_str(),
            a.as_str(),
            b.as_str(),
            sub.as_str(),
            d.as_str()
        ],
        "{all}"
    );
    let top = &all["rooms"][0];
    assert_eq!(top["room_type"], "m.space", "{top}");
    assert_eq!(top["name"], "Space", "{top}");
    assert_eq!(top["num_joined_members"], 1, "{top}");
    let children: Vec<&str> = top["children_state"]
        .as_array()
        .expect("children_state")
        .iter()
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        children,
        [c.as_str(), a.as_str(), b.as_str(), sub.as_str()],
        "{top}"
    );
    assert!(all.get("next_batch").is_none(), "{all}");

    // Bob may not see the private room B (he can see and join the public ones).
    assert_eq!(
        room_ids(&hierarchy(&bob, &space, "").await),
        [
            space.as_str(),
            c.as_str(),
            a.as_str(),
            sub.as_str(),
            d.as_str()
        ]
    );
    assert_eq!(
        room_ids(&hierarchy(&alice, &space, "?max_depth=1").await),
        [
            space.as_str(),
            c.as_str(),
            a.as_str(),
            b.as_str(),
            sub.as_str()
        ]
    );
    assert_eq!(
        room_ids(&hierarchy(&alice, &space, "?max_depth=0").await),
        [space.as_str()]
    );
    assert_eq!(
        room_ids(&hierarchy(&alice, &space, "?suggested_only=true").await),
        [space.as_str(), a.as_str()]
    );

    // Pages of two walk everything once.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = hierarchy(&alice, &space, &query).await;
        let ids = room_ids(&page);
        assert!(ids.len() <= 2, "{page}");
        seen.extend(ids);
        match page["next_batch"].as_str() {
            Some(next) => query = format!("?limit=2&from={}", encode(next)),
            None => break,
        }
        assert!(seen.len() < 20, "pagination does not end");
    }
    assert_eq!(
        seen,
        [
            space.as_str(),
            c.as_str(),
            a.as_str(),
            b.as_str(),
            sub.as_str(),
            d.as_str()
        ]
    );

    // A private space: Bob is refused; bad tokens are refused.
    let private = alice
        .create_room(
            &json!({ "preset": "private_chat", "creation_content": { "type": "m.space" } }),
        )
        .await;
    assert_error(
        &bob.get(&format!(
            "/_matrix/client/v1/rooms/{}/hierarchy",
            encode(&private)
        ))
        .await,
        403,
        "M_FORBIDDEN",
        "private space",
    );
    assert_error(
        &alice
            .get(&format!(
                "/_matrix/client/v1/rooms/{}/hierarchy?from=x",
                encode(&space)
            ))
            .await,
        400,
        "M_INVALID_PARAM",
        "bad from",
    );
}

/// The room summary (spec v1.15): what anyone may see of a public room, by ID or alias,
/// with the caller's membership; a private room is 404 to outsiders (and to guests), not to
/// its members.
async fn room_summary_public_private_and_alias(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let public = alice
        .create_room(&json!({
            "preset": "public_chat", "name": "Lobby", "topic": "Say hi",
            "room_alias_name": "lobby-summary"
        }))
        .await;
    let private = alice
        .create_room(&json!({
            "preset": "private_chat", "name": "Secret",
            "initial_state": [{ "type": "m.room.encryption", "state_key": "",
                                "content": { "algorithm": "m.megolm.v1.aes-sha2" } }]
        }))
        .await;
    let path = |room: &str| format!("/_matrix/client/v1/room_summary/{}", encode(room));

    let summary = bob.get(&path(&public)).await;
    let summary = assert_ok(&summary, "public summary");
    assert_eq!(summary["room_id"], public.as_str(), "{summary}");
    assert_eq!(summary["name"], "Lobby", "{summary}");
    assert_eq!(summary["topic"], "Say hi", "{summary}");
    assert_eq!(summary["join_rule"], "public", "{summary}");
    assert_eq!(summary["num_joined_members"], 1, "{summary}");
    assert!(summary["room_version"].is_string(), "{summary}");
    assert!(summary.get("membership").is_none(), "{summary}");
    let by_alias = bob.get(&path("#lobby-summary:localhost")).await;
    assert_eq!(assert_ok(&by_alias, "by alias")["room_id"], public.as_str());
    let guest = hs.client().get(&path(&public)).await;
    assert_eq!(assert_ok(&guest, "without a token")["name"], "Lobby");

    let own = alice.get(&path(&private)).await;
    let own = assert_ok(&own, "member's summary");
    assert_eq!(own["membership"], "join", "{own}");
    assert_eq!(own["encryption"], "m.megolm.v1.aes-sha2", "{own}");
    assert_eq!(own["join_rule"], "invite", "{own}");
    for (who, client) in [("bob", &bob), ("guest", &hs.client())] {
        assert_error(&client.get(&path(&private)).await, 404, "M_NOT_FOUND", who);
    }
    assert_ok(&alice.invite(&private, bob.user_id()).await, "invite");
    let invited = bob.get(&path(&private)).await;
    assert_eq!(assert_ok(&invited, "invited")["membership"], "invite");
    assert_error(
        &bob.get(&path("#nowhere:localhost")).await,
        404,
        "M_NOT_FOUND",
        "unknown alias",
    );
}

backend_tests!(
    a77_space_hierarchy_depth_suggested_and_pages,
    room_summary_public_private_and_alias,
);
