//! Building and locating the `myelin` binary under test.
//!
//! Integration tests of one package cannot ask cargo for another package's
//! binary, so the first test that needs it runs
//! `$CARGO build -p myelin --bin myelin` (debug profile, like the tests) into
//! the same target directory. Cargo makes this a no-op when nothing changed.
//! `MYELIN_TEST_BINARY` skips the build and names a binary directly.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The built binary, or why it could not be built. Computed once per process:
/// every test thread that asks while the build runs waits for it.
static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Path of the `myelin` binary, building it first if needed.
///
/// Panics with cargo's output if the build fails.
pub fn myelin_binary() -> PathBuf {
    match BINARY.get_or_init(build) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// The workspace root: this crate's manifest directory's parent.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("complement-tests lives inside the workspace")
        .to_path_buf()
}

/// `CARGO_TARGET_DIR` if set (relative paths are taken from the workspace
/// root, as cargo does), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

fn build() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("MYELIN_TEST_BINARY") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "MYELIN_TEST_BINARY={} is not a file",
                path.display()
            ))
        };
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = target_dir();
    let output = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "-p", "myelin", "--bin", "myelin", "--target-dir"])
        .arg(&target_dir)
        .output()
        .map_err(|e| format!("could not run {cargo:?} to build myelin: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building myelin failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let path = target_dir.join("debug").join("myelin");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "cargo built myelin but {} does not exist",
            path.display()
        ))
    }
}
