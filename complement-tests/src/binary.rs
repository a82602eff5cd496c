//! Building and locating the workspace binaries under test.
//!
//! Integration tests of one package cannot ask cargo for another package's
//! binary, so the first test that needs one runs
//! `$CARGO build -p PACKAGE --bin BIN` (debug profile, like the tests) into
//! the same target directory, once per binary and test process. Cargo makes
//! this a no-op when nothing changed. An environment variable per binary
//! (`MYELIN_TEST_BINARY` for `myelin`, `MYELIN_TEST_ADMIN_BINARY` for
//! `myelin-admin`) skips the build and names a binary directly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// A binary target of a workspace package.
#[derive(Debug, Clone, Copy)]
pub struct WorkspaceBinary {
    /// The package that owns the binary (`cargo build -p PACKAGE`).
    pub package: &'static str,
    /// The binary target's name (`--bin BIN`); also the file name.
    pub bin: &'static str,
    /// Environment variable that names a prebuilt binary instead.
    pub override_var: &'static str,
}

/// The homeserver.
pub const MYELIN: WorkspaceBinary = WorkspaceBinary {
    package: "myelin",
    bin: "myelin",
    override_var: "MYELIN_TEST_BINARY",
};

/// The operator CLI.
pub const MYELIN_ADMIN: WorkspaceBinary = WorkspaceBinary {
    package: "myelin-admin",
    bin: "myelin-admin",
    override_var: "MYELIN_TEST_ADMIN_BINARY",
};

/// A built binary, or why it could not be built.
type Built = Result<PathBuf, String>;

/// The build result of one binary, shared by every thread that asks for it.
type Slot = Arc<OnceLock<Built>>;

/// One slot per binary, filled once per process: every test thread that asks
/// while the build runs waits for it. The map's lock is only held to find
/// the slot, never during a build.
static BINARIES: Mutex<BTreeMap<(&'static str, &'static str), Slot>> = Mutex::new(BTreeMap::new());

/// Path of the `myelin` binary, building it first if needed.
///
/// Panics with cargo's output if the build fails.
pub fn myelin_binary() -> PathBuf {
    workspace_binary(MYELIN)
}

/// Path of the `myelin-admin` binary, building it first if needed.
///
/// Panics with cargo's output if the build fails.
pub fn admin_binary() -> PathBuf {
    workspace_binary(MYELIN_ADMIN)
}

/// Path of any workspace binary, building it (once per process) if needed.
///
/// Panics with cargo's output if the build fails.
pub fn workspace_binary(binary: WorkspaceBinary) -> PathBuf {
    let slot = {
        let mut map = BINARIES.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry((binary.package, binary.bin)).or_default())
    };
    match slot.get_or_init(|| build(binary)) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// The workspace root: this crate's manifest directory's parent. `cargo test` sets the
/// manifest directory when it runs a test, and that one wins over the directory compiled in:
/// two clones that share a target directory share this crate's build too (cargo finds it
/// fresh from the sources' relative paths and times), so the compiled-in directory may be
/// the other clone's, or one since deleted.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
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

fn build(binary: WorkspaceBinary) -> Built {
    let WorkspaceBinary {
        package,
        bin,
        override_var,
    } = binary;
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{override_var}={} is not a file", path.display()))
        };
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = target_dir();
    let output = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "-p", package, "--bin", bin, "--target-dir"])
        .arg(&target_dir)
        .output()
        .map_err(|e| format!("could not run {cargo:?} to build {bin}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building {bin} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let path = target_dir
        .join("debug")
        .join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "cargo built {bin} but {} does not exist",
            path.display()
        ))
    }
}
