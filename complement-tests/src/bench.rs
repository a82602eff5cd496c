//! What the benchmark binaries (`src/bin/bench*.rs`) share: knobs from the environment, the
//! backend and the server they measure, percentiles, the server's memory, and a release build
//! of the server on a durable PostgreSQL, and making rooms to measure.

use std::{process::Command, time::Duration};

use serde_json::json;

use crate::{binary, encode, Backend, Client, ServerOptions, TestServer};

/// A numeric knob from the environment.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0.0–1.0) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Builds `myelin` in release mode and makes the harness use it (unless `MYELIN_TEST_BINARY`
/// already names one), with a PostgreSQL that really syncs its commits to disk, unlike the
/// test clusters. Call it first in `main`, before any other thread exists: it sets
/// environment variables.
pub fn build_release_server() {
    if std::env::var_os("MYELIN_TEST_BINARY").is_some() {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building myelin (release)...");
    let status = Command::new(cargo)
        .current_dir(binary::workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "myelin",
            "--bin",
            "myelin",
            "--target-dir",
        ])
        .arg(binary::target_dir())
        .status()
        .expect("run cargo");
    assert!(status.success(), "building myelin failed");
    std::env::set_var(
        "MYELIN_TEST_BINARY",
        binary::target_dir().join("release").join("myelin"),
    );
    std::env::set_var("MYELIN_TEST_PG_DURABLE", "1");
}

/// The backend to measure: PostgreSQL, or SQLite with `BENCH_BACKEND=sqlite`.
pub fn backend() -> Backend {
    match std::env::var("BENCH_BACKEND").as_deref() {
        Ok("sqlite") => Backend::Sqlite,
        _ => Backend::Postgres,
    }
}

/// Starts the server to measure, or exits saying why it cannot.
pub async fn start_server(backend: Backend, options: ServerOptions) -> TestServer {
    match TestServer::start(backend, options).await {
        Some(hs) => hs,
        None => {
            eprintln!(
                "PostgreSQL is not available; set BENCH_BACKEND=sqlite or install PostgreSQL"
            );
            std::process::exit(1);
        }
    }
}

/// The resident memory of process `pid` in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The server process's CPU time so far (user + system).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let total = ticks(11) + ticks(12);
    // In clock ticks: 100 per second (Linux's USER_HZ).
    Duration::from_millis(total * 10)
}

/// Creates a public room named `name`; panics on failure.
pub async fn create_room(client: &Client, name: &str) -> String {
    let (status, body) = client
        .post(
            "/_matrix/client/v3/createRoom",
            &json!({ "preset": "public_chat", "name": name }),
        )
        .await;
    assert_eq!(status, 200, "createRoom: {body}");
    body["room_id"].as_str().expect("room_id").to_owned()
}

/// Sends a text message with transaction ID `txn`; panics on failure.
pub async fn send_text(client: &Client, room: &str, txn: &str, body: &str) {
    let (status, answer) = client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                encode(room)
            ),
            &json!({ "msgtype": "m.text", "body": body }),
        )
        .await;
    assert_eq!(status, 200, "send: {answer}");
}

/// Joins `room_id`; panics on failure.
pub async fn join(client: &Client, room_id: &str) {
    let (status, body) = client
        .post(
            &format!("/_matrix/client/v3/rooms/{}/join", encode(room_id)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "join: {body}");
}

/// Runs `work` for every item of `items` on `workers` tasks.
pub async fn in_parallel<T, F, Fut>(items: Vec<T>, workers: usize, work: F)
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send,
{
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(items));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (queue, work) = (queue.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(item) = queue.lock().await.pop() else {
                    break;
                };
                work(item).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
}
