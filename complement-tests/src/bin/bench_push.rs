//! Myelin's push benchmark: push rules evaluated for every member of busy rooms, and
//! notifications delivered to a push gateway (a fake one on loopback that answers at once).
//!
//! ```sh
//! cargo run --release -p complement-tests --bin bench_push              # PostgreSQL (default)
//! BENCH_BACKEND=sqlite cargo run --release -p complement-tests --bin bench_push
//! ```
//!
//! It reports:
//! 1. sustained sends per second with 50 senders over 10 rooms of 50 members each, every
//!    member's rules evaluated for every event and 2 members of each room holding an HTTP
//!    pusher; the notifications per second the gateway received, how long it took to drain
//!    after the senders stopped, and the server's CPU time per evaluated member;
//! 2. the time from the start of a send to the gateway receiving its notification, one
//!    message every 100 ms (p50, p99);
//! 3. a gateway down for `BENCH_DOWN_SECONDS` (default 60) while messages keep coming, then
//!    back: whether every notification arrived exactly once and in order, and how long the
//!    backlog took.
//!
//! Knobs: `BENCH_SECONDS` (duration of 1, default 20), `BENCH_PUSHERS` (pushers per room in 1,
//! default 2; 0 measures rule evaluation alone), `BENCH_DOWN_SECONDS`, `BENCH_BACKEND`.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use complement_tests::{
    bench::{build_release_server, cpu_time, create_room, env_num, join, ms, percentile},
    encode, Client, FakeGateway, ServerOptions,
};
use serde_json::{json, Value};

const ROOMS: usize = 10;
const MEMBERS: usize = 50;
const SENDERS_PER_ROOM: usize = 5;

async fn send(client: &Client, room_id: &str, txn: &str) -> String {
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
    body["event_id"].as_str().expect("event_id").to_owned()
}

async fn set_pusher(client: &Client, url: &str, pushkey: &str) {
    let (status, body) = client
        .post(
            "/_matrix/client/v3/pushers/set",
            &json!({
                "kind": "http", "app_id": "org.example.bench", "pushkey": pushkey,
                "app_display_name": "Bench", "device_display_name": "Bench",
                "lang": "en", "data": { "url": url },
            }),
        )
        .await;
    assert_eq!(status, 200, "pushers/set: {body}");
}

fn event_ids(notifications: &[Value]) -> Vec<String> {
    notifications
        .iter()
        .filter_map(|n| n["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the gateway holds `n` notifications or `timeout` passes; returns how many.
async fn drain(gateway: &FakeGateway, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let got = gateway.received().len();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    build_release_server();
    let backend = complement_tests::bench::backend();
    let seconds = env_num("BENCH_SECONDS", 20);
    let down_seconds = env_num("BENCH_DOWN_SECONDS", 60);
    // Members of each room with a pusher (0 measures evaluation alone).
    let pushers_per_room = env_num("BENCH_PUSHERS", 2) as usize;
    let options = ServerOptions::default()
        .env("MYELIN_LOG", "error")
        .env("MYELIN_PUSH_IP_RANGE_ALLOWLIST", "127.0.0.0/8");
    let hs = complement_tests::bench::start_server(backend, options).await;
    let pid = hs.pid().expect("a spawned server");
    println!("# Myelin push benchmark ({backend:?}, server {})", hs.url());
    let gateway = FakeGateway::start().await;

    // 1. 10 rooms of 50 members, 5 senders and 2 pushers in each.
    let mut senders = Vec::new();
    for r in 0..ROOMS {
        let owner = hs.register_user(&format!("owner{r}")).await;
        let room = create_room(&owner, &format!("bench {r}")).await;
        for m in 1..MEMBERS {
            let member = hs.register_user(&format!("m{r}x{m}")).await;
            join(&member, &room).await;
            if m <= SENDERS_PER_ROOM {
                senders.push((member, room.clone()));
            } else if m <= SENDERS_PER_ROOM + pushers_per_room {
                set_pusher(&member, &gateway.url(), &format!("key-{r}-{m}")).await;
            }
        }
    }
    println!(
        "set up {ROOMS} rooms of {MEMBERS} members, {} senders, {} pushers",
        senders.len(),
        ROOMS * pushers_per_room
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (user, room)) in senders.into_iter().enumerate() {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                send(&user, &room, &format!("t{i}-{n}")).await;
                n += 1;
            }
            n
        }));
    }
    let cpu_before = cpu_time(pid);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0u64;
    for task in tasks {
        sent += task.await.expect("sender task");
    }
    let elapsed = start.elapsed();
    let cpu_sending = cpu_time(pid) - cpu_before;
    let at_stop = gateway.received().len();
    let expected = sent as usize * pushers_per_room;
    let drained_at = Instant::now();
    let got = drain(&gateway, expected, Duration::from_secs(120)).await;
    let drain_time = drained_at.elapsed();
    let cpu_total = cpu_time(pid) - cpu_before;
    let evaluated = sent * (MEMBERS as u64 - 1);
    println!(
        "sustained sends with push: {:.0} messages/s ({sent} in {:.1} s); {evaluated} member evaluations",
        sent as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
    );
    println!(
        "notifications: {at_stop} received while sending ({:.0}/s), {got} of {expected} after {:.1} s more",
        at_stop as f64 / elapsed.as_secs_f64(),
        drain_time.as_secs_f64(),
    );
    println!(
        "server CPU: {:.1} s while sending, {:.1} s with the drain; {:.1} µs per evaluated member (everything the server did, divided by member evaluations)",
        cpu_sending.as_secs_f64(),
        cpu_total.as_secs_f64(),
        cpu_total.as_secs_f64() * 1e6 / evaluated.max(1) as f64,
    );
    assert_eq!(got, expected, "notifications lost or duplicated");

    // 2. Latency at light load: one message every 100 ms into a room where one member has a
    // pusher.
    let gateway = FakeGateway::start().await;
    let alice = hs.register_user("lat-alice").await;
    let bob = hs.register_user("lat-bob").await;
    let room = create_room(&alice, "latency").await;
    join(&bob, &room).await;
    set_pusher(&bob, &gateway.url(), "lat-key").await;
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for n in 0..200 {
        tick.tick().await;
        let t0 = Instant::now();
        let event = send(&alice, &room, &format!("lat-{n}")).await;
        started.insert(event, t0);
    }
    drain(&gateway, 200, Duration::from_secs(30)).await;
    let mut latencies: Vec<Duration> = gateway
        .received_timed()
        .iter()
        .filter_map(|(at, n)| {
            let t0 = started.get(n["event_id"].as_str()?)?;
            Some(at.duration_since(*t0))
        })
        .collect();
    latencies.sort();
    println!(
        "send start to gateway receipt, one message every 100 ms: p50 {:.2} ms, p99 {:.2} ms ({} notifications)",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        latencies.len()
    );

    // 3. The gateway is down for a while, then back.
    let gateway = FakeGateway::start().await;
    let carol = hs.register_user("down-carol").await;
    let dave = hs.register_user("down-dave").await;
    let room = create_room(&carol, "outage").await;
    join(&dave, &room).await;
    set_pusher(&dave, &gateway.url(), "down-key").await;
    gateway.set_down(true);
    let mut order = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let outage = Instant::now();
    let mut n = 0;
    while outage.elapsed() < Duration::from_secs(down_seconds) {
        tick.tick().await;
        order.push(send(&carol, &room, &format!("down-{n}")).await);
        n += 1;
    }
    let failed_attempts = gateway.attempts();
    gateway.set_down(false);
    let back = Instant::now();
    let got = drain(&gateway, order.len(), Duration::from_secs(600)).await;
    let backlog = back.elapsed();
    // Anything late or twice would show now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = event_ids(&gateway.received());
    let unique: HashSet<&String> = received.iter().collect();
    println!(
        "gateway down {down_seconds} s ({failed_attempts} refused attempts): {got} of {} notifications delivered {:.1} s after it came back; duplicates {}; in order: {}",
        order.len(),
        backlog.as_secs_f64(),
        received.len() - unique.len(),
        received == order,
    );
    assert_eq!(received, order, "every notification once, in order");
}
