//! Assertions on `(status, body)` pairs that say what was expected and show
//! the whole response when it was not.

use serde_json::Value;

/// Asserts a Matrix error: exactly this status and this `errcode`.
#[track_caller]
pub fn assert_error(response: &(u16, Value), status: u16, errcode: &str, what: &str) {
    let (got_status, body) = response;
    assert!(
        *got_status == status && body["errcode"] == errcode,
        "{what}: expected {status} {errcode}, got {got_status} {body}"
    );
}

/// Asserts a 200 answer and returns its body.
#[track_caller]
pub fn assert_ok<'a>(response: &'a (u16, Value), what: &str) -> &'a Value {
    let (status, body) = response;
    assert_eq!(*status, 200, "{what}: expected 200, got {status} {body}");
    body
}

/// Asserts a 200 answer whose body is a JSON object (the spec's `{}` answers).
#[track_caller]
pub fn assert_ok_object(response: &(u16, Value), what: &str) {
    let body = assert_ok(response, what);
    assert!(
        body.is_object(),
        "{what}: expected a JSON object, got {body}"
    );
}
