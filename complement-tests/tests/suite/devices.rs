//! Scenario 9: device management, and what a device records about itself.

use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, encode, Backend, Client,
    ServerOptions, TestServer,
};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::json;

fn device_path(device_id: &str) -> String {
    format!("/_matrix/client/v3/devices/{}", encode(device_id))
}

async fn device_ids(client: &Client) -> Vec<String> {
    let response = client.get("/_matrix/client/v3/devices").await;
    let body = assert_ok(&response, "GET /devices");
    let mut ids: Vec<String> = body["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices list: {body}"))
        .iter()
        .map(|d| {
            d["device_id"]
                .as_str()
                .unwrap_or_else(|| panic!("device without device_id: {body}"))
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&Client]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|c| c.device_id().to_string()).collect();
    ids.sort();
    ids
}

/// 9. A user can list, rename and delete their devices; deletion requires
///    UIA, and another user's UIA is refused.
async fn a09_devices_list_rename_delete_uia(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let d1 = hs.register_user("alice").await;
    let d2 = d1.new_device().await;
    let bob = hs.register_user("bob").await;

    // List and get.
    assert_eq!(device_ids(&d1).await, sorted(&[&d1, &d2]));
    let one = d1.get(&device_path(d2.device_id())).await;
    assert_eq!(
        assert_ok(&one, "GET /devices/{id}")["device_id"],
        d2.device_id()
    );
    assert_error(
        &d1.get(&device_path("NOSUCHDEVICE")).await,
        404,
        "M_NOT_FOUND",
        "GET an unknown device",
    );
    assert_error(
        &d1.get(&device_path(bob.device_id())).await,
        404,
        "M_NOT_FOUND",
        "GET another user's device",
    );
    assert_eq!(
        device_ids(&bob).await,
        sorted(&[&bob]),
        "bob sees only his own devices"
    );

    // Rename.
    let renamed = d1
        .put(
            &device_path(d2.device_id()),
            &json!({ "display_name": "Kitchen tablet" }),
        )
        .await;
    assert_ok_object(&renamed, "rename a device");
    let one = d2.get(&device_path(d2.device_id())).await;
    assert_eq!(
        assert_ok(&one, "GET renamed device")["display_name"],
        "Kitchen tablet"
    );
    assert_error(
        &d1.put(
            &device_path(bob.device_id()),
            &json!({ "display_name": "mine now" }),
        )
        .await,
        404,
        "M_NOT_FOUND",
        "rename another user's device",
    );

    // Delete: a UIA challenge first.
    let (status, challenge) = d1
        .request(
            Method::DELETE,
            &device_path(d2.device_id()),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 401, "DELETE device without auth: {challenge}");
    assert!(
        challenge["session"].is_string(),
        "no UIA session: {challenge}"
    );
    assert!(challenge["flows"].is_array(), "no UIA flows: {challenge}");

    // Bob's valid credentials do not authorise deleting Alice's device.
    let bob_password = bob.password.clone().unwrap();
    let (status, body) = d1
        .with_uia(
            Method::DELETE,
            &device_path(d2.device_id()),
            json!({}),
            bob.user_id(),
            &bob_password,
        )
        .await;
    assert!(
        (status == 401 || status == 403) && body["errcode"] == "M_FORBIDDEN",
        "UIA as another user must be refused with M_FORBIDDEN, got {status} {body}"
    );
    assert_ok(&d2.whoami().await, "device after a refused delete");
    assert_eq!(device_ids(&d1).await, sorted(&[&d1, &d2]));

    // Alice's own password does.
    let deleted = d1
        .with_password_uia(Method::DELETE, &device_path(d2.device_id()), json!({}))
        .await;
    assert_ok_object(&deleted, "DELETE device with UIA");
    assert_error(
        &d2.whoami().await,
        401,
        "M_UNKNOWN_TOKEN",
        "token of a deleted device",
    );
    assert_eq!(device_ids(&d1).await, sorted(&[&d1]));
    assert_error(
        &d1.get(&device_path(d2.device_id())).await,
        404,
        "M_NOT_FOUND",
        "GET a deleted device",
    );

    // Bulk deletion, also behind UIA.
    let d3 = d1.new_device().await;
    let d4 = d1.new_device().await;
    let body = json!({ "devices": [d3.device_id(), d4.device_id()] });
    let (status, _) = d1.post("/_matrix/client/v3/delete_devices", &body).await;
    assert_eq!(status, 401, "delete_devices without auth must ask for UIA");
    let deleted = d1
        .with_password_uia(Method::POST, "/_matrix/client/v3/delete_devices", body)
        .await;
    assert_ok_object(&deleted, "POST /delete_devices with UIA");
    for device in [&d3, &d4] {
        assert_error(
            &device.whoami().await,
            401,
            "M_UNKNOWN_TOKEN",
            "token of a bulk-deleted device",
        );
    }
    assert_eq!(device_ids(&d1).await, sorted(&[&d1]));
    assert_ok(&bob.whoami().await, "bob is untouched");
}

/// A device records its display name from login and when and where it was
/// last seen; logging out removes it.
async fn device_last_seen_and_logout_removes_device(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let main = hs.register_user("alice").await;
    let password = main.password.clone().unwrap();
    let before_login = now_ms();
    let response = hs
        .client()
        .post(
            "/_matrix/client/v3/login",
            &json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": main.user_id() },
                "password": password,
                "initial_device_display_name": "Phone",
            }),
        )
        .await;
    let phone = hs
        .client()
        .authed(assert_ok(&response, "login as Phone"), &password);
    assert_ok(&phone.whoami().await, "whoami on the phone");

    // Last-seen data may be written lazily ("a few minutes out of date" is
    // allowed), so give the server a moment; the test server is idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let response = phone.get(&device_path(phone.device_id())).await;
        let info = assert_ok(&response, "GET own device").clone();
        if info["last_seen_ts"].is_number() || Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(info["device_id"], phone.device_id(), "{info}");
    assert_eq!(info["display_name"], "Phone", "{info}");
    assert_eq!(info["last_seen_ip"], "127.0.0.1", "{info}");
    let last_seen = info["last_seen_ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("last_seen_ts must be an integer: {info}"));
    assert!(
        last_seen + 5_000 >= before_login && last_seen <= now_ms() + 5_000,
        "last_seen_ts {last_seen} is not around now ({before_login}): {info}"
    );

    // Another session sees the phone, until it logs out.
    assert_eq!(device_ids(&main).await, sorted(&[&main, &phone]));
    assert_ok_object(
        &phone.post("/_matrix/client/v3/logout", &json!({})).await,
        "POST /logout",
    );
    assert_eq!(
        device_ids(&main).await,
        sorted(&[&main]),
        "a logged-out device is removed"
    );
    assert_error(
        &main.get(&device_path(phone.device_id())).await,
        404,
        "M_NOT_FOUND",
        "GET a logged-out device",
    );

    // Unknown devices.
    assert_error(
        &main.get(&device_path("UNKNOWN")).await,
        404,
        "M_NOT_FOUND",
        "GET an unknown device",
    );
    assert_error(
        &main
            .put(&device_path("UNKNOWN"), &json!({ "display_name": "x" }))
            .await,
        404,
        "M_NOT_FOUND",
        "PUT an unknown device",
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

backend_tests!(
    a09_devices_list_rename_delete_uia,
    device_last_seen_and_logout_removes_device,
);
