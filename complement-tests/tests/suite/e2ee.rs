//! End-to-end encryption, the server's side (scenarios 35–37): device keys, one-time and
//! fallback keys, cross-signing and signatures, key backup, to-device messages, and the
//! encryption sections of `/sync`. Keys are real ed25519 keys, signed over canonical JSON as
//! a client would.

use std::{collections::BTreeSet, time::Duration};

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, encode, ws::Socket, Backend, Client,
    ServerOptions, TestServer,
};
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// ----- keys and signing, as a client does it ---------------------------------------

pub(crate) fn new_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

fn public(key: &SigningKey) -> String {
    STANDARD_NO_PAD.encode(key.verifying_key().as_bytes())
}

/// Canonical JSON: keys sorted, no whitespace.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&map[*k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(canonical).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

/// Adds `signatures[signer][key_id]`: the key's signature of the object without
/// `signatures` and `unsigned`.
fn sign(object: &mut Value, signer: &str, key_id: &str, key: &SigningKey) {
    let mut stripped = object.clone();
    let map = stripped.as_object_mut().expect("an object");
    map.remove("signatures");
    map.remove("unsigned");
    let signature = STANDARD_NO_PAD.encode(key.sign(canonical(&stripped).as_bytes()).to_bytes());
    if !object["signatures"].is_object() {
        object["signatures"] = json!({});
    }
    if !object["signatures"][signer].is_object() {
        object["signatures"][signer] = json!({});
    }
    object["signatures"][signer][key_id] = json!(signature);
}

/// A device's identity keys, self-signed with `key`.
pub(crate) fn device_keys(client: &Client, key: &SigningKey) -> Value {
    let device = client.device_id();
    let mut keys = json!({
        "user_id": client.user_id(),
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("ed25519:{device}"): public(key),
            format!("curve25519:{device}"): STANDARD_NO_PAD.encode(rand::random::<[u8; 32]>()),
        },
    });
    sign(
        &mut keys,
        client.user_id(),
        &format!("ed25519:{device}"),
        key,
    );
    keys
}

/// A signed curve25519 one-time (or fallback) key.
pub(crate) fn one_time_key(client: &Client, key: &SigningKey, fallback: bool) -> Value {
    let mut otk = json!({ "key": STANDARD_NO_PAD.encode(rand::random::<[u8; 32]>()) });
    if fallback {
        otk["fallback"] = json!(true);
    }
    sign(
        &mut otk,
        client.user_id(),
        &format!("ed25519:{}", client.device_id()),
        key,
    );
    otk
}

/// A cross-signing key of `usage`, signed by `signer` (the master key) if given.
fn cross_signing_key(
    user: &str,
    usage: &str,
    key: &SigningKey,
    signer: Option<&SigningKey>,
) -> Value {
    let mut object = json!({
        "user_id": user,
        "usage": [usage],
        "keys": { format!("ed25519:{}", public(key)): public(key) },
    });
    if let Some(master) = signer {
        sign(
            &mut object,
            user,
            &format!("ed25519:{}", public(master)),
            master,
        );
    }
    object
}

/// A client with its device's signing key.
struct Device {
    client: Client,
    key: SigningKey,
}

/// Uploads signed device keys for `client`'s device.
async fn with_device_keys(client: Client) -> Device {
    let key = new_key();
    let body = json!({ "device_keys": device_keys(&client, &key) });
    assert_ok(
        &client.post("/_matrix/client/v3/keys/upload", &body).await,
        "upload device keys",
    );
    Device { client, key }
}

async fn upload(client: &Client, body: &Value) -> (u16, Value) {
    client.post("/_matrix/client/v3/keys/upload", body).await
}

pub(crate) async fn query(client: &Client, users: &[&str]) -> Value {
    let mut wanted = json!({});
    for user in users {
        wanted[*user] = json!([]);
    }
    let response = client
        .post(
            "/_matrix/client/v3/keys/query",
            &json!({ "device_keys": wanted }),
        )
        .await;
    assert_ok(&response, "keys/query").clone()
}

pub(crate) async fn claim(client: &Client, user: &str, device: &str) -> Value {
    let body = json!({ "one_time_keys": { user: { device: "signed_curve25519" } } });
    let response = client.post("/_matrix/client/v3/keys/claim", &body).await;
    assert_ok(&response, "keys/claim")["one_time_keys"][user][device].clone()
}

/// The one key of a claim answer: `(key ID, key)`.
fn only_key(claimed: &Value) -> (String, Value) {
    let map = claimed
        .as_object()
        .unwrap_or_else(|| panic!("no keys claimed: {claimed}"));
    assert_eq!(map.len(), 1, "one key per device: {claimed}");
    let (id, key) = map.iter().next().unwrap();
    (id.clone(), key.clone())
}

pub(crate) async fn initial_token(client: &Client) -> String {
    let response = client.sync(None, 0).await;
    assert_ok(&response, "initial sync")["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned()
}

pub(crate) fn listed(response: &Value, section: &str, user: &str) -> bool {
    response["device_lists"][section]
        .as_array()
        .is_some_and(|users| users.iter().any(|u| u == user))
}

pub(crate) fn to_device_events(response: &Value) -> Vec<Value> {
    response["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub(crate) async fn send_to_device(client: &Client, txn: &str, messages: &Value) -> (u16, Value) {
    let path = format!(
        "/_matrix/client/v3/sendToDevice/{}/{}",
        encode("m.test.message"),
        encode(txn)
    );
    client.put(&path, &json!({ "messages": messages })).await
}

/// Two users who share a public room.
async fn room_pair(hs: &TestServer) -> (Client, Client, String) {
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    assert_ok(&bob.join(&room).await, "bob joins");
    (alice, bob, room)
}

pub(crate) const WAIT: Duration = Duration::from_secs(10);

// ----- scenarios ---------------------------------------------------------------------

/// 35. To-device messages reach the target device's `/sync` exactly once and are gone after
///     the next token; re-sending with the same txn is idempotent.
async fn a35_to_device_exactly_once_idempotent_txn(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let since = initial_token(&bob).await;

    let messages = json!({ bob.user_id(): { bob.device_id(): { "n": 1 } } });
    assert_ok_object(&send_to_device(&alice, "t1", &messages).await, "send");
    let first = bob
        .sync_until(Some(&since), WAIT, |r| !to_device_events(r).is_empty())
        .await;
    let events = to_device_events(&first);
    assert_eq!(events.len(), 1, "exactly one message: {first}");
    assert_eq!(events[0]["sender"], alice.user_id());
    assert_eq!(events[0]["type"], "m.test.message");
    assert_eq!(events[0]["content"], json!({ "n": 1 }));

    // The same transaction again sends nothing.
    assert_ok_object(&send_to_device(&alice, "t1", &messages).await, "resend");
    let token = first["next_batch"].as_str().unwrap();
    let next = bob.sync(Some(token), 1000).await;
    assert!(
        to_device_events(assert_ok(&next, "sync")).is_empty(),
        "not delivered twice: {}",
        next.1
    );

    // Several messages arrive in the order they were sent.
    let token = next.1["next_batch"].as_str().unwrap().to_owned();
    for n in 2..=4 {
        let messages = json!({ bob.user_id(): { bob.device_id(): { "n": n } } });
        assert_ok_object(
            &send_to_device(&alice, &format!("t{n}"), &messages).await,
            "send",
        );
    }
    let mut seen = Vec::new();
    let mut token = token;
    while seen.len() < 3 {
        let response = bob
            .sync_until(Some(&token), WAIT, |r| !to_device_events(r).is_empty())
            .await;
        seen.extend(
            to_device_events(&response)
                .iter()
                .map(|e| e["content"]["n"].clone()),
        );
        token = response["next_batch"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, vec![json!(2), json!(3), json!(4)]);

    // Once the device synced past them they are gone, even for an initial sync.
    assert!(to_device_events(assert_ok(&bob.sync(Some(&token), 0).await, "sync")).is_empty());
    let again = bob.sync(None, 0).await;
    assert!(
        to_device_events(assert_ok(&again, "initial sync")).is_empty(),
        "acknowledged messages are gone: {}",
        again.1
    );
}

/// 36. Device keys and OTKs from `/keys/upload` show in `/keys/query`; `/keys/claim` hands
///     out each OTK once, in upload order; `/sync` reports OTK counts.
async fn a36_keys_upload_query_claim_counts(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let key = new_key();
    let keys = device_keys(&alice, &key);
    let otks: Vec<(String, Value)> = (1..=3)
        .map(|i| {
            (
                format!("signed_curve25519:AAAAA{i}"),
                one_time_key(&alice, &key, false),
            )
        })
        .collect();
    let mut one_time_keys = json!({});
    for (id, otk) in &otks {
        one_time_keys[id] = otk.clone();
    }
    let response = upload(
        &alice,
        &json!({ "device_keys": keys, "one_time_keys": one_time_keys }),
    )
    .await;
    assert_eq!(
        assert_ok(&response, "upload")["one_time_key_counts"]["signed_curve25519"],
        3
    );

    // Query: the keys as uploaded, with the device's display name.
    let answer = query(&bob, &[alice.user_id()]).await;
    let shown = &answer["device_keys"][alice.user_id()][alice.device_id()];
    for field in ["user_id", "device_id", "algorithms", "keys", "signatures"] {
        assert_eq!(shown[field], keys[field], "{field} in {answer}");
    }

    // Sync reports the count.
    let sync = bob.sync(None, 0).await;
    assert_eq!(
        assert_ok(&sync, "bob's sync")["device_one_time_keys_count"]["signed_curve25519"],
        0,
        "a device without keys counts 0"
    );
    let sync = alice.sync(None, 0).await;
    assert_eq!(
        sync.1["device_one_time_keys_count"]["signed_curve25519"], 3,
        "{}",
        sync.1
    );

    // Claims: in upload order, each once.
    for (id, otk) in &otks {
        let (claimed_id, claimed) =
            only_key(&claim(&bob, alice.user_id(), alice.device_id()).await);
        assert_eq!(&claimed_id, id);
        assert_eq!(&claimed, otk);
    }
    assert_eq!(
        claim(&bob, alice.user_id(), alice.device_id()).await,
        Value::Null,
        "no key is handed out twice"
    );
    let sync = alice.sync(None, 0).await;
    assert_eq!(
        sync.1["device_one_time_keys_count"]["signed_curve25519"], 0,
        "{}",
        sync.1
    );
}

/// 37. When a user who shares a room logs in on a new device, they appear in the other
///     member's `device_lists.changed`; a user sharing no room sees nothing.
async fn a37_new_device_appears_in_device_lists(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let (alice, bob, _room) = room_pair(&hs).await;
    let stranger = hs.register_user("carol").await;
    let bob_since = initial_token(&bob).await;
    let stranger_since = initial_token(&stranger).await;

    let _phone = alice.new_device().await;
    let response = bob
        .sync_until(Some(&bob_since), WAIT, |r| {
            listed(r, "changed", alice.user_id())
        })
        .await;
    assert!(!listed(&response, "left", alice.user_id()), "{response}");

    let response = stranger.sync(Some(&stranger_since), 1500).await;
    assert!(
        !listed(
            assert_ok(&response, "stranger's sync"),
            "changed",
            alice.user_id()
        ),
        "a user sharing no room hears nothing: {}",
        response.1
    );
}

// ----- keys --------------------------------------------------------------------------

/// Keys for another user or device, badly signed keys and a changed one-time key under an
/// existing ID are refused; re-uploading the same key is harmless.
async fn bad_keys_are_refused(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let key = new_key();

    let mut other_user = device_keys(&alice, &key);
    other_user["user_id"] = json!(bob.user_id());
    sign(
        &mut other_user,
        bob.user_id(),
        &format!("ed25519:{}", alice.device_id()),
        &key,
    );
    assert_error(
        &upload(&alice, &json!({ "device_keys": other_user })).await,
        400,
        "M_BAD_JSON",
        "device keys of another user",
    );

    let mut other_device = device_keys(&alice, &key);
    other_device["device_id"] = json!("SOMEONEELSE");
    assert_error(
        &upload(&alice, &json!({ "device_keys": other_device })).await,
        400,
        "M_BAD_JSON",
        "device keys of another device",
    );

    let mut forged = device_keys(&alice, &key);
    let impostor = new_key();
    forged["signatures"] = json!({});
    sign(
        &mut forged,
        alice.user_id(),
        &format!("ed25519:{}", alice.device_id()),
        &impostor,
    );
    assert_error(
        &upload(&alice, &json!({ "device_keys": forged })).await,
        400,
        "M_INVALID_SIGNATURE",
        "device keys signed by another key",
    );

    let mut unsigned = device_keys(&alice, &key);
    unsigned["signatures"] = json!({});
    assert_error(
        &upload(&alice, &json!({ "device_keys": unsigned.clone() })).await,
        400,
        "M_INVALID_SIGNATURE",
        "unsigned device keys",
    );
    unsigned.as_object_mut().unwrap().remove("signatures");
    assert_error(
        &upload(&alice, &json!({ "device_keys": unsigned })).await,
        400,
        "M_BAD_JSON",
        "device keys without the signatures field",
    );

    let mut tampered = device_keys(&alice, &key);
    tampered["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    assert_error(
        &upload(&alice, &json!({ "device_keys": tampered })).await,
        400,
        "M_INVALID_SIGNATURE",
        "device keys changed after signing",
    );
    assert!(
        query(&bob, &[alice.user_id()]).await["device_keys"][alice.user_id()]
            .as_object()
            .is_some_and(|d| d.is_empty()),
        "nothing refused was stored"
    );

    // One-time keys: the same key again is fine, a different key under its ID is not.
    let otk = one_time_key(&alice, &key, false);
    let first = json!({ "one_time_keys": { "signed_curve25519:AAAAAQ": otk } });
    assert_ok(&upload(&alice, &first).await, "upload a one-time key");
    let again = upload(&alice, &first).await;
    assert_eq!(
        assert_ok(&again, "re-upload")["one_time_key_counts"]["signed_curve25519"],
        1
    );
    let changed = json!({ "one_time_keys": {
        "signed_curve25519:AAAAAQ": one_time_key(&alice, &key, false),
        "signed_curve25519:AAAAAg": one_time_key(&alice, &key, false),
    } });
    assert_error(
        &upload(&alice, &changed).await,
        400,
        "M_INVALID_PARAM",
        "another key under an existing ID",
    );
    let (_, claimed) = only_key(&claim(&bob, alice.user_id(), alice.device_id()).await);
    assert_eq!(claimed, otk, "the stored key is unchanged");
    assert_eq!(
        claim(&bob, alice.user_id(), alice.device_id()).await,
        Value::Null,
        "a refused upload stores none of its keys"
    );

    // Malformed bodies.
    assert_error(
        &upload(&alice, &json!({ "one_time_keys": { "no-algorithm": "x" } })).await,
        400,
        "M_BAD_JSON",
        "a key ID without an algorithm",
    );
}

/// Keys are claimed in upload order, each once, across several uploads.
async fn claims_follow_upload_order(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let key = new_key();
    let mut order = Vec::new();
    // Key IDs deliberately not in upload order across requests.
    for batch in [["ZZZ1", "ZZZ2"], ["AAA1", "AAA2"], ["MMM1", "MMM2"]] {
        let mut keys = json!({});
        for name in batch {
            let id = format!("signed_curve25519:{name}");
            keys[&id] = one_time_key(&alice, &key, false);
            order.push(id);
        }
        assert_ok(
            &upload(&alice, &json!({ "one_time_keys": keys })).await,
            "upload",
        );
    }
    let mut claimed = Vec::new();
    for _ in 0..order.len() {
        claimed.push(only_key(&claim(&bob, alice.user_id(), alice.device_id()).await).0);
    }
    assert_eq!(claimed, order);
    assert_eq!(
        claim(&bob, alice.user_id(), alice.device_id()).await,
        Value::Null
    );
}

/// Fallback keys are handed out when no one-time key is left, and are reported in
/// `device_unused_fallback_key_types` until that happens.
async fn fallback_keys(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let key = new_key();
    let fallback = one_time_key(&alice, &key, true);
    let body = json!({
        "one_time_keys": { "signed_curve25519:OTK": one_time_key(&alice, &key, false) },
        "fallback_keys": { "signed_curve25519:FB1": fallback },
    });
    assert_ok(&upload(&alice, &body).await, "upload");
    let unused = |r: &Value| r["device_unused_fallback_key_types"].clone();
    let sync = alice.sync(None, 0).await;
    assert_eq!(unused(&sync.1), json!(["signed_curve25519"]), "{}", sync.1);

    // The one-time key first, then the fallback key, again and again.
    let (id, _) = only_key(&claim(&bob, alice.user_id(), alice.device_id()).await);
    assert_eq!(id, "signed_curve25519:OTK");
    let sync = alice.sync(None, 0).await;
    assert_eq!(
        unused(&sync.1),
        json!(["signed_curve25519"]),
        "not used yet: {}",
        sync.1
    );
    for _ in 0..2 {
        let (id, claimed) = only_key(&claim(&bob, alice.user_id(), alice.device_id()).await);
        assert_eq!(id, "signed_curve25519:FB1");
        assert_eq!(claimed, fallback);
    }
    let sync = alice.sync(None, 0).await;
    assert_eq!(unused(&sync.1), json!([]), "used: {}", sync.1);

    // Uploading the same fallback key keeps it used; a new one is unused.
    let same = json!({ "fallback_keys": { "signed_curve25519:FB1": fallback } });
    assert_ok(&upload(&alice, &same).await, "same fallback key");
    let sync = alice.sync(None, 0).await;
    assert_eq!(unused(&sync.1), json!([]), "{}", sync.1);
    let new =
        json!({ "fallback_keys": { "signed_curve25519:FB2": one_time_key(&alice, &key, true) } });
    assert_ok(&upload(&alice, &new).await, "new fallback key");
    let sync = alice.sync(None, 0).await;
    assert_eq!(unused(&sync.1), json!(["signed_curve25519"]), "{}", sync.1);
    let (id, _) = only_key(&claim(&bob, alice.user_id(), alice.device_id()).await);
    assert_eq!(
        id, "signed_curve25519:FB2",
        "the new fallback key replaced the old"
    );
}

/// Many claims at once never hand out the same one-time key twice.
async fn concurrent_claims_never_share_a_key(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let key = new_key();
    let mut keys = json!({});
    for i in 0..20 {
        keys[format!("signed_curve25519:K{i:03}")] = one_time_key(&alice, &key, false);
    }
    assert_ok(
        &upload(&alice, &json!({ "one_time_keys": keys })).await,
        "upload",
    );
    let mut claimers = Vec::new();
    for _ in 0..4 {
        claimers.push(hs.register_user("claimer").await);
    }
    let mut tasks = Vec::new();
    for i in 0..30 {
        let client = claimers[i % claimers.len()].clone();
        let (user, device) = (alice.user_id().to_owned(), alice.device_id().to_owned());
        tasks.push(tokio::spawn(
            async move { claim(&client, &user, &device).await },
        ));
    }
    let mut handed_out = Vec::new();
    for task in tasks {
        let claimed = task.await.expect("claim task");
        if let Some(map) = claimed.as_object() {
            handed_out.extend(map.keys().cloned());
        }
    }
    let distinct: BTreeSet<&String> = handed_out.iter().collect();
    assert_eq!(
        handed_out.len(),
        20,
        "every key once, no more: {handed_out:?}"
    );
    assert_eq!(distinct.len(), 20, "no key twice: {handed_out:?}");
}

// ----- cross-signing -----------------------------------------------------------------

pub(crate) struct CrossSigning {
    master: SigningKey,
    self_signing: SigningKey,
    user_signing: SigningKey,
}

fn cross_signing_body(user: &str, keys: &CrossSigning) -> Value {
    json!({
        "master_key": cross_signing_key(user, "master", &keys.master, None),
        "self_signing_key": cross_signing_key(user, "self_signing", &keys.self_signing, Some(&keys.master)),
        "user_signing_key": cross_signing_key(user, "user_signing", &keys.user_signing, Some(&keys.master)),
    })
}

fn new_cross_signing() -> CrossSigning {
    CrossSigning {
        master: new_key(),
        self_signing: new_key(),
        user_signing: new_key(),
    }
}

const DEVICE_SIGNING: &str = "/_matrix/client/v3/keys/device_signing/upload";
const SIGNATURES: &str = "/_matrix/client/v3/keys/signatures/upload";

pub(crate) async fn set_up_cross_signing(client: &Client) -> CrossSigning {
    let keys = new_cross_signing();
    let response = client
        .post(DEVICE_SIGNING, &cross_signing_body(client.user_id(), &keys))
        .await;
    assert_ok_object(&response, "first cross-signing upload");
    keys
}

/// The first cross-signing upload needs no UIA, replacing the keys does; identical keys are
/// accepted as they are. Query shows master and self-signing keys to everyone and the
/// user-signing key to its owner only.
async fn cross_signing_upload_and_uia(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let (alice, bob, _room) = room_pair(&hs).await;
    let user = alice.user_id().to_owned();

    // Invalid uploads first: nothing is stored.
    let keys = new_cross_signing();
    let mut body = cross_signing_body(&user, &keys);
    body["self_signing_key"] =
        cross_signing_key(&user, "self_signing", &keys.self_signing, Some(&new_key()));
    assert_error(
        &alice.post(DEVICE_SIGNING, &body).await,
        400,
        "M_INVALID_SIGNATURE",
        "a self-signing key not signed by the master key",
    );
    let mut body = cross_signing_body(&user, &keys);
    body["master_key"] = cross_signing_key(bob.user_id(), "master", &keys.master, None);
    assert_error(
        &alice.post(DEVICE_SIGNING, &body).await,
        400,
        "M_INVALID_PARAM",
        "a master key of another user",
    );
    let mut body = cross_signing_body(&user, &keys);
    body["master_key"]["usage"] = json!(["self_signing"]);
    assert_error(
        &alice.post(DEVICE_SIGNING, &body).await,
        400,
        "M_INVALID_PARAM",
        "a master key without master usage",
    );
    let only_ssk = json!({ "self_signing_key": cross_signing_key(&user, "self_signing", &keys.self_signing, Some(&keys.master)) });
    assert_error(
        &alice.post(DEVICE_SIGNING, &only_ssk).await,
        400,
        "M_MISSING_PARAM",
        "a self-signing key without any master key",
    );

    let bob_since = initial_token(&bob).await;
    let keys = set_up_cross_signing(&alice).await;
    bob.sync_until(Some(&bob_since), WAIT, |r| listed(r, "changed", &user))
        .await;

    let seen_by_bob = query(&bob, &[&user]).await;
    assert_eq!(
        seen_by_bob["master_keys"][&user]["keys"],
        json!({ format!("ed25519:{}", public(&keys.master)): public(&keys.master) })
    );
    assert!(
        seen_by_bob["self_signing_keys"][&user].is_object(),
        "{seen_by_bob}"
    );
    assert!(
        seen_by_bob["user_signing_keys"][&user].is_null(),
        "private: {seen_by_bob}"
    );
    let seen_by_alice = query(&alice, &[&user]).await;
    assert!(
        seen_by_alice["user_signing_keys"][&user].is_object(),
        "{seen_by_alice}"
    );

    // The same keys again: accepted without UIA.
    assert_ok_object(
        &alice
            .post(DEVICE_SIGNING, &cross_signing_body(&user, &keys))
            .await,
        "identical re-upload",
    );
    // Others need UIA.
    let replacement = new_cross_signing();
    let body = cross_signing_body(&user, &replacement);
    let (status, challenge) = alice.post(DEVICE_SIGNING, &body).await;
    assert_eq!(status, 401, "replacing keys needs UIA: {challenge}");
    assert!(challenge["session"].is_string(), "{challenge}");
    assert_eq!(
        query(&bob, &[&user]).await["master_keys"][&user]["keys"],
        json!({ format!("ed25519:{}", public(&keys.master)): public(&keys.master) }),
        "unchanged without UIA"
    );
    assert_ok_object(
        &alice
            .with_password_uia(Method::POST, DEVICE_SIGNING, body)
            .await,
        "replacement with UIA",
    );
    assert_eq!(
        query(&bob, &[&user]).await["master_keys"][&user]["keys"],
        json!({ format!("ed25519:{}", public(&replacement.master)): public(&replacement.master) })
    );
}

/// Signatures uploaded for devices and master keys are checked, stored and shown by
/// `/keys/query`; bad ones are reported in `failures`.
async fn signatures_upload_visible_in_query(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let (alice, bob, _room) = room_pair(&hs).await;
    let carol = hs.register_user("carol").await;
    let alice_device = with_device_keys(alice.clone()).await;
    let alice_keys = set_up_cross_signing(&alice).await;
    let bob_keys = set_up_cross_signing(&bob).await;
    let (a, d) = (alice.user_id().to_owned(), alice.device_id().to_owned());
    let master_name = public(&alice_keys.master);
    let bob_since = initial_token(&bob).await;

    // Alice signs her device with her self-signing key, and her master key with her device.
    let mut device = query(&alice, &[&a]).await["device_keys"][&a][&d].clone();
    device.as_object_mut().unwrap().remove("unsigned");
    let ssk_id = format!("ed25519:{}", public(&alice_keys.self_signing));
    sign(&mut device, &a, &ssk_id, &alice_keys.self_signing);
    let mut master = query(&alice, &[&a]).await["master_keys"][&a].clone();
    let device_key_id = format!("ed25519:{d}");
    sign(&mut master, &a, &device_key_id, &alice_device.key);
    let body = json!({ &a: { &d: device, &master_name: master } });
    let response = alice.post(SIGNATURES, &body).await;
    let answer = assert_ok(&response, "signatures upload");
    assert!(
        answer["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{answer}"
    );
    bob.sync_until(Some(&bob_since), WAIT, |r| listed(r, "changed", &a))
        .await;
    let seen = query(&bob, &[&a]).await;
    assert!(
        seen["device_keys"][&a][&d]["signatures"][&a][&ssk_id].is_string(),
        "the device's signature by the self-signing key: {seen}"
    );
    assert!(
        seen["master_keys"][&a]["signatures"][&a][&device_key_id].is_string(),
        "the master key's signature by the device: {seen}"
    );

    // Bob signs Alice's master key with his user-signing key: Bob sees it, Carol does not.
    let mut master = query(&bob, &[&a]).await["master_keys"][&a].clone();
    let usk_id = format!("ed25519:{}", public(&bob_keys.user_signing));
    sign(&mut master, bob.user_id(), &usk_id, &bob_keys.user_signing);
    let response = bob
        .post(SIGNATURES, &json!({ &a: { &master_name: master } }))
        .await;
    assert!(
        assert_ok(&response, "cross-user signature")["failures"]
            .as_object()
            .is_none_or(|f| f.is_empty()),
        "{}",
        response.1
    );
    let seen = query(&bob, &[&a]).await;
    assert!(
        seen["master_keys"][&a]["signatures"][bob.user_id()][&usk_id].is_string(),
        "{seen}"
    );
    let seen = query(&carol, &[&a]).await;
    assert!(
        seen["master_keys"][&a]["signatures"][bob.user_id()].is_null(),
        "{seen}"
    );

    // Bad signatures and unknown keys are failures; the request still succeeds.
    let mut forged = query(&alice, &[&a]).await["device_keys"][&a][&d].clone();
    forged.as_object_mut().unwrap().remove("unsigned");
    forged["signatures"] = json!({});
    sign(&mut forged, &a, &ssk_id, &new_key());
    let mut changed = query(&alice, &[&a]).await["device_keys"][&a][&d].clone();
    changed["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    sign(&mut changed, &a, &ssk_id, &alice_keys.self_signing);
    let body = json!({ &a: { &d: forged, "NOSUCHDEVICE": changed.clone() } });
    let response = alice.post(SIGNATURES, &body).await;
    let failures = &assert_ok(&response, "bad signatures")["failures"][&a];
    assert_eq!(
        failures[&d]["errcode"], "M_INVALID_SIGNATURE",
        "{}",
        response.1
    );
    assert_eq!(
        failures["NOSUCHDEVICE"]["errcode"], "M_NOT_FOUND",
        "{}",
        response.1
    );
    let response = alice
        .post(SIGNATURES, &json!({ &a: { &d: changed } }))
        .await;
    assert!(
        assert_ok(&response, "changed key")["failures"][&a][&d].is_object(),
        "a key that is not the stored one: {}",
        response.1
    );
}

// ----- key backup --------------------------------------------------------------------

const VERSION: &str = "/_matrix/client/v3/room_keys/version";

fn backup_algorithm() -> Value {
    json!({
        "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
        "auth_data": { "public_key": STANDARD_NO_PAD.encode(rand::random::<[u8; 32]>()), "signatures": {} },
    })
}

fn session_key(first_message_index: u64, forwarded_count: u64, is_verified: bool) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": {
            "ephemeral": STANDARD_NO_PAD.encode(rand::random::<[u8; 32]>()),
            "ciphertext": STANDARD_NO_PAD.encode(rand::random::<[u8; 32]>()),
            "mac": STANDARD_NO_PAD.encode(rand::random::<[u8; 8]>()),
        },
    })
}

fn keys_path(version: &str, room: Option<&str>, session: Option<&str>) -> String {
    let mut path = "/_matrix/client/v3/room_keys/keys".to_owned();
    if let Some(room) = room {
        path.push_str(&format!("/{}", encode(room)));
    }
    if let Some(session) = session {
        path.push_str(&format!("/{}", encode(session)));
    }
    format!("{path}?version={version}")
}

/// Backup versions, keys at every level, etags and counts, the replacement rule and the
/// wrong-version error.
async fn key_backup_versions_and_etags(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = "!room:example.org";

    assert_error(
        &alice.get(VERSION).await,
        404,
        "M_NOT_FOUND",
        "no backup yet",
    );
    assert_error(
        &alice
            .put(
                &keys_path("1", Some(room), Some("s1")),
                &session_key(0, 0, false),
            )
            .await,
        404,
        "M_NOT_FOUND",
        "keys for a version that does not exist",
    );
    let algorithm = backup_algorithm();
    let created = alice.post(VERSION, &algorithm).await;
    let version = assert_ok(&created, "create version")["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let info = alice.get(VERSION).await;
    let info = assert_ok(&info, "current version");
    assert_eq!(info["version"], version);
    assert_eq!(info["algorithm"], algorithm["algorithm"]);
    assert_eq!(info["auth_data"], algorithm["auth_data"]);
    assert_eq!(info["count"], 0);
    let etag0 = info["etag"].as_str().unwrap().to_owned();
    assert_error(
        &bob.get(VERSION).await,
        404,
        "M_NOT_FOUND",
        "another user's backup",
    );

    // Upload at every level.
    let s1 = session_key(5, 1, false);
    let put = alice
        .put(&keys_path(&version, Some(room), Some("s1")), &s1)
        .await;
    let put = assert_ok(&put, "session upload");
    assert_eq!(put["count"], 1);
    let etag1 = put["etag"].as_str().unwrap().to_owned();
    assert_ne!(etag1, etag0, "etag changes with the keys");
    let body = json!({ "sessions": { "s2": session_key(0, 0, true) } });
    let put = alice
        .put(&keys_path(&version, Some(room), None), &body)
        .await;
    assert_eq!(assert_ok(&put, "room upload")["count"], 2);
    let body = json!({ "rooms": { "!other:example.org": { "sessions": { "s3": session_key(0, 0, false) } } } });
    let put = alice.put(&keys_path(&version, None, None), &body).await;
    let put = assert_ok(&put, "full upload").clone();
    assert_eq!(put["count"], 3);
    let etag3 = put["etag"].as_str().unwrap().to_owned();

    // Read back at every level.
    let all = alice.get(&keys_path(&version, None, None)).await;
    let all = assert_ok(&all, "all keys");
    assert_eq!(all["rooms"][room]["sessions"]["s1"], s1);
    assert_eq!(all["rooms"].as_object().unwrap().len(), 2, "{all}");
    let in_room = alice.get(&keys_path(&version, Some(room), None)).await;
    assert_eq!(
        assert_ok(&in_room, "room keys")["sessions"]
            .as_object()
            .unwrap()
            .len(),
        2
    );
    let one = alice
        .get(&keys_path(&version, Some(room), Some("s1")))
        .await;
    assert_eq!(assert_ok(&one, "session key"), &s1);
    assert_error(
        &alice
            .get(&keys_path(&version, Some(room), Some("nope")))
            .await,
        404,
        "M_NOT_FOUND",
        "an unknown session",
    );
    let empty = alice
        .get(&keys_path(&version, Some("!empty:example.org"), None))
        .await;
    assert_eq!(assert_ok(&empty, "empty room")["sessions"], json!({}));

    // The replacement rule: a worse key changes nothing, a better one replaces.
    let worse = session_key(6, 0, false);
    let put = alice
        .put(&keys_path(&version, Some(room), Some("s1")), &worse)
        .await;
    assert_eq!(
        assert_ok(&put, "worse key")["etag"],
        etag3,
        "nothing changed"
    );
    let one = alice
        .get(&keys_path(&version, Some(room), Some("s1")))
        .await;
    assert_eq!(one.1, s1, "the stored key stays");
    let better = session_key(9, 3, true);
    let put = alice
        .put(&keys_path(&version, Some(room), Some("s1")), &better)
        .await;
    let put = assert_ok(&put, "verified key").clone();
    assert_ne!(put["etag"], etag3);
    assert_eq!(put["count"], 3);
    let one = alice
        .get(&keys_path(&version, Some(room), Some("s1")))
        .await;
    assert_eq!(one.1, better, "a verified key wins");

    // A new version: uploads to the old one are refused with the current version.
    let created = alice.post(VERSION, &backup_algorithm()).await;
    let version2 = assert_ok(&created, "second version")["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(version2, version);
    let refused = alice
        .put(&keys_path(&version, Some(room), Some("s9")), &s1)
        .await;
    assert_error(&refused, 403, "M_WRONG_ROOM_KEYS_VERSION", "an old version");
    assert_eq!(refused.1["current_version"], version2);
    assert_eq!(
        assert_ok(
            &alice.get(&format!("{VERSION}/{version}")).await,
            "old version"
        )["count"],
        3,
        "the old version can still be read"
    );

    // Deleting keys moves the etag and the count.
    let deleted = alice
        .delete(&keys_path(&version, Some(room), Some("s1")))
        .await;
    assert_eq!(assert_ok(&deleted, "delete a session")["count"], 2);
    let deleted = alice.delete(&keys_path(&version, Some(room), None)).await;
    assert_eq!(assert_ok(&deleted, "delete a room")["count"], 1);
    let deleted = alice.delete(&keys_path(&version, None, None)).await;
    assert_eq!(assert_ok(&deleted, "delete all")["count"], 0);

    // Updating: auth_data may change, the algorithm may not.
    let mut update = backup_algorithm();
    update["version"] = json!(version2);
    assert_ok_object(
        &alice.put(&format!("{VERSION}/{version2}"), &update).await,
        "update",
    );
    let info = alice.get(&format!("{VERSION}/{version2}")).await;
    assert_eq!(
        assert_ok(&info, "updated")["auth_data"],
        update["auth_data"]
    );
    let mut other = backup_algorithm();
    other["algorithm"] = json!("org.example.other");
    assert_error(
        &alice.put(&format!("{VERSION}/{version2}"), &other).await,
        400,
        "M_INVALID_PARAM",
        "another algorithm",
    );
    update["version"] = json!("999");
    assert_error(
        &alice.put(&format!("{VERSION}/{version2}"), &update).await,
        400,
        "M_INVALID_PARAM",
        "a version in the body that is not the path's",
    );

    // Deleting the current version makes the previous one current again.
    assert_ok_object(
        &alice.delete(&format!("{VERSION}/{version2}")).await,
        "delete version",
    );
    assert_error(
        &alice.get(&format!("{VERSION}/{version2}")).await,
        404,
        "M_NOT_FOUND",
        "a deleted version",
    );
    assert_eq!(
        assert_ok(&alice.get(VERSION).await, "current")["version"],
        version
    );
    assert_error(
        &alice.get(&format!("{VERSION}/banana")).await,
        404,
        "M_NOT_FOUND",
        "a version that is not a number",
    );
}

// ----- to-device ---------------------------------------------------------------------

/// `*` sends to every device of a user.
async fn to_device_to_all_devices(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let bob2 = bob.new_device().await;
    let tokens = [initial_token(&bob).await, initial_token(&bob2).await];
    let messages = json!({ bob.user_id(): { "*": { "hello": "all" } } });
    assert_ok_object(
        &send_to_device(&alice, "star", &messages).await,
        "send to *",
    );
    for (device, since) in [&bob, &bob2].iter().zip(tokens) {
        let response = device
            .sync_until(Some(&since), WAIT, |r| !to_device_events(r).is_empty())
            .await;
        let events = to_device_events(&response);
        assert_eq!(events.len(), 1, "{response}");
        assert_eq!(events[0]["content"]["hello"], "all");
    }
    // A device that does not exist gets nothing, and nothing fails.
    let messages = json!({ bob.user_id(): { "NOSUCHDEVICE": { "x": 1 } } });
    assert_ok_object(
        &send_to_device(&alice, "nobody", &messages).await,
        "unknown device",
    );
    assert_error(
        &send_to_device(
            &alice,
            "bad",
            &json!({ bob.user_id(): { "*": "not an object" } }),
        )
        .await,
        400,
        "M_BAD_JSON",
        "content that is not an object",
    );
}

async fn connect(hs: &TestServer, client: &Client, since: Option<&str>) -> Socket {
    let base = hs.url().replacen("http://", "ws://", 1);
    let mut url = format!(
        "{base}/_matrix/client/unstable/io.myelin/sync/ws?access_token={}",
        encode(client.access_token.as_deref().unwrap())
    );
    if let Some(since) = since {
        url.push_str(&format!("&since={}", encode(since)));
    }
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

/// The next frame with to-device messages (or the timeout), with the last frame's token.
async fn next_to_device_frame(socket: &mut Socket, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, socket.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
                if !to_device_events(&frame).is_empty() {
                    return Some(frame);
                }
            }
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("unexpected frame: {other:?}"),
        }
    }
}

/// To-device messages over the WebSocket: pushed once; a reconnect with a token before
/// them gets them again (the frame may have been lost), one at or after them does not; an
/// ack frame acknowledges too.
async fn to_device_exactly_once_on_websocket(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    if hs.is_external() {
        return; // Myelin's own transport.
    }
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let before = initial_token(&bob).await;
    let mut socket = connect(&hs, &bob, Some(&before)).await;
    let messages = json!({ bob.user_id(): { bob.device_id(): { "n": 1 } } });
    assert_ok_object(&send_to_device(&alice, "ws1", &messages).await, "send");
    let frame = next_to_device_frame(&mut socket, WAIT)
        .await
        .expect("pushed");
    assert_eq!(to_device_events(&frame).len(), 1, "{frame}");
    let after = frame["next_batch"].as_str().unwrap().to_owned();
    assert!(
        next_to_device_frame(&mut socket, Duration::from_millis(1500))
            .await
            .is_none(),
        "pushed once"
    );
    drop(socket);

    // The client may not have processed that frame: from the older token it comes again.
    let mut socket = connect(&hs, &bob, Some(&before)).await;
    let again = next_to_device_frame(&mut socket, WAIT)
        .await
        .expect("resent");
    assert_eq!(to_device_events(&again)[0]["content"]["n"], 1);
    drop(socket);
    // Reconnecting with the later token acknowledges it for good.
    let mut socket = connect(&hs, &bob, Some(&after)).await;
    assert!(
        next_to_device_frame(&mut socket, Duration::from_millis(1000))
            .await
            .is_none()
    );
    drop(socket);
    let old = bob.sync(Some(&before), 0).await;
    assert!(
        to_device_events(assert_ok(&old, "sync")).is_empty(),
        "gone: {}",
        old.1
    );

    // An ack frame acknowledges without reconnecting.
    let mut socket = connect(&hs, &bob, Some(&after)).await;
    let messages = json!({ bob.user_id(): { bob.device_id(): { "n": 2 } } });
    assert_ok_object(&send_to_device(&alice, "ws2", &messages).await, "send");
    let frame = next_to_device_frame(&mut socket, WAIT)
        .await
        .expect("pushed");
    let acked = frame["next_batch"].as_str().unwrap().to_owned();
    let ack = json!({ "type": "ack", "next_batch": acked }).to_string();
    socket.send(Message::Text(ack.into())).await.expect("ack");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let old = bob.sync(Some(&after), 0).await;
        if to_device_events(assert_ok(&old, "sync")).is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ack removes the message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    socket
        .send(Message::Text(json!({ "type": "ack" }).to_string().into()))
        .await
        .expect("send");
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(
        closed,
        Some(1003),
        "an ack without a token closes the socket"
    );
}

// ----- devices and device lists --------------------------------------------------------

/// Deleting a device removes its keys, one-time keys and pending to-device messages, and
/// co-members see the change.
async fn deleting_a_device_removes_its_keys_and_messages(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let (alice, bob, _room) = room_pair(&hs).await;
    let phone = with_device_keys(bob.new_device().await).await;
    let phone_id = phone.client.device_id().to_owned();
    let otk = json!({ "one_time_keys": { "signed_curve25519:A": one_time_key(&phone.client, &phone.key, false) } });
    assert_ok(&upload(&phone.client, &otk).await, "one-time key");
    let messages = json!({ bob.user_id(): { &phone_id: { "pending": true } } });
    assert_ok_object(
        &send_to_device(&alice, "p1", &messages).await,
        "pending message",
    );
    assert!(
        query(&alice, &[bob.user_id()]).await["device_keys"][bob.user_id()][&phone_id].is_object()
    );
    let alice_since = initial_token(&alice).await;

    let deleted = bob
        .with_password_uia(
            Method::DELETE,
            &format!("/_matrix/client/v3/devices/{}", encode(&phone_id)),
            json!({}),
        )
        .await;
    assert_ok_object(&deleted, "delete the phone");
    alice
        .sync_until(Some(&alice_since), WAIT, |r| {
            listed(r, "changed", bob.user_id())
        })
        .await;
    assert!(
        query(&alice, &[bob.user_id()]).await["device_keys"][bob.user_id()][&phone_id].is_null(),
        "its device keys are gone"
    );
    assert_eq!(
        claim(&alice, bob.user_id(), &phone_id).await,
        Value::Null,
        "its one-time keys too"
    );

    // A new device with the same ID starts with an empty inbox.
    let password = bob.password.clone().unwrap();
    let (status, body) = hs
        .client()
        .login_with_device(bob.user_id(), &password, Some(&phone_id))
        .await;
    assert_eq!(status, 200, "{body}");
    let reborn = hs.client().authed(&body, &password);
    let sync = reborn.sync(None, 0).await;
    assert!(
        to_device_events(assert_ok(&sync, "sync")).is_empty(),
        "pending messages went with the device: {}",
        sync.1
    );

    // Logging out is deleting too.
    let alice_since = initial_token(&alice).await;
    assert_ok_object(
        &reborn.post("/_matrix/client/v3/logout", &json!({})).await,
        "logout",
    );
    alice
        .sync_until(Some(&alice_since), WAIT, |r| {
            listed(r, "changed", bob.user_id())
        })
        .await;
}

/// Device-list changes reach only users who share a room (and the user), joining a shared
/// room counts as a change, leaving the last one shows in `left`; `/keys/changes` agrees.
async fn device_lists_follow_shared_rooms(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let (alice, bob, room) = room_pair(&hs).await;
    let stranger = hs.register_user("carol").await;
    let alice_since = initial_token(&alice).await;
    let bob_since = initial_token(&bob).await;
    let stranger_since = initial_token(&stranger).await;

    // Bob uploads device keys: Alice and Bob himself hear of it, the stranger does not.
    with_device_keys(bob.clone()).await;
    let response = alice
        .sync_until(Some(&alice_since), WAIT, |r| {
            listed(r, "changed", bob.user_id())
        })
        .await;
    let alice_mid = response["next_batch"].as_str().unwrap().to_owned();
    bob.sync_until(Some(&bob_since), WAIT, |r| {
        listed(r, "changed", bob.user_id())
    })
    .await;
    let response = stranger.sync(Some(&stranger_since), 1500).await;
    assert!(
        assert_ok(&response, "stranger")
            .get("device_lists")
            .is_none(),
        "strangers hear nothing: {}",
        response.1
    );
    let changes = alice
        .get(&format!(
            "/_matrix/client/v3/keys/changes?from={}&to={}",
            encode(&alice_since),
            encode(&alice_mid)
        ))
        .await;
    let changes = assert_ok(&changes, "keys/changes");
    assert!(
        changes["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == bob.user_id()),
        "{changes}"
    );

    // The stranger joins: for Alice that is a change of the stranger's, and vice versa.
    let stranger_since = initial_token(&stranger).await;
    assert_ok(&stranger.join(&room).await, "stranger joins");
    let response = alice
        .sync_until(Some(&alice_mid), WAIT, |r| {
            listed(r, "changed", stranger.user_id())
        })
        .await;
    let alice_joined = response["next_batch"].as_str().unwrap().to_owned();
    stranger
        .sync_until(Some(&stranger_since), WAIT, |r| {
            listed(r, "changed", alice.user_id()) && listed(r, "changed", bob.user_id())
        })
        .await;

    // Bob leaves the only room he shares with Alice: he is in her `left`.
    assert_ok(&bob.leave(&room).await, "bob leaves");
    let response = alice
        .sync_until(Some(&alice_joined), WAIT, |r| {
            listed(r, "left", bob.user_id())
        })
        .await;
    assert!(!listed(&response, "changed", bob.user_id()), "{response}");
    let alice_left = response["next_batch"].as_str().unwrap().to_owned();
    let changes = alice
        .get(&format!(
            "/_matrix/client/v3/keys/changes?from={}&to={}",
            encode(&alice_joined),
            encode(&alice_left)
        ))
        .await;
    let changes = assert_ok(&changes, "keys/changes after leave");
    assert!(
        changes["left"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == bob.user_id()),
        "{changes}"
    );

    // Now that they share nothing, Bob's new device is not Alice's business.
    let _ = bob.new_device().await;
    let response = alice.sync(Some(&alice_left), 1500).await;
    assert!(
        !listed(assert_ok(&response, "sync"), "changed", bob.user_id()),
        "{}",
        response.1
    );
    assert_error(
        &alice
            .get("/_matrix/client/v3/keys/changes?from=garbage&to=s1")
            .await,
        400,
        "M_INVALID_PARAM",
        "a bad token",
    );
}

/// Users of other servers are answered with a failure for their server, not an error.
async fn remote_users_are_failures(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    if hs.is_external() {
        return; // another server would really ask the remote one
    }
    let alice = hs.register_user("alice").await;
    let answer = query(&alice, &["@someone:remote.example.org"]).await;
    assert!(
        answer["failures"]["remote.example.org"].is_object(),
        "{answer}"
    );
    let body = json!({ "one_time_keys": { "@someone:remote.example.org": { "DEV": "signed_curve25519" } } });
    let response = alice.post("/_matrix/client/v3/keys/claim", &body).await;
    assert!(assert_ok(&response, "claim")["failures"]["remote.example.org"].is_object());
}

/// After another user claims one of my one-time keys, my next `/sync` (incremental, with
/// nothing else new) carries the lower `device_one_time_keys_count`; a sync already waiting
/// returns with it at once; sliding sync's e2ee extension does the same.
async fn claimed_keys_lower_the_count_in_the_next_sync(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let key = new_key();
    let mut one_time_keys = json!({});
    for i in 1..=4 {
        one_time_keys[format!("signed_curve25519:BBBBB{i}")] = one_time_key(&alice, &key, false);
    }
    let response = upload(
        &alice,
        &json!({ "device_keys": device_keys(&alice, &key), "one_time_keys": one_time_keys }),
    )
    .await;
    assert_ok(&response, "upload");
    let count = |body: &Value| body["device_one_time_keys_count"]["signed_curve25519"].clone();

    let sync = alice.sync(None, 0).await;
    assert_eq!(count(assert_ok(&sync, "initial sync")), 4, "{}", sync.1);
    let since = sync.1["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let sync = alice.sync(Some(&since), 0).await;
    assert_eq!(
        count(&sync.1),
        4,
        "an incremental sync with nothing new: {}",
        sync.1
    );

    // A claim, then the next incremental sync (nothing else happened).
    only_key(&claim(&bob, alice.user_id(), alice.device_id()).await);
    let sync = alice.sync(Some(&since), 0).await;
    assert_eq!(
        count(assert_ok(&sync, "sync")),
        3,
        "after one claim: {}",
        sync.1
    );

    // A sync already waiting returns when a claim lowers the count.
    let waiting = {
        let alice = alice.clone();
        let since = since.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            (alice.sync(Some(&since), 20_000).await, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    only_key(&claim(&bob, alice.user_id(), alice.device_id()).await);
    let ((status, body), took) = waiting.await.expect("waiting sync");
    assert_eq!(status, 200, "{body}");
    assert_eq!(count(&body), 2, "the waiting sync: {body}");
    assert!(
        took < Duration::from_secs(10),
        "the waiting sync took {took:?}"
    );

    // Sliding sync's e2ee extension: current in every response, and news to a waiting one.
    let path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let request = json!({ "lists": {}, "extensions": { "e2ee": { "enabled": true } } });
    let first = alice.post(path, &request).await;
    let e2ee = &assert_ok(&first, "sliding sync")["extensions"]["e2ee"];
    assert_eq!(count(e2ee), 2, "{}", first.1);
    let pos = first.1["pos"].as_str().expect("pos").to_owned();
    let waiting = {
        let alice = alice.clone();
        let (pos, request) = (pos.clone(), request.clone());
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let path = format!(
                "{path}?pos={}&timeout=20000",
                complement_tests::encode(&pos)
            );
            (alice.post(&path, &request).await, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    only_key(&claim(&bob, alice.user_id(), alice.device_id()).await);
    let ((status, body), took) = waiting.await.expect("waiting sliding sync");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        count(&body["extensions"]["e2ee"]),
        1,
        "the waiting sliding sync: {body}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the waiting sliding sync took {took:?}"
    );
}

backend_tests!(
    claimed_keys_lower_the_count_in_the_next_sync,
    a35_to_device_exactly_once_idempotent_txn,
    a36_keys_upload_query_claim_counts,
    a37_new_device_appears_in_device_lists,
    bad_keys_are_refused,
    claims_follow_upload_order,
    fallback_keys,
    concurrent_claims_never_share_a_key,
    cross_signing_upload_and_uia,
    signatures_upload_visible_in_query,
    key_backup_versions_and_etags,
    to_device_to_all_devices,
    to_device_exactly_once_on_websocket,
    deleting_a_device_removes_its_keys_and_messages,
    device_lists_follow_shared_rooms,
    remote_users_are_failures,
);
