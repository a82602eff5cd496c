//! Myelin against Synapse on the same machine and workload (issue 12's comparative targets).
//!
//! ```sh
//! cargo run --release -p complement-tests --example bench_vs_synapse     # PostgreSQL
//! ```
//!
//! An example rather than a binary because it drives matrix-sdk-ui, a dev-dependency. Needs
//! Synapse in a virtualenv (see `complement-tests/src/synapse.rs`). Both servers run on
//! PostgreSQL with its normal durability (`BENCH_BACKEND=sqlite` for SQLite), rate limits
//! off. Set-up, the same on both through the client API: a user in `BENCH_ROOMS` (300)
//! rooms of `BENCH_MEMBERS` (10) members with `BENCH_MESSAGES` (10) messages each. Then,
//! timed from the client:
//!
//! 1. Element X's room list: a fresh matrix-sdk 0.18 device starts matrix-sdk-ui's
//!    `SyncService`; timed until its `RoomListService` lists every room (3 devices). Then
//!    the requests the service makes, sent over HTTP alone (list `all_rooms`, range 0-19,
//!    then growing by 100; its required state, timeline limit 1, the account-data, receipts
//!    and typing extensions), 10 times: the server's part of it;
//! 2. a waiting (long-polling) connection and a message into the least recent room: from the
//!    send's 200 to the response that moves the room to the top, 30 times;
//! 3. after a restart of the server (cold caches), the user's initial `/sync`: full (no
//!    filter) and lazy (lazy-loaded members, timeline limit 10), 3 restarts each;
//! 4. the issue's reconnect storm: 20 users in the same 50 rooms (20 members, 20 messages
//!    each); after a restart all 20 make their initial `/sync` at once, timeline limit 1,
//!    with lazy-loaded members and with full member lists, 3 restarts each: the time until
//!    the last one has its answer.
//!
//! `BENCH_SYNAPSE=0` measures Myelin alone.

use std::time::{Duration, Instant};

use complement_tests::{
    bench::{build_release_server, cpu_time, env_num, in_parallel, ms, percentile},
    encode, synapse, Backend, Client, ServerOptions,
};
use serde_json::{json, Value};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// matrix-sdk-ui 0.18's `DEFAULT_REQUIRED_STATE` for the room list.
fn element_x_required_state() -> Value {
    json!([
        ["m.room.name", ""],
        ["m.room.encryption", ""],
        ["m.room.member", "$LAZY"],
        ["m.room.member", "$ME"],
        ["m.room.topic", ""],
        ["m.room.avatar", ""],
        ["m.room.canonical_alias", ""],
        ["m.room.power_levels", ""],
        ["org.matrix.msc3401.call.member", "*"],
        ["m.room.join_rules", ""],
        ["m.room.tombstone", ""],
        ["m.room.create", ""],
        ["m.room.history_visibility", ""],
        ["io.element.functional_members", ""],
        ["m.space.parent", "*"],
        ["m.space.child", "*"],
        ["org.matrix.msc3672.beacon_info", "*"],
    ])
}

fn room_list_body(conn_id: &str, end: u64) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": { "all_rooms": {
            "ranges": [[0, end]],
            "timeline_limit": 1,
            "required_state": element_x_required_state(),
        }},
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true, "rooms": ["*"] },
            "typing": { "enabled": true },
        },
    })
}

async fn post(client: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", encode(pos)));
    }
    let (status, response) = client.post(&path, body).await;
    assert_eq!(status, 200, "sliding sync: {response}");
    response
}

/// A fresh device of `account` starts Element X's sync service; returns the time until its
/// room list holds `rooms` rooms.
async fn element_x_room_list(url: &str, account: &Client, rooms: usize) -> Duration {
    use matrix_sdk_ui::{
        eyeball_im::Vector, room_list_service::filters::new_filter_non_left,
        sync_service::SyncService,
    };
    let client = matrix_sdk::Client::builder()
        .homeserver_url(url)
        .build()
        .await
        .expect("client");
    client
        .matrix_auth()
        .login_username(account.user_id(), account.password.as_deref().unwrap())
        .await
        .expect("login");
    let start = Instant::now();
    let sync = SyncService::builder(client.clone())
        .build()
        .await
        .expect("sync service");
    sync.start().await;
    let all = sync
        .room_list_service()
        .all_rooms()
        .await
        .expect("all rooms");
    let (stream, controller) = all.entries_with_dynamic_adapters(rooms + 10);
    controller.set_filter(Box::new(new_filter_non_left()));
    let mut stream = Box::pin(stream);
    let mut items = Vector::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while items.len() < rooms {
        let diffs = tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut stream))
            .await
            .expect("the room list fills within 5 minutes")
            .expect("the entries stream goes on");
        for diff in diffs {
            diff.apply(&mut items);
        }
    }
    let took = start.elapsed();
    sync.stop().await;
    took
}

/// What one server scored.
#[derive(Debug, Default)]
struct Scores {
    element_x: Duration,
    storm_lazy: Duration,
    storm_full: Duration,
    list_first: Duration,
    list_all: Duration,
    to_top: Duration,
    sync_full: Duration,
    sync_lazy: Duration,
    setup: Duration,
}

/// The server under test: Myelin or Synapse.
enum Server {
    Myelin(complement_tests::TestServer),
    Synapse(synapse::Synapse),
}

impl Server {
    fn url(&self) -> &str {
        match self {
            Server::Myelin(s) => s.url(),
            Server::Synapse(s) => s.url(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Server::Myelin(s) => s.pid(),
            Server::Synapse(s) => s.pid(),
        }
    }

    async fn register_user(&self, prefix: &str) -> Client {
        match self {
            Server::Myelin(s) => s.register_user(prefix).await,
            Server::Synapse(s) => s.register_user(prefix).await,
        }
    }

    async fn restart(&mut self) {
        match self {
            Server::Myelin(s) => s.restart().await,
            Server::Synapse(s) => s.restart().await.expect("Synapse restarts"),
        }
    }
}

async fn measure(mut server: Server, name: &str) -> Scores {
    let rooms_n = env_num("BENCH_ROOMS", 300) as usize;
    let members = env_num("BENCH_MEMBERS", 10).max(2) as usize;
    let messages = env_num("BENCH_MESSAGES", 10) as usize;
    let mut scores = Scores::default();

    let setup = Instant::now();
    let user = server.register_user("reader").await;
    let mut others = Vec::new();
    for i in 0..members - 1 {
        others.push(server.register_user(&format!("member{i}")).await);
    }
    let created = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    {
        let (user, created) = (user.clone(), created.clone());
        in_parallel((0..rooms_n).collect(), 4, move |i| {
            let (user, created) = (user.clone(), created.clone());
            async move {
                let room = user
                    .create_room(&json!({ "preset": "public_chat", "name": format!("room {i}") }))
                    .await;
                created.lock().await.push(room);
            }
        })
        .await;
    }
    let rooms: Vec<String> = created.lock().await.clone();
    let joins: Vec<(Client, String)> = others
        .iter()
        .flat_map(|o| rooms.iter().map(move |r| (o.clone(), r.clone())))
        .collect();
    in_parallel(joins, 8, |(client, room)| async move {
        let (status, body) = client.join(&room).await;
        assert_eq!(status, 200, "join: {body}");
    })
    .await;
    // Messages room by room, so the first room is the least recent.
    for (i, room) in rooms.iter().enumerate() {
        let sends: Vec<(Client, String, usize)> = (0..messages)
            .map(|n| (others[(i + n) % others.len()].clone(), room.clone(), n))
            .collect();
        in_parallel(sends, 4, |(client, room, n)| async move {
            client.send_text(&room, &format!("message {n}")).await;
        })
        .await;
    }
    scores.setup = setup.elapsed();
    println!(
        "{name}: set-up {} rooms, {} joins, {} messages in {:.1} s",
        rooms.len(),
        rooms.len() * (members - 1),
        rooms.len() * messages,
        scores.setup.as_secs_f64()
    );

    // 1. The room list as Element X loads it: the real client stack, then its requests alone.
    let mut devices = Vec::new();
    for _ in 0..3 {
        devices.push(element_x_room_list(server.url(), &user, rooms.len()).await);
    }
    devices.sort();
    scores.element_x = percentile(&devices, 0.5);
    println!(
        "{name}: Element X (matrix-sdk-ui SyncService) lists all {} rooms in p50 {:.0} ms ({:?})",
        rooms.len(),
        ms(scores.element_x),
        devices.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    let mut firsts = Vec::new();
    let mut wholes = Vec::new();
    for run in 0..10 {
        let conn = format!("room-list-{run}");
        let start = Instant::now();
        let first = post(&user, None, 0, &room_list_body(&conn, 19)).await;
        firsts.push(start.elapsed());
        let count = first["lists"]["all_rooms"]["count"].as_u64().unwrap_or(0);
        assert_eq!(count as usize, rooms.len(), "{name}: count");
        let mut seen = first["rooms"].as_object().map_or(0, |r| r.len());
        let mut pos = first["pos"].as_str().expect("pos").to_owned();
        let mut end = 99;
        loop {
            let next = post(
                &user,
                Some(&pos),
                0,
                &room_list_body(&conn, end.min(count - 1)),
            )
            .await;
            seen += next["rooms"].as_object().map_or(0, |r| r.len());
            pos = next["pos"].as_str().expect("pos").to_owned();
            if end >= count - 1 {
                break;
            }
            end += 100;
        }
        wholes.push(start.elapsed());
        assert_eq!(seen, rooms.len(), "{name}: every room loaded once");
    }
    firsts.sort();
    wholes.sort();
    scores.list_first = percentile(&firsts, 0.5);
    scores.list_all = percentile(&wholes, 0.5);
    println!(
        "{name}: Element X room list of {} rooms: first response p50 {:.1} ms, all rooms p50 {:.1} ms",
        rooms.len(),
        ms(scores.list_first),
        ms(scores.list_all)
    );

    // 2. A message moves its room to the top of a waiting connection.
    let conn = "waiting";
    let first = post(&user, None, 0, &room_list_body(conn, 19)).await;
    let mut pos = first["pos"].as_str().expect("pos").to_owned();
    let mut delays = Vec::new();
    for round in 0..30 {
        let waiting = {
            let (user, pos) = (user.clone(), pos.clone());
            tokio::spawn(async move {
                let response = post(&user, Some(&pos), 30_000, &room_list_body(conn, 19)).await;
                (response, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The least recent room each time (the first rooms got their messages first).
        let room = &rooms[round % rooms.len()];
        others[round % others.len()]
            .send_text(room, &format!("to the top {round}"))
            .await;
        let sent = Instant::now();
        let (mut response, mut arrived) = waiting.await.expect("waiting request");
        // A response that went out before the message (receipts, typing) is followed.
        while response["rooms"].get(room.as_str()).is_none() {
            let next = response["pos"].as_str().expect("pos").to_owned();
            response = post(&user, Some(&next), 30_000, &room_list_body(conn, 19)).await;
            arrived = Instant::now();
        }
        delays.push(arrived.saturating_duration_since(sent));
        pos = response["pos"].as_str().expect("pos").to_owned();
    }
    delays.sort();
    scores.to_top = percentile(&delays, 0.5);
    println!(
        "{name}: a message to the top of a waiting room list: p50 {:.1} ms, p90 {:.1} ms",
        ms(scores.to_top),
        ms(percentile(&delays, 0.9))
    );

    // 3. Cold initial /sync after a restart.
    let lazy_filter = encode(
        &json!({ "room": { "state": { "lazy_load_members": true }, "timeline": { "limit": 10 } } })
            .to_string(),
    );
    let mut full = Vec::new();
    let mut lazy = Vec::new();
    let mut cpu_used = Vec::new();
    for _ in 0..3 {
        for (filter, times) in [(None, &mut full), (Some(&lazy_filter), &mut lazy)] {
            server.restart().await;
            // The user's access token outlives the restart.
            let client = &user;
            let path = match filter {
                None => "/_matrix/client/v3/sync".to_owned(),
                Some(f) => format!("/_matrix/client/v3/sync?filter={f}"),
            };
            let pid = server.pid().expect("a process of our own");
            let cpu = cpu_time(pid);
            let start = Instant::now();
            let (status, body) = client.get(&path).await;
            times.push(start.elapsed());
            cpu_used.push(cpu_time(pid).saturating_sub(cpu));
            assert_eq!(status, 200, "{name}: /sync");
            if std::env::var("BENCH_WARM").is_ok() {
                let start = Instant::now();
                client.get(&path).await;
                println!(
                    "{name}: the same /sync again (warm): {:.0} ms",
                    ms(start.elapsed())
                );
            }
            assert_eq!(
                body["rooms"]["join"].as_object().map_or(0, |r| r.len()),
                rooms.len(),
                "{name}: every room in the initial sync"
            );
        }
    }
    full.sort();
    lazy.sort();
    cpu_used.sort();
    println!(
        "{name}: server CPU time per cold initial /sync: p50 {:.0} ms",
        ms(percentile(&cpu_used, 0.5))
    );
    scores.sync_full = percentile(&full, 0.5);
    scores.sync_lazy = percentile(&lazy, 0.5);
    println!(
        "{name}: initial /sync after a restart, {} rooms: full p50 {:.0} ms, lazy p50 {:.0} ms",
        rooms.len(),
        ms(scores.sync_full),
        ms(scores.sync_lazy)
    );

    // 4. The reconnect storm.
    let storm_users_n = env_num("BENCH_STORM_USERS", 20) as usize;
    let storm_rooms_n = env_num("BENCH_STORM_ROOMS", 50) as usize;
    let mut storm_users = Vec::new();
    for i in 0..storm_users_n {
        storm_users.push(server.register_user(&format!("storm{i}")).await);
    }
    let storm_rooms = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    {
        let (creator, storm_rooms) = (storm_users[0].clone(), storm_rooms.clone());
        in_parallel((0..storm_rooms_n).collect(), 4, move |i| {
            let (creator, storm_rooms) = (creator.clone(), storm_rooms.clone());
            async move {
                let room = creator
                    .create_room(&json!({ "preset": "public_chat", "name": format!("storm {i}") }))
                    .await;
                storm_rooms.lock().await.push(room);
            }
        })
        .await;
    }
    let storm_rooms: Vec<String> = storm_rooms.lock().await.clone();
    let joins: Vec<(Client, String)> = storm_users[1..]
        .iter()
        .flat_map(|u| storm_rooms.iter().map(move |r| (u.clone(), r.clone())))
        .collect();
    in_parallel(joins, 8, |(client, room)| async move {
        let (status, body) = client.join(&room).await;
        assert_eq!(status, 200, "join: {body}");
    })
    .await;
    let sends: Vec<(Client, String, usize)> = storm_rooms
        .iter()
        .flat_map(|r| (0..20).map(move |n| (r.clone(), n)))
        .map(|(r, n)| (storm_users[n % storm_users.len()].clone(), r, n))
        .collect();
    in_parallel(sends, 8, |(client, room, n)| async move {
        client.send_text(&room, &format!("storm message {n}")).await;
    })
    .await;
    let filter = |lazy: bool| {
        encode(
            &json!({ "room": { "state": { "lazy_load_members": lazy }, "timeline": { "limit": 1 } } })
                .to_string(),
        )
    };
    let mut storm = [Vec::new(), Vec::new()];
    for _ in 0..3 {
        for (mode, lazy) in [(0, true), (1, false)] {
            server.restart().await;
            let path = format!("/_matrix/client/v3/sync?filter={}", filter(lazy));
            let start = Instant::now();
            let mut all = Vec::new();
            for u in &storm_users {
                let (u, path) = (u.clone(), path.clone());
                all.push(tokio::spawn(async move { u.get(&path).await }));
            }
            for task in all {
                let (status, body) = task.await.expect("sync task");
                assert_eq!(status, 200, "{name}: storm /sync: {body}");
                assert_eq!(
                    body["rooms"]["join"].as_object().map_or(0, |r| r.len()),
                    storm_rooms.len(),
                    "{name}: every room"
                );
            }
            storm[mode].push(start.elapsed());
        }
    }
    for times in &mut storm {
        times.sort();
    }
    scores.storm_lazy = percentile(&storm[0], 0.5);
    scores.storm_full = percentile(&storm[1], 0.5);
    println!(
        "{name}: {storm_users_n} users x {storm_rooms_n} rooms syncing at once after a restart: lazy p50 {:.0} ms, full members p50 {:.0} ms",
        ms(scores.storm_lazy),
        ms(scores.storm_full)
    );
    scores
}

#[tokio::main]
async fn main() {
    if !synapse::available() {
        eprintln!(
            "Synapse is not installed in {}: see complement-tests/src/synapse.rs",
            synapse::venv().display()
        );
        std::process::exit(1);
    }
    build_release_server();
    let backend = complement_tests::bench::backend();
    println!("# Myelin against Synapse ({backend:?})");
    let options = ServerOptions::default()
        .env("MYELIN_LOG", "error")
        .env("MYELIN_RATE_LIMITS_ENABLED", "false")
        .durable();
    let myelin = complement_tests::bench::start_server(backend, options).await;
    let m = measure(Server::Myelin(myelin), "Myelin").await;
    if std::env::var("BENCH_SYNAPSE").as_deref() == Ok("0") {
        // Myelin alone, while tuning.
        return;
    }
    let synapse = synapse::Synapse::start(match backend {
        Backend::Sqlite => Backend::Sqlite,
        Backend::Postgres => Backend::Postgres,
    })
    .await
    .expect("Synapse starts");
    let s = measure(Server::Synapse(synapse), "Synapse").await;
    let ratio = |mine: Duration, theirs: Duration| theirs.as_secs_f64() / mine.as_secs_f64();
    println!("## Synapse's time / Myelin's time (higher is better for Myelin)");
    println!(
        "Element X room list (matrix-sdk-ui): {:.1}x",
        ratio(m.element_x, s.element_x)
    );
    println!(
        "reconnect storm after restart: lazy {:.1}x, full members {:.1}x",
        ratio(m.storm_lazy, s.storm_lazy),
        ratio(m.storm_full, s.storm_full)
    );
    println!(
        "room list requests alone, first response: {:.1}x; whole list: {:.1}x",
        ratio(m.list_first, s.list_first),
        ratio(m.list_all, s.list_all)
    );
    println!("message to the top: {:.1}x", ratio(m.to_top, s.to_top));
    println!(
        "initial /sync after restart: full {:.1}x, lazy {:.1}x",
        ratio(m.sync_full, s.sync_full),
        ratio(m.sync_lazy, s.sync_lazy)
    );
    println!(
        "set-up through the client API: {:.1}x",
        ratio(m.setup, s.setup)
    );
}
