//! Bounded cost: no input makes the server slow or big (issue 10). Deeply nested JSON is
//! refused at the door and never breaks reading a room; to-device inboxes are delivered at
//! most 100 messages a response, exactly once, with a size cap per message and a rate limit
//! per sender; slow or surplus connections are cut off with a clear answer, and the token is
//! checked before a body is read; thumbnails come only in the configured sizes; the
//! shared-secret nonce endpoint is rate-limited; a huge `/publicRooms` `since` is refused.
//!
//! (The byte bounds of the in-memory caches and room heads are unit tests in the homeserver
//! and storage crates: their effect is not visible over HTTP.)

use std::{io::Cursor, time::Duration};

use complement_tests::{
    assert_error, assert_ok, backend_tests, encode, unique_name, Backend, Client, ServerOptions,
    TestServer,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

// ----- helpers --------------------------------------------------------------

/// `{"a": {"a": … 1 …}}` with `levels` nested objects.
fn nested(levels: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..levels {
        value = json!({ "a": value });
    }
    value
}

/// A room of `client`'s, with a name so it is not empty.
async fn new_room(client: &Client) -> String {
    client
        .create_room(&json!({ "name": "bounded", "preset": "private_chat" }))
        .await
}

/// The server's `host:port`.
fn address(hs: &TestServer) -> String {
    hs.url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// Reads from `stream` until the end of one HTTP response's headers and its
/// `content-length` bytes of body (or the end of the stream), within `limit`. Returns what
/// was read, or `None` when nothing came in time.
async fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            let n: usize = stream.read(&mut chunk).await.unwrap_or_default();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return;
                }
            }
        }
    })
    .await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&buf).into_owned())
}

/// A raw HTTP/1.1 request on an open connection (kept alive).
async fn raw_get(stream: &mut TcpStream, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    read_response(stream, Duration::from_secs(10)).await
}

// ----- JSON nesting -----------------------------------------------------------

/// Content nested 127 levels deep was accepted, and then every `/sync` and `/messages` of the
/// room answered 500 (as state, `/state`, `/members` and initial syncs failed for good). It
/// is refused with 400 `M_BAD_JSON`; content within the limit is stored and read back by
/// every path.
async fn deeply_nested_content_is_refused_and_rooms_stay_readable(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let room = new_room(&alice).await;
    assert_ok(&alice.invite(&room, bob.user_id()).await, "invite bob");
    assert_ok(&bob.join(&room).await, "bob joins");

    for levels in [127, 200, 1000] {
        let response = alice
            .send_event(&room, "m.room.message", &unique_name("t"), &nested(levels))
            .await;
        assert_error(
            &response,
            400,
            "M_BAD_JSON",
            &format!("a message nested {levels} deep"),
        );
        let response = alice
            .put_state(&room, "org.example.deep", "", &nested(levels))
            .await;
        assert_error(
            &response,
            400,
            "M_BAD_JSON",
            &format!("state nested {levels} deep"),
        );
    }
    // A member event with deep content (a profile field, say) is refused too.
    let mut member = json!({ "membership": "join" });
    member["deep"] = nested(127);
    let response = bob
        .put_state(&room, "m.room.member", bob.user_id(), &member)
        .await;
    assert_error(&response, 400, "M_BAD_JSON", "a deep member event");

    // Within the limit: stored, and read back by every path.
    let deep = nested(60);
    let response = alice
        .send_event(&room, "m.room.message", &unique_name("t"), &deep)
        .await;
    let event_id = assert_ok(&response, "a message nested 60 deep")["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ok(
        &alice.put_state(&room, "org.example.deep", "", &deep).await,
        "state nested 60 deep",
    );
    let mut member = json!({ "membership": "join", "displayname": "Bob" });
    member["deep"] = nested(60);
    assert_ok(
        &bob.put_state(&room, "m.room.member", bob.user_id(), &member)
            .await,
        "a member event nested 60 deep",
    );
    alice.send_text(&room, "after").await;

    for client in [&alice, &bob] {
        let (status, body) = client.sync(None, 0).await;
        assert_eq!(status, 200, "initial sync: {body}");
        let timeline = &body["rooms"]["join"][&room]["timeline"]["events"];
        assert!(
            timeline
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["event_id"] == event_id.as_str()),
            "the deep message is in the timeline: {timeline}"
        );
        let (status, page) = client.messages(&room, "b", None, None, Some(50)).await;
        assert_eq!(status, 200, "/messages: {page}");
        let found = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .cloned()
            .expect("the deep message in /messages");
        assert_eq!(found["content"], deep);
        for suffix in ["/state", "/members", "/joined_members"] {
            let (status, body) = client.get(&Client::room_path(&room, suffix)).await;
            assert_eq!(status, 200, "{suffix}: {body}");
        }
        let (status, body) = client
            .get(&Client::room_path(
                &room,
                &format!("/event/{}", encode(&event_id)),
            ))
            .await;
        assert_eq!(status, 200, "/event: {body}");
        assert_eq!(body["content"], deep);
    }
}

// ----- to-device ----------------------------------------------------------------

fn send_to_device_path(event_type: &str) -> String {
    format!(
        "/_matrix/client/v3/sendToDevice/{}/{}",
        encode(event_type),
        unique_name("txn")
    )
}

/// A sync delivers at most 100 to-device messages; the rest come in the next syncs, each
/// exactly once and in order; a token acknowledges only what was delivered, so retrying
/// with an old token gets the same messages again.
async fn a35_to_device_messages_come_at_most_100_a_sync_each_once(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let (status, first) = bob.sync(None, 0).await;
    assert_eq!(status, 200);
    let mut since = first["next_batch"].as_str().unwrap().to_owned();

    const SENT: usize = 250;
    for n in 0..SENT {
        // One request may carry a message for the device and one for `*`: both arrive.
        let mut devices = json!({ bob.device_id(): { "n": n } });
        if n == 0 {
            devices["*"] = json!({ "n": "all" });
        }
        let body = json!({ "messages": { bob.user_id(): devices } });
        assert_ok(
            &alice
                .put(&send_to_device_path("org.example.n"), &body)
                .await,
            "sendToDevice",
        );
    }

    let mut received: Vec<Value> = Vec::new();
    let mut retried = false;
    for _ in 0..10 {
        let (status, body) = bob.sync(Some(&since), 0).await;
        assert_eq!(status, 200, "{body}");
        let events = body["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            events.len() <= 100,
            "one sync carried {} to-device messages",
            events.len()
        );
        if !retried && !events.is_empty() {
            // The response was "lost": the old token gets the same messages again.
            let (_, again) = bob.sync(Some(&since), 0).await;
            assert_eq!(again["to_device"]["events"], json!(events));
            retried = true;
        }
        received.extend(events.iter().map(|e| e["content"]["n"].clone()));
        since = body["next_batch"].as_str().unwrap().to_owned();
        if events.is_empty() {
            break;
        }
    }
    let mut expected = vec![json!("all")];
    expected.extend((0..SENT).map(|n| json!(n)));
    // The `*` message and message 0 share a position: either order within it is fine.
    if received.len() >= 2 && received[0] == json!(0) {
        received.swap(0, 1);
    }
    assert_eq!(received.len(), expected.len(), "every message once");
    assert_eq!(received, expected, "in order, each once");
}

/// A to-device message's content is at most 64 KiB: 413 `M_TOO_LARGE`, and nothing queued.
async fn large_to_device_messages_are_refused(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let (_, first) = bob.sync(None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let big = json!({ "messages": { bob.user_id(): {
        bob.device_id(): { "blob": "x".repeat(70 * 1024) }
    } } });
    assert_error(
        &alice
            .put(&send_to_device_path("org.example.big"), &big)
            .await,
        413,
        "M_TOO_LARGE",
        "a 70 KiB to-device message",
    );
    let fine = json!({ "messages": { bob.user_id(): {
        bob.device_id(): { "blob": "x".repeat(60 * 1024) }
    } } });
    assert_ok(
        &alice
            .put(&send_to_device_path("org.example.ok"), &fine)
            .await,
        "a 60 KiB to-device message",
    );
    let (_, body) = bob.sync(Some(&since), 0).await;
    let events = body["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "org.example.ok");
}

/// Sending to-device messages is rate-limited per user: 429 `M_LIMIT_EXCEEDED` with
/// `retry_after_ms`; another user is not affected.
async fn to_device_senders_are_rate_limited(backend: Backend) {
    let options = ServerOptions::default()
        .rate_limits(true)
        .env("MYELIN_RATE_LIMITS_TO_DEVICE_PER_SECOND", "0.1")
        .env("MYELIN_RATE_LIMITS_TO_DEVICE_BURST", "3");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let bob = hs.register_user("bob").await;
    let body = json!({ "messages": { bob.user_id(): { "*": { "hello": true } } } });
    for _ in 0..3 {
        assert_ok(
            &alice
                .put(&send_to_device_path("org.example.hi"), &body)
                .await,
            "within the burst",
        );
    }
    let response = alice
        .put(&send_to_device_path("org.example.hi"), &body)
        .await;
    assert_error(&response, 429, "M_LIMIT_EXCEEDED", "beyond the burst");
    assert!(
        response.1["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0),
        "{}",
        response.1
    );
    let back = json!({ "messages": { alice.user_id(): { "*": { "hello": true } } } });
    assert_ok(
        &bob.put(&send_to_device_path("org.example.hi"), &back).await,
        "another sender has its own bucket",
    );
}

// ----- slow and surplus clients -------------------------------------------------

/// Connections beyond `max_connections` are answered 503 `M_LIMIT_EXCEEDED` and closed;
/// once connections close, new ones are served again.
async fn connections_beyond_the_limit_are_refused(backend: Backend) {
    let options = ServerOptions::default().env("MYELIN_MAX_CONNECTIONS", "4");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let addr = address(&hs);
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        let answer = raw_get(&mut stream, "/_matrix/client/versions")
            .await
            .unwrap_or_default();
        if answer.starts_with("HTTP/1.1 200") {
            open.push(stream);
        } else {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("a connection beyond the limit of 4 is refused");
    assert!(
        open.len() <= 4,
        "{} connections were served at once",
        open.len()
    );
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("M_LIMIT_EXCEEDED"), "{refused}");
    drop(open);
    // Closed connections give their places back.
    let mut served = false;
    for _ in 0..50 {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        if raw_get(&mut stream, "/_matrix/client/versions")
            .await
            .is_some_and(|a| a.starts_with("HTTP/1.1 200"))
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "served again after the connections closed");
    assert!(hs.logs().contains("connection limit reached"));
}

/// A client that sends its headers too slowly is cut off (before: held forever).
async fn slow_headers_are_cut_off(backend: Backend) {
    let options = ServerOptions::default().env("MYELIN_HEADER_READ_TIMEOUT_SECONDS", "1");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let mut stream = TcpStream::connect(address(&hs)).await.expect("connect");
    stream
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nhost: loc")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let outcome = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
    match outcome {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        }
        Err(_) => panic!("a connection with half its headers was kept open for 10 s"),
    }
}

/// A body that does not arrive in time is answered 408 (before: waited for forever), while a
/// long-poll that outlasts the body timeout is not disturbed.
async fn slow_bodies_are_cut_off_but_long_polls_are_not(backend: Backend) {
    let options = ServerOptions::default()
        .env("MYELIN_BODY_READ_TIMEOUT_SECONDS", "1")
        .env("MYELIN_HEADER_READ_TIMEOUT_SECONDS", "1");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let token = alice.access_token.clone().unwrap();
    let mut stream = TcpStream::connect(address(&hs)).await.expect("connect");
    let path = format!("/_matrix/client/v3/user/{}/filter", encode(alice.user_id()));
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"room\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_response(&mut stream, Duration::from_secs(15))
        .await
        .expect("an answer to a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    let started = std::time::Instant::now();
    let (status, body) = alice.sync(None, 0).await;
    assert_eq!(status, 200);
    let mut since = body["next_batch"].as_str().unwrap().to_owned();
    // Long-polls (woken early by presence, say) keep answering 200 for longer than the body
    // and header timeouts.
    while started.elapsed() < Duration::from_secs(3) {
        let (status, body) = alice.sync(Some(&since), 3000).await;
        assert_eq!(status, 200, "a 3 s long-poll: {body}");
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
}

/// The access token is checked before the body is read: a request with a bad token and a
/// large body that never comes is answered 401 `M_UNKNOWN_TOKEN` (before: the server waited
/// for the whole body).
async fn tokens_are_checked_before_bodies_are_read(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let mut stream = TcpStream::connect(address(&hs)).await.expect("connect");
    let head = "POST /_matrix/client/v3/createRoom HTTP/1.1\r\nhost: localhost\r\n\
                authorization: Bearer not-a-token\r\ncontent-type: application/json\r\n\
                content-length: 4000000\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_response(&mut stream, Duration::from_secs(20))
        .await
        .expect("an answer before the body");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("M_UNKNOWN_TOKEN"), "{answer}");
}

// ----- thumbnails -----------------------------------------------------------------

async fn get_bytes(client: &Client, path: &str) -> (u16, Vec<u8>) {
    let response = client.get_response(path).await;
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

/// Thumbnails are made only in the configured sizes: a request for any other size is
/// answered with the best fit among them (before: each size was decoded and stored).
async fn thumbnails_come_only_in_configured_sizes(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    let image = image::RgbImage::from_fn(400, 300, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (status, body) = alice
        .request_raw(
            reqwest::Method::POST,
            "/_matrix/media/v3/upload",
            Some((png, "image/png")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mxc = body["content_uri"].as_str().unwrap();
    let (server, id) = mxc.strip_prefix("mxc://").unwrap().split_once('/').unwrap();
    let thumb = |w: u32, h: u32, method: &str| {
        format!(
            "/_matrix/client/v1/media/thumbnail/{server}/{id}?width={w}&height={h}&method={method}"
        )
    };
    let (status, scale) = get_bytes(&alice, &thumb(320, 240, "scale")).await;
    assert_eq!(status, 200);
    let (status, crop) = get_bytes(&alice, &thumb(96, 96, "crop")).await;
    assert_eq!(status, 200);
    let size = |bytes: &[u8]| {
        let decoded = image::load_from_memory(bytes).unwrap();
        (decoded.width(), decoded.height())
    };
    assert_eq!(size(&scale), (320, 240));
    assert_eq!(size(&crop), (96, 96));
    for (w, h) in [(37, 41), (100, 100), (200, 150), (250, 10), (301, 239)] {
        let (status, bytes) = get_bytes(&alice, &thumb(w, h, "scale")).await;
        assert_eq!(status, 200);
        assert!(
            bytes == scale,
            "{w}x{h} scale is the 320x240 one, got {:?}",
            size(&bytes)
        );
    }
    for (w, h) in [(33, 33), (50, 40), (64, 64), (90, 20)] {
        let (status, bytes) = get_bytes(&alice, &thumb(w, h, "crop")).await;
        assert_eq!(status, 200);
        assert!(
            bytes == crop,
            "{w}x{h} crop is the 96x96 one, got {:?}",
            size(&bytes)
        );
    }
}

// ----- shared-secret nonces -------------------------------------------------------

/// The unauthenticated nonce endpoint of shared-secret registration is rate-limited per
/// address (each call stores a row).
async fn registration_nonces_are_rate_limited(backend: Backend) {
    let options = ServerOptions::default()
        .rate_limits(true)
        .env("MYELIN_RATE_LIMITS_REGISTRATION_NONCE_PER_SECOND", "0.1")
        .env("MYELIN_RATE_LIMITS_REGISTRATION_NONCE_BURST", "3");
    let Some(hs) = TestServer::start(backend, options).await else {
        return;
    };
    let anonymous = hs.client();
    for _ in 0..3 {
        let (status, body) = anonymous.get("/_synapse/admin/v1/register").await;
        assert_eq!(status, 200, "{body}");
        assert!(body["nonce"].is_string());
    }
    let response = anonymous.get("/_synapse/admin/v1/register").await;
    assert_error(&response, 429, "M_LIMIT_EXCEEDED", "a fourth nonce at once");
    assert!(response.1["retry_after_ms"]
        .as_u64()
        .is_some_and(|ms| ms > 0));
}

// ----- /publicRooms ---------------------------------------------------------------

/// A `since` token beyond any real offset is refused with 400 `M_INVALID_PARAM` (before:
/// `offset + limit` overflowed).
async fn a40_public_rooms_refuses_a_huge_since(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    let alice = hs.register_user("alice").await;
    for since in [
        "o18446744073709551615",
        "o18446744073709551000",
        "o99999999999",
    ] {
        let response = alice
            .get(&format!(
                "/_matrix/client/v3/publicRooms?limit=10&since={}",
                encode(since)
            ))
            .await;
        assert_error(
            &response,
            400,
            "M_INVALID_PARAM",
            &format!("GET since={since}"),
        );
        let response = alice
            .post(
                "/_matrix/client/v3/publicRooms",
                &json!({ "limit": 10, "since": since }),
            )
            .await;
        assert_error(
            &response,
            400,
            "M_INVALID_PARAM",
            &format!("POST since={since}"),
        );
    }
    let (status, body) = alice
        .get("/_matrix/client/v3/publicRooms?limit=10&since=o5")
        .await;
    assert_eq!(status, 200, "{body}");
}

backend_tests!(
    deeply_nested_content_is_refused_and_rooms_stay_readable,
    a35_to_device_messages_come_at_most_100_a_sync_each_once,
    large_to_device_messages_are_refused,
    to_device_senders_are_rate_limited,
    connections_beyond_the_limit_are_refused,
    slow_headers_are_cut_off,
    slow_bodies_are_cut_off_but_long_polls_are_not,
    tokens_are_checked_before_bodies_are_read,
    thumbnails_come_only_in_configured_sizes,
    registration_nonces_are_rate_limited,
    a40_public_rooms_refuses_a_huge_since,
);
