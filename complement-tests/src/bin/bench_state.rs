//! Myelin's state benchmark: the hard cases of state storage, on a real `myelin` (release
//! build) over HTTP on loopback, PostgreSQL with durable settings by default.
//!
//! ```sh
//! cargo run --release -p complement-tests --bin bench_state
//! BENCH_BACKEND=sqlite cargo run --release -p complement-tests --bin bench_state
//! ```
//!
//! It reports:
//! 1. bytes of database per 40-byte message, by table and index (PostgreSQL only):
//!    `BENCH_MESSAGES` (default 10,000) messages into a fresh room, sizes before and after;
//! 2. a state-heavy room: `BENCH_STATE` (default 10,000) state events with distinct keys
//!    interleaved with as many messages; then snapshot rows per state change;
//! 3. sends into that room (10,000 state entries): p50/p99 of messages and of state events;
//! 4. `/messages` pages of 100 walking back through the whole room (half of it state
//!    events, each needing visibility and `prev_content`): p50/p99 and the growth of the
//!    server's resident memory over the walk.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use complement_tests::{
    bench::{build_release_server, env_num, ms, percentile, rss_kib},
    encode, Backend, Client, ServerOptions, TestServer,
};
use serde_json::json;

async fn send_message(client: &Client, room: &str, txn: &str, body: &str) -> Duration {
    let start = Instant::now();
    complement_tests::bench::send_text(client, room, txn, body).await;
    start.elapsed()
}

async fn send_state(client: &Client, room: &str, key: &str, value: u64) -> Duration {
    let start = Instant::now();
    let (status, resp) = client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/org.example.bench/{}",
                encode(room),
                encode(key)
            ),
            &json!({ "value": value }),
        )
        .await;
    assert_eq!(status, 200, "state: {resp}");
    start.elapsed()
}

/// `(kind, name, bytes)` of every table (with TOAST) and index of the schema.
fn relation_sizes(hs: &TestServer) -> Vec<(String, String, i64)> {
    let db = hs.postgres_database().expect("a PostgreSQL database");
    let out = db
        .query(
            "SELECT 'table', relname, pg_table_size(oid) FROM pg_class
             WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace
             UNION ALL
             SELECT 'index', indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index
             WHERE indrelid IN (SELECT oid FROM pg_class WHERE relkind = 'r'
                                AND relnamespace = 'public'::regnamespace)",
        )
        .expect("sizes");
    out.lines()
        .filter_map(|line| {
            let mut parts = line.split('|');
            Some((
                parts.next()?.to_owned(),
                parts.next()?.to_owned(),
                parts.next()?.trim().parse().ok()?,
            ))
        })
        .collect()
}

fn count(hs: &TestServer, sql: &str) -> i64 {
    hs.postgres_database()
        .expect("a PostgreSQL database")
        .query(sql)
        .expect("count")
        .trim()
        .parse()
        .expect("a number")
}

/// 1. Bytes per 40-byte message, by table and index.
async fn storage_per_message(hs: &TestServer, messages: u64) {
    let client = hs.register_user("sizer").await;
    let room = client
        .create_room(&json!({ "preset": "private_chat", "name": "sizes" }))
        .await;
    let before = relation_sizes(hs);
    let body = "a forty-byte message, like most of them.";
    assert_eq!(body.len(), 40);
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (client, room) = (client.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = w;
            while n < messages {
                send_message(&client, &room, &format!("size{n}"), body).await;
                n += 8;
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let after = relation_sizes(hs);
    let mut rows: Vec<(String, String, f64)> = after
        .iter()
        .map(|(kind, name, bytes)| {
            let old = before
                .iter()
                .find(|(k, n, _)| k == kind && n == name)
                .map_or(0, |(_, _, b)| *b);
            (
                kind.clone(),
                name.clone(),
                (bytes - old) as f64 / messages as f64,
            )
        })
        .filter(|(_, _, per)| *per > 0.5)
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let total: f64 = rows.iter().map(|(_, _, per)| per).sum();
    println!("storage per 40-byte message: {total:.0} bytes ({messages} messages)");
    for (kind, name, per) in rows {
        println!("  {kind:5} {name:40} {per:8.1} bytes");
    }
}

#[tokio::main]
async fn main() {
    build_release_server();
    let backend = complement_tests::bench::backend();
    let state_events = env_num("BENCH_STATE", 10_000);
    let messages = env_num("BENCH_MESSAGES", 10_000);
    let options = ServerOptions::default().env("MYELIN_LOG", "error");
    let hs = complement_tests::bench::start_server(backend, options).await;
    let pid = hs.pid().expect("our own server");
    println!(
        "# Myelin state benchmark ({backend:?}, server {})",
        hs.url()
    );

    if backend == Backend::Postgres {
        storage_per_message(&hs, messages).await;
    }

    // 2. The state-heavy room: state events with distinct keys interleaved with messages.
    let owner = hs.register_user("owner").await;
    let room = owner
        .create_room(&json!({ "preset": "public_chat", "name": "state heavy" }))
        .await;
    let reader = hs.register_user("reader").await;
    let (status, body) = reader.join(&room).await;
    assert_eq!(status, 200, "join: {body}");
    let fill_start = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut fillers = Vec::new();
    for w in 0..8u64 {
        let (owner, room, done) = (owner.clone(), room.clone(), done.clone());
        fillers.push(tokio::spawn(async move {
            let mut n = w;
            while n < state_events {
                send_state(&owner, &room, &format!("k{n}"), n).await;
                send_message(&owner, &room, &format!("fill{n}"), "history message").await;
                done.fetch_add(2, Ordering::Relaxed);
                n += 8;
            }
        }));
    }
    for f in fillers {
        f.await.expect("filler");
    }
    println!(
        "filled a room with {} state events and {} messages in {:.1} s",
        state_events,
        state_events,
        fill_start.elapsed().as_secs_f64()
    );
    if backend == Backend::Postgres {
        // Checkpoints are written behind the sends; give the last one a moment.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let changes = count(
            &hs,
            "SELECT count(*) FROM events WHERE state_key IS NOT NULL",
        );
        let entries = count(&hs, "SELECT count(*) FROM state_entries");
        let checkpoints = count(&hs, "SELECT count(*) FROM state_checkpoints");
        let lines = count(&hs, "SELECT count(*) FROM state_lines");
        println!(
            "snapshot rows per state change: {:.2} ({changes} state changes: {entries} delta rows, {checkpoints} checkpoint rows, {lines} line rows)",
            (entries + checkpoints + lines) as f64 / changes as f64
        );
    }

    // 3. Sends into the room with 10,000 state entries.
    let mut sends = Vec::new();
    for n in 0..500 {
        sends.push(send_message(&owner, &room, &format!("probe{n}"), "probe").await);
    }
    sends.sort();
    println!(
        "message sends into a room with {state_events} state entries: p50 {:.2} ms, p99 {:.2} ms (500 sends)",
        ms(percentile(&sends, 0.5)),
        ms(percentile(&sends, 0.99))
    );
    let mut state_sends = Vec::new();
    for n in 0..200u64 {
        state_sends.push(
            send_state(
                &owner,
                &room,
                &format!("k{}", n * 37 % state_events),
                n + 1_000_000,
            )
            .await,
        );
    }
    state_sends.sort();
    println!(
        "state sends into that room: p50 {:.2} ms, p99 {:.2} ms (200 sends)",
        ms(percentile(&state_sends, 0.5)),
        ms(percentile(&state_sends, 0.99))
    );

    // 4. /messages over the whole room, as a member who did not send it.
    for (label, filter) in [
        ("", None),
        (
            " (lazy-loading members)",
            Some(r#"{"lazy_load_members":true}"#),
        ),
    ] {
        let rss_before = rss_kib(pid);
        let mut rss_peak = rss_before;
        let mut pages = Vec::new();
        let mut from: Option<String> = None;
        let mut seen = 0usize;
        loop {
            let mut path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                encode(&room)
            );
            if let Some(token) = &from {
                path.push_str(&format!("&from={}", encode(token)));
            }
            if let Some(filter) = filter {
                path.push_str(&format!("&filter={}", encode(filter)));
            }
            let start = Instant::now();
            let (status, body) = reader.get(&path).await;
            pages.push(start.elapsed());
            assert_eq!(status, 200, "messages: {body}");
            seen += body["chunk"].as_array().map_or(0, Vec::len);
            rss_peak = rss_peak.max(rss_kib(pid));
            match body["end"].as_str() {
                Some(end) => from = Some(end.to_owned()),
                None => break,
            }
        }
        pages.sort();
        println!(
            "/messages{label}, pages of 100 over {seen} events (half state): p50 {:.2} ms, p99 {:.2} ms ({} pages); server RSS {} -> peak {} KiB (+{:.1} MiB)",
            ms(percentile(&pages, 0.5)),
            ms(percentile(&pages, 0.99)),
            pages.len(),
            rss_before,
            rss_peak,
            (rss_peak.saturating_sub(rss_before)) as f64 / 1024.0
        );
    }
}
