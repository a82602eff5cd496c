//! Issue 11, push rules: the server-default ruleset and its order, the rules API (create,
//! move with `before`/`after`, enable, actions, delete), its errors and limits, and the
//! rules as `m.push_rules` account data in `/sync`.

use std::time::{Duration, Instant};

use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, encode, Backend, Client,
    ServerOptions, TestServer,
};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

const RULES: &str = "/_matrix/client/v3/pushrules/";

fn rule_path(kind: &str, rule_id: &str) -> String {
    format!(
        "/_matrix/client/v3/pushrules/global/{kind}/{}",
        encode(rule_id)
    )
}

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend, ServerOptions::default()).await
}

fn rule_ids(global: &Value, kind: &str) -> Vec<String> {
    global[kind]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["rule_id"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn global_rules(client: &Client) -> Value {
    let response = client.get(RULES).await;
    assert_ok(&response, "GET /pushrules/")["global"].clone()
}

/// The `m.push_rules` content of a sync body's global account data.
fn synced_rules(body: &Value) -> Option<Value> {
    body["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .map(|e| e["content"].clone())
}

/// A new user gets the spec's server-default rules, in the spec's order, from every place
/// they can be read.
async fn push_rules_server_defaults(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let global = global_rules(&alice).await;
    assert_eq!(
        rule_ids(&global, "override"),
        [
            ".m.rule.master",
            ".m.rule.suppress_notices",
            ".m.rule.invite_for_me",
            ".m.rule.member_event",
            ".m.rule.is_user_mention",
            ".m.rule.is_room_mention",
            ".m.rule.tombstone",
            ".m.rule.reaction",
            ".m.rule.room.server_acl",
            ".m.rule.suppress_edits",
        ],
        "override rules: {global}"
    );
    assert_eq!(
        rule_ids(&global, "underride"),
        [
            ".m.rule.call",
            ".m.rule.encrypted_room_one_to_one",
            ".m.rule.room_one_to_one",
            ".m.rule.message",
            ".m.rule.encrypted",
        ],
        "underride rules: {global}"
    );
    for kind in ["override", "underride"] {
        for rule in global[kind].as_array().unwrap() {
            assert_eq!(rule["default"], true, "{rule}");
        }
    }
    let master = &global["override"][0];
    assert_eq!(
        master["enabled"], false,
        "master is off by default: {master}"
    );
    assert_eq!(master["actions"], json!([]), "{master}");
    // The user's own ID is in the rules that name it.
    let invite = &global["override"][2];
    assert_eq!(
        invite["conditions"][2]["pattern"],
        alice.user_id(),
        "{invite}"
    );
    let message = &global["underride"][3];
    assert_eq!(message["actions"], json!(["notify"]), "{message}");

    let scope = alice.get("/_matrix/client/v3/pushrules/global/").await;
    assert_eq!(assert_ok(&scope, "GET /pushrules/global/"), &global);

    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/m.push_rules",
        encode(alice.user_id())
    );
    let data = alice.get(&path).await;
    assert_eq!(
        assert_ok(&data, "m.push_rules account data")["global"],
        global
    );

    let (status, body) = alice.sync(None, 0).await;
    assert_eq!(status, 200, "{body}");
    let synced = synced_rules(&body).unwrap_or_else(|| panic!("no m.push_rules: {body}"));
    assert_eq!(synced["global"], global, "initial sync's rules");

    // Clients may not write the rules as account data.
    assert_error(
        &alice.put(&path, &json!({ "global": {} })).await,
        405,
        "M_BAD_JSON",
        "PUT m.push_rules account data",
    );
}

/// Create, move, enable, change and delete rules; defaults can be disabled and changed
/// but not deleted; every change shows in `/sync` at once.
async fn push_rules_crud_with_before_and_after(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let (_, body) = alice.sync(None, 0).await;
    let mut token = body["next_batch"].as_str().unwrap().to_owned();

    let keyword = |pattern: &str| json!({ "pattern": pattern, "actions": ["notify"] });
    assert_ok_object(
        &alice
            .put(&rule_path("content", "a"), &keyword("apple"))
            .await,
        "create a",
    );
    // A new rule goes first among the user's rules.
    assert_ok_object(
        &alice
            .put(&rule_path("content", "b"), &keyword("banana"))
            .await,
        "create b",
    );
    assert_eq!(rule_ids(&global_rules(&alice).await, "content"), ["b", "a"]);
    assert_ok_object(
        &alice
            .put(
                &format!("{}?after=a", rule_path("content", "c")),
                &keyword("cherry"),
            )
            .await,
        "create c after a",
    );
    assert_ok_object(
        &alice
            .put(
                &format!("{}?before=b", rule_path("content", "d")),
                &keyword("date"),
            )
            .await,
        "create d before b",
    );
    assert_eq!(
        rule_ids(&global_rules(&alice).await, "content"),
        ["d", "b", "a", "c"]
    );
    // Moving an existing rule.
    assert_ok_object(
        &alice
            .put(
                &format!("{}?after=c", rule_path("content", "d")),
                &keyword("dates"),
            )
            .await,
        "move d after c",
    );
    assert_eq!(
        rule_ids(&global_rules(&alice).await, "content"),
        ["b", "a", "c", "d"]
    );

    let rule = alice.get(&rule_path("content", "d")).await;
    assert_eq!(
        assert_ok(&rule, "GET rule d"),
        &json!({
            "rule_id": "d", "pattern": "dates", "actions": ["notify"],
            "default": false, "enabled": true,
        })
    );

    // A user override rule comes after the master rule, before the other defaults.
    let mute = json!({
        "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": "spoiler*" }],
        "actions": [],
    });
    assert_ok_object(
        &alice
            .put(&rule_path("override", "no-spoilers"), &mute)
            .await,
        "create override",
    );
    let override_ids = rule_ids(&global_rules(&alice).await, "override");
    assert_eq!(override_ids[..2], [".m.rule.master", "no-spoilers"]);

    // Room and sender rules are named by their room or user.
    let room = alice.create_room(&json!({})).await;
    assert_ok_object(
        &alice
            .put(&rule_path("room", &room), &json!({ "actions": [] }))
            .await,
        "room rule",
    );
    assert_ok_object(
        &alice
            .put(
                &rule_path("sender", "@bob:example.org"),
                &json!({ "actions": ["notify"] }),
            )
            .await,
        "sender rule",
    );
    assert_eq!(
        rule_ids(&global_rules(&alice).await, "room"),
        vec![room.to_owned()]
    );

    // enabled and actions, on a user rule and on a default rule.
    for (kind, id) in [("content", "a"), ("underride", ".m.rule.message")] {
        let path = rule_path(kind, id);
        assert_ok_object(
            &alice
                .put(&format!("{path}/enabled"), &json!({ "enabled": false }))
                .await,
            "disable",
        );
        let enabled = alice.get(&format!("{path}/enabled")).await;
        assert_eq!(assert_ok(&enabled, "enabled"), &json!({ "enabled": false }));
        let actions = json!(["notify", { "set_tweak": "sound", "value": "default" }]);
        assert_ok_object(
            &alice
                .put(&format!("{path}/actions"), &json!({ "actions": actions }))
                .await,
            "set actions",
        );
        let got = alice.get(&format!("{path}/actions")).await;
        assert_eq!(assert_ok(&got, "actions"), &json!({ "actions": actions }));
    }
    let message = alice.get(&rule_path("underride", ".m.rule.message")).await;
    let message = assert_ok(&message, "GET .m.rule.message");
    assert_eq!(message["default"], true);
    assert_eq!(message["enabled"], false);
    // Replacing a rule keeps whether it is enabled.
    assert_ok_object(
        &alice
            .put(&rule_path("content", "a"), &keyword("apricot"))
            .await,
        "replace a",
    );
    let a = alice.get(&rule_path("content", "a")).await;
    assert_eq!(assert_ok(&a, "GET a")["enabled"], false);
    assert_eq!(assert_ok(&a, "GET a")["pattern"], "apricot");

    // Delete a user rule; a default rule cannot be deleted.
    assert_ok_object(&alice.delete(&rule_path("content", "b")).await, "delete b");
    assert_error(
        &alice.get(&rule_path("content", "b")).await,
        404,
        "M_NOT_FOUND",
        "deleted rule",
    );
    assert_eq!(
        rule_ids(&global_rules(&alice).await, "content"),
        ["a", "c", "d"]
    );
    let (status, _) = alice.delete(&rule_path("override", ".m.rule.master")).await;
    assert_eq!(status, 400, "deleting a server-default rule");
    assert!(alice.get(&rule_path("override", ".m.rule.master")).await.0 == 200);

    // The changes show in an incremental sync, as the whole current ruleset.
    let body = alice
        .sync_until(Some(&token), WAIT, |b| synced_rules(b).is_some())
        .await;
    let synced = synced_rules(&body).unwrap();
    assert_eq!(synced["global"], global_rules(&alice).await);
    token = body["next_batch"].as_str().unwrap().to_owned();

    // A change wakes a waiting sync at once.
    let waiter = alice.clone();
    let since = token.clone();
    let started = Instant::now();
    let wait = tokio::spawn(async move { waiter.sync(Some(&since), 20_000).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ok_object(
        &alice
            .put(
                &format!("{}/enabled", rule_path("content", "c")),
                &json!({ "enabled": false }),
            )
            .await,
        "disable c",
    );
    let (status, body) = wait.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the waiting sync was not woken by a rule change"
    );
    let synced = synced_rules(&body).unwrap_or_else(|| panic!("no m.push_rules: {body}"));
    let c = synced["global"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule_id"] == "c")
        .cloned()
        .unwrap();
    assert_eq!(c["enabled"], false, "{c}");

    // Rules are per user.
    let bob = hs.register_user("bob").await;
    assert!(rule_ids(&global_rules(&bob).await, "content").is_empty());
}

/// The spec's errors, and bad input never gets a 500.
async fn push_rules_errors(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let keyword = json!({ "pattern": "cake", "actions": ["notify"] });

    // Unknown rules.
    for suffix in ["", "/enabled", "/actions"] {
        assert_error(
            &alice
                .get(&format!("{}{suffix}", rule_path("content", "nope")))
                .await,
            404,
            "M_NOT_FOUND",
            "GET an unknown rule",
        );
    }
    assert_error(
        &alice.delete(&rule_path("content", "nope")).await,
        404,
        "M_NOT_FOUND",
        "DELETE an unknown rule",
    );
    assert_error(
        &alice
            .put(
                &format!("{}/enabled", rule_path("content", "nope")),
                &json!({ "enabled": true }),
            )
            .await,
        404,
        "M_NOT_FOUND",
        "enable an unknown rule",
    );
    assert_error(
        &alice
            .put(
                &format!("{}/actions", rule_path("content", "nope")),
                &json!({ "actions": [] }),
            )
            .await,
        404,
        "M_NOT_FOUND",
        "set actions of an unknown rule",
    );
    // A default rule of another kind is not there.
    assert_error(
        &alice.get(&rule_path("content", ".m.rule.master")).await,
        404,
        "M_NOT_FOUND",
        "a default rule under the wrong kind",
    );

    // Bad kinds.
    for (method, body) in [
        (Method::GET, None),
        (Method::PUT, Some(&keyword)),
        (Method::DELETE, None),
    ] {
        let (status, answer) = alice
            .request(method.clone(), &rule_path("nonsense", "x"), body)
            .await;
        assert_eq!(status, 400, "{method} with a bad kind: {answer}");
        assert!(answer["errcode"].is_string(), "{answer}");
    }

    // Server-default IDs cannot be created, nor can rules be placed relative to them.
    let (status, answer) = alice
        .put(
            &rule_path("override", ".m.rule.mine"),
            &json!({ "conditions": [], "actions": [] }),
        )
        .await;
    assert_eq!(status, 400, "a '.' rule ID: {answer}");
    let (status, answer) = alice
        .put(
            &rule_path("underride", ".m.rule.message"),
            &json!({ "conditions": [], "actions": [] }),
        )
        .await;
    assert_eq!(status, 400, "replacing a default rule: {answer}");
    let (status, answer) = alice
        .put(
            &format!("{}?before=.m.rule.message", rule_path("underride", "u")),
            &json!({ "conditions": [], "actions": [] }),
        )
        .await;
    assert_eq!(status, 400, "before a default rule: {answer}");

    // before/after naming a missing rule.
    for query in ["before=missing", "after=missing"] {
        let (status, answer) = alice
            .put(&format!("{}?{query}", rule_path("content", "x")), &keyword)
            .await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(answer["errcode"].is_string(), "{answer}");
    }
    assert_error(
        &alice.get(&rule_path("content", "x")).await,
        404,
        "M_NOT_FOUND",
        "a refused rule is not stored",
    );

    // Malformed bodies and names.
    let malformed: Vec<(String, Value)> = vec![
        (rule_path("content", "x"), json!({ "actions": ["notify"] })),
        (
            rule_path("content", "x"),
            json!({ "pattern": "", "actions": ["notify"] }),
        ),
        (
            rule_path("content", "x"),
            json!({ "pattern": 5, "actions": ["notify"] }),
        ),
        (rule_path("content", "x"), json!({ "pattern": "a" })),
        (
            rule_path("content", "x"),
            json!({ "pattern": "a", "actions": "notify" }),
        ),
        (
            rule_path("override", "x"),
            json!({ "conditions": "no", "actions": [] }),
        ),
        (
            rule_path("override", "x"),
            json!({ "conditions": [{ "kind": "event_match" }], "actions": [] }),
        ),
        (rule_path("room", "not-a-room"), json!({ "actions": [] })),
        (rule_path("sender", "not-a-user"), json!({ "actions": [] })),
        (
            format!("{}/enabled", rule_path("override", ".m.rule.master")),
            json!({ "enabled": "yes" }),
        ),
        (
            format!("{}/enabled", rule_path("override", ".m.rule.master")),
            json!({}),
        ),
        (
            format!("{}/actions", rule_path("override", ".m.rule.master")),
            json!({ "actions": 1 }),
        ),
        (
            format!("{}/actions", rule_path("override", ".m.rule.master")),
            json!([]),
        ),
    ];
    for (path, body) in &malformed {
        let (status, answer) = alice.put(path, body).await;
        assert_eq!(status, 400, "PUT {path} {body}: {answer}");
        assert!(answer["errcode"].is_string(), "{answer}");
    }
    let (status, answer) = alice
        .request_raw(
            Method::PUT,
            &rule_path("content", "x"),
            Some((b"{not json".to_vec(), "application/json")),
        )
        .await;
    assert_eq!(status, 400, "not JSON: {answer}");

    // A huge rule.
    let huge = json!({ "pattern": "x".repeat(10_000), "actions": ["notify"] });
    let (status, answer) = alice.put(&rule_path("content", "huge"), &huge).await;
    assert_eq!(status, 400, "a huge rule: {answer}");
    let many_actions = json!({ "actions": vec![json!("notify"); 3000] });
    let (status, answer) = alice
        .put(
            &format!("{}/actions", rule_path("override", ".m.rule.master")),
            &many_actions,
        )
        .await;
    assert_eq!(status, 400, "huge actions: {answer}");

    // The rules of nobody else are reachable, and nothing above was stored.
    let global = global_rules(&alice).await;
    assert!(rule_ids(&global, "content").is_empty(), "{global}");
    assert!(!rule_ids(&global, "underride").contains(&"u".to_owned()));
}

/// The number of rules a user may have is capped (400), and replacing one at the cap works.
async fn push_rules_huge_rule_set_is_capped(backend: Backend) {
    let Some(hs) = start(backend).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let mut created = 0;
    let refused = loop {
        let (status, answer) = alice
            .put(
                &rule_path("content", &format!("k{created}")),
                &json!({ "pattern": format!("word{created}"), "actions": ["notify"] }),
            )
            .await;
        if status != 200 {
            break (status, answer);
        }
        created += 1;
        assert!(created <= 1000, "no cap on the number of rules");
    };
    assert_eq!(refused.0, 400, "over the cap: {:?}", refused.1);
    assert!(refused.1["errcode"].is_string());
    assert!(created >= 100, "the cap is too low to be useful: {created}");
    assert_ok_object(
        &alice
            .put(
                &rule_path("content", "k0"),
                &json!({ "pattern": "again", "actions": [] }),
            )
            .await,
        "replacing a rule at the cap",
    );
    assert_eq!(
        rule_ids(&global_rules(&alice).await, "content").len(),
        created
    );
}

backend_tests!(
    push_rules_server_defaults,
    push_rules_crud_with_before_and_after,
    push_rules_errors,
    push_rules_huge_rule_set_is_capped,
);
