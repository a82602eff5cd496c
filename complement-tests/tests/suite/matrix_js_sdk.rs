//! matrix-js-sdk, the SDK under Element Web, against the real server (issue 11).
//!
//! `complement-tests/js/element_start.mjs` does what Element Web does at start-up: log in,
//! `startClient()` with an in-memory store until the sync loop is PREPARED, then two users
//! exchange messages in a new room and read receipts clear their unread counts; then B finds A
//! with the SDK's user directory search and A finds both messages with its message search
//! (`searchUserDirectory`, `searchRoomEvents`, issue 13). It logs every
//! HTTP request the SDK makes and fails if any was answered 404 or 5xx. This test starts the
//! server, registers the two users and runs the script on Node.
//!
//! The SDK comes from npm, pinned by `complement-tests/js/package-lock.json`, and is installed
//! with `npm ci` into a cache outside the clone (`$MYELIN_NODE_CACHE`, default
//! `~/.cache/myelin-node`), one directory per hash of the lock file, on first use. Node and npm
//! must be installed: without them the test fails, unless `MYELIN_SKIP_NODE_TESTS=1`.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use complement_tests::{backend_tests, Backend, ServerOptions, TestServer};
use sha1::{Digest, Sha1};

/// The oldest Node the script runs on (it polyfills the one Node 22 API the SDK uses).
const MIN_NODE_MAJOR: u32 = 20;
/// How long the script may run in all (it has its own, shorter, limits per step).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `npm ci` may take, and how old a lock may get before it counts as abandoned.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

async fn element_web_start_and_exchange(backend: Backend) {
    let Some(node) = node_or_skip() else {
        return;
    };
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let modules = tokio::task::spawn_blocking(installed_node_modules)
        .await
        .expect("npm ci task");

    let alice = hs.register_user("jsalice").await;
    let bob = hs.register_user("jsbob").await;

    // Node resolves `import "matrix-js-sdk"` from the script's own directory, so the script
    // runs from a fresh directory next to a link to the cached node_modules.
    let run_dir = tempfile::Builder::new()
        .prefix("myelin-js-")
        .tempdir()
        .expect("temporary directory");
    let script = run_dir.path().join("element_start.mjs");
    fs::copy(js_dir().join("element_start.mjs"), &script).expect("copying the script");
    std::os::unix::fs::symlink(&modules, run_dir.path().join("node_modules"))
        .expect("linking node_modules");

    let mut command = tokio::process::Command::new(&node);
    command
        .arg(&script)
        .arg(hs.url())
        .arg(alice.localpart())
        .arg(alice.password.as_deref().expect("harness password"))
        .arg(bob.localpart())
        .arg(bob.password.as_deref().expect("harness password"))
        .current_dir(run_dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("element_start.mjs ran longer than {SCRIPT_TIMEOUT:?}"))
        .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "----- element_start.mjs ({backend:?}, {:.1} s) -----\n{stdout}\n----- its stderr -----\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "matrix-js-sdk run failed ({}); its output:\n{stdout}\n{stderr}",
        output.status
    );
}

backend_tests!(element_web_start_and_exchange);

/// `complement-tests/js`: the script, package.json and package-lock.json.
fn js_dir() -> PathBuf {
    complement_tests::binary::workspace_root()
        .join("complement-tests")
        .join("js")
}

/// The `node` to run, after checking that node and npm are installed and new enough. `None`
/// (with a skip notice) only when `MYELIN_SKIP_NODE_TESTS=1`; otherwise a missing Node fails.
fn node_or_skip() -> Option<String> {
    let skip_allowed = std::env::var("MYELIN_SKIP_NODE_TESTS").is_ok_and(|v| v == "1");
    let problem = match version_of("node") {
        Err(why) => Some(why),
        Ok(version) => match node_major(&version) {
            Some(major) if major >= MIN_NODE_MAJOR => version_of("npm").err(),
            _ => Some(format!(
                "node {version} is too old: the matrix-js-sdk test needs Node {MIN_NODE_MAJOR} or newer"
            )),
        },
    };
    match problem {
        None => Some("node".into()),
        Some(why) if skip_allowed => {
            complement_tests::skip(
                "matrix-js-sdk",
                &format!("{why} (MYELIN_SKIP_NODE_TESTS=1)"),
            );
            None
        }
        Some(why) => panic!(
            "{why}. The matrix-js-sdk test needs Node.js {MIN_NODE_MAJOR}+ and npm (on Debian: \
             apt-get install nodejs npm); set MYELIN_SKIP_NODE_TESTS=1 to skip it"
        ),
    }
}

/// `<program> --version`, or why it could not be run.
fn version_of(program: &str) -> Result<String, String> {
    let output = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{program}` could not be run ({e})"))?;
    if !output.status.success() {
        return Err(format!("`{program} --version` failed ({})", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// 20 from "v20.20.2".
fn node_major(version: &str) -> Option<u32> {
    version
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The node_modules of `complement-tests/js`, installed with `npm ci` on first use into
/// `<cache>/<hash of package.json and package-lock.json>/`. Both backends' tests (and other
/// test processes) may ask at once: a lock directory lets one install while the others wait,
/// and a marker written last means an interrupted install is redone, never used.
fn installed_node_modules() -> PathBuf {
    let js = js_dir();
    let mut hash = Sha1::new();
    for file in ["package.json", "package-lock.json"] {
        hash.update(fs::read(js.join(file)).unwrap_or_else(|e| panic!("reading js/{file}: {e}")));
    }
    let key = hex::encode(&hash.finalize()[..8]);
    let cache = std::env::var_os("MYELIN_NODE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/myelin-node")))
        .unwrap_or_else(|| std::env::temp_dir().join("myelin-node"));
    let dir = cache.join(&key);
    let modules = dir.join("node_modules");
    let marker = dir.join("installed");
    if marker.exists() {
        return modules;
    }
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("creating {}: {e}", cache.display()));

    let _lock = DirLock::acquire(cache.join(format!("{key}.lock")));
    if marker.exists() {
        return modules; // another test installed it while we waited
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    for file in ["package.json", "package-lock.json"] {
        fs::copy(js.join(file), dir.join(file)).unwrap_or_else(|e| panic!("copying {file}: {e}"));
    }
    eprintln!("matrix-js-sdk: npm ci into {}", dir.display());
    let started = Instant::now();
    // No install scripts: the SDK and its dependencies are plain JavaScript (and WebAssembly).
    // npm's output goes to a file, so a chatty install cannot fill a pipe nobody reads.
    let log_path = dir.join("npm-ci.log");
    let log = fs::File::create(&log_path).expect("creating npm-ci.log");
    let mut child = Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("running npm ci");
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for npm ci") {
            break status;
        }
        if started.elapsed() > INSTALL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "npm ci in {} took longer than {INSTALL_TIMEOUT:?}:\n{}",
                dir.display(),
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "npm ci in {} failed ({status}):\n{}",
        dir.display(),
        fs::read_to_string(&log_path).unwrap_or_default()
    );
    fs::write(&marker, b"").expect("writing the install marker");
    eprintln!(
        "matrix-js-sdk: installed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    modules
}

/// A lock held by the existence of a directory (`create_dir` is atomic), removed on drop. A
/// lock older than [`INSTALL_TIMEOUT`] belongs to a process that died and is taken over.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: PathBuf) -> DirLock {
        let deadline = Instant::now() + INSTALL_TIMEOUT + Duration::from_secs(60);
        loop {
            match fs::create_dir(&path) {
                Ok(()) => return DirLock(path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let abandoned = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > INSTALL_TIMEOUT);
                    if abandoned {
                        let _ = fs::remove_dir(&path);
                        continue;
                    }
                }
                Err(e) => panic!("creating the lock {}: {e}", path.display()),
            }
            assert!(
                Instant::now() < deadline,
                "waited too long for {} (another npm ci?)",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}
