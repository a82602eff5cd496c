//! Scenario 41 (error hygiene) and rate limiting.

use complement_tests::{
    assert_error, assert_ok, assert_ok_object, backend_tests, encode, Backend, ServerOptions,
    TestServer,
};
use reqwest::Method;
use serde_json::json;

const LOGIN: &str = "/_matrix/client/v3/login";

/// 41. Error hygiene: unknown endpoint gives 404 `M_UNRECOGNIZED`, wrong
///     method gives 405, malformed body gives 400 `M_NOT_JSON`/`M_BAD_JSON`,
///     missing token gives 401 `M_MISSING_TOKEN`.
async fn a41_error_hygiene(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let anonymous = hs.client();
    let alice = hs.register_user("alice").await;

    // Unknown endpoints, with and without a token.
    for client in [&anonymous, &alice] {
        assert_error(
            &client.get("/_matrix/client/v3/nonexistent").await,
            404,
            "M_UNRECOGNIZED",
            "GET an unknown client endpoint",
        );
        assert_error(
            &client
                .post("/_matrix/client/v3/no/such/thing", &json!({}))
                .await,
            404,
            "M_UNRECOGNIZED",
            "POST an unknown client endpoint",
        );
    }

    // Known endpoints, wrong method.
    assert_error(
        &anonymous.delete(LOGIN).await,
        405,
        "M_UNRECOGNIZED",
        "DELETE /login",
    );
    assert_error(
        &anonymous.put("/_matrix/client/versions", &json!({})).await,
        405,
        "M_UNRECOGNIZED",
        "PUT /versions",
    );

    // Bodies that are not JSON at all.
    let not_json = anonymous
        .request_raw(
            Method::POST,
            LOGIN,
            Some((b"{not json".to_vec(), "application/json")),
        )
        .await;
    assert_error(&not_json, 400, "M_NOT_JSON", "POST /login with `{not json`");
    let not_utf8 = anonymous
        .request_raw(
            Method::POST,
            LOGIN,
            Some((
                b"{\"type\": \"m.login.password\xff\xfe\"}".to_vec(),
                "application/json",
            )),
        )
        .await;
    assert_error(
        &not_utf8,
        400,
        "M_NOT_JSON",
        "POST /login with invalid UTF-8",
    );

    // JSON of the wrong shape: not an object at all...
    assert_error(
        &anonymous.post(LOGIN, &json!([])).await,
        400,
        "M_BAD_JSON",
        "POST /login with a JSON array",
    );
    // ...or a field of the wrong type. The spec's descriptions fit both
    // M_BAD_JSON ("invalid values for keys") and M_INVALID_PARAM (Synapse's
    // answer), so either is accepted.
    let (status, body) = anonymous.post(LOGIN, &json!({ "type": 5 })).await;
    assert!(
        status == 400 && (body["errcode"] == "M_BAD_JSON" || body["errcode"] == "M_INVALID_PARAM"),
        "POST /login with {{\"type\": 5}}: expected 400 M_BAD_JSON, got {status} {body}"
    );

    // Authentication.
    assert_error(
        &anonymous.whoami().await,
        401,
        "M_MISSING_TOKEN",
        "whoami without a token",
    );
    assert_error(
        &alice.with_token("syt_not_a_real_token").whoami().await,
        401,
        "M_UNKNOWN_TOKEN",
        "whoami with a bogus token",
    );
}

/// Myelin's limits on request bodies, stricter than the spec requires (and
/// than Synapse, which accepts both of these in account data): integers
/// outside the interoperable range [-(2^53)+1, 2^53-1] are refused rather
/// than rounded, and a 2 MiB body is refused without harming the server.
async fn body_limits_integers_and_size(backend: Backend) {
    // A 1 MiB limit (the default is 8 MiB) keeps the oversized body small.
    let options = ServerOptions::default().env("MYELIN_MAX_JSON_BODY_BYTES", "1048576");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;

    let data_path = format!(
        "/_matrix/client/v3/user/{}/account_data/org.example.numbers",
        encode(alice.user_id())
    );
    let too_big = alice
        .request_raw(
            Method::PUT,
            &data_path,
            Some((br#"{"n": 9007199254740992}"#.to_vec(), "application/json")),
        )
        .await;
    assert_error(&too_big, 400, "M_BAD_JSON", "integer 2^53 in a JSON body");
    let too_small = alice
        .request_raw(
            Method::PUT,
            &data_path,
            Some((
                br#"{"n": [-9007199254740992]}"#.to_vec(),
                "application/json",
            )),
        )
        .await;
    assert_error(
        &too_small,
        400,
        "M_BAD_JSON",
        "integer -2^53 in a JSON body",
    );
    let fine = alice
        .put(&data_path, &json!({ "n": 9007199254740991_i64 }))
        .await;
    assert_ok_object(&fine, "integer 2^53 - 1 in a JSON body");
    assert_eq!(
        assert_ok(&alice.get(&data_path).await, "GET numbers")["n"],
        9007199254740991_i64
    );

    // A 2 MiB body is refused without harming the server; a 512 KiB one is fine.
    let huge_path = format!(
        "/_matrix/client/v3/user/{}/account_data/org.example.huge",
        encode(alice.user_id())
    );
    let huge = json!({ "blob": "x".repeat(2 * 1024 * 1024) });
    if hs.is_external() {
        let (status, _) = alice.put(&huge_path, &huge).await;
        assert!(
            status < 500,
            "a 2 MiB body must not cause a server error, got {status}"
        );
    } else {
        assert_error(
            &alice.put(&huge_path, &huge).await,
            413,
            "M_TOO_LARGE",
            "2 MiB body over a 1 MiB limit",
        );
    }
    let big = json!({ "blob": "y".repeat(512 * 1024) });
    assert_ok_object(
        &alice.put(&huge_path, &big).await,
        "512 KiB body under a 1 MiB limit",
    );
    assert_eq!(
        assert_ok(&alice.get(&huge_path).await, "GET the 512 KiB account data")["blob"]
            .as_str()
            .map(str::len),
        Some(512 * 1024)
    );
}

backend_tests!(a41_error_hygiene, body_limits_integers_and_size);

/// With rate limits on, a burst of failed logins is cut off with 429
/// `M_LIMIT_EXCEEDED` and an integer `retry_after_ms`.
#[tokio::test]
async fn rate_limit_login_burst() {
    let options = ServerOptions::default().rate_limits(true);
    let Some(hs) = TestServer::start(Backend::Sqlite, options).await else {
        return;
    };
    if hs.is_external() {
        complement_tests::skip("rate_limit_login_burst", "external server");
        return;
    }
    let anonymous = hs.client();
    let user = hs.user_id("someone");
    let mut limited = 0;
    for attempt in 0..30 {
        let (status, body) = anonymous.login(&user, "wrong password").await;
        match status {
            403 => assert_eq!(body["errcode"], "M_FORBIDDEN", "attempt {attempt}: {body}"),
            429 => {
                assert_eq!(
                    body["errcode"], "M_LIMIT_EXCEEDED",
                    "attempt {attempt}: {body}"
                );
                assert!(
                    body["retry_after_ms"].is_u64(),
                    "retry_after_ms must be a non-negative integer: {body}"
                );
                limited += 1;
            }
            _ => panic!("attempt {attempt}: unexpected {status} {body}"),
        }
    }
    assert!(
        limited > 0,
        "30 quick failed logins were never rate-limited"
    );
}
