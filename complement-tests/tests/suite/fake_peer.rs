//! A scripted federation peer: a server name on loopback with its own ed25519 key, a TLS
//! listener that publishes its key document and records the transactions it is sent, and
//! helpers to sign requests (X-Matrix) and events the way a homeserver does. With it the
//! tests do what two honest servers never do: bad signatures, forged or tampered events,
//! the wrong membership to `send_leave`, replayed transactions.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::TokioIo;
use ruma::{
    signatures::{hash_and_sign_event, reference_hash, sign_json, Ed25519KeyPair},
    CanonicalJsonObject, CanonicalJsonValue, RoomVersionId,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub const KEY_ID: &str = "ed25519:fake";

pub struct FakePeer {
    pub server_name: String,
    key: Arc<Ed25519KeyPair>,
    http: reqwest::Client,
    /// Bodies of the transactions (`PUT /send/{txnId}`) the peer was sent.
    pub received: Arc<Mutex<Vec<Value>>>,
    /// Events the peer serves at `/_matrix/federation/v1/event/{eventId}`, by ID.
    pub events: Arc<Mutex<std::collections::HashMap<String, Value>>>,
    /// While set, transactions are answered 503 and not recorded (the peer is "down").
    pub refusing: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn canonical(value: Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value).expect("canonical JSON") {
        CanonicalJsonValue::Object(o) => o,
        other => panic!("not an object: {other:?}"),
    }
}

impl FakePeer {
    /// Starts the peer's TLS listener on a free loopback port; its server name is
    /// `127.0.0.1:<port>`.
    pub async fn start() -> FakePeer {
        let document = Ed25519KeyPair::generate();
        let key = Arc::new(Ed25519KeyPair::from_der(&document, "fake".to_owned()).expect("key"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address: SocketAddr = listener.local_addr().expect("address");
        let server_name = format!("127.0.0.1:{}", address.port());
        let generated =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
        let cert = generated.cert.der().clone();
        let private =
            rustls::pki_types::PrivateKeyDer::try_from(generated.key_pair.serialize_der())
                .expect("private key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], private)
            .expect("tls config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let received = Arc::new(Mutex::new(Vec::new()));
        let events: Arc<Mutex<std::collections::HashMap<String, Value>>> = Arc::default();
        let refusing: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let key_document = {
            let mut doc = canonical(json!({
                "server_name": server_name,
                "verify_keys": { KEY_ID: { "key": base64_unpadded(&key.public_key()) } },
                "old_verify_keys": {},
                "valid_until_ts": now_ms() + 24 * 3600 * 1000,
            }));
            sign_json(&server_name, key.as_ref(), &mut doc).expect("sign keys");
            serde_json::to_vec(&doc).expect("json")
        };
        let task = {
            let received = received.clone();
            let events = events.clone();
            let refusing = refusing.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    let received = received.clone();
                    let events = events.clone();
                    let refusing = refusing.clone();
                    let key_document = key_document.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let received = received.clone();
                            let events = events.clone();
                            let refusing = refusing.clone();
                            let key_document = key_document.clone();
                            async move {
                                let path = req.uri().path().to_owned();
                                let body = req.into_body().collect().await?.to_bytes();
                                let (status, answer) = if path == "/_matrix/key/v2/server" {
                                    (200, key_document)
                                } else if let Some(id) =
                                    path.strip_prefix("/_matrix/federation/v1/event/")
                                {
                                    let id = id.replace("%24", "$");
                                    match events.lock().unwrap().get(&id) {
                                        Some(pdu) => (
                                            200,
                                            json!({ "origin": "", "origin_server_ts": 0, "pdus": [pdu] })
                                                .to_string()
                                                .into_bytes(),
                                        ),
                                        None => (404, br#"{"errcode":"M_NOT_FOUND"}"#.to_vec()),
                                    }
                                } else if path
                                    .starts_with("/_matrix/federation/v1/get_missing_events/")
                                {
                                    let asked: Value =
                                        serde_json::from_slice(&body).unwrap_or_default();
                                    let answer = missing_events(&events.lock().unwrap(), &asked);
                                    (200, json!({ "events": answer }).to_string().into_bytes())
                                } else if path.starts_with("/_matrix/federation/v1/send/")
                                    && refusing.load(std::sync::atomic::Ordering::SeqCst)
                                {
                                    (503, br#"{"errcode":"M_UNKNOWN"}"#.to_vec())
                                } else if path.starts_with("/_matrix/federation/v1/send/") {
                                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                                        received.lock().unwrap().push(v);
                                    }
                                    (200, br#"{"pdus":{}}"#.to_vec())
                                } else {
                                    (404, br#"{"errcode":"M_UNRECOGNIZED"}"#.to_vec())
                                };
                                Ok::<_, hyper::Error>(
                                    Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(answer)))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            })
        };
        FakePeer {
            server_name,
            key,
            http: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .timeout(std::time::Duration::from_secs(20))
                .build()
                .expect("client"),
            received,
            events,
            refusing,
            task,
        }
    }

    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    /// The X-Matrix header for a request to `destination`.
    pub fn authorization(
        &self,
        method: &str,
        path_and_query: &str,
        destination: &str,
        body: Option<&Value>,
    ) -> String {
        let mut request = json!({
            "method": method,
            "uri": path_and_query,
            "origin": self.server_name,
            "destination": destination,
        });
        if let Some(body) = body {
            request["content"] = body.clone();
        }
        let mut object = canonical(request);
        sign_json(&self.server_name, self.key.as_ref(), &mut object).expect("sign");
        let signature = match &object["signatures"] {
            CanonicalJsonValue::Object(s) => match &s[&self.server_name] {
                CanonicalJsonValue::Object(k) => match &k[KEY_ID] {
                    CanonicalJsonValue::String(sig) => sig.clone(),
                    _ => unreachable!(),
                },
                _ => unreachable!(),
            },
            _ => unreachable!(),
        };
        format!(
            "X-Matrix origin=\"{}\",destination=\"{destination}\",key=\"{KEY_ID}\",sig=\"{signature}\"",
            self.server_name
        )
    }

    /// A signed request to a server's federation API at `base` (its TLS URL) whose name is
    /// `destination`.
    pub async fn request(
        &self,
        base: &str,
        destination: &str,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let header = self.authorization(method.as_str(), path_and_query, destination, body);
        let mut builder = self
            .http
            .request(method, format!("{base}{path_and_query}"))
            .header("Authorization", header);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        let response = builder.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Hashes and signs `event` as its origin would; returns it with its event ID.
    pub fn sign_event(&self, event: Value, version: &RoomVersionId) -> (String, Value) {
        let rules = version.rules().expect("known version");
        let mut object = canonical(event);
        object.remove("signatures");
        object.remove("hashes");
        hash_and_sign_event(
            &self.server_name,
            self.key.as_ref(),
            &mut object,
            &rules.redaction,
        )
        .expect("sign event");
        let id = format!("${}", reference_hash(&object, &rules).expect("hash"));
        (id, serde_json::to_value(&object).expect("json"))
    }
}

/// `/get_missing_events` over the events the peer holds: walks `prev_events` back from
/// `latest_events`, stopping at `earliest_events` and at what it does not hold, at most
/// `limit` (default 10), oldest first.
fn missing_events(events: &std::collections::HashMap<String, Value>, asked: &Value) -> Vec<Value> {
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let limit = asked["limit"].as_u64().unwrap_or(10) as usize;
    let mut seen: std::collections::HashSet<String> = ids(&asked["earliest_events"])
        .into_iter()
        .chain(ids(&asked["latest_events"]))
        .collect();
    let mut frontier: Vec<String> = ids(&asked["latest_events"])
        .iter()
        .filter_map(|id| events.get(id))
        .flat_map(|e| ids(&e["prev_events"]))
        .collect();
    let mut found = Vec::new();
    while let Some(id) = frontier.pop() {
        if found.len() == limit {
            break;
        }
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(event) = events.get(&id) {
            frontier.extend(ids(&event["prev_events"]));
            found.push(event.clone());
        }
    }
    found.sort_by_key(|e| e["depth"].as_u64());
    found
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn base64_unpadded(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}
