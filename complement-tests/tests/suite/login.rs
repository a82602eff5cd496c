//! Scenarios 5-7: login, whoami, logout.

use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, unique_name, Backend, Client,
    ServerOptions, TestServer,
};
use serde_json::json;

/// Every device ID listed by `GET /devices` for this client's user.
async fn device_ids(client: &Client) -> Vec<String> {
    let response = client.get("/_matrix/client/v3/devices").await;
    let body = assert_ok(&response, "GET /devices");
    body["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices list: {body}"))
        .iter()
        .map(|d| d["device_id"].as_str().expect("device_id").to_string())
        .collect()
}

/// 5. `GET /login` advertises password login; login works by localpart or
///    full MXID, and `/account/whoami` then returns that user.
async fn a05_login_localpart_and_mxid_whoami(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let anonymous = hs.client();
    let flows = anonymous.get("/_matrix/client/v3/login").await;
    let body = assert_ok(&flows, "GET /login");
    let flows = body["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("no flows: {body}"));
    assert!(
        flows.iter().any(|f| f["type"] == "m.login.password"),
        "password login not advertised: {body}"
    );

    let alice = hs.register_user("alice").await;
    let password = alice.password.clone().unwrap();
    let user_id = alice.user_id().to_string();

    let by_localpart = anonymous.login(alice.localpart(), &password).await;
    let first = assert_ok(&by_localpart, "login by localpart");
    assert_eq!(first["user_id"], user_id, "{first}");
    assert!(first["access_token"].is_string(), "{first}");
    assert!(first["device_id"].is_string(), "{first}");
    let first_device = anonymous.authed(first, &password);
    let whoami = first_device.whoami().await;
    let who = assert_ok(&whoami, "whoami after localpart login");
    assert_eq!(who["user_id"], user_id, "{who}");
    assert_eq!(who["device_id"], first["device_id"], "{who}");

    let by_mxid = anonymous.login(&user_id, &password).await;
    let second = assert_ok(&by_mxid, "login by full user ID");
    assert_eq!(second["user_id"], user_id, "{second}");
    assert_ne!(
        second["device_id"], first["device_id"],
        "each login without device_id is a new device"
    );
    assert_ne!(second["access_token"], first["access_token"]);
    let whoami = anonymous.authed(second, &password).whoami().await;
    assert_eq!(
        assert_ok(&whoami, "whoami after MXID login")["user_id"],
        user_id
    );

    // A client-chosen device ID is echoed.
    let device = format!("LOGIN{}", rand::random::<u32>());
    let with_device = anonymous
        .login_with_device(&user_id, &password, Some(&device))
        .await;
    assert_eq!(
        assert_ok(&with_device, "login with device_id")["device_id"],
        device
    );

    // The first session is still valid after the later logins.
    assert_ok(
        &first_device.whoami().await,
        "first token after more logins",
    );
}

/// 6. Login with a wrong password or as an unknown user returns 403
///    `M_FORBIDDEN`.
async fn a06_login_wrong_password_forbidden(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let anonymous = hs.client();
    let alice = hs.register_user("alice").await;

    let wrong = anonymous.login(alice.localpart(), "not the password").await;
    assert_error(&wrong, 403, "M_FORBIDDEN", "login with a wrong password");
    let wrong = anonymous.login(alice.user_id(), "").await;
    assert_error(&wrong, 403, "M_FORBIDDEN", "login with an empty password");

    let nobody = unique_name("nobody");
    let unknown = anonymous.login(&nobody, "whatever").await;
    assert_error(
        &unknown,
        403,
        "M_FORBIDDEN",
        "login as an unknown localpart",
    );
    let unknown = anonymous.login(&hs.user_id(&nobody), "whatever").await;
    assert_error(&unknown, 403, "M_FORBIDDEN", "login as an unknown user ID");

    // The right password still works afterwards.
    let password = alice.password.clone().unwrap();
    assert_ok(&anonymous.login(alice.user_id(), &password).await, "login");
}

/// 7. After logout the old token gets 401 `M_UNKNOWN_TOKEN`; `logout/all`
///    kills every device's token.
async fn a07_logout_and_logout_all(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let a = hs.register_user("alice").await;
    let b = a.new_device().await;

    let logout = a.post("/_matrix/client/v3/logout", &json!({})).await;
    assert_ok_object(&logout, "POST /logout");
    assert_error(
        &a.whoami().await,
        401,
        "M_UNKNOWN_TOKEN",
        "whoami with a logged-out token",
    );
    assert_error(
        &a.post("/_matrix/client/v3/logout", &json!({})).await,
        401,
        "M_UNKNOWN_TOKEN",
        "logout with a logged-out token",
    );
    assert_ok(&b.whoami().await, "the other device after logout");
    let devices = device_ids(&b).await;
    assert!(
        !devices.iter().any(|d| d == a.device_id()),
        "logout must delete the device, still listed: {devices:?}"
    );

    let c = a.new_device().await;
    let logout_all = b.post("/_matrix/client/v3/logout/all", &json!({})).await;
    assert_ok_object(&logout_all, "POST /logout/all");
    for (name, client) in [("b", &b), ("c", &c)] {
        assert_error(
            &client.whoami().await,
            401,
            "M_UNKNOWN_TOKEN",
            &format!("whoami on device {name} after logout/all"),
        );
    }

    // The account itself is fine: a new login works and has one device.
    let d = a.new_device().await;
    assert_ok(&d.whoami().await, "whoami after a fresh login");
    assert_eq!(device_ids(&d).await, vec![d.device_id().to_string()]);
}

/// Logs in with `refresh_token: true`; returns the body.
async fn refreshable_login(hs: &TestServer, user: &Client) -> serde_json::Value {
    let body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user.localpart() },
        "password": user.password.clone().unwrap(),
        "refresh_token": true,
    });
    let response = hs.client().post("/_matrix/client/v3/login", &body).await;
    assert_ok(&response, "refreshable login").clone()
}

async fn refresh(hs: &TestServer, refresh_token: &str) -> (u16, serde_json::Value) {
    hs.client()
        .post(
            "/_matrix/client/v3/refresh",
            &json!({ "refresh_token": refresh_token }),
        )
        .await
}

fn token_of(body: &serde_json::Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}: {body}"))
        .to_owned()
}

/// Refresh tokens: login and registration hand one out when asked, with an access token that
/// expires after `MYELIN_REFRESHABLE_ACCESS_TOKEN_LIFETIME_SECONDS` (then 401 with
/// `soft_logout: true`); `/refresh` rotates both; an old refresh token works for a retry until
/// the new access or refresh token is used, then never again; logging out ends them all.
async fn refresh_tokens_rotate_and_expire(backend: Backend) {
    let options =
        ServerOptions::default().env("MYELIN_REFRESHABLE_ACCESS_TOKEN_LIFETIME_SECONDS", "2");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let user = hs.register_user("refresher").await;
    // Without asking: no refresh token, no expiry.
    let (_, plain) = hs
        .client()
        .login(user.localpart(), user.password.as_deref().unwrap())
        .await;
    assert!(
        plain.get("refresh_token").is_none() && plain.get("expires_in_ms").is_none(),
        "{plain}"
    );

    let first = refreshable_login(&hs, &user).await;
    assert_eq!(first["expires_in_ms"], 2000, "{first}");
    let (a1, r1) = (
        token_of(&first, "access_token"),
        token_of(&first, "refresh_token"),
    );
    assert_ok(&user.with_token(&a1).whoami().await, "a1");

    // Refresh; the response is "lost" and the client retries with r1: that works too, and
    // the first answer's tokens are void.
    let (status, second) = refresh(&hs, &r1).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["expires_in_ms"], 2000, "{second}");
    let (a2, r2) = (
        token_of(&second, "access_token"),
        token_of(&second, "refresh_token"),
    );
    let (status, third) = refresh(&hs, &r1).await;
    assert_eq!(status, 200, "retry with r1: {third}");
    let (a3, r3) = (
        token_of(&third, "access_token"),
        token_of(&third, "refresh_token"),
    );
    assert_error(
        &user.with_token(&a2).whoami().await,
        401,
        "M_UNKNOWN_TOKEN",
        "a2 replaced",
    );
    assert_error(
        &refresh(&hs, &r2).await,
        401,
        "M_UNKNOWN_TOKEN",
        "r2 replaced",
    );
    // a1 still works until a3 is used; using a3 retires r1 and a1.
    assert_ok(&user.with_token(&a1).whoami().await, "a1 before a3 is used");
    assert_ok(&user.with_token(&a3).whoami().await, "a3");
    assert_error(
        &refresh(&hs, &r1).await,
        401,
        "M_UNKNOWN_TOKEN",
        "r1 after a3 was used",
    );
    assert_error(
        &user.with_token(&a1).whoami().await,
        401,
        "M_UNKNOWN_TOKEN",
        "a1 after a3 was used",
    );

    // Using the new refresh token (not its access token) also retires the old one.
    let (_, fourth) = refresh(&hs, &r3).await;
    let r4 = token_of(&fourth, "refresh_token");
    let (_, fifth) = refresh(&hs, &r4).await;
    assert_error(
        &refresh(&hs, &r3).await,
        401,
        "M_UNKNOWN_TOKEN",
        "r3 after r4 was used",
    );
    let (a5, r5) = (
        token_of(&fifth, "access_token"),
        token_of(&fifth, "refresh_token"),
    );

    // The access token expires: a soft logout, and refreshing brings the session back.
    assert_ok(&user.with_token(&a5).whoami().await, "a5 fresh");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let expired = user.with_token(&a5).whoami().await;
    assert_error(&expired, 401, "M_UNKNOWN_TOKEN", "expired");
    assert_eq!(expired.1["soft_logout"], true, "{}", expired.1);
    let (status, sixth) = refresh(&hs, &r5).await;
    assert_eq!(status, 200, "{sixth}");
    let a6 = token_of(&sixth, "access_token");
    assert_ok(&user.with_token(&a6).whoami().await, "a6");

    // Logging out ends the device's refresh tokens.
    let r6 = token_of(&sixth, "refresh_token");
    assert_ok(
        &user
            .with_token(&a6)
            .post("/_matrix/client/v3/logout", &json!({}))
            .await,
        "logout",
    );
    assert_error(
        &refresh(&hs, &r6).await,
        401,
        "M_UNKNOWN_TOKEN",
        "after logout",
    );
    assert_error(
        &refresh(&hs, "nonsense").await,
        401,
        "M_UNKNOWN_TOKEN",
        "unknown",
    );

    // Registration hands one out too.
    let name = unique_name("reg");
    let registered = hs
        .client()
        .register_body(json!({
            "username": name, "password": "pw-long-enough",
            "auth": { "type": "m.login.dummy" }, "refresh_token": true,
        }))
        .await;
    let registered = assert_ok(&registered, "register with refresh_token");
    assert!(registered["refresh_token"].is_string(), "{registered}");
    assert_eq!(registered["expires_in_ms"], 2000, "{registered}");
}

/// Login tokens (`POST /login/get_token` + `m.login.token`): off by default (404
/// `M_UNRECOGNIZED`, capability false, no login flow); when enabled, behind the password,
/// single-use, for the same user.
async fn login_tokens_log_in_another_device(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let user = hs.register_user("qr").await;
    const GET_TOKEN: &str = "/_matrix/client/v1/login/get_token";
    assert_error(
        &user.post(GET_TOKEN, &json!({})).await,
        404,
        "M_UNRECOGNIZED",
        "disabled",
    );
    let caps = user.get("/_matrix/client/v3/capabilities").await;
    // Absent means the default, false.
    assert_ne!(
        assert_ok(&caps, "caps")["capabilities"]["m.get_login_token"]["enabled"],
        true
    );
    let flows = hs.client().get("/_matrix/client/v3/login").await;
    assert!(
        !flows.1.to_string().contains("m.login.token"),
        "{}",
        flows.1
    );
    drop(hs);

    let options = ServerOptions::default().env("MYELIN_LOGIN_GET_TOKEN_ENABLED", "true");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let user = hs.register_user("qr").await;
    let caps = user.get("/_matrix/client/v3/capabilities").await;
    assert_eq!(
        assert_ok(&caps, "caps")["capabilities"]["m.get_login_token"]["enabled"],
        true
    );
    let flows = hs.client().get("/_matrix/client/v3/login").await;
    let flows = assert_ok(&flows, "flows")["flows"].clone();
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "m.login.token" && f["get_login_token"] == true),
        "{flows}"
    );
    let (status, challenge) = user.post(GET_TOKEN, &json!({})).await;
    assert_eq!(status, 401, "needs the password first: {challenge}");
    assert!(challenge["flows"].is_array(), "{challenge}");
    let response = user
        .with_password_uia(reqwest::Method::POST, GET_TOKEN, json!({}))
        .await;
    let body = assert_ok(&response, "get_token");
    assert_eq!(body["expires_in_ms"], 120000, "{body}");
    let token = token_of(body, "login_token");

    let login = |token: String| {
        let client = hs.client();
        async move {
            client
                .post(
                    "/_matrix/client/v3/login",
                    &json!({ "type": "m.login.token", "token": token }),
                )
                .await
        }
    };
    let response = login(token.clone()).await;
    let session = assert_ok(&response, "m.login.token");
    assert_eq!(session["user_id"], user.user_id(), "{session}");
    assert_ne!(
        session["device_id"],
        user.device_id(),
        "a new device: {session}"
    );
    assert_error(&login(token).await, 403, "M_FORBIDDEN", "used twice");
    assert_error(
        &login("made-up".into()).await,
        403,
        "M_FORBIDDEN",
        "unknown token",
    );
}

backend_tests!(
    a05_login_localpart_and_mxid_whoami,
    a06_login_wrong_password_forbidden,
    a07_logout_and_logout_all,
    refresh_tokens_rotate_and_expire,
    login_tokens_log_in_another_device,
);
