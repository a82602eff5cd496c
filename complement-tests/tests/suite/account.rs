//! Scenario 8 (password change) and the rest of account management:
//! deactivation, profile, global account data.

use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, encode, Backend, Client,
    ServerOptions, TestServer,
};
use reqwest::Method;
use serde_json::json;

const PASSWORD: &str = "/_matrix/client/v3/account/password";

/// 8. After a password change the new password works and the old one fails;
///    other devices are logged out unless the client asks to keep them.
async fn a08_password_change(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let a = hs.register_user("alice").await;
    let b = a.new_device().await;
    let old_password = a.password.clone().unwrap();
    let user_id = a.user_id().to_string();

    // The first call, without auth, starts a UIA session offering passwords.
    let (status, challenge) = a
        .post(PASSWORD, &json!({ "new_password": "new password 1" }))
        .await;
    assert_eq!(status, 401, "password change without auth: {challenge}");
    let session = challenge["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no UIA session: {challenge}"))
        .to_string();
    assert!(
        challenge["flows"]
            .as_array()
            .is_some_and(|flows| flows.iter().any(|f| f["stages"]
                .as_array()
                .is_some_and(|s| s.contains(&json!("m.login.password"))))),
        "m.login.password not offered: {challenge}"
    );

    // A wrong current password fails the stage.
    let wrong = a
        .post(
            PASSWORD,
            &json!({
                "new_password": "new password 1",
                "auth": Client::password_auth(&user_id, "not my password", Some(&session)),
            }),
        )
        .await;
    assert_error(
        &wrong,
        401,
        "M_FORBIDDEN",
        "password change with a wrong password",
    );

    let changed = a
        .post(
            PASSWORD,
            &json!({
                "new_password": "new password 1",
                "auth": Client::password_auth(&user_id, &old_password, Some(&session)),
            }),
        )
        .await;
    assert_ok_object(&changed, "password change");

    assert_ok(&a.whoami().await, "the device that changed the password");
    assert_error(
        &b.whoami().await,
        401,
        "M_UNKNOWN_TOKEN",
        "another device after a password change (logout_devices defaults to true)",
    );
    let anonymous = hs.client();
    assert_error(
        &anonymous.login(&user_id, &old_password).await,
        403,
        "M_FORBIDDEN",
        "login with the old password",
    );
    assert_ok(
        &anonymous.login(&user_id, "new password 1").await,
        "login with the new password",
    );

    // With logout_devices: false the other devices survive.
    let mut a = a;
    a.password = Some("new password 1".into());
    let c = a.new_device().await;
    let kept = a
        .with_password_uia(
            Method::POST,
            PASSWORD,
            json!({ "new_password": "new password 2", "logout_devices": false }),
        )
        .await;
    assert_ok_object(&kept, "password change with logout_devices: false");
    assert_ok(&c.whoami().await, "other device with logout_devices: false");
    assert_ok(&a.whoami().await, "own device with logout_devices: false");
    assert_ok(
        &anonymous.login(&user_id, "new password 2").await,
        "login with password 2",
    );
    assert_error(
        &anonymous.login(&user_id, "new password 1").await,
        403,
        "M_FORBIDDEN",
        "login with the replaced password",
    );
}

/// After deactivation the user cannot log in, the token is dead, and the
/// username stays taken.
async fn deactivate_account(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let a = hs.register_user("leaver").await;
    let other_device = a.new_device().await;
    let localpart = a.localpart().to_string();
    let password = a.password.clone().unwrap();

    let (status, challenge) = a
        .post("/_matrix/client/v3/account/deactivate", &json!({}))
        .await;
    assert_eq!(
        status, 401,
        "deactivate without auth must ask for UIA: {challenge}"
    );
    assert_ok(&a.whoami().await, "still active after the UIA challenge");

    let response = a
        .with_password_uia(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            json!({}),
        )
        .await;
    let body = assert_ok(&response, "deactivate");
    assert!(
        body["id_server_unbind_result"] == "success"
            || body["id_server_unbind_result"] == "no-support",
        "id_server_unbind_result is required: {body}"
    );

    for (name, client) in [("deactivating", &a), ("other", &other_device)] {
        assert_error(
            &client.whoami().await,
            401,
            "M_UNKNOWN_TOKEN",
            &format!("{name} device's token after deactivation"),
        );
    }
    let (status, body) = hs.client().login(&localpart, &password).await;
    assert!(
        status == 403 && (body["errcode"] == "M_FORBIDDEN" || body["errcode"] == "M_USER_DEACTIVATED"),
        "login after deactivation: expected 403 M_FORBIDDEN or M_USER_DEACTIVATED, got {status} {body}"
    );
    let available = hs
        .client()
        .get(&format!(
            "/_matrix/client/v3/register/available?username={}",
            encode(&localpart)
        ))
        .await;
    assert_error(
        &available,
        400,
        "M_USER_IN_USE",
        "/register/available after deactivation",
    );
    let again = hs.client().register(&localpart, "new pw").await;
    assert_error(
        &again,
        400,
        "M_USER_IN_USE",
        "re-registering a deactivated name",
    );
}

/// Display name and avatar are set by their owner only and readable without
/// authentication. (The room half of scenario 10 comes with rooms.)
async fn profile_set_and_read_without_auth(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let anonymous = hs.client();
    let base = format!("/_matrix/client/v3/profile/{}", encode(alice.user_id()));

    let set = alice
        .put(
            &format!("{base}/displayname"),
            &json!({ "displayname": "Alice Liddell" }),
        )
        .await;
    assert_ok_object(&set, "PUT displayname");
    let avatar = "mxc://localhost/abcdefghijklmnop";
    let set = alice
        .put(
            &format!("{base}/avatar_url"),
            &json!({ "avatar_url": avatar }),
        )
        .await;
    assert_ok_object(&set, "PUT avatar_url");

    let name = anonymous.get(&format!("{base}/displayname")).await;
    assert_eq!(
        assert_ok(&name, "anonymous GET displayname")["displayname"],
        "Alice Liddell"
    );
    let url = anonymous.get(&format!("{base}/avatar_url")).await;
    assert_eq!(
        assert_ok(&url, "anonymous GET avatar_url")["avatar_url"],
        avatar
    );
    let profile = anonymous.get(&base).await;
    let body = assert_ok(&profile, "anonymous GET profile");
    assert_eq!(body["displayname"], "Alice Liddell", "{body}");
    assert_eq!(body["avatar_url"], avatar, "{body}");

    let hijack = bob
        .put(
            &format!("{base}/displayname"),
            &json!({ "displayname": "Not Alice" }),
        )
        .await;
    // The spec names no status for this; 403 goes with M_FORBIDDEN, while
    // Synapse answers 400 M_FORBIDDEN. The errcode is what clients act on.
    let (status, body) = &hijack;
    assert!(
        (*status == 403 || *status == 400) && body["errcode"] == "M_FORBIDDEN",
        "setting another user's display name: expected 403 M_FORBIDDEN, got {status} {body}"
    );
    let profile = anonymous.get(&format!("{base}/displayname")).await;
    assert_eq!(
        assert_ok(&profile, "GET displayname")["displayname"],
        "Alice Liddell"
    );

    let missing = anonymous
        .get(&format!(
            "/_matrix/client/v3/profile/{}",
            encode(&hs.user_id(&complement_tests::unique_name("ghost")))
        ))
        .await;
    // The spec's example errcode; Synapse answers 404 M_UNKNOWN here.
    assert_error(&missing, 404, "M_NOT_FOUND", "profile of an unknown user");
}

/// Global account data round-trips through PUT/GET and is private to its
/// owner. (The `/sync` half of scenario 34 comes with sync.)
async fn account_data_round_trip(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/org.example.test",
        encode(alice.user_id())
    );

    let content = json!({ "a": 1, "nested": { "list": [1, "two", null], "flag": true } });
    assert_ok_object(&alice.put(&path, &content).await, "PUT account data");
    let got = alice.get(&path).await;
    assert_eq!(assert_ok(&got, "GET account data"), &content);

    let replaced = json!({ "b": "second" });
    assert_ok_object(&alice.put(&path, &replaced).await, "PUT account data again");
    let got = alice.get(&path).await;
    assert_eq!(
        assert_ok(&got, "GET replaced account data"),
        &replaced,
        "PUT replaces, it does not merge"
    );

    let unknown = alice
        .get(&format!(
            "/_matrix/client/v3/user/{}/account_data/org.example.never.set",
            encode(alice.user_id())
        ))
        .await;
    assert_error(&unknown, 404, "M_NOT_FOUND", "GET account data never set");

    assert_error(
        &bob.get(&path).await,
        403,
        "M_FORBIDDEN",
        "GET another user's account data",
    );
    assert_error(
        &bob.put(&path, &json!({ "evil": true })).await,
        403,
        "M_FORBIDDEN",
        "PUT another user's account data",
    );
    assert_eq!(
        assert_ok(&alice.get(&path).await, "GET after bob's attempt"),
        &replaced
    );
    assert_error(
        &hs.client().get(&path).await,
        401,
        "M_MISSING_TOKEN",
        "anonymous GET account data",
    );
}

/// The avatar URL must be an `mxc://` URI, display names are bounded, only
/// the owner edits a profile, and a deleted field is gone.
async fn profile_avatar_and_other_users(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let anonymous = hs.client();
    let base = format!("/_matrix/client/v3/profile/{}", encode(alice.user_id()));
    let displayname = format!("{base}/displayname");
    let avatar_url = format!("{base}/avatar_url");

    assert_ok_object(
        &alice
            .put(&displayname, &json!({ "displayname": "Alice" }))
            .await,
        "PUT displayname",
    );
    assert_ok_object(
        &alice
            .put(&avatar_url, &json!({ "avatar_url": "mxc://localhost/abc" }))
            .await,
        "PUT avatar_url",
    );
    let profile = anonymous.get(&base).await;
    let body = assert_ok(&profile, "anonymous GET profile");
    assert_eq!(body["displayname"], "Alice", "{body}");
    assert_eq!(body["avatar_url"], "mxc://localhost/abc", "{body}");
    let avatar = anonymous.get(&avatar_url).await;
    assert_eq!(
        assert_ok(&avatar, "anonymous GET avatar_url")["avatar_url"],
        "mxc://localhost/abc"
    );

    // Invalid values are refused and change nothing.
    assert_error(
        &alice
            .put(&avatar_url, &json!({ "avatar_url": "http://x" }))
            .await,
        400,
        "M_INVALID_PARAM",
        "avatar_url that is not an mxc URI",
    );
    let long_name = "n".repeat(257);
    let (status, body) = alice
        .put(&displayname, &json!({ "displayname": long_name }))
        .await;
    assert!(
        status == 400 && body["errcode"].is_string(),
        "display name of 257 characters: expected a 400 Matrix error, got {status} {body}"
    );
    assert_ok(
        &alice
            .put(&displayname, &json!({ "displayname": "a".repeat(256) }))
            .await,
        "display name of exactly 256 characters",
    );
    assert_ok_object(
        &alice
            .put(&displayname, &json!({ "displayname": "Alice" }))
            .await,
        "PUT displayname back",
    );
    let profile = anonymous.get(&base).await;
    let body = assert_ok(&profile, "GET profile after refused changes");
    assert_eq!(body["displayname"], "Alice", "{body}");
    assert_eq!(body["avatar_url"], "mxc://localhost/abc", "{body}");

    // Someone else may not edit it.
    assert_error(
        &bob.put(&displayname, &json!({ "displayname": "Not Alice" }))
            .await,
        403,
        "M_FORBIDDEN",
        "PUT another user's displayname",
    );
    assert_eq!(
        assert_ok(&anonymous.get(&displayname).await, "GET displayname")["displayname"],
        "Alice"
    );

    // Unknown local user.
    let ghost = hs.user_id(&complement_tests::unique_name("ghost"));
    assert_error(
        &anonymous
            .get(&format!("/_matrix/client/v3/profile/{}", encode(&ghost)))
            .await,
        404,
        "M_NOT_FOUND",
        "profile of an unknown local user",
    );

    // Deleting a field.
    assert_ok_object(&alice.delete(&displayname).await, "DELETE own displayname");
    assert_error(
        &anonymous.get(&displayname).await,
        404,
        "M_NOT_FOUND",
        "GET a deleted displayname",
    );
    let profile = anonymous.get(&base).await;
    let body = assert_ok(&profile, "GET profile after deleting the displayname");
    assert!(
        body.get("displayname").is_none_or(|v| v.is_null()),
        "deleted displayname still in the profile: {body}"
    );
    assert_eq!(body["avatar_url"], "mxc://localhost/abc", "{body}");
}

/// Server-managed account data types cannot be written by clients, content
/// must be an object, and unset types are 404.
async fn account_data_server_managed_types(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let path = |event_type: &str| {
        format!(
            "/_matrix/client/v3/user/{}/account_data/{}",
            encode(alice.user_id()),
            encode(event_type)
        )
    };

    for event_type in ["m.push_rules", "m.fully_read"] {
        assert_error(
            &alice.put(&path(event_type), &json!({ "a": 1 })).await,
            405,
            "M_BAD_JSON",
            &format!("PUT global account data of type {event_type}"),
        );
    }

    assert_error(
        &alice.put(&path("org.example.array"), &json!([])).await,
        400,
        "M_BAD_JSON",
        "PUT account data whose content is an array",
    );
    assert_error(
        &alice.get(&path("org.example.array")).await,
        404,
        "M_NOT_FOUND",
        "GET account data after a refused PUT",
    );
    assert_error(
        &alice.get(&path("org.example.never.set")).await,
        404,
        "M_NOT_FOUND",
        "GET account data of a type never set",
    );
}

/// Profile fields beyond name and avatar (spec v1.16): `m.tz` and custom namespaced keys
/// with any JSON value are set, read alone and in the whole profile (without a token),
/// replaced and deleted by their owner only; a name over 255 bytes is `M_KEY_TOO_LARGE`, a
/// profile over 64 KiB `M_PROFILE_TOO_LARGE` (and nothing changes); `/capabilities` says so.
async fn custom_profile_fields(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let anonymous = hs.client();
    let base = format!("/_matrix/client/v3/profile/{}", encode(alice.user_id()));
    let field = |name: &str| format!("{base}/{}", encode(name));

    assert_ok_object(
        &alice
            .put(&field("m.tz"), &json!({ "m.tz": "Europe/Paris" }))
            .await,
        "PUT m.tz",
    );
    let pronouns = json!([{ "language": "en", "summary": "she/her" }]);
    assert_ok_object(
        &alice
            .put(
                &field("org.example.pronouns"),
                &json!({ "org.example.pronouns": pronouns }),
            )
            .await,
        "PUT a custom field",
    );
    let got = anonymous.get(&field("org.example.pronouns")).await;
    assert_eq!(
        assert_ok(&got, "GET the custom field"),
        &json!({ "org.example.pronouns": pronouns })
    );
    let got = anonymous.get(&field("m.tz")).await;
    assert_eq!(assert_ok(&got, "GET m.tz")["m.tz"], "Europe/Paris");
    let profile = anonymous.get(&base).await;
    let body = assert_ok(&profile, "GET the whole profile").clone();
    assert_eq!(body["m.tz"], "Europe/Paris", "{body}");
    assert_eq!(body["org.example.pronouns"], pronouns, "{body}");
    assert!(
        body["displayname"].is_string(),
        "the display name stays: {body}"
    );

    // Replaced, then deleted; deleting again is fine; a field never set is 404.
    assert_ok_object(
        &alice
            .put(&field("m.tz"), &json!({ "m.tz": "Asia/Tokyo" }))
            .await,
        "PUT m.tz again",
    );
    assert_eq!(
        assert_ok(&anonymous.get(&field("m.tz")).await, "GET m.tz")["m.tz"],
        "Asia/Tokyo"
    );
    assert_ok_object(&alice.delete(&field("m.tz")).await, "DELETE m.tz");
    assert_ok_object(&alice.delete(&field("m.tz")).await, "DELETE m.tz again");
    assert_error(
        &anonymous.get(&field("m.tz")).await,
        404,
        "M_NOT_FOUND",
        "GET a deleted field",
    );
    let body = assert_ok(&anonymous.get(&base).await, "profile").clone();
    assert!(body.get("m.tz").is_none(), "{body}");

    // Only the owner; limits.
    assert_error(
        &bob.put(&field("m.tz"), &json!({ "m.tz": "UTC" })).await,
        403,
        "M_FORBIDDEN",
        "PUT another user's field",
    );
    assert_error(
        &bob.delete(&field("org.example.pronouns")).await,
        403,
        "M_FORBIDDEN",
        "DELETE another user's field",
    );
    let long_name = format!("org.example.{}", "k".repeat(250));
    assert_error(
        &alice
            .put(&field(&long_name), &json!({ long_name.clone(): 1 }))
            .await,
        400,
        "M_KEY_TOO_LARGE",
        "a field name over 255 bytes",
    );
    let big = "x".repeat(40_000);
    assert_ok_object(
        &alice
            .put(
                &field("org.example.big1"),
                &json!({ "org.example.big1": big }),
            )
            .await,
        "a 40,000-character field",
    );
    assert_error(
        &alice
            .put(
                &field("org.example.big2"),
                &json!({ "org.example.big2": big }),
            )
            .await,
        400,
        "M_PROFILE_TOO_LARGE",
        "a second one, over 64 KiB in all",
    );
    assert_error(
        &anonymous.get(&field("org.example.big2")).await,
        404,
        "M_NOT_FOUND",
        "the refused field was not stored",
    );
    // Replacing a big field with a smaller one stays within the limit.
    assert_ok_object(
        &alice
            .put(
                &field("org.example.big1"),
                &json!({ "org.example.big1": "small" }),
            )
            .await,
        "replace the big field",
    );

    let caps = alice.get("/_matrix/client/v3/capabilities").await;
    let caps = &assert_ok(&caps, "capabilities")["capabilities"]["m.profile_fields"];
    assert_eq!(caps["enabled"], true, "{caps}");
    assert!(
        caps.get("allowed").is_none(),
        "every field may be set: {caps}"
    );
}

backend_tests!(
    custom_profile_fields,
    a08_password_change,
    deactivate_account,
    profile_set_and_read_without_auth,
    account_data_round_trip,
    profile_avatar_and_other_users,
    account_data_server_managed_types,
);
