//! Synapse, the reference homeserver, started on a loopback port for comparisons: the speed
//! targets of some issues are stated against it ("5× Synapse"), and the benchmarks that check
//! them run the same client workload against both servers.
//!
//! Synapse comes from a Python virtualenv, `MYELIN_SYNAPSE_VENV` (default
//! `/var/tmp/myelin-synapse-venv`), made with
//!
//! ```sh
//! python3 -m venv /var/tmp/myelin-synapse-venv
//! /var/tmp/myelin-synapse-venv/bin/pip install matrix-synapse psycopg2-binary
//! ```
//!
//! Each [`Synapse`] gets its own directory (configuration, signing key, media, log) and, on
//! PostgreSQL, its own database from [`crate::postgres`]; registration is open and rate
//! limits are off, as for the Myelin it is compared with.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{postgres, unique_name, Backend, Client};

/// Where Synapse's virtualenv is.
pub fn venv() -> PathBuf {
    std::env::var_os("MYELIN_SYNAPSE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/myelin-synapse-venv"))
}

/// Whether Synapse can be started here (its virtualenv has it).
pub fn available() -> bool {
    Command::new(venv().join("bin/python"))
        .args(["-c", "import synapse"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a Synapse test can run: true when Synapse is installed; otherwise says it is
/// skipped and returns false, except in CI (`CI=true`), where a missing Synapse fails the test.
pub fn available_or_skip() -> bool {
    if available() {
        return true;
    }
    assert!(
        !crate::in_ci(),
        "CI=true but Synapse is not installed in {}",
        venv().display()
    );
    eprintln!("skipping: Synapse is not installed");
    false
}

/// A running Synapse.
pub struct Synapse {
    child: Option<Child>,
    url: String,
    dir: tempfile::TempDir,
    _database: Option<postgres::PgDatabase>,
}

const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

impl Synapse {
    /// Writes a configuration, makes the signing key and starts Synapse; waits until it
    /// answers `/versions`.
    pub async fn start(backend: Backend) -> Result<Synapse, String> {
        Self::start_with(backend, false).await
    }

    /// Like [`Synapse::start`], plus a federation listener over TLS (a self-signed
    /// certificate) on another loopback port, the server named after it (`127.0.0.1:<port>`),
    /// with certificate checks off and loopback peers allowed (test configuration only;
    /// Synapse checks IP-literal server names against its federation block list alone, so
    /// that list is emptied).
    pub async fn start_federating(backend: Backend) -> Result<Synapse, String> {
        Self::start_with(backend, true).await
    }

    async fn start_with(backend: Backend, federating: bool) -> Result<Synapse, String> {
        if !available() {
            return Err(format!(
                "Synapse is not installed in {} (see complement-tests/src/synapse.rs)",
                venv().display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("myelin-synapse-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = postgres::free_port();
        let (database_yaml, database) = match backend {
            Backend::Sqlite => (
                format!(
                    "database:\n  name: sqlite3\n  args:\n    database: {}\n",
                    dir.path().join("homeserver.db").display()
                ),
                None,
            ),
            Backend::Postgres => {
                let db = postgres::fresh_database_with(postgres::Durability::Normal)
                    .map_err(|e| format!("{e:?}"))?;
                let url = reqwest::Url::parse(&db.url).map_err(|e| e.to_string())?;
                (
                    format!(
                        "database:\n  name: psycopg2\n  allow_unsafe_locale: true\n  args:\n    \
                         user: {}\n    host: {}\n    port: {}\n    dbname: {}\n    \
                         cp_min: 5\n    cp_max: 10\n",
                        url.username(),
                        url.host_str().unwrap_or("127.0.0.1"),
                        url.port().unwrap_or(5432),
                        url.path().trim_start_matches('/'),
                    ),
                    Some(db),
                )
            }
        };
        let path = |name: &str| dir.path().join(name).display().to_string();
        let unlimited = "{per_second: 100000, burst_count: 100000}";
        let (server_name, federation_yaml) = if federating {
            let federation_port = postgres::free_port();
            let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
                .map_err(|e| e.to_string())?;
            std::fs::write(dir.path().join("tls.crt"), generated.cert.pem())
                .map_err(|e| e.to_string())?;
            std::fs::write(
                dir.path().join("tls.key"),
                generated.key_pair.serialize_pem(),
            )
            .map_err(|e| e.to_string())?;
            (
                format!("127.0.0.1:{federation_port}"),
                format!(
                    "  - port: {federation_port}\n    bind_addresses: ['127.0.0.1']\n    \
                     type: http\n    tls: true\n    x_forwarded: false\n    resources:\n      \
                     - names: [federation, keys]\n        compress: false\n\
                     tls_certificate_path: {}\n\
                     tls_private_key_path: {}\n\
                     federation_verify_certificates: false\n\
                     ip_range_whitelist: ['127.0.0.0/8']\n\
                     federation_ip_range_blacklist: []\n",
                    path("tls.crt"),
                    path("tls.key")
                ),
            )
        } else {
            ("localhost".to_owned(), String::new())
        };
        let config = format!(
            "server_name: '{server_name}'\n\
             pid_file: {pid}\n\
             listeners:\n  - port: {port}\n    bind_addresses: ['127.0.0.1']\n    type: http\n    \
             tls: false\n    x_forwarded: false\n    resources:\n      - names: [client]\n        \
             compress: false\n\
             {federation_yaml}\
             {database_yaml}\
             log_config: {log_config}\n\
             media_store_path: {media}\n\
             signing_key_path: {key}\n\
             report_stats: false\n\
             enable_registration: true\n\
             enable_registration_without_verification: true\n\
             registration_shared_secret: {secret}\n\
             macaroon_secret_key: {macaroon}\n\
             form_secret: {form}\n\
             trusted_key_servers: []\n\
             suppress_key_server_warning: true\n\
             rc_message: {unlimited}\n\
             rc_registration: {unlimited}\n\
             rc_login:\n  address: {unlimited}\n  account: {unlimited}\n  failed_attempts: {unlimited}\n\
             rc_joins:\n  local: {unlimited}\n  remote: {unlimited}\n\
             rc_joins_per_room: {unlimited}\n\
             rc_invites:\n  per_room: {unlimited}\n  per_user: {unlimited}\n  per_issuer: {unlimited}\n\
             rc_room_creation: {unlimited}\n\
             rc_presence:\n  per_user: {unlimited}\n",
            pid = path("homeserver.pid"),
            log_config = path("log.yaml"),
            media = path("media"),
            key = path("signing.key"),
            secret = unique_name("secret"),
            macaroon = unique_name("macaroon"),
            form = unique_name("form"),
        );
        std::fs::write(dir.path().join("homeserver.yaml"), config).map_err(|e| e.to_string())?;
        std::fs::write(
            dir.path().join("log.yaml"),
            format!(
                "version: 1\nformatters:\n  plain:\n    format: '%(asctime)s %(levelname)s %(name)s %(message)s'\n\
                 handlers:\n  file:\n    class: logging.FileHandler\n    formatter: plain\n    \
                 filename: {}\nroot:\n  level: WARNING\n  handlers: [file]\n\
                 disable_existing_loggers: false\n",
                path("homeserver.log")
            ),
        )
        .map_err(|e| e.to_string())?;
        let keys = Command::new(venv().join("bin/python"))
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(dir.path().join("homeserver.yaml"))
            .arg("--generate-keys")
            .output()
            .map_err(|e| e.to_string())?;
        if !keys.status.success() {
            return Err(format!(
                "synapse --generate-keys: {}",
                String::from_utf8_lossy(&keys.stderr)
            ));
        }
        let mut synapse = Synapse {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            _database: database,
        };
        synapse.spawn().await?;
        Ok(synapse)
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("homeserver.yaml")
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let out =
            std::fs::File::create(self.dir.path().join("stdout.log")).map_err(|e| e.to_string())?;
        let err =
            std::fs::File::create(self.dir.path().join("stderr.log")).map_err(|e| e.to_string())?;
        let child = Command::new(venv().join("bin/python"))
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.config())
            .current_dir(self.dir.path())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("Synapse exited with {status}: {}", self.logs()));
            }
            let versions = http
                .get(format!("{}/_matrix/client/versions", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if versions.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("Synapse did not start: {}", self.logs()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The client API's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Registers a new user (open registration) and returns its logged-in client.
    pub async fn register_user(&self, prefix: &str) -> Client {
        let name = unique_name(prefix);
        let password = format!("pw-{name}");
        let client = Client::new(&self.url);
        let (status, body) = client.register(&name, &password).await;
        assert_eq!(status, 200, "registering {name} on Synapse failed: {body}");
        client.authed(&body, &password)
    }

    /// Stops Synapse (SIGTERM, then SIGKILL after 30 s) and starts it again on the same data.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop().await;
        self.spawn().await
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Synapse's log and output so far.
    pub fn logs(&self) -> String {
        ["homeserver.log", "stderr.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
