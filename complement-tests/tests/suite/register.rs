//! Scenarios 2-4 (registration) and shared-secret registration.

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, unique_name, Backend, Client, ServerOptions,
    TestServer,
};
use serde_json::{json, Value};

const REGISTER: &str = "/_matrix/client/v3/register";

fn available_path(username: &str) -> String {
    format!(
        "/_matrix/client/v3/register/available?username={}",
        encode(username)
    )
}

/// 2. `POST /register` with an empty body returns 401 with `flows` and a
///    `session`.
async fn a02_register_empty_body_uia(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let (status, body) = hs.client().post(REGISTER, &json!({})).await;
    assert_eq!(status, 401, "POST /register {{}}: {body}");
    let flows = body["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("no flows list: {body}"));
    assert!(!flows.is_empty(), "flows is empty: {body}");
    for flow in flows {
        let stages = flow["stages"]
            .as_array()
            .unwrap_or_else(|| panic!("flow without stages list: {body}"));
        assert!(
            stages.iter().all(Value::is_string),
            "stages must be strings: {body}"
        );
    }
    assert!(
        flows
            .iter()
            .any(|f| f["stages"] == json!(["m.login.dummy"])),
        "open registration must offer the m.login.dummy flow: {body}"
    );
    let session = body["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {body}"));
    assert!(!session.is_empty(), "empty session: {body}");

    // Each new registration attempt gets its own session.
    let (_, again) = hs.client().post(REGISTER, &json!({})).await;
    assert_ne!(
        again["session"], body["session"],
        "sessions must not be reused"
    );
}

/// 3. Registration with username, password and dummy auth returns user_id,
///    access_token and device_id, echoing any device_id supplied.
async fn a03_register_dummy_echo_device_id(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let client = hs.client();

    // With a device ID and display name chosen by the client.
    let name = unique_name("alice");
    let device = format!("DEV{}", rand::random::<u32>());
    let response = client
        .register_body(json!({
            "username": name,
            "password": "correct horse",
            "device_id": device,
            "initial_device_display_name": "Alice's phone",
        }))
        .await;
    let body = assert_ok(&response, "register with device_id");
    assert_eq!(body["user_id"], hs.user_id(&name), "{body}");
    assert_eq!(
        body["device_id"], device,
        "device_id must be echoed: {body}"
    );
    let token = body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token: {body}"));
    assert!(!token.is_empty());

    let alice = client.authed(body, "correct horse");
    let whoami = alice.whoami().await;
    let who = assert_ok(&whoami, "whoami after registration");
    assert_eq!(who["user_id"], hs.user_id(&name), "{who}");
    assert_eq!(who["device_id"], device, "{who}");

    let device_info = alice
        .get(&format!("/_matrix/client/v3/devices/{}", encode(&device)))
        .await;
    let info = assert_ok(&device_info, "GET own device");
    assert_eq!(info["display_name"], "Alice's phone", "{info}");

    // Without a device ID the server makes one up.
    let name2 = unique_name("bob");
    let response = client.register(&name2, "another password").await;
    let body = assert_ok(&response, "register without device_id");
    assert_eq!(body["user_id"], hs.user_id(&name2), "{body}");
    assert!(
        body["device_id"].as_str().is_some_and(|d| !d.is_empty()),
        "server must generate a device_id: {body}"
    );
    assert!(
        body["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty() && t != token),
        "each user gets a fresh token: {body}"
    );
}

/// 4. A taken username gives `M_USER_IN_USE`, invalid characters give
///    `M_INVALID_USERNAME`, and `/register/available` reports the same.
async fn a04_username_in_use_and_invalid(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let client = hs.client();
    let name = unique_name("carol");

    let free = client.get(&available_path(&name)).await;
    let body = assert_ok(&free, "available before registration");
    assert_eq!(body["available"], true, "{body}");

    assert_ok(
        &client.register(&name, "pw one").await,
        "first registration",
    );

    let taken = client.register(&name, "pw two").await;
    assert_error(&taken, 400, "M_USER_IN_USE", "registering a taken name");
    let available = client.get(&available_path(&name)).await;
    assert_error(
        &available,
        400,
        "M_USER_IN_USE",
        "/register/available for a taken name",
    );

    for invalid in ["bad name", "colon:name", "émile", "back\\slash"] {
        let register = client.register(invalid, "pw").await;
        assert_error(
            &register,
            400,
            "M_INVALID_USERNAME",
            &format!("registering {invalid:?}"),
        );
        // The spec's answer; Synapse says 400 M_UNKNOWN for non-ASCII names
        // here, which the spec does not list.
        let available = client.get(&available_path(invalid)).await;
        assert_error(
            &available,
            400,
            "M_INVALID_USERNAME",
            &format!("/register/available for {invalid:?}"),
        );
    }

    // The original owner is unaffected by the failed attempts.
    assert_ok(
        &client.login(&name, "pw one").await,
        "login as the original owner",
    );
}

/// Synapse-compatible shared-secret registration: nonce, HMAC, single use.
async fn shared_secret_registration(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let Some(secret) = hs.shared_secret() else {
        complement_tests::skip(
            "shared_secret_registration",
            "set MYELIN_TEST_SHARED_SECRET for an external server",
        );
        return;
    };
    let client = hs.client();

    let nonce_response = client.get("/_synapse/admin/v1/register").await;
    let nonce = assert_ok(&nonce_response, "GET nonce")["nonce"]
        .as_str()
        .unwrap_or_else(|| panic!("no nonce: {nonce_response:?}"))
        .to_string();

    // A MAC made with the wrong secret is refused.
    let name = unique_name("shared");
    let wrong = client
        .shared_secret_register_with_nonce("not the secret", &nonce, &name, "pw", false)
        .await;
    // Myelin answers M_FORBIDDEN; Synapse, whose API this is, M_UNKNOWN.
    let (status, body) = &wrong;
    assert!(
        *status == 403 && (body["errcode"] == "M_FORBIDDEN" || body["errcode"] == "M_UNKNOWN"),
        "shared-secret registration, wrong mac: expected 403 M_FORBIDDEN, got {status} {body}"
    );
    assert_error(
        &client.login(&name, "pw").await,
        403,
        "M_FORBIDDEN",
        "login after a refused registration",
    );

    // The right MAC with a fresh nonce works.
    let response = client
        .shared_secret_register(&secret, &name, "pw", false)
        .await;
    let body = assert_ok(&response, "shared-secret registration");
    assert_eq!(body["user_id"], hs.user_id(&name), "{body}");
    assert!(body["device_id"].is_string(), "no device_id: {body}");
    let user = client.authed(body, "pw");
    let whoami = user.whoami().await;
    assert_eq!(assert_ok(&whoami, "whoami")["user_id"], hs.user_id(&name));
    assert_ok(&client.login(&name, "pw").await, "password login");

    // A nonce works once.
    let nonce_response = client.get("/_synapse/admin/v1/register").await;
    let nonce = assert_ok(&nonce_response, "GET nonce")["nonce"]
        .as_str()
        .unwrap()
        .to_string();
    let first_name = unique_name("once");
    let first = client
        .shared_secret_register_with_nonce(&secret, &nonce, &first_name, "pw", false)
        .await;
    assert_ok(&first, "registration with a fresh nonce");
    let second_name = unique_name("twice");
    let (status, body) = client
        .shared_secret_register_with_nonce(&secret, &nonce, &second_name, "pw", false)
        .await;
    assert!(
        status == 400 || status == 403,
        "a reused nonce must be refused, got {status} {body}"
    );
    assert_error(
        &client.login(&second_name, "pw").await,
        403,
        "M_FORBIDDEN",
        "login as a user registered with a reused nonce",
    );

    // Admin registrations work too.
    let admin_name = unique_name("admin");
    let admin = client
        .shared_secret_register(&secret, &admin_name, "pw", true)
        .await;
    assert_eq!(
        assert_ok(&admin, "admin registration")["user_id"],
        hs.user_id(&admin_name)
    );
}

backend_tests!(
    a02_register_empty_body_uia,
    a03_register_dummy_echo_device_id,
    a04_username_in_use_and_invalid,
    shared_secret_registration,
);

/// With open registration switched off, `/register` is refused with 403
/// `M_FORBIDDEN`, while shared-secret registration still works.
#[tokio::test]
async fn registration_closed_forbidden() {
    let options = ServerOptions::default().registration_closed(true);
    let Some(hs) = TestServer::start(Backend::Sqlite, options).await else {
        return;
    };
    if hs.is_external() {
        complement_tests::skip("registration_closed_forbidden", "external server");
        return;
    }
    let client: Client = hs.client();
    let name = unique_name("closed");
    let refused = client.register(&name, "pw").await;
    assert_error(
        &refused,
        403,
        "M_FORBIDDEN",
        "register with registration closed",
    );

    let secret = hs.shared_secret().expect("spawned servers have a secret");
    let response = client
        .shared_secret_register(&secret, &name, "pw", false)
        .await;
    assert_ok(
        &response,
        "shared-secret registration with registration closed",
    );
}
