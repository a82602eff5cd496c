//! A fake push gateway: a small HTTP server on a loopback port that answers
//! `POST /_matrix/push/v1/notify` as the Push Gateway API says, records every notification it
//! accepted (with the time it arrived), and can fail or reject on command.
//!
//! <https://spec.matrix.org/latest/push-gateway-api/>

use std::{
    collections::HashSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};

/// The path a pusher's URL must have.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

#[derive(Default)]
struct Inner {
    /// Accepted notifications (the `notification` objects) and when each arrived.
    received: Vec<(Instant, Value)>,
    /// Every request, accepted or failed.
    attempts: usize,
    /// Answer this many of the next requests with 500.
    fail_next: usize,
    /// Answer every request with 500 while set.
    down: bool,
    /// Pushkeys to list in `rejected`.
    reject: HashSet<String>,
}

/// A running fake gateway; stops when dropped.
pub struct FakeGateway {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGateway {
    pub async fn start() -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the gateway");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let arrived = Arc::new(Notify::new());
        let task = {
            let inner = inner.clone();
            let arrived = arrived.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let inner = inner.clone();
                    let arrived = arrived.clone();
                    tokio::spawn(async move {
                        let service =
                            service_fn(move |req| handle(req, inner.clone(), arrived.clone()));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        FakeGateway {
            addr,
            inner,
            arrived,
            task,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The URL to give a pusher.
    pub fn url(&self) -> String {
        format!("http://{}{NOTIFY_PATH}", self.addr)
    }

    /// Fails the next `n` requests with 500.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// Fails every request while `down`.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Lists `pushkey` in `rejected` from now on.
    pub fn reject(&self, pushkey: &str) {
        self.lock().reject.insert(pushkey.to_owned());
    }

    /// The accepted notifications so far.
    pub fn received(&self) -> Vec<Value> {
        self.lock()
            .received
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The accepted notifications with their arrival times.
    pub fn received_timed(&self) -> Vec<(Instant, Value)> {
        self.lock().received.clone()
    }

    /// Requests so far, accepted or not.
    pub fn attempts(&self) -> usize {
        self.lock().attempts
    }

    /// Waits until `n` notifications were accepted (panics after `timeout`); returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "the gateway got {} notifications in {timeout:?}, expected {n}: {received:#?}",
                    received.len()
                );
            }
        }
    }

    /// Waits until an accepted notification matches `pred` (panics after `timeout`).
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let received = self.received();
            if let Some(found) = received.iter().find(|n| pred(n)) {
                return found.clone();
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("no matching notification in {timeout:?}: {received:#?}");
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path_ok = req.method() == hyper::Method::POST && req.uri().path() == NOTIFY_PATH;
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = |status: u16, body: Value| {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    };
    if !path_ok {
        return reply(404, json!({ "errcode": "M_UNRECOGNIZED" }));
    }
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return reply(400, json!({ "errcode": "M_NOT_JSON" }));
    };
    let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
    inner.attempts += 1;
    if inner.down || inner.fail_next > 0 {
        inner.fail_next = inner.fail_next.saturating_sub(1);
        return reply(500, json!({ "errcode": "M_UNKNOWN" }));
    }
    let notification = parsed["notification"].clone();
    let rejected: Vec<String> = notification["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["pushkey"].as_str())
        .filter(|k| inner.reject.contains(*k))
        .map(str::to_owned)
        .collect();
    inner.received.push((Instant::now(), notification));
    drop(inner);
    arrived.notify_waiters();
    reply(200, json!({ "rejected": rejected }))
}
