//! One homeserver under test: the `myelin` binary as a child process.
//!
//! [`TestServer::start`] picks a free loopback port, makes a temporary data
//! directory (and, for [`Backend::Postgres`], a fresh database), spawns the
//! binary configured through `MYELIN_*` environment variables, and waits for
//! `GET /health` to answer 200. The child's stdout and stderr go to files in
//! the data directory; if the test panics they are printed when the server is
//! dropped, so the failure report shows what the server said.
//!
//! With `MYELIN_TEST_SERVER_URL` set, `start` hands back a handle to that
//! server instead, and the tests that need to control the process (restart,
//! special options) skip themselves.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::binary::myelin_binary;
use crate::client::Client;
use crate::postgres::{self, Durability, PgDatabase, PgError};

/// The shared secret every spawned server accepts for
/// `/_synapse/admin/v1/register`.
pub const SHARED_SECRET: &str = "complement-shared-secret";

/// How long a server may take from spawn to a healthy `/health`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Storage backend of a spawned server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How to configure a spawned server beyond the defaults (open registration,
/// shared secret set, rate limits off, server name `localhost`).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Extra environment variables, applied last (they win).
    pub env: Vec<(String, String)>,
    /// `MYELIN_REGISTRATION_TOKEN_REQUIRED=true`.
    pub registration_token_required: bool,
    /// `MYELIN_RATE_LIMITS_ENABLED=true` (tests run without rate limits
    /// unless they are about rate limits).
    pub rate_limits: bool,
    /// `MYELIN_REGISTRATION_OPEN=false` when set.
    pub registration_closed: bool,
    /// On PostgreSQL: the cluster's durability (ordering and durability tests ask for
    /// [`Durability::Normal`]).
    pub durability: Durability,
    /// Federation tests: the server is named after its federation listener
    /// (`127.0.0.1:<port>`, so peers reach it there), accepts self-signed certificates and
    /// may reach loopback peers. Test configuration only: the defaults stay safe.
    pub federating: bool,
}

impl ServerOptions {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// See [`ServerOptions::federating`].
    pub fn federating(mut self) -> Self {
        self.federating = true;
        self
    }

    pub fn rate_limits(mut self, on: bool) -> Self {
        self.rate_limits = on;
        self
    }

    pub fn registration_token_required(mut self, on: bool) -> Self {
        self.registration_token_required = on;
        self
    }

    /// Runs a PostgreSQL server on a cluster with normal durability.
    pub fn durable(mut self) -> Self {
        self.durability = Durability::Normal;
        self
    }

    pub fn registration_closed(mut self, closed: bool) -> Self {
        self.registration_closed = closed;
        self
    }
}

/// A homeserver under test.
pub struct TestServer {
    url: String,
    /// The federation API's TLS listener (`https://…`), when this is our own server.
    federation_tls_url: Option<String>,
    server_name: String,
    /// None when testing an external server.
    process: Option<Spawned>,
}

/// Everything needed to (re)start our own child process.
struct Spawned {
    backend: Backend,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// Deleted on drop; holds the SQLite database and the logs.
    data_dir: tempfile::TempDir,
    database: Option<PgDatabase>,
}

impl TestServer {
    /// Starts a server, or returns `None` after printing a skip notice when
    /// the backend cannot be had here (PostgreSQL not installed outside CI,
    /// or PostgreSQL asked for while testing an external server).
    pub async fn start(backend: Backend, options: ServerOptions) -> Option<TestServer> {
        if let Ok(url) = std::env::var(crate::ENV_SERVER_URL) {
            if backend == Backend::Postgres {
                crate::skip(
                    "postgres",
                    "testing an external server (MYELIN_TEST_SERVER_URL)",
                );
                return None;
            }
            return Some(TestServer {
                url: url.trim_end_matches('/').to_string(),
                federation_tls_url: None,
                server_name: std::env::var("MYELIN_TEST_SERVER_NAME")
                    .unwrap_or_else(|_| "localhost".into()),
                process: None,
            });
        }

        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => match postgres::fresh_database_with(options.durability) {
                Ok(db) => Some(db),
                Err(PgError::NotInstalled(why)) if !crate::in_ci() => {
                    crate::skip("postgres", &why);
                    return None;
                }
                Err(PgError::NotInstalled(why)) => {
                    panic!("CI=true but PostgreSQL is missing: {why}")
                }
                Err(PgError::Failed(why)) => panic!("PostgreSQL: {why}"),
            },
        };

        let binary = myelin_binary();
        let data_dir = tempfile::Builder::new()
            .prefix("myelin-test-")
            .tempdir()
            .expect("could not create a data directory");
        let port = postgres::free_port();
        let federation_port = postgres::free_port();
        let server_name = if options.federating {
            format!("127.0.0.1:{federation_port}")
        } else {
            "localhost".to_string()
        };
        let mut env: Vec<(String, String)> = vec![
            ("MYELIN_SERVER_NAME".into(), server_name.clone()),
            ("MYELIN_CLIENT_LISTEN".into(), format!("127.0.0.1:{port}")),
            (
                "MYELIN_FEDERATION_LISTEN".into(),
                format!("127.0.0.1:{federation_port}"),
            ),
            (
                "MYELIN_DATA_DIR".into(),
                data_dir.path().to_string_lossy().into_owned(),
            ),
            (
                "MYELIN_REGISTRATION_OPEN".into(),
                (!options.registration_closed).to_string(),
            ),
            (
                "MYELIN_REGISTRATION_SHARED_SECRET".into(),
                SHARED_SECRET.into(),
            ),
            (
                "MYELIN_REGISTRATION_TOKEN_REQUIRED".into(),
                options.registration_token_required.to_string(),
            ),
            (
                "MYELIN_RATE_LIMITS_ENABLED".into(),
                options.rate_limits.to_string(),
            ),
            ("MYELIN_LOG".into(), "warn".into()),
        ];
        if let Some(db) = &database {
            env.push(("MYELIN_DATABASE_URL".into(), db.url.clone()));
        }
        if options.federating {
            env.push((
                "MYELIN_FEDERATION_VERIFY_CERTIFICATES".into(),
                "false".into(),
            ));
            env.push((
                "MYELIN_FEDERATION_IP_RANGE_ALLOWLIST".into(),
                "127.0.0.0/8".into(),
            ));
        }
        env.extend(options.env);

        let mut server = TestServer {
            url: format!("http://127.0.0.1:{port}"),
            federation_tls_url: Some(format!("https://127.0.0.1:{federation_port}")),
            server_name,
            process: Some(Spawned {
                backend,
                child: None,
                env,
                data_dir,
                database,
            }),
        };
        server.spawn(&binary).await;
        Some(server)
    }

    /// Base URL of the client API, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Base URL of the federation API's TLS listener (a self-signed certificate unless the
    /// test configures one); `None` for an external server.
    pub fn federation_tls_url(&self) -> Option<&str> {
        self.federation_tls_url.as_deref()
    }

    /// Base URL for server-server requests (`/_matrix/key/…`). Myelin serves
    /// them on the client listener in tests.
    pub fn federation_url(&self) -> &str {
        &self.url
    }

    /// The server name user IDs end in.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// `@localpart:server_name`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    /// True when testing an external server we cannot stop or restart.
    pub fn is_external(&self) -> bool {
        self.process.is_none()
    }

    /// The shared registration secret, if known (spawned servers always have
    /// one; for an external server set `MYELIN_TEST_SHARED_SECRET`).
    pub fn shared_secret(&self) -> Option<String> {
        match &self.process {
            Some(_) => Some(SHARED_SECRET.into()),
            None => std::env::var("MYELIN_TEST_SHARED_SECRET").ok(),
        }
    }

    /// The backend of a spawned server.
    pub fn backend(&self) -> Option<Backend> {
        self.process.as_ref().map(|p| p.backend)
    }

    /// The data directory of a spawned server (SQLite database, media files, logs), for tests
    /// that check what the server left on disk.
    pub fn data_dir(&self) -> Option<&Path> {
        self.process.as_ref().map(|p| p.data_dir.path())
    }

    /// The PostgreSQL database of a spawned server, for benchmarks that measure it.
    pub fn postgres_database(&self) -> Option<&PgDatabase> {
        self.process.as_ref()?.database.as_ref()
    }

    /// The server process's ID, when we started it (for benchmarks reading its memory).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref()?.child.as_ref().map(Child::id)
    }

    /// An anonymous client for this server.
    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    /// Registers a fresh user (unique name starting with `prefix`) through
    /// the dummy-auth flow and returns a logged-in client. Panics on failure.
    pub async fn register_user(&self, prefix: &str) -> Client {
        let name = crate::unique_name(prefix);
        let password = format!("pw-{name}");
        let (status, body) = self.client().register(&name, &password).await;
        assert_eq!(status, 200, "registering {name} failed: {body}");
        self.client().authed(&body, &password)
    }

    /// Registers a fresh server admin through shared-secret registration and returns a
    /// logged-in client; `None` when the shared secret is unknown (an external server
    /// without `MYELIN_TEST_SHARED_SECRET`). Panics on failure.
    pub async fn register_admin(&self) -> Option<Client> {
        let secret = self.shared_secret()?;
        let name = crate::unique_name("admin");
        let password = format!("pw-{name}");
        let (status, body) = self
            .client()
            .shared_secret_register(&secret, &name, &password, true)
            .await;
        assert_eq!(status, 200, "registering admin {name} failed: {body}");
        Some(self.client().authed(&body, &password))
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    /// Panics (printing the logs) if it does not exit in time.
    pub async fn stop(&mut self) -> ExitStatus {
        let process = self
            .process
            .as_mut()
            .expect("cannot stop an external server");
        let mut child = process.child.take().expect("server is not running");
        signal(&child, "TERM");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM (logs below)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`"TERM"`, `"INT"`, …) to the running child.
    pub fn signal(&self, name: &str) {
        let child = self
            .process
            .as_ref()
            .and_then(|p| p.child.as_ref())
            .expect("server is not running");
        signal(child, name);
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let process = self.process.as_mut().expect("external server");
        let child = process.child.as_mut().expect("server is not running");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("waiting for the server") {
                process.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Stops the server gracefully and starts it again with the same data
    /// directory, database, port and configuration.
    pub async fn restart(&mut self) {
        if self.process.as_ref().is_some_and(|p| p.child.is_some()) {
            let status = self.stop().await;
            assert!(
                status.success(),
                "server exited with {status} on SIGTERM (logs below)"
            );
        }
        self.spawn(&myelin_binary()).await;
    }

    /// What the server printed so far (stdout, then stderr).
    pub fn logs(&self) -> String {
        self.process.as_ref().map(Spawned::logs).unwrap_or_default()
    }

    async fn spawn(&mut self, binary: &Path) {
        let url = self.url.clone();
        let process = self.process.as_mut().expect("external server");
        let child = spawn_myelin(binary, &process.env, &[], process.data_dir.path());
        process.child = Some(child);

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let child = process.child.as_mut().expect("just spawned");
            if let Some(status) = child.try_wait().expect("waiting for the server") {
                process.child = None;
                panic!("server exited during start-up with {status} (logs below)");
            }
            if let Ok(resp) = http.get(format!("{url}/health")).send().await {
                if resp.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("server was not healthy within {STARTUP_TIMEOUT:?} (logs below)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Spawned {
    fn logs(&self) -> String {
        let read = |name: &str| {
            std::fs::read_to_string(self.data_dir.path().join(name))
                .unwrap_or_else(|e| format!("<could not read {name}: {e}>"))
        };
        format!(
            "----- server stdout -----\n{}\n----- server stderr -----\n{}\n-------------------------",
            tail(&read("stdout.log")),
            tail(&read("stderr.log"))
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let Some(process) = self.process.as_mut() else {
            return;
        };
        if let Some(mut child) = process.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "server {} ({:?}) logs:\n{}",
                self.url,
                process.backend,
                process.logs()
            );
        }
        if let Some(db) = &process.database {
            db.cleanup();
        }
    }
}

/// The last 200 lines of a log, enough to see a start-up failure.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(200);
    lines[skip..].join("\n")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("could not run kill");
    assert!(status.success(), "kill -{name} {} failed", child.id());
}

fn open_log(dir: &Path, name: &str) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap_or_else(|e| panic!("could not open {name}: {e}"))
}

/// Spawns `myelin` with exactly the given `MYELIN_*` variables (inherited ones
/// are removed, so a developer's shell cannot leak into tests), appending its
/// output to `stdout.log` and `stderr.log` in `log_dir`.
fn spawn_myelin(binary: &Path, env: &[(String, String)], args: &[&str], log_dir: &Path) -> Child {
    let mut cmd = myelin_command(binary, env);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(open_log(log_dir, "stdout.log"))
        .stderr(open_log(log_dir, "stderr.log"));
    cmd.spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", binary.display()))
}

fn myelin_command(binary: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MYELIN_") {
            cmd.env_remove(key);
        }
    }
    // Logs go to files: plain text reads better there than colour codes.
    cmd.env("NO_COLOR", "1");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Output of a `myelin` or `myelin-admin` run that is expected to exit by
/// itself.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `myelin` with the given arguments and `MYELIN_*` variables and waits
/// up to `timeout` for it to exit. Panics, after killing it, if it keeps
/// running (for example a config error that does not stop start-up).
pub async fn run_myelin(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Exited {
    let binary = myelin_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut child = spawn_myelin(&binary, &env, args, dir.path());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for myelin") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "myelin {args:?} with {env:?} was still running after {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    Exited {
        status,
        stdout: read("stdout.log"),
        stderr: read("stderr.log"),
    }
}
