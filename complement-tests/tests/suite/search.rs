//! Server-side message search (`POST /search`, issue 13): matching, ranking and recency,
//! pagination, context, groups, state, and what a user must never find.

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, Backend, Client, ServerOptions, TestServer,
};
use serde_json::{json, Value};

const SEARCH: &str = "/_matrix/client/v3/search";

/// `POST /search` with `room_events` criteria; returns `room_events`.
async fn search(client: &Client, criteria: Value, next_batch: Option<&str>) -> Value {
    let path = match next_batch {
        Some(token) => format!("{SEARCH}?next_batch={}", encode(token)),
        None => SEARCH.to_owned(),
    };
    let response = client
        .post(
            &path,
            &json!({ "search_categories": { "room_events": criteria } }),
        )
        .await;
    assert_ok(&response, &format!("search {criteria}"))["search_categories"]["room_events"].clone()
}

fn result_ids(room_events: &Value) -> Vec<String> {
    room_events["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|r| {
                    r["result"]["event_id"]
                        .as_str()
                        .expect("event_id")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every result of a search, page by page with `limit`; checks that only the last page has no
/// `next_batch`.
async fn walk(client: &Client, criteria: Value, limit: u64) -> Vec<Vec<String>> {
    let mut criteria = criteria;
    criteria["filter"]["limit"] = limit.into();
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let room_events = search(client, criteria.clone(), token.as_deref()).await;
        pages.push(result_ids(&room_events));
        match room_events["next_batch"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 50, "pagination does not end");
    }
}

/// Scenario 75. Alice finds a word (or the start of one, accents and case ignored) in the
/// rooms she is in and may read; by rank (share of matching words, newest first among equals)
/// or by recency; page by page with every result once; with highlights, counts, context,
/// profiles, groups and state. She never finds what Carol said in a room Alice is not in,
/// what was said before she joined a room whose history is for joined members only, an
/// encrypted event, or a redacted one.
async fn a75_message_search_ranks_pages_and_hides(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let carol = hs.register_user("carol").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");

    let m1 = alice.send_text(&room, "the quick brown fox").await;
    let m2 = alice.send_text(&room, "Fox fox fox").await;
    let m3 = alice.send_text(&room, "a lazy dog").await;
    let m4 = alice.send_text(&room, "fox one").await;
    let m5 = alice.send_text(&room, "foxes are quick").await;
    let m6 = bob.send_text(&room, "fox two").await;
    let m7 = alice.send_text(&room, "Café au lait").await;

    // Carol's room: Alice is not in it.
    let carols = carol
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    carol.send_text(&carols, "a fox in carol's room").await;
    // A room whose history only joined members read: Bob speaks before Alice joins.
    let joined_only = bob
        .create_room(&json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "joined" }
            }]
        }))
        .await;
    bob.send_text(&joined_only, "secret fox plans").await;
    assert_ok(&alice.join(&joined_only).await, "alice joins later");
    // An encrypted event is not searchable, whatever its content says.
    assert_ok(
        &alice
            .send_event(
                &room,
                "m.room.encrypted",
                "enc-1",
                &json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "fox", "body": "fox" }),
            )
            .await,
        "send encrypted",
    );

    // By rank: share of matching words, newest first among equal ranks.
    let by_rank = search(&alice, json!({ "search_term": "fox" }), None).await;
    assert_eq!(
        result_ids(&by_rank),
        [
            m2.as_str(),
            m6.as_str(),
            m4.as_str(),
            m5.as_str(),
            m1.as_str()
        ],
        "{by_rank}"
    );
    assert_eq!(by_rank["count"], 5, "{by_rank}");
    assert!(by_rank.get("next_batch").is_none(), "{by_rank}");
    let ranks: Vec<f64> = by_rank["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_f64().expect("rank"))
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] >= w[1]),
        "ranks descend: {ranks:?}"
    );
    assert_eq!(by_rank["highlights"], json!(["Fox", "fox", "foxes"]));
    assert_eq!(
        by_rank["results"][0]["result"]["content"]["body"],
        "Fox fox fox"
    );
    assert_eq!(by_rank["results"][0]["result"]["room_id"], room.as_str());

    // By recency.
    let recent = search(
        &alice,
        json!({ "search_term": "FOX", "order_by": "recent" }),
        None,
    )
    .await;
    assert_eq!(
        result_ids(&recent),
        [
            m6.as_str(),
            m5.as_str(),
            m4.as_str(),
            m2.as_str(),
            m1.as_str()
        ],
        "{recent}"
    );

    // Every word must match; accents and case do not matter.
    let both = search(&alice, json!({ "search_term": "quick fox" }), None).await;
    assert_eq!(result_ids(&both), [m5.as_str(), m1.as_str()], "{both}");
    let cafe = search(&alice, json!({ "search_term": "CAFE" }), None).await;
    assert_eq!(result_ids(&cafe), [m7.as_str()], "{cafe}");
    assert_eq!(cafe["highlights"], json!(["Café"]));
    let nothing = search(&alice, json!({ "search_term": "zebra" }), None).await;
    assert!(
        result_ids(&nothing).is_empty() && nothing["count"] == 0,
        "{nothing}"
    );

    // Pages of two walk every result once, in both orders.
    let pages = walk(&alice, json!({ "search_term": "fox" }), 2).await;
    assert_eq!(
        pages,
        [
            vec![m2.clone(), m6.clone()],
            vec![m4.clone(), m5.clone()],
            vec![m1.clone()]
        ]
    );
    let pages = walk(
        &alice,
        json!({ "search_term": "fox", "order_by": "recent" }),
        2,
    )
    .await;
    assert_eq!(
        pages,
        [
            vec![m6.clone(), m5.clone()],
            vec![m4.clone(), m2.clone()],
            vec![m1.clone()]
        ]
    );

    // The filter: senders, rooms.
    let bobs = search(
        &alice,
        json!({ "search_term": "fox", "filter": { "senders": [bob.user_id()] } }),
        None,
    )
    .await;
    assert_eq!(result_ids(&bobs), [m6.as_str()], "{bobs}");
    assert_eq!(bobs["count"], 1, "only Bob's are counted: {bobs}");
    let not_bobs = search(
        &alice,
        json!({ "search_term": "fox", "filter": { "not_senders": [bob.user_id()], "types": ["m.room.message"] } }),
        None,
    )
    .await;
    assert!(!result_ids(&not_bobs).contains(&m6), "{not_bobs}");
    assert_eq!(
        not_bobs["count"].as_u64(),
        Some(result_ids(&not_bobs).len() as u64),
        "counted as found: {not_bobs}"
    );
    let elsewhere = search(
        &alice,
        json!({ "search_term": "fox", "filter": { "rooms": [carols] } }),
        None,
    )
    .await;
    assert!(result_ids(&elsewhere).is_empty(), "{elsewhere}");

    // Context, profiles, groups and state.
    let detailed = search(
        &alice,
        json!({
            "search_term": "one",
            "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
            "groupings": { "group_by": [{ "key": "room_id" }, { "key": "sender" }] },
            "include_state": true,
        }),
        None,
    )
    .await;
    assert_eq!(result_ids(&detailed), [m4.as_str()], "{detailed}");
    let context = &detailed["results"][0]["context"];
    assert_eq!(
        context["events_before"][0]["event_id"],
        m3.as_str(),
        "{context}"
    );
    assert_eq!(
        context["events_after"][0]["event_id"],
        m5.as_str(),
        "{context}"
    );
    assert!(
        context["start"].is_string() && context["end"].is_string(),
        "{context}"
    );
    assert_eq!(
        context["profile_info"][alice.user_id()]["displayname"],
        alice.localpart(),
        "{context}"
    );
    assert_eq!(
        detailed["groups"]["room_id"][&room]["results"],
        json!([m4]),
        "{detailed}"
    );
    assert_eq!(
        detailed["groups"]["sender"][alice.user_id()]["order"],
        1,
        "{detailed}"
    );
    let state = detailed["state"][&room]
        .as_array()
        .expect("state of the room");
    assert!(
        state.iter().any(|e| e["type"] == "m.room.create"),
        "{detailed}"
    );
    let plain = search(&alice, json!({ "search_term": "one" }), None).await;
    assert!(plain["results"][0].get("context").is_none(), "{plain}");

    // Keys: the room's name is searchable under content.name only.
    let named = alice
        .put_state(&room, "m.room.name", "", &json!({ "name": "Fox Den" }))
        .await;
    let name_event = assert_ok(&named, "name")["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();
    let names = search(
        &alice,
        json!({ "search_term": "den", "keys": ["content.name"] }),
        None,
    )
    .await;
    assert_eq!(result_ids(&names), [name_event.as_str()], "{names}");
    let bodies = search(
        &alice,
        json!({ "search_term": "den", "keys": ["content.body"] }),
        None,
    )
    .await;
    assert!(result_ids(&bodies).is_empty(), "{bodies}");

    // A redacted event is no longer found (the name "Fox Den" now ranks with "fox two":
    // one word of two, and newer).
    assert_ok(&alice.redact(&room, &m2, "oops").await, "redact");
    let after_redaction = search(&alice, json!({ "search_term": "fox" }), None).await;
    assert_eq!(
        result_ids(&after_redaction),
        [
            name_event.as_str(),
            m6.as_str(),
            m4.as_str(),
            m5.as_str(),
            m1.as_str()
        ],
        "{after_redaction}"
    );
    assert_eq!(after_redaction["count"], 5, "{after_redaction}");

    // Bob, who left, finds nothing of the room any more (search covers joined rooms).
    assert_ok(&bob.leave(&room).await, "bob leaves");
    let gone = search(&bob, json!({ "search_term": "fox" }), None).await;
    assert_eq!(
        result_ids(&gone).len(),
        1,
        "only his joined_only room: {gone}"
    );
}

/// Bad requests get the spec's errors.
async fn search_bad_input(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bad = |body: Value| {
        let alice = alice.clone();
        async move { alice.post(SEARCH, &body).await }
    };
    assert_error(
        &bad(json!({ "search_categories": { "room_events": { "search_term": "x", "order_by": "best" } } })).await,
        400,
        "M_INVALID_PARAM",
        "unknown order_by",
    );
    assert_error(
        &bad(json!({ "search_categories": { "room_events": { "search_term": "x", "keys": ["content.url"] } } })).await,
        400,
        "M_INVALID_PARAM",
        "unknown key",
    );
    assert_error(
        &bad(json!({ "search_categories": { "room_events": { "keys": ["content.body"] } } })).await,
        400,
        "M_BAD_JSON",
        "no search_term",
    );
    assert_error(
        &alice
            .post(
                &format!("{SEARCH}?next_batch=garbage"),
                &json!({ "search_categories": { "room_events": { "search_term": "x" } } }),
            )
            .await,
        400,
        "M_INVALID_PARAM",
        "bad next_batch",
    );
    assert_error(
        &hs.client()
            .post(SEARCH, &json!({ "search_categories": {} }))
            .await,
        401,
        "M_MISSING_TOKEN",
        "no token",
    );
    let empty = alice
        .post(SEARCH, &json!({ "search_categories": {} }))
        .await;
    assert_eq!(
        assert_ok(&empty, "no categories"),
        &json!({ "search_categories": {} })
    );
}

/// Many matches: pages by rank come window by window (the newest 200 matches best first,
/// then the next 200), every match once; by recency newest first; hidden matches are neither
/// found nor counted, and the count of a big result set is a close estimate.
async fn search_windows_of_many_matches(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    // Bob's room whose history only joined members read: 30 matches before Alice joins.
    let joined_only = bob
        .create_room(&json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "joined" }
            }]
        }))
        .await;
    let mut hidden = Vec::new();
    for i in 0..30 {
        hidden.push(
            bob.send_text(&joined_only, &format!("alpha secret {i}"))
                .await,
        );
    }
    assert_ok(&alice.join(&joined_only).await, "alice joins");
    let room = alice
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    // 450 matches whose share of "alpha" goes 1/4, 2/4, 3/4 in turn, and words that do not
    // match between them.
    let mut sent = Vec::new();
    for i in 0..450 {
        let body = match i % 3 {
            0 => "alpha beta gamma delta",
            1 => "alpha alpha beta gamma",
            _ => "alpha alpha alpha beta",
        };
        sent.push((alice.send_text(&room, body).await, i % 3));
        if i % 50 == 0 {
            alice.send_text(&room, "nothing to see").await;
        }
    }
    let visible_late = bob.send_text(&joined_only, "alpha after alice came").await;

    let newest_first: Vec<(String, usize)> = std::iter::once((visible_late.clone(), 9))
        .chain(sent.iter().rev().cloned())
        .collect();
    let by_recency: Vec<String> = walk(
        &alice,
        json!({ "search_term": "alpha", "order_by": "recent" }),
        37,
    )
    .await
    .concat();
    let expected: Vec<String> = newest_first.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        by_recency, expected,
        "by recency: every visible match once, newest first"
    );

    let by_rank: Vec<String> = walk(
        &alice,
        json!({ "search_term": "alpha", "order_by": "rank" }),
        37,
    )
    .await
    .concat();
    // Window by window of 200 matches (newest first), each by rank then newest first. The
    // late message ("alpha after alice came": 1 of 4 words) is in the first window.
    let mut expected = Vec::new();
    for window in newest_first.chunks(200) {
        let mut window: Vec<(usize, &(String, usize))> = window.iter().enumerate().collect();
        // Rank of each: share of alpha; the late message 1/4 like kind 0.
        window.sort_by_key(|(age, (_, kind))| {
            let share = if *kind == 9 { 0 } else { *kind };
            (std::cmp::Reverse(share), *age)
        });
        expected.extend(window.into_iter().map(|(_, (id, _))| id.clone()));
    }
    assert_eq!(by_rank.len(), 451, "every visible match once");
    assert_eq!(by_rank, expected, "by rank, window by window");
    for id in &hidden {
        assert!(!by_rank.contains(id), "a match from before alice joined");
    }

    // The count: 451 visible matches, more than a window, so estimated; close to the truth.
    let first = search(&alice, json!({ "search_term": "alpha" }), None).await;
    let count = first["count"].as_i64().expect("count");
    assert!(
        (400..=520).contains(&count),
        "count {count} of 451: {first}"
    );
    // A rarer word is counted exactly: the 150 messages of the first kind.
    let exact = search(&alice, json!({ "search_term": "delta" }), None).await;
    assert_eq!(exact["count"], 150, "{}", exact["count"]);
}

backend_tests!(
    a75_message_search_ranks_pages_and_hides,
    search_bad_input,
    search_windows_of_many_matches
);
