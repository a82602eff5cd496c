//! Scenario 1 and other anonymous discovery endpoints.

use complement_tests::{
    assert_error, assert_ok, backend_tests, Backend, ServerOptions, TestServer,
};
use serde_json::Value;

/// 1. An anonymous `GET /_matrix/client/versions` returns 200 with a
///    non-empty `versions` list.
async fn a01_versions_anonymous(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let response = hs.client().get("/_matrix/client/versions").await;
    let body = assert_ok(&response, "GET /versions");
    let versions = body["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("versions is not a list: {body}"));
    assert!(!versions.is_empty(), "versions is empty: {body}");
    assert!(
        versions.iter().all(Value::is_string),
        "versions must be strings: {body}"
    );
    assert!(
        versions
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.starts_with("v1."))),
        "no v1.x version advertised: {body}"
    );
    if let Some(unstable) = body.get("unstable_features") {
        assert!(
            unstable.is_object(),
            "unstable_features must be an object: {body}"
        );
    }
    // Element X logs in only where simplified sliding sync is advertised.
    assert_eq!(
        body["unstable_features"]["org.matrix.simplified_msc3575"], true,
        "{body}"
    );
    // Mutual rooms (MSC2666) works, so it is claimed; nothing unimplemented is.
    for feature in [
        "uk.half-shot.msc2666.query_mutual_rooms",
        "uk.half-shot.msc2666.query_mutual_rooms.stable",
    ] {
        assert_eq!(body["unstable_features"][feature], true, "{body}");
    }
    assert_eq!(
        body["unstable_features"].as_object().map(|f| f.len()),
        Some(3),
        "only what works is claimed: {body}"
    );
}

/// `GET /capabilities` needs a token and answers with a `capabilities`
/// object whose well-known entries have the spec's shape.
async fn capabilities(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let anonymous = hs.client().get("/_matrix/client/v3/capabilities").await;
    assert_error(
        &anonymous,
        401,
        "M_MISSING_TOKEN",
        "anonymous GET /capabilities",
    );

    let alice = hs.register_user("alice").await;
    let response = alice.get("/_matrix/client/v3/capabilities").await;
    let body = assert_ok(&response, "GET /capabilities");
    let caps = &body["capabilities"];
    assert!(caps.is_object(), "capabilities must be an object: {body}");
    if let Some(change_password) = caps.get("m.change_password") {
        assert!(
            change_password["enabled"].is_boolean(),
            "m.change_password.enabled must be a boolean: {body}"
        );
    }
}

/// Every response says how long the server spent on it (`Server-Timing: app;dur=<ms>`), so
/// operators and benchmarks can tell server time from network time.
async fn server_timing_header(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    for path in [
        "/_matrix/client/versions",
        "/_matrix/client/v3/account/whoami",
        "/nope",
    ] {
        let response = alice.get_response(path).await;
        let timing = response
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no Server-Timing on {path}"))
            .to_owned();
        let ms: f64 = timing
            .strip_prefix("app;dur=")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("malformed Server-Timing {timing:?} on {path}"));
        assert!((0.0..10_000.0).contains(&ms), "{path}: {timing}");
    }
}

backend_tests!(a01_versions_anonymous, capabilities, server_timing_header);
