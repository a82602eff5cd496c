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

backend_tests!(
    a05_login_localpart_and_mxid_whoami,
    a06_login_wrong_password_forbidden,
    a07_logout_and_logout_all,
);
