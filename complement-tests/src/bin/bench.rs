//! Myelin's room benchmark: drives a real `myelin` (release build) over HTTP on loopback.
//!
//! ```sh
//! cargo run --release -p complement-tests --bin bench              # PostgreSQL (default)
//! BENCH_BACKEND=sqlite cargo run --release -p complement-tests --bin bench
//! ```
//!
//! It reports:
//! 1. sustained sends per second with 50 concurrent senders spread over 10 rooms (each send
//!    is acknowledged only after its transaction committed);
//! 2. p50/p99 latency of a single send at light load (one sender);
//! 3. p50/p99 of `/messages` pages of 50 events, walking back through a room of
//!    `BENCH_HISTORY` events (default 100,000).
//!
//! Knobs: `BENCH_SECONDS` (duration of 1, default 20), `BENCH_HISTORY`, `BENCH_BACKEND`.
//! PostgreSQL comes from `MYELIN_TEST_DATABASE_URL` or a throwaway cluster as in the tests,
//! but with durable settings (fsync and synchronous commit on).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use complement_tests::{
    bench::{build_release_server, create_room, env_num, join, ms, percentile},
    encode, Client, ServerOptions,
};
use serde_json::json;

async fn send(client: &Client, room_id: &str, txn: &str) -> Duration {
    let start = Instant::now();
    let (status, body) = client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                encode(room_id)
            ),
            &json!({ "msgtype": "m.text", "body": "benchmark message" }),
        )
        .await;
    assert_eq!(status, 200, "send: {body}");
    start.elapsed()
}

#[tokio::main]
async fn main() {
    build_release_server();
    let backend = complement_tests::bench::backend();
    let seconds = env_num("BENCH_SECONDS", 20);
    let history = env_num("BENCH_HISTORY", 100_000);
    let options = ServerOptions::default().env("MYELIN_LOG", "error");
    let hs = complement_tests::bench::start_server(backend, options).await;
    println!("# Myelin room benchmark ({backend:?}, server {})", hs.url());

    // 1. 50 senders over 10 rooms.
    let mut senders = Vec::new();
    let mut rooms = Vec::new();
    for r in 0..10 {
        let owner = hs.register_user(&format!("owner{r}")).await;
        rooms.push(create_room(&owner, &format!("bench {r}")).await);
    }
    for s in 0..50 {
        let user = hs.register_user(&format!("sender{s}")).await;
        let room = rooms[s % rooms.len()].clone();
        join(&user, &room).await;
        senders.push((user, room));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (user, room)) in senders.into_iter().enumerate() {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                latencies.push(send(&user, &room, &format!("t{i}-{n}")).await);
                n += 1;
            }
            latencies
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("sender task"));
    }
    let elapsed = start.elapsed();
    latencies.sort();
    println!(
        "sustained sends: {:.0} messages/s ({} in {:.1} s, 50 senders, 10 rooms); latency p50 {:.2} ms, p99 {:.2} ms",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies.len(),
        elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
    );

    // 2. One sender at light load.
    let solo = hs.register_user("solo").await;
    let room = create_room(&solo, "solo").await;
    let mut single = Vec::new();
    for n in 0..500 {
        single.push(send(&solo, &room, &format!("solo-{n}")).await);
    }
    single.sort();
    println!(
        "single send at light load: p50 {:.2} ms, p99 {:.2} ms (500 sends)",
        ms(percentile(&single, 0.5)),
        ms(percentile(&single, 0.99))
    );

    // 3. /messages over a long history.
    let writer = hs.register_user("historian").await;
    let room = create_room(&writer, "history").await;
    let filled = Arc::new(AtomicU64::new(0));
    let fill_start = Instant::now();
    let mut fillers = Vec::new();
    for w in 0..16u64 {
        let (writer, room, filled) = (writer.clone(), room.clone(), filled.clone());
        fillers.push(tokio::spawn(async move {
            let mut n = w;
            while n < history {
                send(&writer, &room, &format!("h{n}")).await;
                filled.fetch_add(1, Ordering::Relaxed);
                n += 16;
            }
        }));
    }
    for f in fillers {
        f.await.expect("filler");
    }
    println!(
        "filled a room with {} events in {:.1} s",
        filled.load(Ordering::Relaxed),
        fill_start.elapsed().as_secs_f64()
    );
    // Right after the fill PostgreSQL vacuums and analyses the new rows and writes them out:
    // the first walk shows /messages while that runs, the second on a settled room.
    let background = |hs: &complement_tests::server::TestServer| {
        hs.postgres_database().map(|db| {
            db.query(
                "SELECT 'vacuums ' || autovacuum_count || ', analyses ' || autoanalyze_count
                        || (SELECT ', checkpoints ' || (checkpoints_timed + checkpoints_req)
                                   || ', buffers written by backends ' || buffers_backend
                                   || ', by the background writer ' || buffers_clean
                            FROM pg_stat_bgwriter)
                 FROM pg_stat_user_tables WHERE relname = 'events'",
            )
            .unwrap_or_default()
            .trim()
            .to_owned()
        })
    };
    let before = background(&hs);
    walk(&writer, &room, "right after the fill").await;
    let after = background(&hs);
    if let (Some(before), Some(after)) = (before, after) {
        println!("  PostgreSQL on `events` before the walk: {before}; after: {after}");
    }
    walk(&writer, &room, "again").await;
}

/// Walks the room back with `/messages` pages of 50 and prints the latencies.
async fn walk(writer: &Client, room: &str, label: &str) {
    let mut pages = Vec::new();
    // (time into the walk, page latency): where the slow pages fall.
    let mut timeline = Vec::new();
    let walk_start = Instant::now();
    let mut from: Option<String> = None;
    let mut seen = 0usize;
    loop {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
            encode(room)
        );
        if let Some(token) = &from {
            path.push_str(&format!("&from={}", encode(token)));
        }
        let start = Instant::now();
        let (status, body) = writer.get(&path).await;
        pages.push(start.elapsed());
        timeline.push((walk_start.elapsed(), start.elapsed()));
        assert_eq!(status, 200, "messages: {body}");
        seen += body["chunk"].as_array().map_or(0, Vec::len);
        match body["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    pages.sort();
    println!(
        "/messages ({label}), 50 events per page, walking back through {seen} events: p50 {:.2} ms, p99 {:.2} ms ({} pages)",
        ms(percentile(&pages, 0.5)),
        ms(percentile(&pages, 0.99)),
        pages.len()
    );
    timeline.sort_by_key(|(_, latency)| std::cmp::Reverse(*latency));
    let slowest: Vec<String> = timeline
        .iter()
        .take(5)
        .map(|(at, latency)| format!("{:.1} ms at {:.1} s", ms(*latency), at.as_secs_f64()))
        .collect();
    println!(
        "  slowest pages: {} (walk took {:.1} s)",
        slowest.join(", "),
        walk_start.elapsed().as_secs_f64()
    );
}
