//! Scenarios 2-4 (registration) and shared-secret registration.

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, unique_name, Backend, Client, ServerOptions,
    TestServer,
};
use serde_json::{json, Value};

const REGISTER: &str = "/_matrix/client/v3/register";
const TOKENS: &str = "/_synapse/admin/v1/registration_tokens";

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

/// Registration tokens: an admin creates a single-use token, the UIA stage
/// `m.login.registration_token` accepts it once, and the admin API lists,
/// refuses non-admins and deletes it.
async fn registration_token_flow(backend: Backend) {
    let options = ServerOptions::default().registration_token_required(true);
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    if hs.is_external() {
        complement_tests::skip("registration_token_flow", "external server");
        return;
    }
    let client = hs.client();
    let secret = hs.shared_secret().expect("spawned servers have a secret");
    let admin_name = unique_name("tokenadmin");
    let response = client
        .shared_secret_register(&secret, &admin_name, "admin pw", true)
        .await;
    let admin = client.authed(
        assert_ok(&response, "shared-secret admin registration"),
        "admin pw",
    );

    // The admin creates a token that can be used once.
    let created = admin
        .post(
            &format!("{TOKENS}/new"),
            &json!({ "token": "abc123", "uses_allowed": 1 }),
        )
        .await;
    let body = assert_ok(&created, "create a registration token");
    assert_eq!(body["token"], "abc123", "{body}");
    assert_eq!(body["uses_allowed"], 1, "{body}");
    assert_eq!(body["completed"], 0, "{body}");

    assert_eq!(token_validity(&client, "abc123").await, json!(true));
    assert_eq!(token_validity(&client, "no-such-token").await, json!(false));

    // The only way in is the token stage.
    let (status, challenge) = client.post(REGISTER, &json!({})).await;
    assert_eq!(status, 401, "POST /register {{}}: {challenge}");
    let stages: Vec<&Value> = challenge["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("no flows list: {challenge}"))
        .iter()
        .map(|flow| &flow["stages"])
        .collect();
    assert_eq!(
        stages,
        [&json!(["m.login.registration_token"])],
        "with tokens required the only flow is the token stage: {challenge}"
    );
    let session = challenge["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {challenge}"))
        .to_string();

    // A wrong token fails the stage; the UIA body carries the error.
    let name = unique_name("tokenuser");
    let register = |token: &str, session: &str| {
        json!({
            "username": name,
            "password": "user pw",
            "auth": {
                "type": "m.login.registration_token",
                "token": token,
                "session": session,
            },
        })
    };
    let (status, body) = client.post(REGISTER, &register("wrong", &session)).await;
    assert!(
        status == 401 && body["errcode"] == "M_UNAUTHORIZED" && body["flows"].is_array(),
        "wrong registration token: expected 401 M_UNAUTHORIZED with the UIA flows, got {status} {body}"
    );
    assert_error(
        &client.login(&name, "user pw").await,
        403,
        "M_FORBIDDEN",
        "login after a wrong registration token",
    );

    // The right token, in the same session, registers the user.
    let response = client.post(REGISTER, &register("abc123", &session)).await;
    let body = assert_ok(&response, "registration with the token");
    assert_eq!(body["user_id"], hs.user_id(&name), "{body}");
    let user = client.authed(body, "user pw");
    assert_eq!(
        assert_ok(&user.whoami().await, "whoami of the token user")["user_id"],
        hs.user_id(&name)
    );

    // The token is used up.
    assert_eq!(
        token_validity(&client, "abc123").await,
        json!(false),
        "a single-use token is invalid after its use"
    );
    let details = admin.get(&format!("{TOKENS}/abc123")).await;
    let body = assert_ok(&details, "GET the used token");
    assert_eq!(body["completed"], 1, "{body}");
    let second = unique_name("tokenuser");
    let (status, challenge) = client.post(REGISTER, &json!({})).await;
    assert_eq!(status, 401, "POST /register {{}}: {challenge}");
    let session = challenge["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {challenge}"));
    let (status, body) = client
        .post(
            REGISTER,
            &json!({
                "username": second,
                "password": "pw",
                "auth": { "type": "m.login.registration_token", "token": "abc123", "session": session },
            }),
        )
        .await;
    assert_eq!(
        status, 401,
        "registration with a used-up token must fail the stage: {body}"
    );
    assert_error(
        &client.login(&second, "pw").await,
        403,
        "M_FORBIDDEN",
        "login as a user registered with a used-up token",
    );

    // Only admins manage tokens.
    assert_error(
        &user
            .post(&format!("{TOKENS}/new"), &json!({ "token": "mine" }))
            .await,
        403,
        "M_FORBIDDEN",
        "non-admin creates a token",
    );
    assert_error(
        &client
            .post(&format!("{TOKENS}/new"), &json!({ "token": "mine" }))
            .await,
        401,
        "M_MISSING_TOKEN",
        "anonymous creates a token",
    );
    assert_eq!(
        token_validity(&client, "mine").await,
        json!(false),
        "refused creations leave no token behind"
    );

    // Deletion.
    let deleted = admin.delete(&format!("{TOKENS}/abc123")).await;
    assert_ok(&deleted, "DELETE the token");
    assert_error(
        &admin.get(&format!("{TOKENS}/abc123")).await,
        404,
        "M_NOT_FOUND",
        "GET a deleted token",
    );
}

/// `GET /register/m.login.registration_token/validity?token=…` → `valid`.
async fn token_validity(client: &Client, token: &str) -> Value {
    let response = client
        .get(&format!(
            "/_matrix/client/v1/register/m.login.registration_token/validity?token={}",
            encode(token)
        ))
        .await;
    assert_ok(&response, &format!("validity of {token:?}"))["valid"].clone()
}

/// Details of `/register`: user IDs are lower-cased, a missing username gets
/// a generated ID, `inhibit_login` returns no credentials, guests are
/// refused.
async fn registration_details(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let client = hs.client();

    // Upper case in the requested username.
    let mixed = unique_name("BoB");
    let lower = mixed.to_lowercase();
    let response = client
        .register_body(json!({ "username": mixed, "password": "bob pw" }))
        .await;
    let body = assert_ok(&response, "register a mixed-case username");
    assert_eq!(
        body["user_id"],
        hs.user_id(&lower),
        "the localpart must be lower-cased: {body}"
    );
    let bob = client.authed(body, "bob pw");
    assert_eq!(
        assert_ok(&bob.whoami().await, "whoami of the mixed-case user")["user_id"],
        hs.user_id(&lower)
    );
    assert_ok(
        &client.login(&lower, "bob pw").await,
        "login with the lower-cased localpart",
    );

    // No username: the server picks one on this server.
    let response = client.register_body(json!({ "password": "anon pw" })).await;
    let body = assert_ok(&response, "register without a username");
    let user_id = body["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no user_id: {body}"))
        .to_string();
    let suffix = format!(":{}", hs.server_name());
    assert!(
        user_id.starts_with('@') && user_id.ends_with(&suffix) && user_id.len() > suffix.len() + 1,
        "generated user ID must be a local user ID: {body}"
    );
    assert!(body["access_token"].is_string(), "no access_token: {body}");
    let anon = client.authed(body, "anon pw");
    assert_eq!(
        assert_ok(&anon.whoami().await, "whoami of the generated user")["user_id"],
        user_id
    );
    assert_ok(
        &client.login(&user_id, "anon pw").await,
        "login as the generated user",
    );

    // Guests are not allowed.
    let guest = client
        .post(&format!("{REGISTER}?kind=guest"), &json!({}))
        .await;
    assert_error(
        &guest,
        403,
        "M_GUEST_ACCESS_FORBIDDEN",
        "register with kind=guest",
    );

    // inhibit_login: an account but no session.
    let name = unique_name("inhibit");
    let response = client
        .register_body(json!({ "username": name, "password": "pw", "inhibit_login": true }))
        .await;
    let body = assert_ok(&response, "register with inhibit_login");
    assert_eq!(body["user_id"], hs.user_id(&name), "{body}");
    assert_ok(
        &client.login(&name, "pw").await,
        "login after registering with inhibit_login",
    );
    for field in ["access_token", "device_id"] {
        assert!(
            body.get(field).is_none(),
            "inhibit_login: {field} must be absent from the response (not even null): {body}"
        );
    }
}

/// With open registration switched off, `/register` is refused with 403
/// `M_FORBIDDEN` (with or without an auth dict), while shared-secret
/// registration still works.
async fn registration_closed_forbidden(backend: Backend) {
    let options = ServerOptions::default().env("MYELIN_REGISTRATION_OPEN", "false");
    let Some(hs) = TestServer::start(backend, options).await else {
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
    let refused = client
        .post(
            REGISTER,
            &json!({
                "username": name,
                "password": "pw",
                "auth": { "type": "m.login.dummy" },
            }),
        )
        .await;
    assert_error(
        &refused,
        403,
        "M_FORBIDDEN",
        "register with dummy auth and registration closed",
    );
    assert_error(
        &client.login(&name, "pw").await,
        403,
        "M_FORBIDDEN",
        "login after a refused registration",
    );

    let secret = hs.shared_secret().expect("spawned servers have a secret");
    let response = client
        .shared_secret_register(&secret, &name, "pw", false)
        .await;
    assert_ok(
        &response,
        "shared-secret registration with registration closed",
    );
    let login = client.login(&name, "pw").await;
    assert_eq!(
        assert_ok(&login, "login as the shared-secret user")["user_id"],
        hs.user_id(&name)
    );
}

backend_tests!(
    a02_register_empty_body_uia,
    a03_register_dummy_echo_device_id,
    a04_username_in_use_and_invalid,
    shared_secret_registration,
    registration_token_flow,
    registration_details,
    registration_closed_forbidden,
);
