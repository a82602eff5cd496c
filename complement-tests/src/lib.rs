//! Black-box test harness for Myelin, in the spirit of Complement.
//!
//! This crate owns everything a test needs to drive a *running* homeserver
//! over HTTP, and nothing else: it does not depend on any other crate of the
//! workspace, so the tests can only see what a Matrix client (or a peer
//! server) would see.
//!
//! - [`binary`] builds the `myelin` binary (and any other workspace binary,
//!   such as `myelin-admin`) once per test process and finds it.
//! - [`admin`] runs the `myelin-admin` CLI with a clean environment.
//! - [`postgres`] provides a fresh PostgreSQL database per server: either on a
//!   server named by `MYELIN_TEST_DATABASE_URL`, or on one throwaway cluster
//!   that the test process starts lazily and that is removed when it exits.
//! - [`server`] starts the binary as a child process on a free loopback port
//!   ([`TestServer`]), waits for `/health`, stops and restarts it, and prints
//!   its logs when a test fails. With `MYELIN_TEST_SERVER_URL` set, tests run
//!   against an already-running homeserver instead.
//! - [`client`] is a small Matrix client ([`Client`]) whose calls return the
//!   raw status and JSON body, so that tests assert on exactly what the spec
//!   says.
//! - [`gateway`] is a fake push gateway ([`FakeGateway`]) that records the
//!   notifications a pusher is sent and can fail or reject on command.
//! - [`synapse`] starts Synapse (from a Python virtualenv) on a loopback port, for the
//!   benchmarks that compare Myelin with it.
//! - [`ws`] reads frames from the WebSocket transports.
//! - [`backend_tests!`] turns one `async fn scenario(backend)` into a test per
//!   storage backend.
//!
//! The scenarios themselves live in `tests/suite/`, named after the numbers in
//! the acceptance scenario list (`a01_…`, `a42_…`).

pub mod admin;
pub mod assertions;
pub mod bench;
pub mod binary;
pub mod client;
pub mod gateway;
mod macros;
pub mod postgres;
pub mod server;
pub mod synapse;
pub mod ws;

pub use assertions::{assert_error, assert_ok, assert_ok_object};
pub use client::{encode, unique_name, Client};
pub use gateway::FakeGateway;
pub use server::{Backend, ServerOptions, TestServer};

/// Environment variable naming an already-running homeserver to test against
/// instead of spawning one (for example `http://127.0.0.1:8008`).
pub const ENV_SERVER_URL: &str = "MYELIN_TEST_SERVER_URL";

/// Prints a visible skip notice. Test bodies return right after calling it.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
}

/// Whether we run under CI (`CI=true`), where missing prerequisites are
/// failures instead of skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
