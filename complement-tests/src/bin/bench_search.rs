//! Myelin's search benchmark (issue 13): message search and the user directory on a real
//! `myelin` (release build) over HTTP on loopback, PostgreSQL with durable settings.
//!
//! ```sh
//! cargo run --release -p complement-tests --bin bench_search
//! ```
//!
//! It reports:
//! 1. what indexing costs sends: 50 senders over 10 rooms, alternately sending messages whose
//!    bodies have words (indexed) and bodies of the same length without any (nothing to
//!    index), `BENCH_SECONDS` (default 10) per round, four rounds each; everything else (push
//!    rules, counts, fan-out) is the same for both;
//! 2. message search over `BENCH_MESSAGES` (default 1,000,000) messages in 1,000 rooms, the
//!    searcher joined to 100 of them: first pages of one-word queries by rank and by recency,
//!    p50 and p99, for words from the commonest to rare ones (a Zipf vocabulary of 5,000
//!    words, eight words a message);
//! 3. the user directory over `BENCH_USERS` (default 100,000) local users (20,000 of them in
//!    public rooms, 1,000 sharing private rooms with the searcher), names from 200 first and
//!    500 last names: queries of one, two and three letters, whole first names, and full
//!    names, p50 and p99.
//!
//! The messages are sent over HTTP like any others (the fill takes minutes); the directory's
//! users and memberships are written into the database directly and indexed by the server's
//! own start-up indexing, since registering 100,000 accounts would time argon2, not search.
//! Knobs: `BENCH_SECONDS`, `BENCH_MESSAGES`, `BENCH_USERS`, `BENCH_QUERIES` (default 400).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use complement_tests::{
    bench::{
        build_release_server, create_room, env_num, in_parallel, join, ms, percentile,
        send_text as send,
    },
    Backend, Client, ServerOptions,
};
use serde_json::{json, Value};

const ROOMS: usize = 1000;
const JOINED: usize = 100;
const OWNERS: usize = 10;
const VOCABULARY: usize = 5000;
const WORDS_PER_MESSAGE: usize = 8;

/// A small deterministic generator (xorshift), so every run sends the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A Zipf-distributed rank in `0..n` (exponent 1), by inverting the cumulative weights.
    fn zipf(&mut self, cumulative: &[f64]) -> usize {
        let total = *cumulative.last().expect("weights");
        let x = (self.next() as f64 / u64::MAX as f64) * total;
        cumulative
            .partition_point(|c| *c < x)
            .min(cumulative.len() - 1)
    }
}

/// `n` distinct pronounceable words, the commonest first.
fn vocabulary(n: usize) -> Vec<String> {
    const ONSETS: [&str; 16] = [
        "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st",
    ];
    const VOWELS: [&str; 6] = ["a", "e", "i", "o", "u", "ai"];
    let mut rng = Rng(0x5eed);
    let mut seen = std::collections::HashSet::new();
    let mut words = Vec::with_capacity(n);
    while words.len() < n {
        let syllables = 2 + rng.below(2);
        let word: String = (0..syllables)
            .map(|_| format!("{}{}", ONSETS[rng.below(16)], VOWELS[rng.below(6)]))
            .collect();
        if seen.insert(word.clone()) {
            words.push(word);
        }
    }
    words
}

fn cumulative_zipf(n: usize) -> Vec<f64> {
    let mut total = 0.0;
    (1..=n)
        .map(|rank| {
            total += 1.0 / rank as f64;
            total
        })
        .collect()
}

fn message(rng: &mut Rng, words: &[String], cumulative: &[f64]) -> String {
    (0..WORDS_PER_MESSAGE)
        .map(|_| words[rng.zipf(cumulative)].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One round of part 1: returns messages per second.
async fn send_round(
    senders: &[(Client, String)],
    seconds: u64,
    indexed: bool,
    round: usize,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, (client, room)) in senders.iter().cloned().enumerate() {
        let (stop, sent) = (stop.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let words = vocabulary(200);
            let cumulative = cumulative_zipf(200);
            let mut rng = Rng(0x1234 + i as u64);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = message(&mut rng, &words, &cumulative);
                // The same length either way; without letters or digits nothing is indexed.
                let body = if indexed {
                    text
                } else {
                    "-".repeat(text.len())
                };
                send(&client, &room, &format!("r{round}-{i}-{n}"), &body).await;
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("sender");
    }
    sent.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn timed_post(client: &Client, path: &str, body: &Value) -> (Duration, Value) {
    let start = Instant::now();
    let (status, answer) = client.post(path, body).await;
    let elapsed = start.elapsed();
    assert_eq!(status, 200, "{path} {body}: {answer}");
    (elapsed, answer)
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} queries)",
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap_or(&Duration::ZERO)),
        times.len()
    );
}

#[tokio::main]
async fn main() {
    build_release_server();
    let seconds = env_num("BENCH_SECONDS", 10);
    let messages = env_num("BENCH_MESSAGES", 1_000_000) as usize;
    let users = env_num("BENCH_USERS", 100_000) as usize;
    let queries = env_num("BENCH_QUERIES", 400) as usize;
    let options = ServerOptions::default().env("MYELIN_LOG", "error");
    let mut hs = complement_tests::bench::start_server(Backend::Postgres, options).await;
    println!(
        "# Myelin search benchmark (PostgreSQL, server {})",
        hs.url()
    );

    // 1. What indexing costs sends.
    let mut senders = Vec::new();
    for r in 0..10 {
        let owner = hs.register_user(&format!("tput{r}")).await;
        let room = create_room(&owner, &format!("throughput {r}")).await;
        senders.push((owner, room.clone()));
        for s in 1..5 {
            let sender = hs.register_user(&format!("tput{r}x{s}")).await;
            join(&sender, &room).await;
            senders.push((sender, room.clone()));
        }
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..8 {
        let indexed = round % 2 == 1;
        let rate = send_round(&senders, seconds, indexed, round).await;
        println!(
            "round {round}: {rate:.0} msg/s {}",
            if indexed { "indexed" } else { "not indexed" }
        );
        if indexed { &mut with } else { &mut without }.push(rate);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "sends: {:.0} msg/s indexed, {:.0} msg/s without words to index: indexing costs {:.1} %",
        mean(&with),
        mean(&without),
        (1.0 - mean(&with) / mean(&without)) * 100.0
    );

    // 2. Message search.
    let searcher = hs.register_user("searcher").await;
    let mut owners = Vec::new();
    for o in 0..OWNERS {
        owners.push(hs.register_user(&format!("owner{o}")).await);
    }
    let rooms: Arc<tokio::sync::Mutex<Vec<(usize, String)>>> = Arc::default();
    {
        let items: Vec<usize> = (0..ROOMS).collect();
        let (owners, rooms) = (owners.clone(), rooms.clone());
        in_parallel(items, 8, move |r| {
            let (owners, rooms) = (owners.clone(), rooms.clone());
            async move {
                let room = create_room(&owners[r % OWNERS], &format!("room {r}")).await;
                rooms.lock().await.push((r, room));
            }
        })
        .await;
    }
    let mut rooms = std::mem::take(&mut *rooms.lock().await);
    rooms.sort();
    for (_, room) in rooms.iter().take(JOINED) {
        join(&searcher, room).await;
    }
    let fill_start = Instant::now();
    let words = Arc::new(vocabulary(VOCABULARY));
    let cumulative = Arc::new(cumulative_zipf(VOCABULARY));
    let per_room = messages.div_ceil(ROOMS);
    let done = Arc::new(AtomicU64::new(0));
    {
        let items: Vec<(usize, String)> = rooms.clone();
        let (owners, words, cumulative, done) = (
            owners.clone(),
            words.clone(),
            cumulative.clone(),
            done.clone(),
        );
        in_parallel(items, 32, move |(r, room)| {
            let (owners, words, cumulative, done) = (
                owners.clone(),
                words.clone(),
                cumulative.clone(),
                done.clone(),
            );
            async move {
                let mut rng = Rng(0x9e37_79b9 + r as u64);
                for n in 0..per_room {
                    let body = message(&mut rng, &words, &cumulative);
                    send(&owners[r % OWNERS], &room, &format!("f{r}-{n}"), &body).await;
                    let total = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if total % 100_000 == 0 {
                        eprintln!("  {total} messages sent");
                    }
                }
            }
        })
        .await;
    }
    let fill = fill_start.elapsed();
    println!(
        "filled {} messages in {ROOMS} rooms in {:.0} s ({:.0} msg/s)",
        done.load(Ordering::Relaxed),
        fill.as_secs_f64(),
        done.load(Ordering::Relaxed) as f64 / fill.as_secs_f64()
    );
    if let Some(db) = hs.postgres_database() {
        let _ = db.query("ANALYZE");
    }
    // Word ranks from the commonest (in ~1 message of 10) to rare ones (~1 in 10,000).
    let classes = [
        (0, "rank 1"),
        (9, "rank 10"),
        (99, "rank 100"),
        (999, "rank 1000"),
    ];
    for order in ["rank", "recent"] {
        let mut all = Vec::new();
        for (rank, label) in classes {
            let mut times = Vec::new();
            let mut found = 0;
            for q in 0..queries / classes.len() {
                // Neighbouring ranks, so the queries are not one cached word.
                let word = &words[rank + q % 5];
                let (elapsed, answer) = timed_post(
                    &searcher,
                    "/_matrix/client/v3/search",
                    &json!({ "search_categories": { "room_events": {
                        "search_term": word, "order_by": order,
                    } } }),
                )
                .await;
                found = answer["search_categories"]["room_events"]["count"]
                    .as_u64()
                    .unwrap_or(0);
                times.push(elapsed);
            }
            report(
                &format!("search by {order}, word of {label} (~{found} visible matches)"),
                times.clone(),
            );
            all.extend(times);
        }
        report(&format!("search by {order}, all words"), all);
    }

    // 3. The user directory.
    let first: Vec<String> = vocabulary(700)[..200]
        .iter()
        .map(|w| capitalise(w))
        .collect();
    let last: Vec<String> = vocabulary(700)[200..700]
        .iter()
        .map(|w| capitalise(w))
        .collect();
    let host = hs.register_user("host").await;
    let mut public_rooms = Vec::new();
    for p in 0..20 {
        public_rooms.push(create_room(&host, &format!("public {p}")).await);
    }
    let mut private_rooms = Vec::new();
    for p in 0..10 {
        let (status, body) = searcher
            .post(
                "/_matrix/client/v3/createRoom",
                &json!({ "preset": "private_chat", "name": format!("private {p}") }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        private_rooms.push(body["room_id"].as_str().expect("room_id").to_owned());
    }
    let db = hs.postgres_database().expect("PostgreSQL");
    let array = |names: &[String]| {
        format!(
            "ARRAY[{}]",
            names
                .iter()
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let server = hs.server_name().to_owned();
    let seed = format!(
        "BEGIN;
         INSERT INTO users (user_id, password_hash, is_admin, deactivated, created_ts)
             SELECT '@u' || i || ':{server}', NULL, 0, 0, 0 FROM generate_series(1, {users}) i;
         INSERT INTO profiles (user_id, displayname)
             SELECT '@u' || i || ':{server}',
                    ({first})[1 + (i::bigint * 7919) % 200] || ' ' || ({last})[1 + (i::bigint * 104729) % 500]
             FROM generate_series(1, {users}) i;
         INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_ordering)
             SELECT ({public})[1 + i % 20], '@u' || i || ':{server}', 'join', '$seed' || i, 0
             FROM generate_series(1, LEAST(20000, {users})) i;
         INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_ordering)
             SELECT ({private})[1 + i % 10], '@u' || i || ':{server}', 'join', '$seed' || i, 0
             FROM generate_series(20001, LEAST(21000, {users})) i;
         COMMIT;",
        first = array(&first),
        last = array(&last),
        public = array(&public_rooms),
        private = array(&private_rooms),
    );
    db.query(&seed).expect("seed the directory's users");
    let index_start = Instant::now();
    hs.restart().await;
    let db = hs.postgres_database().expect("PostgreSQL");
    loop {
        let indexed: usize = db
            .query("SELECT COUNT(*) FROM user_directory")
            .expect("count")
            .trim()
            .parse()
            .unwrap_or(0);
        if indexed >= users {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "start-up indexing of {users} users: {:.1} s",
        index_start.elapsed().as_secs_f64()
    );
    let _ = db.query("ANALYZE");
    let mut rng = Rng(0xd1d1);
    let mut all = Vec::new();
    for (label, make) in [
        ("one letter", 0usize),
        ("two letters", 1),
        ("three letters", 2),
        ("first name", 3),
        ("full name", 4),
    ] {
        let mut times = Vec::new();
        let mut results = 0;
        for _ in 0..queries / 5 {
            let f = &first[rng.below(first.len())];
            let l = &last[rng.below(last.len())];
            let term = match make {
                0 => f[..1].to_owned(),
                1 => f[..2].to_owned(),
                2 => f[..3].to_owned(),
                3 => f.clone(),
                _ => format!("{f} {l}"),
            };
            let (elapsed, answer) = timed_post(
                &searcher,
                "/_matrix/client/v3/user_directory/search",
                &json!({ "search_term": term, "limit": 10 }),
            )
            .await;
            results += answer["results"].as_array().map_or(0, Vec::len);
            times.push(elapsed);
        }
        report(
            &format!(
                "directory, {label} ({:.1} results a query)",
                results as f64 / (queries / 5) as f64
            ),
            times.clone(),
        );
        all.extend(times);
    }
    report("directory, all queries", all);
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
