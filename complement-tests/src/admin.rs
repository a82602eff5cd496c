//! Running the `myelin-admin` operator CLI against a server under test.
//!
//! The CLI reads its URL, shared secret and access token from `MYELIN_*`
//! variables when no flag is given, so every `MYELIN_*` variable of the test
//! process is removed first: a developer's shell cannot change what a test
//! sends. Standard input is closed, so a command that would prompt for a
//! password fails instead of hanging.

use std::process::Stdio;
use std::time::Duration;

use crate::binary::admin_binary;
use crate::server::Exited;

/// Runs `myelin-admin ARGS` and waits up to `timeout` for it to exit.
/// Panics (after killing it) if it keeps running.
pub async fn run_admin(args: &[&str], timeout: Duration) -> Exited {
    let binary = admin_binary();
    let mut cmd = tokio::process::Command::new(&binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MYELIN_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", binary.display()));
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("myelin-admin {args:?} was still running after {timeout:?}"))
        .unwrap_or_else(|e| panic!("waiting for myelin-admin {args:?}: {e}"));
    Exited {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
