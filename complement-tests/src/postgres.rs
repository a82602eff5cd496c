//! A fresh PostgreSQL database for every test server.
//!
//! Two sources, tried in this order:
//!
//! 1. `MYELIN_TEST_DATABASE_URL`: a server on which we may `CREATE DATABASE`
//!    (for example `postgres://postgres@127.0.0.1:5432/postgres`). Databases
//!    made there are dropped again when their server is dropped.
//! 2. Otherwise one throwaway cluster per test process, started lazily on the
//!    first request: `initdb` into a temporary directory (trust auth, superuser
//!    `postgres`), then `pg_ctl start` on a free loopback port. PostgreSQL
//!    refuses to run as root, so as root every server-side command runs as the
//!    `postgres` OS user through `runuser`.
//!
//! The cluster must not outlive the test process, yet a test process can die
//! in ways that run no destructor (a panic in another thread aborting, a
//! signal). So right after `initdb` we start a detached watchdog shell that
//! polls the test process with `kill -0` and, once it is gone, stops the
//! cluster (`-m immediate`) and deletes its directory.
//!
//! Databases are created with `psql`, found the same way as the server
//! binaries. If no PostgreSQL is installed, [`fresh_database`] says so with
//! [`PgError::NotInstalled`]; the caller decides whether that is a skip or,
//! under CI, a failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Where databases are created: an admin URL on a server we may
/// `CREATE DATABASE` on.
#[derive(Debug)]
struct Admin {
    /// URL of an existing database to connect to for `CREATE DATABASE`.
    url: String,
    /// `psql` to run the statements with.
    psql: PathBuf,
    /// True for a user-supplied server: there we clean up after ourselves.
    /// The throwaway cluster is deleted wholesale instead.
    drop_databases: bool,
}

/// Why no database could be had.
#[derive(Debug, Clone)]
pub enum PgError {
    /// No PostgreSQL binaries on this machine.
    NotInstalled(String),
    /// PostgreSQL is there but something went wrong: always a test failure.
    Failed(String),
}

/// One database created for one test server.
#[derive(Debug)]
pub struct PgDatabase {
    /// The URL the homeserver should use (`MYELIN_DATABASE_URL`).
    pub url: String,
    name: String,
}

/// The lazily started source of databases, shared by all tests of the
/// process. Initialised once: concurrent first callers wait for it.
static ADMIN: OnceLock<Result<Admin, PgError>> = OnceLock::new();
/// The same for databases on a cluster with PostgreSQL's normal durability (`fsync`,
/// synchronous commit, full page writes): started only if a test asks for one.
static ADMIN_DURABLE: OnceLock<Result<Admin, PgError>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// How a test's PostgreSQL cluster treats commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fsync=off`, `synchronous_commit=off`: fast, for tests where durability is not the
    /// point (unless `MYELIN_TEST_PG_DURABLE` is set, which makes every cluster durable).
    #[default]
    Fast,
    /// PostgreSQL's defaults, as in production: for ordering and durability tests, where
    /// slower commits widen the windows that races need.
    Normal,
}

/// Creates a new, empty database and returns its URL.
pub fn fresh_database() -> Result<PgDatabase, PgError> {
    fresh_database_with(Durability::Fast)
}

/// Creates a new, empty database on a cluster of the given durability.
pub fn fresh_database_with(durability: Durability) -> Result<PgDatabase, PgError> {
    let admin = match durability {
        Durability::Fast => &ADMIN,
        Durability::Normal => &ADMIN_DURABLE,
    }
    .get_or_init(|| init_admin(durability))
    .as_ref()
    .map_err(Clone::clone)?;
    let name = format!(
        "myelin_test_{}_{}_{:04x}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed),
        rand::random::<u16>()
    );
    psql(admin, &format!("CREATE DATABASE {name}")).map_err(PgError::Failed)?;
    Ok(PgDatabase {
        url: replace_database(&admin.url, &name),
        name,
    })
}

impl PgDatabase {
    /// Drops the database if it lives on a user-supplied server. Best effort:
    /// called from destructors, so it only reports problems.
    pub fn cleanup(&self) {
        if let Some(Ok(admin)) = ADMIN.get().or(ADMIN_DURABLE.get()) {
            if admin.drop_databases {
                if let Err(e) = psql(
                    admin,
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
                ) {
                    eprintln!("could not drop test database {}: {e}", self.name);
                }
            }
        }
    }
}

impl PgDatabase {
    /// Runs `sql` on this database with psql and returns its unaligned, tuples-only output
    /// (`|` between columns), for benchmarks that measure what the server stored.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        let admin = ADMIN
            .get()
            .and_then(|a| a.as_ref().ok())
            .ok_or("no PostgreSQL admin connection")?;
        let out = Command::new(&admin.psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run {}: {e}", admin.psql.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "psql `{sql}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

fn psql(admin: &Admin, sql: &str) -> Result<(), String> {
    let out = Command::new(&admin.psql)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &admin.url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {}: {e}", admin.psql.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Replaces the database name (the URL path) of a `postgres://` URL, keeping
/// the query string.
fn replace_database(url: &str, database: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[after_scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| after_scheme + i);
    let query = url[path_start..]
        .find('?')
        .map_or("", |i| &url[path_start + i..]);
    format!("{}/{database}{query}", &url[..path_start])
}

fn init_admin(durability: Durability) -> Result<Admin, PgError> {
    if let Ok(url) = std::env::var("MYELIN_TEST_DATABASE_URL") {
        let psql = find_tool("psql").ok_or_else(|| {
            PgError::Failed("MYELIN_TEST_DATABASE_URL is set but psql was not found".into())
        })?;
        return Ok(Admin {
            url,
            psql,
            drop_databases: true,
        });
    }
    let bindir = find_server_bindir().ok_or_else(|| {
        PgError::NotInstalled(
            "PostgreSQL not installed (no initdb/pg_ctl/postgres on PATH, \
             in `pg_config --bindir` or in /usr/lib/postgresql/*/bin)"
                .into(),
        )
    })?;
    let psql = [bindir.join("psql")]
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| find_tool("psql"))
        .ok_or_else(|| PgError::NotInstalled("psql not found".into()))?;
    let port = start_cluster(&bindir, durability).map_err(PgError::Failed)?;
    Ok(Admin {
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        psql,
        drop_databases: false,
    })
}

/// Finds a directory holding `initdb`, `pg_ctl` and `postgres` together (so
/// their versions match): PATH first, then `pg_config --bindir`, then the
/// newest `/usr/lib/postgresql/*/bin`.
pub fn find_server_bindir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|tool| dir.join(tool).is_file())
    };
    // On PATH, initdb is often a symlink into the real bindir.
    if let Some(initdb) = find_on_path("initdb") {
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = real.parent().filter(|d| complete(d)) {
            return Some(dir.to_path_buf());
        }
    }
    if let Some(dir) = pg_config_bindir().filter(|d| complete(d)) {
        return Some(dir);
    }
    debian_bindirs().into_iter().find(|d| complete(d))
}

/// Finds a PostgreSQL client tool: PATH, `pg_config --bindir`, Debian dirs.
fn find_tool(name: &str) -> Option<PathBuf> {
    find_on_path(name)
        .or_else(|| {
            pg_config_bindir()
                .map(|d| d.join(name))
                .filter(|p| p.is_file())
        })
        .or_else(|| {
            debian_bindirs()
                .into_iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let pg_config = find_on_path("pg_config")?;
    let out = Command::new(pg_config).arg("--bindir").output().ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `/usr/lib/postgresql/<version>/bin`, newest version first.
fn debian_bindirs() -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A command for a PostgreSQL server tool, as the `postgres` user when root.
fn server_command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: could not start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Creates and starts the throwaway cluster; returns its port.
fn start_cluster(bindir: &Path, durability: Durability) -> Result<u16, String> {
    let as_postgres = running_as_root();
    // As root the directory must be reachable by the postgres user, so it
    // goes under /tmp rather than a TMPDIR that may sit in root's home.
    let base = if as_postgres {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("myelin-pg-")
        .tempdir_in(&base)
        .map_err(|e| format!("could not create a directory for PostgreSQL: {e}"))?
        .keep();
    let data = dir.join("data");
    let log = dir.join("postgres.log");
    let dir_str = dir.to_string_lossy().into_owned();
    let pg_ctl = bindir.join("pg_ctl");

    // The watchdog comes first so that even a failed start is cleaned up.
    let stop = format!(
        "{} {} -D {} -m immediate stop",
        if as_postgres {
            "runuser -u postgres --"
        } else {
            ""
        },
        sh_quote(&pg_ctl.to_string_lossy()),
        sh_quote(&data.to_string_lossy())
    );
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = sh_quote(&dir_str),
    );
    let spawn_watchdog = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    // setsid: a Ctrl-C to the test's process group must not kill the watchdog.
    spawn_watchdog("setsid", &["sh", "-c", &script])
        .or_else(|_| spawn_watchdog("sh", &["-c", &script]))
        .map_err(|e| format!("could not start the PostgreSQL watchdog: {e}"))?;

    if as_postgres {
        run(
            {
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres", &dir_str]);
                c
            },
            "chown of the PostgreSQL directory",
        )?;
    }

    let mut initdb = server_command(as_postgres, &bindir.join("initdb"));
    initdb.current_dir(&dir).args(["-D"]).arg(&data).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]);
    run(initdb, "initdb")?;

    // A port can be taken between probing and binding; try a few.
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port();
        // Tests trade durability for speed; the benchmark asks for a durable cluster
        // (MYELIN_TEST_PG_DURABLE) so that "committed" means on disk, as in production.
        let speed = if durability == Durability::Normal
            || std::env::var_os("MYELIN_TEST_PG_DURABLE").is_some()
        {
            ""
        } else {
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        };
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 {speed} -c max_connections=300",
            dir = sh_quote(&dir_str)
        );
        let mut start = server_command(as_postgres, &pg_ctl);
        start
            .current_dir(&dir)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"])
            // The postmaster inherits nothing of ours: with pipes here,
            // output() would wait for the server to exit.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = start
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("could not run pg_ctl: {e}"))?;
        if status.success() {
            return Ok(port);
        }
        last_error = format!(
            "pg_ctl start failed ({status}); server log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Err(last_error)
}

/// A loopback port that was free a moment ago and has not been handed out
/// before in this process. The kernel may offer a just-released port again
/// before the server it was meant for has bound it (or while a restarting
/// server is down), so ports are never handed out twice.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("could not bind a loopback port");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_the_database_in_urls() {
        assert_eq!(
            replace_database("postgres://u@127.0.0.1:5432/postgres", "db1"),
            "postgres://u@127.0.0.1:5432/db1"
        );
        assert_eq!(
            replace_database("postgres://u:p@127.0.0.1/postgres?sslmode=disable", "db1"),
            "postgres://u:p@127.0.0.1/db1?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://127.0.0.1:5432", "db1"),
            "postgres://127.0.0.1:5432/db1"
        );
        assert_eq!(
            replace_database("postgresql://127.0.0.1?x=1", "db1"),
            "postgresql://127.0.0.1/db1?x=1"
        );
    }
}
