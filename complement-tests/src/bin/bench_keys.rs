//! Myelin's end-to-end encryption benchmark: `/keys/claim` for many devices at once.
//!
//! ```sh
//! cargo run --release -p complement-tests --bin bench_keys             # PostgreSQL
//! BENCH_BACKEND=sqlite cargo run --release -p complement-tests --bin bench_keys
//! ```
//!
//! A client starting an encrypted conversation claims one one-time key for every device of
//! every member at once. The benchmark registers `BENCH_DEVICES` devices (default 100: 20
//! users with 5 devices each), each uploading `BENCH_RUNS` + 10 one-time keys, then times
//! `BENCH_RUNS` (default 50) claims, one after the other, each asking for one key of every
//! device (client-side time, so it includes HTTP on loopback). Every claim must return a key
//! for every device, and no key twice.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use complement_tests::{
    bench::{build_release_server, env_num, ms, percentile},
    Client, ServerOptions,
};
use serde_json::{json, Value};

const DEVICES_PER_USER: u64 = 5;

/// A fake signed curve25519 key: the server stores one-time keys without looking inside.
fn one_time_key(client: &Client, n: u64) -> Value {
    json!({
        "key": format!("{:043}", n),
        "signatures": { client.user_id(): { format!("ed25519:{}", client.device_id()): "sig" } },
    })
}

async fn upload_keys(client: &Client, count: u64) {
    let mut keys = json!({});
    for n in 0..count {
        keys[format!("signed_curve25519:{n:08}")] = one_time_key(client, n);
    }
    let (status, body) = client
        .post(
            "/_matrix/client/v3/keys/upload",
            &json!({ "one_time_keys": keys }),
        )
        .await;
    assert_eq!(status, 200, "keys/upload: {body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], count);
}

#[tokio::main]
async fn main() {
    build_release_server();
    let backend = complement_tests::bench::backend();
    let devices = env_num("BENCH_DEVICES", 100);
    let runs = env_num("BENCH_RUNS", 50);
    let options = ServerOptions::default().env("MYELIN_LOG", "error");
    let hs = complement_tests::bench::start_server(backend, options).await;
    println!("# Myelin key benchmark ({backend:?}, server {})", hs.url());

    let setup = Instant::now();
    let mut clients = Vec::new();
    while (clients.len() as u64) < devices {
        let user = hs.register_user("keys").await;
        for _ in 1..DEVICES_PER_USER {
            clients.push(user.new_device().await);
        }
        clients.push(user);
    }
    clients.truncate(devices as usize);
    let uploads: Vec<_> = clients
        .iter()
        .cloned()
        .map(|c| tokio::spawn(async move { upload_keys(&c, runs + 10).await }))
        .collect();
    for upload in uploads {
        upload.await.expect("upload task");
    }
    println!(
        "set up {} devices with {} one-time keys each in {:.1} s",
        clients.len(),
        runs + 10,
        setup.elapsed().as_secs_f64()
    );

    let claimer = hs.register_user("claimer").await;
    let mut wanted = json!({});
    for c in &clients {
        if !wanted[c.user_id()].is_object() {
            wanted[c.user_id()] = json!({});
        }
        wanted[c.user_id()][c.device_id()] = json!("signed_curve25519");
    }
    let body = json!({ "one_time_keys": wanted });
    let mut times: Vec<Duration> = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..runs {
        let start = Instant::now();
        let (status, answer) = claimer.post("/_matrix/client/v3/keys/claim", &body).await;
        times.push(start.elapsed());
        assert_eq!(status, 200, "keys/claim: {answer}");
        let mut got = 0;
        for (user, by_device) in answer["one_time_keys"].as_object().expect("keys") {
            for (device, keys) in by_device.as_object().expect("devices") {
                for key_id in keys.as_object().expect("keys").keys() {
                    assert!(
                        seen.insert(format!("{user}|{device}|{key_id}")),
                        "key handed out twice"
                    );
                    got += 1;
                }
            }
        }
        assert_eq!(got, clients.len(), "one key per device");
    }
    times.sort();
    println!(
        "/keys/claim for {} devices: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} claims)",
        clients.len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap_or(&Duration::ZERO)),
        times.len()
    );
}
