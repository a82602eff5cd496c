//! Sliding sync over a WebSocket: the client keeps one socket open instead of long-polling
//! (protocol in docs/websocket.md, "Sliding sync").
//!
//! `GET /_matrix/client/unstable/io.myelin/sliding_sync/ws`, authenticated as the `/sync`
//! socket is. Then:
//! - the client sends `{"type":"request","request":BODY}` frames, BODY being what it would
//!   POST to the sliding-sync endpoint; the first may carry `"pos"` (beside `"request"`) to
//!   resume a connection;
//! - each server text frame is a sliding-sync response (`pos`, `lists`, `rooms`,
//!   `extensions`), computed with the latest request; after answering, the server keeps
//!   pushing a frame whenever there is news for that request, each computed from the previous
//!   frame's `pos` (frames arrive in order, so the client holds every one it was sent before
//!   its next request is read), and pings after 25 s of quiet;
//! - the to-device extension continues from the previous frame's `next_batch`; messages are
//!   removed from the server when the client acknowledges them: a request whose to-device
//!   `since` is at or past them, or an `{"type":"ack","to_device_since":TOKEN}` frame;
//! - a request the server refuses (a bad body, `M_UNKNOWN_POS`) is answered with an error
//!   frame (`{"errcode":..,"error":..}`) and the socket waits for the next request;
//! - a revoked token closes the socket with 1008 `M_UNKNOWN_TOKEN`, a malformed frame with
//!   1003, as on the `/sync` socket.

use std::time::Duration;

use axum::{
    extract::{
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
        ConnectInfo, Query, State,
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt};
use ruma::api::{client::sync::sync_events::v5, IncomingRequestExt};
use serde::Deserialize;
use serde_json::Value;

use super::{sliding_sync, SlidingRequest};
use crate::{
    error::Error,
    sync::ws::{revoked_frame, small_buffers, Session},
    AppState,
};

/// How long a pushed frame waits for news before the server pings instead.
const IDLE: Duration = Duration::from_secs(25);

#[derive(Deserialize)]
pub struct Params {
    access_token: Option<String>,
}

/// GET /_matrix/client/unstable/io.myelin/sliding_sync/ws
pub async fn sliding_sync_ws(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<Params>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Error> {
    let session =
        Session::open(&state, addr.ip(), &headers, params.access_token.as_deref()).await?;
    Ok(small_buffers(upgrade)
        .on_upgrade(move |socket| serve(state, socket, session))
        .into_response())
}

/// What a client frame asks.
enum ClientFrame {
    /// A request: its parsed form, or the error to answer with.
    Request(Box<Result<SlidingRequest, Error>>),
    /// Acknowledges the to-device messages up to this position.
    Ack(i64),
    Ignore,
}

/// Reads a client frame; `Err` is the reason to close the socket with 1003.
fn read_frame(session: &Session, message: &Message) -> Result<ClientFrame, &'static str> {
    let text = match message {
        Message::Text(text) => text,
        Message::Binary(_) => return Err("binary frames are not supported"),
        _ => return Ok(ClientFrame::Ignore),
    };
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text.as_str()) else {
        return Err("frames must be JSON objects with a string \"type\"");
    };
    match frame.get("type").and_then(Value::as_str) {
        Some("request") => {
            let pos = frame.get("pos").and_then(Value::as_str);
            let body = frame
                .get("request")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            Ok(ClientFrame::Request(Box::new(parse_request(
                session, pos, &body,
            ))))
        }
        Some("ack") => frame
            .get("to_device_since")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<i64>().ok())
            .map(ClientFrame::Ack)
            .ok_or("ack frames need a valid \"to_device_since\""),
        Some(_) => Ok(ClientFrame::Ignore),
        None => Err("frames must be JSON objects with a string \"type\""),
    }
}

/// Parses a request body the way the HTTP endpoint does (ruma's v5 request type).
fn parse_request(
    session: &Session,
    pos: Option<&str>,
    body: &Value,
) -> Result<SlidingRequest, Error> {
    let bytes = serde_json::to_vec(body).map_err(Error::internal)?;
    let http =
        axum::http::Request::post("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync")
            .header("content-type", "application/json")
            .body(bytes.as_slice())
            .map_err(|e| Error::bad_json(e.to_string()))?;
    let parsed = v5::Request::try_from_http_request(http, &[] as &[&str])
        .map_err(|e| Error::bad_json(format!("Invalid sliding sync request: {e}")))?;
    let mut request = crate::api::client::sync::sliding_request(
        session.sender.user_id.clone(),
        session.sender.device_id.clone(),
        parsed,
        &bytes,
    )?;
    request.pos = pos.map(str::to_owned);
    Ok(request)
}

/// An error frame: the error's JSON body.
fn error_frame(error: &Error) -> Message {
    let body = match error {
        Error::Matrix(e) => Value::Object(e.body.clone()),
        Error::Internal(_) => {
            serde_json::json!({ "errcode": "M_UNKNOWN", "error": "Internal server error" })
        }
    };
    Message::Text(body.to_string().into())
}

/// What woke the socket's loop.
enum Event {
    /// The socket ended, or must be closed with this frame.
    Close(Option<Message>),
    /// Handled; nothing to send.
    Nothing,
    /// A refused request: answer with this error.
    Refused(Error),
    /// A new standing request (its first answer is due at once).
    NewRequest(Box<SlidingRequest>),
    /// The standing request's answer: a frame, `None` after a quiet wait, or an error.
    Answer(Result<Option<Vec<u8>>, Error>),
}

async fn serve(state: AppState, socket: WebSocket, mut session: Session) {
    let (mut sink, mut stream) = socket.split();
    let (user, device) = (
        session.sender.user_id.to_string(),
        session.sender.device_id.to_string(),
    );
    let presence = state.config.presence.enabled;
    if presence {
        crate::presence_connected(&state, &user, "online").await;
    }
    // The standing request, its `pos` advanced to each frame sent.
    let mut current: Option<SlidingRequest> = None;
    loop {
        let event = tokio::select! {
            frame = stream.next() => match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Event::Close(None),
                Some(Ok(message)) => match read_frame(&session, &message) {
                    Err(reason) => Event::Close(Some(Message::Close(Some(CloseFrame {
                        code: 1003,
                        reason: reason.into(),
                    })))),
                    Ok(ClientFrame::Ignore) => Event::Nothing,
                    Ok(ClientFrame::Ack(position)) => {
                        crate::sync::e2ee::acknowledge(&state, &user, &device, position).await;
                        Event::Nothing
                    }
                    Ok(ClientFrame::Request(parsed)) => match *parsed {
                        Err(e) => Event::Refused(e),
                        Ok(request) => Event::NewRequest(Box::new(request)),
                    },
                },
            },
            () = session.token_may_have_changed() => {
                if session.still_valid(&state).await {
                    Event::Nothing
                } else {
                    Event::Close(Some(revoked_frame()))
                }
            }
            outcome = continue_with(&state, current.as_ref()), if current.is_some() => {
                Event::Answer(outcome)
            }
        };
        let outcome = match event {
            Event::Close(frame) => {
                if let Some(frame) = frame {
                    let _ = sink.send(frame).await;
                }
                break;
            }
            Event::Nothing => continue,
            Event::Refused(e) => {
                if sink.send(error_frame(&e)).await.is_err() {
                    break;
                }
                continue;
            }
            Event::NewRequest(request) => {
                let mut request = *request;
                // After the first request, the connection goes on from the last frame sent,
                // and so does the to-device extension unless the client says where.
                if let Some(previous) = &current {
                    if previous.conn_id == request.conn_id {
                        request.pos = previous.pos.clone();
                    }
                    if let (Some(t), Some((since, _))) = (
                        request.extensions.to_device.as_mut(),
                        previous.extensions.to_device,
                    ) {
                        if t.0.is_none() {
                            t.0 = since;
                            request.acknowledge_to_device = false;
                        }
                    }
                }
                // The first answer to a request comes at once; only a `since` the client
                // sent acknowledges to-device messages.
                request.timeout = Duration::ZERO;
                let outcome = continue_with(&state, Some(&request)).await;
                request.acknowledge_to_device = false;
                current = Some(request);
                outcome
            }
            Event::Answer(outcome) => outcome,
        };
        let body = match outcome {
            Ok(Some(body)) => body,
            // Nothing new within the wait: ping, and wait again.
            Ok(None) => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
                continue;
            }
            Err(e) => {
                // M_UNKNOWN_POS and the like: the client starts over with a new request.
                current = None;
                if sink.send(error_frame(&e)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if session.changes_pending() && !session.still_valid(&state).await {
            let _ = sink.send(revoked_frame()).await;
            break;
        }
        // The next frame goes on from this one.
        let parsed: Value = serde_json::from_slice(&body).unwrap_or_default();
        if let Some(request) = current.as_mut() {
            request.pos = parsed["pos"].as_str().map(str::to_owned);
            if let (Some(t), Some(next)) = (
                request.extensions.to_device.as_mut(),
                parsed["extensions"]["to_device"]["next_batch"]
                    .as_str()
                    .and_then(|s| s.parse::<i64>().ok()),
            ) {
                t.0 = Some(next);
            }
            request.timeout = IDLE;
        }
        let text = String::from_utf8(body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        if sink.send(Message::Text(text.into())).await.is_err() {
            break;
        }
    }
    if presence {
        state.presence.disconnected(&user, crate::auth::now_ms());
    }
}

/// One step of the standing request: its response, `None` if its wait passed with nothing
/// new (then the server pings).
async fn continue_with(
    state: &AppState,
    request: Option<&SlidingRequest>,
) -> Result<Option<Vec<u8>>, Error> {
    let Some(request) = request else {
        return std::future::pending().await;
    };
    Box::pin(sliding_sync(state, request, true)).await
}
