//! Myelin's sync benchmark: fan-out, idle connections, empty incremental syncs.
//!
//! ```sh
//! cargo run --release -p complement-tests --bin bench_sync             # PostgreSQL
//! BENCH_BACKEND=sqlite cargo run --release -p complement-tests --bin bench_sync
//! ```
//!
//! 1. Fan-out: one room of `BENCH_MEMBERS` (default 200) members, half waiting in long-poll
//!    `/sync`, half on the WebSocket; a sender posts `BENCH_ROUNDS` (default 100) messages and
//!    we time, per message, how long until every member has it (and each member's delay).
//! 2. Empty incremental sync: `/sync?since=<latest>&timeout=0`, 1,000 times, one after the
//!    other (client-side time, so it includes HTTP on loopback).
//! 3. Idle connections: `BENCH_IDLE` (default 10,000; half long-poll, half WebSocket) idle
//!    connections are opened and the server's resident memory is read before and after, while
//!    the fan-out keeps running. Needs `ulimit -n` above twice that. The connections are
//!    spread over `BENCH_IDLE_USERS` (default 1,000) users with `BENCH_IDLE_DEVICES` (default
//!    2) devices each, as a real server's would be: per-user and per-device state (tokens,
//!    notifier entries, presence) counts, not only per-socket memory. The users' registration
//!    and logins are made before the memory is first read.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use complement_tests::{
    bench::{build_release_server, env_num, ms, percentile, rss_kib},
    encode, Client, ServerOptions,
};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Open file descriptors of the server: its sockets, so the benchmark can tell that the idle
/// connections really are open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The parts of a sync response (or WebSocket frame) the fan-out looks at. Parsed with
/// borrowed strings and everything else skipped, so that the benchmark client, which shares
/// the two cores with the server, spends as little as it can per delivery.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    next_batch: Option<&'a str>,
    #[serde(borrow, default)]
    rooms: Option<FrameRooms<'a>>,
}

#[derive(serde::Deserialize)]
struct FrameRooms<'a> {
    #[serde(borrow, default)]
    join: HashMap<&'a str, FrameRoom<'a>>,
}

#[derive(serde::Deserialize)]
struct FrameRoom<'a> {
    #[serde(borrow)]
    timeline: Option<FrameTimeline<'a>>,
}

#[derive(serde::Deserialize)]
struct FrameTimeline<'a> {
    #[serde(borrow, default)]
    events: Vec<FrameEvent<'a>>,
}

#[derive(serde::Deserialize)]
struct FrameEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    event_id: Option<&'a str>,
}

/// Event IDs of messages in a sync response's room timeline.
fn message_ids<'a>(frame: &Frame<'a>, room: &str) -> Vec<&'a str> {
    frame
        .rooms
        .as_ref()
        .and_then(|rooms| rooms.join.get(room))
        .and_then(|r| r.timeline.as_ref())
        .into_iter()
        .flat_map(|t| t.events.iter())
        .filter(|e| e.kind == "m.room.message")
        .filter_map(|e| e.event_id)
        .collect()
}

/// A member that waits in long-poll /sync and reports each message it receives.
fn long_poll_member(
    base: String,
    client: Client,
    room: String,
    since: String,
    tx: mpsc::UnboundedSender<(String, Instant)>,
) -> tokio::task::JoinHandle<()> {
    use http_body_util::BodyExt;
    tokio::spawn(async move {
        let authority = base.trim_start_matches("http://").to_owned();
        let Ok(stream) = tokio::net::TcpStream::connect(&authority).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut requests, connection)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
        else {
            return;
        };
        tokio::spawn(connection);
        let authorization = format!("Bearer {}", client.access_token.as_deref().unwrap());
        let mut since = since;
        loop {
            let request = hyper::Request::get(format!(
                "/_matrix/client/v3/sync?timeout=30000&since={}",
                encode(&since)
            ))
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::AUTHORIZATION, &authorization)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("a valid request");
            let Ok(response) = requests.send_request(request).await else {
                return;
            };
            if response.status() != 200 {
                return;
            }
            let Ok(body) = response.into_body().collect().await else {
                return;
            };
            let body = body.to_bytes();
            let now = Instant::now();
            let Ok(frame) = serde_json::from_slice::<Frame>(&body) else {
                return;
            };
            for id in message_ids(&frame, &room) {
                if tx.send((id.to_owned(), now)).is_err() {
                    return;
                }
            }
            if let Some(next) = frame.next_batch {
                since = next.to_owned();
            }
        }
    })
}

fn ws_url(base: &str, client: &Client, since: &str) -> String {
    format!(
        "{}/_matrix/client/unstable/io.myelin/sync/ws?access_token={}&since={}",
        base.replacen("http://", "ws://", 1),
        encode(client.access_token.as_deref().unwrap()),
        encode(since)
    )
}

/// A member on the WebSocket that reports each message it receives.
async fn ws_member(
    base: String,
    client: Client,
    room: String,
    since: String,
    tx: mpsc::UnboundedSender<(String, Instant)>,
) {
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(&base, &client, &since))
        .await
        .expect("ws connect");
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                let now = Instant::now();
                let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
                    continue;
                };
                for id in message_ids(&frame, &room) {
                    if tx.send((id.to_owned(), now)).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    build_release_server();
    let backend = complement_tests::bench::backend();
    let members = env_num("BENCH_MEMBERS", 200) as usize;
    let rounds = env_num("BENCH_ROUNDS", 100) as usize;
    let idle = env_num("BENCH_IDLE", 10_000) as usize;
    // Delivered receipts are on by default in the server; BENCH_DELIVERY_RECEIPTS=false
    // measures without them.
    let delivery_receipts = std::env::var("BENCH_DELIVERY_RECEIPTS").unwrap_or("true".into());
    let options = ServerOptions::default()
        .env("MYELIN_LOG", "error")
        .env("MYELIN_DELIVERY_RECEIPTS", &delivery_receipts);
    let hs = complement_tests::bench::start_server(backend, options).await;
    let pid = hs.pid().expect("our own server");
    println!(
        "# Myelin sync benchmark ({backend:?}, {members} members, {rounds} rounds, delivered receipts {delivery_receipts})"
    );

    let sender = hs.register_user("sender").await;
    let room = sender
        .create_room(&json!({ "preset": "public_chat" }))
        .await;
    let mut clients = Vec::new();
    for i in 0..members {
        let c = hs.register_user(&format!("m{i}")).await;
        let (status, body) = c.join(&room).await;
        assert_eq!(status, 200, "join: {body}");
        clients.push(c);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut pollers = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (_, initial) = c
            .sync_with(
                None,
                0,
                &[("filter", r#"{"room":{"timeline":{"limit":1}}}"#)],
            )
            .await;
        let since = initial["next_batch"]
            .as_str()
            .expect("next_batch")
            .to_owned();
        if i % 2 == 0 {
            pollers.push(long_poll_member(
                hs.url().to_owned(),
                c.clone(),
                room.clone(),
                since,
                tx.clone(),
            ));
        } else {
            ws_member(
                hs.url().to_owned(),
                c.clone(),
                room.clone(),
                since,
                tx.clone(),
            )
            .await;
        }
    }
    drop(tx);
    // Let presence settle: every member's connection announces them online after the
    // server's debounce (2 s by default), and that burst is not what this measures.
    tokio::time::sleep(Duration::from_millis(3000)).await;

    // 1. Fan-out.
    let mut last_member = Vec::new();
    let mut each_member = Vec::new();
    let mut received: HashMap<String, Vec<Instant>> = HashMap::new();
    for round in 0..rounds {
        let start = Instant::now();
        let event_id = sender.send_text(&room, &format!("fan-out {round}")).await;
        let deadline = start + Duration::from_secs(10);
        while received.get(&event_id).map_or(0, Vec::len) < members {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, rx.recv()).await {
                Ok(Some((id, at))) => received.entry(id).or_default().push(at),
                _ => break,
            }
        }
        let times = received.remove(&event_id).unwrap_or_default();
        assert_eq!(
            times.len(),
            members,
            "round {round}: only {} of {members} members got the message",
            times.len()
        );
        let mut delays: Vec<Duration> = times
            .iter()
            .map(|t| t.saturating_duration_since(start))
            .collect();
        delays.sort();
        last_member.push(*delays.last().unwrap());
        each_member.extend(delays);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last_member.sort();
    each_member.sort();
    println!(
        "fan-out to {members} members (half long-poll, half WebSocket): until the last member has it p50 {:.1} ms, p99 {:.1} ms; per member p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&last_member, 0.5)),
        ms(percentile(&last_member, 0.99)),
        ms(percentile(&each_member, 0.5)),
        ms(percentile(&each_member, 0.99)),
    );

    // 2. Empty incremental sync.
    let quiet = hs.register_user("quiet").await;
    let (_, initial) = quiet.sync_with(None, 0, &[]).await;
    let token = initial["next_batch"].as_str().unwrap().to_owned();
    let mut empty = Vec::new();
    let mut server = Vec::new();
    let path = format!(
        "/_matrix/client/v3/sync?timeout=0&since={}",
        complement_tests::encode(&token)
    );
    for _ in 0..1000 {
        let start = Instant::now();
        let response = quiet.get_response(&path).await;
        let status = response.status().as_u16();
        let timing = response
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("app;dur="))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("Server-Timing header");
        let body = response.bytes().await.expect("sync body");
        empty.push(start.elapsed());
        server.push(Duration::from_secs_f64(timing / 1000.0));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    empty.sort();
    server.sort();
    println!(
        "empty incremental sync: server time (Server-Timing) p50 {:.3} ms, p99 {:.3} ms; client-side incl. HTTP p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&server, 0.5)),
        ms(percentile(&server, 0.99)),
        ms(percentile(&empty, 0.5)),
        ms(percentile(&empty, 0.99))
    );

    // 3. Idle connections.
    if idle > 0 {
        let users = env_num("BENCH_IDLE_USERS", 1_000).max(1) as usize;
        let devices_per_user = env_num("BENCH_IDLE_DEVICES", 2).max(1) as usize;
        // Every idle device with its own sync token: `(device, token)`.
        let idlers: Vec<(Client, String)> = futures_util::stream::iter(0..users)
            .map(|_| {
                let hs = &hs;
                async move {
                    let user = hs.register_user("idler").await;
                    // Online before the connections open, so that they are not all woken
                    // (and closed) by the user's own coming online after the debounce.
                    let presence = format!(
                        "/_matrix/client/v3/presence/{}/status",
                        encode(user.user_id())
                    );
                    let (status, body) =
                        user.put(&presence, &json!({ "presence": "online" })).await;
                    assert_eq!(status, 200, "{body}");
                    let mut devices = vec![user.clone()];
                    for _ in 1..devices_per_user {
                        devices.push(user.new_device().await);
                    }
                    let mut out = Vec::new();
                    for device in devices {
                        let (_, initial) = device.sync_with(None, 0, &[]).await;
                        let token = initial["next_batch"].as_str().unwrap().to_owned();
                        out.push((device, token));
                    }
                    out
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let before = rss_kib(pid);
        let fds_before = open_fds(pid);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut sockets = Vec::new();
        let mut polls = Vec::new();
        // BENCH_IDLE_KIND=poll or ws measures one kind alone.
        let kind = std::env::var("BENCH_IDLE_KIND").unwrap_or_default();
        for i in 0..idle {
            let (idler, token) = &idlers[i % idlers.len()];
            let poll = match kind.as_str() {
                "poll" => true,
                "ws" => false,
                _ => i % 2 == 0,
            };
            if poll {
                let url = format!(
                    "{}/_matrix/client/v3/sync?since={}&timeout=120000",
                    hs.url(),
                    encode(token)
                );
                let request = http
                    .get(url)
                    .bearer_auth(idler.access_token.clone().unwrap())
                    .send();
                polls.push(tokio::spawn(request));
            } else {
                match tokio_tungstenite::connect_async(ws_url(hs.url(), idler, token)).await {
                    Ok((socket, _)) => sockets.push(socket),
                    Err(e) => {
                        eprintln!("stopped opening WebSockets at {i}: {e}");
                        break;
                    }
                }
            }
        }
        // Messages keep flowing to the active members meanwhile (10 per second).
        let flowing = {
            let sender = sender.clone();
            let room = room.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    sender.send_text(&room, &format!("while idle {i}")).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rss_kib(pid);
        let fds_after = open_fds(pid);
        flowing.abort();
        let open = polls.len() + sockets.len();
        println!(
            "{open} idle connections ({} long-poll, {} WebSocket) of {} devices of {users} users: server memory {} KiB -> {} KiB, {:.1} KiB per connection",
            polls.len(),
            sockets.len(),
            idlers.len(),
            before,
            after,
            (after.saturating_sub(before)) as f64 / open.max(1) as f64
        );
        println!(
            "  (server file descriptors {fds_before} -> {fds_after}: {} more sockets open)",
            fds_after.saturating_sub(fds_before)
        );
        drop(sockets);
        for p in polls {
            p.abort();
        }
    }
    // Stop the members' polls before the server goes away with the benchmark.
    for poller in pollers {
        poller.abort();
    }
}
