//! End-to-end encryption with a real client (issue 5): two users on matrix-sdk, its Olm/Megolm
//! machine on and its in-memory store, talk in an encrypted room through Myelin. Each must
//! decrypt what the other sent, and the server must only ever have held ciphertext.
//!
//! The sdk's `OriginalSyncRoomMessageEvent` handler fires only for events it could decrypt
//! (in an encrypted room); events it could not decrypt reach the `OriginalSyncRoomEncryptedEvent`
//! handler instead, and are reported when a wait times out, so a failure says why.

use std::{future::Future, sync::Arc, time::Duration};

use complement_tests::{backend_tests, Backend, Client as HsClient, ServerOptions, TestServer};
use matrix_sdk::{
    attachment::AttachmentConfig,
    config::SyncSettings,
    media::{MediaFormat, MediaRequestParameters},
    ruma::{
        api::client::room::create_room::v3::Request as CreateRoomRequest,
        events::{
            room::{
                encrypted::OriginalSyncRoomEncryptedEvent,
                encryption::RoomEncryptionEventContent,
                member::MembershipState,
                message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent},
                MediaSource,
            },
            InitialStateEvent,
        },
        OwnedEventId, OwnedRoomId, OwnedUserId,
    },
    Client, Room, RoomState,
};
use serde_json::Value;
use tokio::{sync::Mutex, task::JoinHandle};

/// How long any single step (a decryption, a device showing up, a join) may take.
const STEP: Duration = Duration::from_secs(60);

/// One user on matrix-sdk: the client, what it decrypted, what it could not, and its sync loop.
struct SdkUser {
    client: Client,
    user_id: OwnedUserId,
    /// Every message event the sdk handed over decrypted (other users' and its own).
    decrypted: Arc<Mutex<Vec<OriginalSyncRoomMessageEvent>>>,
    /// Encrypted events the sdk could not decrypt, for the failure messages.
    undecryptable: Arc<Mutex<Vec<String>>>,
    sync: JoinHandle<matrix_sdk::Result<()>>,
}

impl SdkUser {
    /// Logs the harness user's account into matrix-sdk (a new device, with its own keys) and
    /// starts syncing.
    async fn login(homeserver_url: &str, account: &HsClient) -> SdkUser {
        let client = Client::builder()
            .homeserver_url(homeserver_url)
            .build()
            .await
            .expect("building the matrix-sdk client");
        client
            .matrix_auth()
            .login_username(
                account.user_id(),
                account.password.as_deref().expect("harness password"),
            )
            .initial_device_display_name("matrix-sdk e2ee test")
            .await
            .unwrap_or_else(|e| panic!("matrix-sdk login of {} failed: {e}", account.user_id()));
        let user_id = client.user_id().expect("logged in").to_owned();

        let decrypted = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&decrypted);
        client.add_event_handler(move |event: OriginalSyncRoomMessageEvent| {
            let sink = Arc::clone(&sink);
            async move { sink.lock().await.push(event) }
        });
        let undecryptable = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&undecryptable);
        client.add_event_handler(move |event: OriginalSyncRoomEncryptedEvent| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock()
                    .await
                    .push(format!("{} from {}", event.event_id, event.sender))
            }
        });

        // The first sync uploads the device's keys; the loop keeps to-device messages (room
        // keys), device lists and timelines flowing for the rest of the test.
        let syncing = client.clone();
        let sync = tokio::spawn(async move {
            syncing
                .sync(SyncSettings::default().timeout(Duration::from_secs(5)))
                .await
        });
        SdkUser {
            client,
            user_id,
            decrypted,
            undecryptable,
            sync,
        }
    }

    fn device_id(&self) -> String {
        self.client.device_id().expect("logged in").to_string()
    }

    /// What to say when a wait runs out: the sync loop's fate and what could not be decrypted.
    async fn diagnosis(&self) -> String {
        let sync = if self.sync.is_finished() {
            "its sync loop has stopped (an error from the server?)"
        } else {
            "its sync loop is running"
        };
        let utd = self.undecryptable.lock().await;
        format!(
            "{}: {sync}; events it could not decrypt: {:?}; decrypted: {:?}",
            self.user_id,
            *utd,
            self.decrypted
                .lock()
                .await
                .iter()
                .map(|e| (
                    e.event_id.to_string(),
                    e.sender.to_string(),
                    e.content.body()
                ))
                .collect::<Vec<_>>()
        )
    }

    /// Waits until the sdk has decrypted an event with this ID and returns it.
    async fn decrypted_event(&self, event_id: &OwnedEventId) -> OriginalSyncRoomMessageEvent {
        let found = wait_for(|| async {
            self.decrypted
                .lock()
                .await
                .iter()
                .find(|e| &e.event_id == event_id)
                .cloned()
        })
        .await;
        match found {
            Some(event) => event,
            None => panic!(
                "{} did not decrypt {event_id} within {STEP:?}; {}",
                self.user_id,
                self.diagnosis().await
            ),
        }
    }

    /// Waits until this user's sdk knows the given device of another user (its keys were
    /// fetched through `/keys/query`, driven by the device lists in `/sync`).
    async fn wait_for_device(&self, other: &SdkUser) {
        let device_id = other.client.device_id().expect("logged in");
        let found = wait_for(|| async {
            self.client
                .encryption()
                .get_device(&other.user_id, device_id)
                .await
                .ok()
                .flatten()
        })
        .await;
        assert!(
            found.is_some(),
            "{} never learned {}'s device {device_id} within {STEP:?}; {}",
            self.user_id,
            other.user_id,
            self.diagnosis().await
        );
    }

    /// Sends a text through the sdk, which must encrypt it; returns the event's ID.
    async fn send_text(&self, room: &Room, body: &str) -> OwnedEventId {
        match room.send(RoomMessageEventContent::text_plain(body)).await {
            Ok(sent) => {
                assert!(
                    sent.encryption_info.is_some(),
                    "{} sent {body:?} unencrypted",
                    self.user_id
                );
                sent.response.event_id
            }
            Err(e) => panic!(
                "{} could not send {body:?}: {e}; {}",
                self.user_id,
                self.diagnosis().await
            ),
        }
    }

    fn stop(self) {
        self.sync.abort();
    }
}

/// Polls `probe` every 100 ms for up to [`STEP`]; `None` if it never answered `Some`.
async fn wait_for<T, F, Fut>(mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The event as the server stores it, read through plain `/messages` by a harness client.
async fn stored_event(reader: &HsClient, room_id: &str, event_id: &str) -> Value {
    let (status, body) = reader.messages(room_id, "b", None, None, Some(100)).await;
    assert_eq!(status, 200, "/messages failed: {body}");
    body["chunk"]
        .as_array()
        .and_then(|chunk| chunk.iter().find(|e| e["event_id"] == event_id))
        .cloned()
        .unwrap_or_else(|| panic!("{event_id} is not in /messages: {body}"))
}

/// Asserts the server holds `event_id` only as a Megolm ciphertext, with no trace of `secret`.
async fn assert_stored_encrypted(reader: &HsClient, room_id: &str, event_id: &str, secret: &str) {
    let event = stored_event(reader, room_id, event_id).await;
    assert_eq!(
        event["type"], "m.room.encrypted",
        "the server stored a plaintext event: {event}"
    );
    assert_eq!(
        event["content"]["algorithm"], "m.megolm.v1.aes-sha2",
        "{event}"
    );
    assert!(
        event["content"]["ciphertext"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "no ciphertext: {event}"
    );
    assert!(
        !event.to_string().contains(secret),
        "the plaintext is visible on the server: {event}"
    );
}

/// An encrypted room, one message each way, each decrypted by the other side, then a picture
/// as an encrypted attachment that arrives byte for byte.
async fn matrix_sdk_encrypted_room(backend: Backend) {
    let Some(hs) = TestServer::start(backend, ServerOptions::default()).await else {
        return;
    };
    encrypted_room_between(&hs, &hs, true).await;
}

/// The same with alice and bob on two Myelins: room keys travel as to-device messages over
/// federation, each sdk queries and claims the other's keys through its own server, and
/// device lists follow over federation; the picture is fetched over federation.
async fn matrix_sdk_encrypted_room_across_servers(backend: Backend) {
    let Some(hs1) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    let Some(hs2) = TestServer::start(backend, ServerOptions::default().federating()).await else {
        return;
    };
    encrypted_room_between(&hs1, &hs2, true).await;
}

/// Alice on `alice_server` and bob on `bob_server` in an encrypted DM (see
/// [`matrix_sdk_encrypted_room`]); `with_picture`: also an encrypted attachment.
async fn encrypted_room_between(
    alice_server: &TestServer,
    bob_server: &TestServer,
    with_picture: bool,
) {
    let alice_hs = alice_server.register_user("alice").await;
    let bob_hs = bob_server.register_user("bob").await;
    encrypted_dm(
        (alice_server.url(), &alice_hs),
        (bob_server.url(), &bob_hs),
        with_picture,
    )
    .await;
}

/// An encrypted DM between two harness accounts, each logged into matrix-sdk at its
/// server's client URL.
async fn encrypted_dm(
    (alice_url, alice_hs): (&str, &HsClient),
    (bob_url, bob_hs): (&str, &HsClient),
    with_picture: bool,
) {
    let alice = SdkUser::login(alice_url, alice_hs).await;
    let bob = SdkUser::login(bob_url, bob_hs).await;

    let room_id = create_encrypted_dm(&alice, &bob).await;
    let alice_room = alice.client.get_room(&room_id).expect("alice's room");
    let bob_room = bob.client.get_room(&room_id).expect("bob's room");

    // Alice -> Bob.
    let hello = format!("hello bob, this is secret {}", rand::random::<u64>());
    let sent = alice.send_text(&alice_room, &hello).await;
    let received = bob.decrypted_event(&sent).await;
    assert_eq!(received.sender, alice.user_id);
    assert_text(&received, &hello);
    assert_stored_encrypted(bob_hs, room_id.as_str(), sent.as_str(), &hello).await;

    // Bob -> Alice.
    let reply = format!("hi alice, secret back {}", rand::random::<u64>());
    let sent = bob.send_text(&bob_room, &reply).await;
    let received = alice.decrypted_event(&sent).await;
    assert_eq!(received.sender, bob.user_id);
    assert_text(&received, &reply);
    assert_stored_encrypted(alice_hs, room_id.as_str(), sent.as_str(), &reply).await;
    if !with_picture {
        alice.stop();
        bob.stop();
        return;
    }

    // A picture as an encrypted attachment: the sdk encrypts the file (AES-CTR), uploads the
    // ciphertext and sends the key inside the Megolm-encrypted `m.image` event.
    let picture = png(64, 48);
    let sent = alice_room
        .send_attachment(
            "picture.png",
            &mime::IMAGE_PNG,
            picture.clone(),
            AttachmentConfig::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("alice could not send the attachment: {e}"))
        .event_id;
    let received = bob.decrypted_event(&sent).await;
    assert_eq!(received.sender, alice.user_id);
    let MessageType::Image(image) = &received.content.msgtype else {
        panic!("expected m.image, got {:?}", received.content.msgtype);
    };
    let MediaSource::Encrypted(file) = &image.source else {
        panic!("the picture was not sent encrypted: {:?}", image.source);
    };
    assert_stored_encrypted(bob_hs, room_id.as_str(), sent.as_str(), "picture.png").await;

    // What the server holds is ciphertext of the same length, not the picture.
    let (server_name, media_id) = file.url.parts().expect("an mxc:// URI");
    let response = bob_hs
        .get_response(&format!(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}"
        ))
        .await;
    assert_eq!(response.status(), 200, "downloading {} failed", file.url);
    let stored = response.bytes().await.expect("the stored file");
    assert_eq!(stored.len(), picture.len(), "stored size differs");
    assert_ne!(
        &stored[..],
        &picture[..],
        "the server holds the plaintext picture"
    );

    // Bob's sdk downloads and decrypts it: byte for byte the picture Alice sent.
    let downloaded = bob
        .client
        .media()
        .get_media_content(
            &MediaRequestParameters {
                source: image.source.clone(),
                format: MediaFormat::File,
            },
            false,
        )
        .await
        .unwrap_or_else(|e| panic!("bob could not download {}: {e}", file.url));
    assert!(
        downloaded == picture,
        "the decrypted picture differs: {} bytes, expected {} bytes",
        downloaded.len(),
        picture.len()
    );

    alice.stop();
    bob.stop();
}

fn assert_text(event: &OriginalSyncRoomMessageEvent, expected: &str) {
    match &event.content.msgtype {
        MessageType::Text(text) => assert_eq!(text.body, expected),
        other => panic!("expected m.text {expected:?}, got {other:?}"),
    }
}

/// Alice creates a direct room with `m.room.encryption` (Megolm) in its initial state and
/// invites Bob; Bob joins; both sdks learn each other's device. Returns the room's ID.
async fn create_encrypted_dm(alice: &SdkUser, bob: &SdkUser) -> OwnedRoomId {
    let mut request = CreateRoomRequest::new();
    request.invite = vec![bob.user_id.clone()];
    request.is_direct = true;
    request.initial_state = vec![InitialStateEvent::with_empty_state_key(
        RoomEncryptionEventContent::with_recommended_defaults(),
    )
    .to_raw_any()];
    let room = alice
        .client
        .create_room(request)
        .await
        .unwrap_or_else(|e| panic!("alice could not create the room: {e}"));
    let room_id = room.room_id().to_owned();

    let invited = wait_for(|| async {
        bob.client
            .get_room(&room_id)
            .filter(|room| room.state() == RoomState::Invited)
    })
    .await;
    assert!(
        invited.is_some(),
        "bob's sdk never saw the invite to {room_id} within {STEP:?}; {}",
        bob.diagnosis().await
    );
    bob.client
        .join_room_by_id(&room_id)
        .await
        .unwrap_or_else(|e| panic!("bob could not join {room_id}: {e}"));

    // Both sides must see an encrypted room where the other is joined.
    for (me, other) in [(alice, bob), (bob, alice)] {
        let joined = wait_for(|| async {
            let room: Room = me.client.get_room(&room_id)?;
            let encrypted = room.latest_encryption_state().await.ok()?.is_encrypted();
            let member = room.get_member_no_sync(&other.user_id).await.ok()??;
            (encrypted && member.membership() == &MembershipState::Join).then_some(())
        })
        .await;
        assert!(
            joined.is_some(),
            "{} never saw {} joined in an encrypted {room_id} within {STEP:?}; {}",
            me.user_id,
            other.user_id,
            me.diagnosis().await
        );
    }
    alice.wait_for_device(bob).await;
    bob.wait_for_device(alice).await;
    eprintln!(
        "encrypted room {room_id}: alice's device {}, bob's device {}",
        alice.device_id(),
        bob.device_id()
    );
    room_id
}

/// The same between a user on Myelin and a user on Synapse (the reference implementation):
/// Synapse's and Myelin's federation E2EE endpoints and EDUs must understand each other.
#[tokio::test]
async fn matrix_sdk_encrypted_room_between_myelin_and_synapse() {
    if !complement_tests::synapse::available_or_skip() {
        return;
    }
    let Some(myelin) =
        TestServer::start(Backend::Sqlite, ServerOptions::default().federating()).await
    else {
        return;
    };
    let synapse = complement_tests::synapse::Synapse::start_federating(Backend::Sqlite)
        .await
        .expect("Synapse starts");
    let alice = myelin.register_user("alice").await;
    let sam = synapse.register_user("sam").await;
    // Alice (Myelin) creates the room and invites sam; then the other way round.
    encrypted_dm((myelin.url(), &alice), (synapse.url(), &sam), true).await;
    encrypted_dm((synapse.url(), &sam), (myelin.url(), &alice), true).await;
}

backend_tests!(
    matrix_sdk_encrypted_room,
    matrix_sdk_encrypted_room_across_servers
);

/// A `width`×`height` RGB PNG with a gradient and noise: stored (uncompressed) deflate blocks
/// inside zlib, so it needs no encoder crate.
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            let noise: u8 = rand::random();
            raw.extend([(x * 4) as u8, (y * 5) as u8, noise]);
        }
    }
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        zlib.extend(len.to_le_bytes());
        zlib.extend((!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for byte in &raw {
        a = (a + u32::from(*byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend(((b << 16) | a).to_be_bytes());

    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter method, no interlace

    let mut out = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    for (kind, data) in [(b"IHDR", ihdr), (b"IDAT", zlib), (b"IEND", Vec::new())] {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(&data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
