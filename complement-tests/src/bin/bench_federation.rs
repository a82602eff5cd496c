//! Myelin's federation benchmark (issue 14): two Myelins (release builds) on loopback, each on
//! its own PostgreSQL database with durable settings, federating over TLS.
//!
//! ```sh
//! cargo run --release -p complement-tests --bin bench_federation
//! ```
//!
//! It reports:
//! 1. latency: a message sent on hs1 until a member on hs2, waiting in a long-poll `/sync`,
//!    receives it; `BENCH_MESSAGES` (default 300) messages one after another, p50 and p99;
//! 2. throughput: 50 senders on hs1 into 10 rooms shared with hs2 for `BENCH_SECONDS`
//!    (default 10); the rate at which hs2's member receives them (from the first send to the
//!    last arrival), and that every message arrives exactly once.
//!
//! 3. joining a big room held by the other server: a public room on hs1 with
//!    `BENCH_JOIN_MEMBERS` (default 1,000) members and `BENCH_JOIN_EVENTS` (default 10,000)
//!    messages; a user of hs2 joins it through its alias; the time from the join request to
//!    its 200;
//! 4. an outage: hs2 stopped for `BENCH_OUTAGE_SECONDS` (default 60) while hs1's user sends
//!    10 messages a second into a room shared with hs2; hs2 restarted and its member syncing
//!    (as a client does when its server is back); the time from hs2 answering until the
//!    member has every message, each once.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use complement_tests::{
    bench::{build_release_server, cpu_time, env_num, in_parallel, ms, percentile},
    encode, Backend, Client, ServerOptions,
};
use serde_json::json;

/// Follows `client`'s sync from `since`, calling `seen` with every message body as it
/// arrives, until `stop`. The timeline limit is high enough that no sync is `limited` (a
/// limited timeline would hide messages that did arrive); if one is, it panics.
async fn follow(client: Client, mut since: String, stop: Arc<AtomicBool>, seen: impl Fn(&str)) {
    while !stop.load(Ordering::Relaxed) {
        let (status, sync) = client
            .get(&format!(
                "/_matrix/client/v3/sync?timeout=5000&since={}&filter={}",
                encode(&since),
                encode(r#"{"room":{"timeline":{"limit":1000}}}"#)
            ))
            .await;
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        for room in sync["rooms"]["join"].as_object().into_iter().flatten() {
            assert!(
                room.1["timeline"]["limited"] != true,
                "a limited timeline in the follower's sync"
            );
            for event in room.1["timeline"]["events"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(body) = event["content"]["body"].as_str() {
                    seen(body);
                }
            }
        }
        since = sync["next_batch"].as_str().unwrap_or(&since).to_owned();
    }
}

async fn initial_since(client: &Client) -> String {
    let (_, sync) = client.get("/_matrix/client/v3/sync?timeout=0").await;
    sync["next_batch"].as_str().expect("next_batch").to_owned()
}

#[tokio::main]
async fn main() {
    build_release_server();
    let messages = env_num("BENCH_MESSAGES", 300) as usize;
    let seconds = env_num("BENCH_SECONDS", 10);
    let options = || {
        ServerOptions::default().federating().env(
            "MYELIN_LOG",
            &std::env::var("BENCH_LOG").unwrap_or_else(|_| "error".to_owned()),
        )
    };
    let hs1 = complement_tests::bench::start_server(Backend::Postgres, options()).await;
    let hs2 = complement_tests::bench::start_server(Backend::Postgres, options()).await;
    println!("# Myelin federation benchmark (two servers, PostgreSQL durable, loopback TLS)");
    let alice = hs1.register_user("alice").await;
    let bob = hs2.register_user("bob").await;

    // 1. Latency.
    let room = shared_room(&alice, &bob, hs1.server_name(), "latency").await;
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (arrived, stop) = (arrived.clone(), stop.clone());
        let since = initial_since(&bob).await;
        let bob = bob.clone();
        tokio::spawn(follow(bob, since, stop, move |body| {
            arrived
                .lock()
                .unwrap()
                .entry(body.to_owned())
                .or_insert_with(Instant::now);
        }))
    };
    // Warm up (keys fetched, connections open).
    alice_send(&alice, &room, "warm-up").await;
    wait_for(&arrived, 1, Duration::from_secs(10)).await;
    let mut latencies = Vec::with_capacity(messages);
    for i in 0..messages {
        let body = format!("m{i}");
        let start = Instant::now();
        alice_send(&alice, &room, &body).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = arrived.lock().unwrap().get(&body) {
                latencies.push(*at - start);
                break;
            }
            if Instant::now() > deadline {
                panic!("message {body} did not arrive within 10 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = follower.await;
    latencies.sort();
    println!(
        "latency hs1 -> hs2 (send to a waiting sync), {messages} messages: p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99))
    );

    // 2. Throughput: 50 senders, 10 rooms.
    let mut rooms = Vec::new();
    for r in 0..10 {
        rooms.push(shared_room(&alice, &bob, hs1.server_name(), &format!("tput{r}")).await);
    }
    let mut senders = Vec::new();
    for s in 0..50 {
        let user = hs1.register_user(&format!("sender{s}")).await;
        let room = rooms[s % rooms.len()].clone();
        let (status, _) = user
            .post(
                &format!("/_matrix/client/v3/rooms/{}/join", encode(&room)),
                &json!({}),
            )
            .await;
        assert_eq!(status, 200);
        senders.push((user, room));
    }
    let received: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let last_arrival: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (received, last_arrival, stop) = (received.clone(), last_arrival.clone(), stop.clone());
        let since = initial_since(&bob).await;
        let bob = bob.clone();
        tokio::spawn(follow(bob, since, stop, move |body| {
            if body.starts_with('t') {
                *received.lock().unwrap().entry(body.to_owned()).or_default() += 1;
                *last_arrival.lock().unwrap() = Some(Instant::now());
            }
        }))
    };
    let sent = Arc::new(AtomicU64::new(0));
    let pids = (hs1.pid().unwrap_or(0), hs2.pid().unwrap_or(0));
    let cpu_before = (cpu_time(pids.0), cpu_time(pids.1));
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, (user, room)) in senders.into_iter().enumerate() {
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                alice_send(&user, &room, &format!("t{i}-{n}")).await;
                sent.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let total = sent.load(Ordering::Relaxed) as usize;
    let during = received.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = follower.await;
    let cpu = (
        cpu_time(pids.0) - cpu_before.0,
        cpu_time(pids.1) - cpu_before.1,
    );
    let received = received.lock().unwrap().clone();
    let duplicated = received.values().filter(|n| **n > 1).count();
    let elapsed = last_arrival
        .lock()
        .unwrap()
        .map_or(Duration::ZERO, |t| t - start);
    println!(
        "throughput: {total} messages sent by 50 senders into 10 rooms in {seconds} s ({:.0} msg/s sent); hs2's member received {} of them ({} duplicated) in {:.1} s: {:.0} msg/s",
        total as f64 / seconds as f64,
        received.len(),
        duplicated,
        elapsed.as_secs_f64(),
        received.len() as f64 / elapsed.as_secs_f64().max(0.001)
    );
    println!(
        "  ({during} had arrived when the senders stopped; CPU time hs1 {:.1} s, hs2 {:.1} s)",
        cpu.0.as_secs_f64(),
        cpu.1.as_secs_f64()
    );

    // 3. Joining a big room held by hs1.
    let members = env_num("BENCH_JOIN_MEMBERS", 1000).max(2) as usize;
    let events = env_num("BENCH_JOIN_EVENTS", 10_000) as usize;
    let (status, created) = alice
        .post(
            "/_matrix/client/v3/createRoom",
            &json!({ "preset": "public_chat", "room_alias_name": "big" }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let big = created["room_id"].as_str().unwrap().to_owned();
    let mut locals = Vec::new();
    for i in 0..members.saturating_sub(1) {
        locals.push(hs1.register_user(&format!("member{i}")).await);
    }
    {
        let big = big.clone();
        in_parallel(locals.clone(), 8, move |user| {
            let big = big.clone();
            async move { complement_tests::bench::join(&user, &big).await }
        })
        .await;
    }
    let sends: Vec<(Client, usize)> = (0..events)
        .map(|n| (locals[n % locals.len().max(1)].clone(), n))
        .collect();
    {
        let big = big.clone();
        in_parallel(sends, 16, move |(user, n)| {
            let big = big.clone();
            async move { alice_send(&user, &big, &format!("history {n}")).await }
        })
        .await;
    }
    let carol = hs2.register_user("carol").await;
    let start = Instant::now();
    let (status, body) = carol
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                encode(&format!("#big:{}", hs1.server_name()))
            ),
            &json!({}),
        )
        .await;
    let took = start.elapsed();
    assert_eq!(status, 200, "join: {body}");
    let (status, joined) = carol.get(&Client::room_path(&big, "/joined_members")).await;
    assert_eq!(status, 200, "{joined}");
    let count = joined["joined"].as_object().map_or(0, |m| m.len());
    println!(
        "join of a room with {count} members and {events} messages held by the other server: {:.0} ms",
        ms(took)
    );

    // 4. hs2 away for a while, then back.
    let outage = env_num("BENCH_OUTAGE_SECONDS", 60);
    let room = shared_room(&alice, &bob, hs1.server_name(), "outage").await;
    let since = initial_since(&bob).await;
    let mut hs2 = hs2;
    hs2.stop().await;
    let until = Instant::now() + Duration::from_secs(outage);
    let mut queued = 0usize;
    while Instant::now() < until {
        alice_send(&alice, &room, &format!("o{queued}")).await;
        queued += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hs2.restart().await;
    let back = Instant::now();
    let received: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (received, stop) = (received.clone(), stop.clone());
        let bob = bob.clone();
        tokio::spawn(follow(bob, since, stop, move |body| {
            if body.starts_with('o') {
                *received.lock().unwrap().entry(body.to_owned()).or_default() += 1;
            }
        }))
    };
    let deadline = back + Duration::from_secs(120);
    while received.lock().unwrap().len() < queued && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = back.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = follower.await;
    let received = received.lock().unwrap().clone();
    println!(
        "outage: {queued} messages sent while hs2 was down {outage} s; hs2's member had {} of them ({} duplicated) {:.1} s after hs2 answered again",
        received.len(),
        received.values().filter(|n| **n > 1).count(),
        caught_up.as_secs_f64()
    );
    assert_eq!(
        received.len(),
        queued,
        "messages queued during the outage were lost"
    );
    drop(hs1);
    drop(hs2);
}

/// A public room of `owner` (on `server`) with alias `#alias:server`, joined by `member` of
/// the other server through the alias.
async fn shared_room(owner: &Client, member: &Client, server: &str, alias: &str) -> String {
    let (status, created) = owner
        .post(
            "/_matrix/client/v3/createRoom",
            &json!({ "preset": "public_chat", "room_alias_name": alias }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let (status, body) = member
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                encode(&format!("#{alias}:{server}"))
            ),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "join: {body}");
    created["room_id"].as_str().unwrap().to_owned()
}

async fn alice_send(client: &Client, room: &str, body: &str) {
    let txn = format!("b{}", rand::random::<u64>());
    complement_tests::bench::send_text(client, room, &txn, body).await;
}

async fn wait_for(arrived: &Arc<Mutex<HashMap<String, Instant>>>, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while arrived.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "nothing arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
