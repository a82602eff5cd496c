//! Myelin's sliding-sync benchmark (issue 12): a user in many rooms, as Element X syncs it.
//!
//! ```sh
//! cargo run --release -p complement-tests --bin bench_sliding             # PostgreSQL
//! BENCH_BACKEND=sqlite cargo run --release -p complement-tests --bin bench_sliding
//! ```
//!
//! Set-up: `BENCH_ROOMS` (default 1,000) rooms of `BENCH_MEMBERS` (20) members with
//! `BENCH_MESSAGES` (20) messages each; the measured user is in every one. Then:
//! 1. the first response of a fresh connection for the 20 most recent rooms (timeline limit
//!    1; required state: name, avatar, encryption, create, lazy members), 50 fresh
//!    connections: the server's own time (`Server-Timing`) and the client's;
//! 2. a waiting connection (with `pos`, long-polling) and a message into one of the rooms:
//!    the time from the send's 200 to the response, 100 times;
//! 3. `BENCH_CONNECTIONS` (1,000) connections, each set up with a 20-room window and left
//!    waiting in a long-poll: the server's resident memory before and after, per connection.

use std::time::{Duration, Instant};

use complement_tests::{
    bench::{build_release_server, env_num, in_parallel, ms, percentile, rss_kib},
    encode, Client, ServerOptions,
};
use serde_json::{json, Value};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

fn request_body(conn_id: &str) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": { "all": {
            "ranges": [[0, 19]],
            "timeline_limit": 1,
            "required_state": [
                ["m.room.name", ""], ["m.room.avatar", ""], ["m.room.encryption", ""],
                ["m.room.create", ""], ["m.room.member", "$LAZY"],
            ],
        }},
    })
}

/// One request over `http`: `(status, body, server time)`.
async fn post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    pos: Option<&str>,
    timeout_ms: u64,
    body: &Value,
) -> (u16, Value, Option<Duration>) {
    let mut url = format!("{base}{PATH}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        url.push_str(&format!("&pos={}", encode(pos)));
    }
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("sliding sync request");
    let status = response.status().as_u16();
    let server = response
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("app;dur="))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0));
    let body: Value = response.json().await.expect("JSON body");
    (status, body, server)
}

#[tokio::main]
async fn main() {
    build_release_server();
    let backend = complement_tests::bench::backend();
    let rooms_n = env_num("BENCH_ROOMS", 1_000) as usize;
    let members = env_num("BENCH_MEMBERS", 20).max(2) as usize;
    let messages = env_num("BENCH_MESSAGES", 20) as usize;
    let connections = env_num("BENCH_CONNECTIONS", 1_000) as usize;
    let options = ServerOptions::default()
        .env(
            "MYELIN_LOG",
            &std::env::var("BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        // The set-up's many joins and sends come from few users.
        .env("MYELIN_RATE_LIMITS_ENABLED", "false");
    let hs = complement_tests::bench::start_server(backend, options).await;
    let pid = hs.pid().expect("our own server");
    println!(
        "# Myelin sliding-sync benchmark ({backend:?}, {rooms_n} rooms of {members} members, {messages} messages each)"
    );

    // Set-up.
    let setup = Instant::now();
    let user = hs.register_user("reader").await;
    let mut others = Vec::new();
    for i in 0..members - 1 {
        others.push(hs.register_user(&format!("member{i}")).await);
    }
    let rooms = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    {
        let (user, rooms) = (user.clone(), rooms.clone());
        in_parallel((0..rooms_n).collect(), 4, move |i| {
            let (user, rooms) = (user.clone(), rooms.clone());
            async move {
                let room = user
                    .create_room(&json!({ "preset": "public_chat", "name": format!("room {i}") }))
                    .await;
                rooms.lock().await.push(room);
            }
        })
        .await;
    }
    let rooms: Vec<String> = rooms.lock().await.clone();
    let joins: Vec<(Client, String)> = others
        .iter()
        .flat_map(|o| rooms.iter().map(move |r| (o.clone(), r.clone())))
        .collect();
    in_parallel(joins, 8, |(client, room)| async move {
        let (status, body) = client.join(&room).await;
        assert_eq!(status, 200, "join: {body}");
    })
    .await;
    let sends: Vec<(Client, String, usize)> = rooms
        .iter()
        .flat_map(|r| (0..messages).map(move |n| (r.clone(), n)))
        .map(|(r, n)| (others[n % others.len()].clone(), r, n))
        .collect();
    in_parallel(sends, 8, |(client, room, n)| async move {
        client.send_text(&room, &format!("message {n}")).await;
    })
    .await;
    println!(
        "set-up: {} rooms, {} joins, {} messages in {:.1} s",
        rooms.len(),
        rooms.len() * (members - 1),
        rooms.len() * messages,
        setup.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::new();
    let base = hs.url().to_owned();
    let token = user.access_token.clone().expect("logged in");

    // 1. First responses.
    let mut server = Vec::new();
    let mut client_side = Vec::new();
    for i in 0..50 {
        let start = Instant::now();
        let (status, body, timing) = post(
            &http,
            &base,
            &token,
            None,
            0,
            &request_body(&format!("first{i}")),
        )
        .await;
        client_side.push(start.elapsed());
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["rooms"].as_object().map(|r| r.len()),
            Some(20.min(rooms.len()))
        );
        server.push(timing.expect("Server-Timing"));
    }
    server.sort();
    client_side.sort();
    println!(
        "first response, 20 most recent of {} rooms: server p50 {:.1} ms, p99 {:.1} ms; client p50 {:.1} ms, p99 {:.1} ms",
        rooms.len(),
        ms(percentile(&server, 0.5)),
        ms(percentile(&server, 0.99)),
        ms(percentile(&client_side, 0.5)),
        ms(percentile(&client_side, 0.99)),
    );

    // 2. A waiting connection and a message.
    let body = request_body("waiting");
    let (_, first, _) = post(&http, &base, &token, None, 0, &body).await;
    let mut pos = first["pos"].as_str().expect("pos").to_owned();
    let mut delays = Vec::new();
    for round in 0..100 {
        let waiting = {
            let (http, base, token, body, pos) = (
                http.clone(),
                base.clone(),
                token.clone(),
                body.clone(),
                pos.clone(),
            );
            tokio::spawn(async move {
                let (status, body, _) = post(&http, &base, &token, Some(&pos), 30_000, &body).await;
                (status, body, Instant::now())
            })
        };
        // Let the request reach its wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let room = &rooms[(round * 7919) % rooms.len()];
        others[round % others.len()]
            .send_text(room, &format!("live {round}"))
            .await;
        let sent = Instant::now();
        let (status, response, arrived) = waiting.await.expect("waiting request");
        assert_eq!(status, 200, "{response}");
        // The room comes with the message that moved it (not before it is readable).
        let timeline = &response["rooms"][room.as_str()]["timeline"];
        let newest = timeline.as_array().and_then(|t| t.last());
        assert_eq!(
            newest.map(|e| e["content"]["body"].clone()),
            Some(json!(format!("live {round}"))),
            "{response}"
        );
        delays.push(arrived.saturating_duration_since(sent));
        pos = response["pos"].as_str().expect("pos").to_owned();
    }
    delays.sort();
    println!(
        "a message to a waiting connection, from the send's 200 to the response: p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&delays, 0.5)),
        ms(percentile(&delays, 0.99)),
    );

    // 3. Many waiting connections: ten per device (a client keeps one or two).
    let devices = connections.div_ceil(10);
    let mut tokens = Vec::new();
    for d in 0..devices {
        let (status, login) = Client::new(&base)
            .login(user.user_id(), user.password.as_deref().expect("password"))
            .await;
        assert_eq!(status, 200, "login {d}: {login}");
        tokens.push(login["access_token"].as_str().expect("token").to_owned());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid);
    let mut waiting = Vec::new();
    for c in 0..connections {
        let token = tokens[c / 10].clone();
        let body = request_body(&format!("c{}", c % 10));
        let (status, first, _) = post(&http, &base, &token, None, 0, &body).await;
        assert_eq!(status, 200, "{first}");
        let pos = first["pos"].as_str().expect("pos").to_owned();
        let (http, base) = (http.clone(), base.clone());
        waiting.push(tokio::spawn(async move {
            post(&http, &base, &token, Some(&pos), 60_000, &body).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    println!(
        "{connections} sliding-sync connections (20-room windows, waiting): server memory {before} KiB -> {after} KiB, {:.1} KiB per connection",
        (after.saturating_sub(before)) as f64 / connections as f64
    );
    for w in waiting {
        w.abort();
    }
}
