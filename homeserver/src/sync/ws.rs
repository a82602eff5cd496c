//! The WebSocket transport of sync: the same responses as `/sync`, pushed as soon as they are
//! committed. The protocol is documented in docs/websocket.md.
//!
//! `GET /_matrix/client/unstable/io.myelin/sync/ws` upgrades to a WebSocket. The access token
//! comes as a Bearer header or, when there is none, as `access_token` in the query (browsers
//! cannot set headers on a WebSocket); the header wins, as for every other endpoint. `since`
//! and `filter` work as for `/sync`. Then:
//! - every text frame from the server is a `/sync` response (`next_batch` included); the next
//!   one covers everything after it, so a slow reader gets fewer, larger frames (the server
//!   computes the next frame only once the previous one was written) and never buffers more
//!   than one frame;
//! - the server pings when nothing happened for 25 s;
//! - frames from the client must be JSON objects with a string `type`: `{"type":"ping"}` is
//!   ignored, `{"type":"ack","next_batch":TOKEN}` says the client has processed the frames up
//!   to TOKEN, so the to-device messages in them can be removed (they are also removed when
//!   the client reconnects with a later `since`); anything else closes this socket with code
//!   1003 and a reason. Nothing else is affected.
//! - reconnecting with the last `next_batch` as `since` resumes with nothing lost or repeated;
//! - when the socket's access token stops being valid (logout, logout of all devices, device
//!   deletion, password change that logs devices out, deactivation), the server closes it with
//!   code 1008 and reason `M_UNKNOWN_TOKEN` and sends nothing more. The socket listens to
//!   storage's token-change announcements (subscribed before the token is first checked, so
//!   no change is missed) and re-checks its token on each one, and once more before each
//!   frame it sends.

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
use ruma::api::client::filter::FilterDefinition;
use serde::Deserialize;

use super::{filter::SyncFilter, parse_token, sync, SyncRequest};
use crate::{api::ruma::Sender, error::Error, AppState};

/// How long a frame waits for news before the server pings instead.
const IDLE: Duration = Duration::from_secs(25);

#[derive(Deserialize)]
pub struct Params {
    access_token: Option<String>,
    since: Option<String>,
    filter: Option<String>,
}

/// GET /_matrix/client/unstable/io.myelin/sync/ws
pub async fn sync_ws(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<Params>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Error> {
    let session =
        Session::open(&state, addr.ip(), &headers, params.access_token.as_deref()).await?;
    let sender = session.sender.clone();

    let since = params.since.as_deref().map(parse_token).transpose()?;
    if let Some(since) = since {
        // Presenting a token acknowledges the to-device messages up to it.
        super::e2ee::acknowledge(
            &state,
            sender.user_id.as_str(),
            sender.device_id.as_str(),
            since.position,
        )
        .await;
    }
    let filter = match params.filter.as_deref() {
        None => FilterDefinition::default(),
        Some(f) if f.trim_start().starts_with('{') => {
            serde_json::from_str(f).map_err(|e| Error::bad_json(format!("Invalid filter: {e}")))?
        }
        Some(id) => {
            let id: i64 = id
                .parse()
                .map_err(|_| Error::invalid_param("Unknown filter"))?;
            let json = state
                .storage
                .get_filter(sender.user_id.as_str(), id)
                .await?
                .ok_or_else(|| Error::invalid_param("Unknown filter"))?;
            serde_json::from_str(&json).map_err(Error::internal)?
        }
    };
    let filter = SyncFilter::from_definition(&filter);
    Ok(small_buffers(upgrade)
        .on_upgrade(move |socket| serve(state, socket, session, since, filter))
        .into_response())
}

/// Small buffers: an idle socket should cost a few KiB, not tungstenite's 128 KiB defaults.
/// A slow reader's unsent data is capped too (one frame is in flight at most).
pub(crate) fn small_buffers(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(64 * 1024)
}

/// The socket's login: who it is and how to notice that its token was revoked or expired.
pub(crate) struct Session {
    token_hash: String,
    changes: tokio::sync::broadcast::Receiver<std::sync::Arc<str>>,
    /// When a refreshable access token stops working (ms since the epoch).
    expires_ts: Option<i64>,
    pub(crate) sender: Sender,
}

impl Session {
    /// Authenticates an upgrade request: the Bearer header, or else `access_token` from the
    /// query (browsers cannot set headers on a WebSocket).
    pub(crate) async fn open(
        state: &AppState,
        ip: std::net::IpAddr,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Session, Error> {
        let header_token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::to_owned);
        let token = header_token
            .or_else(|| query_token.map(str::to_owned))
            .ok_or_else(Error::missing_token)?;
        // Subscribed before the check: a logout between the two is still heard.
        let changes = state.storage.subscribe_token_changes();
        let sender = crate::auth::authenticate(state, &token, ip).await?;
        let token_hash = crate::auth::hash_token(&token);
        let expires_ts = state
            .storage
            .find_token(&token_hash)
            .await?
            .and_then(|owner| owner.expires_ts);
        Ok(Session {
            token_hash,
            changes,
            expires_ts,
            sender,
        })
    }

    /// Waits until the token may have been revoked: a change of this user's tokens,
    /// announcements missed by lagging behind, or the token's expiry.
    pub(crate) async fn token_may_have_changed(&mut self) {
        use tokio::sync::broadcast::error::RecvError;
        let expires_ts = self.expires_ts;
        let expiry = async move {
            match expires_ts {
                Some(expires) => {
                    let left = expires.saturating_sub(crate::auth::now_ms()).max(0);
                    tokio::time::sleep(std::time::Duration::from_millis(left as u64)).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                () = &mut expiry => return,
                change = self.changes.recv() => match change {
                    Ok(user) if *user == *self.sender.user_id.as_str() => return,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return,
                    // The storage lives as long as the server; never stop on its account.
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                },
            }
        }
    }

    /// Whether the token expired (a refreshable token past its lifetime).
    fn expired(&self) -> bool {
        self.expires_ts
            .is_some_and(|expires| expires <= crate::auth::now_ms())
    }

    /// Whether a revocation may have been announced (or the token expired) since the last
    /// check.
    pub(crate) fn changes_pending(&self) -> bool {
        !self.changes.is_empty() || self.expired()
    }

    /// Whether the token still names this device. Announcements that arrived meanwhile are
    /// consumed: this check covers them.
    pub(crate) async fn still_valid(&mut self, state: &AppState) -> bool {
        use tokio::sync::broadcast::error::TryRecvError;
        while let Ok(_) | Err(TryRecvError::Lagged(_)) = self.changes.try_recv() {}
        if self.expired() {
            return false;
        }
        match state.storage.find_token(&self.token_hash).await {
            Ok(Some(owner)) => {
                owner.user_id == self.sender.user_id.as_str()
                    && owner.device_id == self.sender.device_id.as_str()
            }
            Ok(None) => false,
            // A failed read is not a logout; the next check decides.
            Err(e) => {
                tracing::warn!(error = %e, "could not re-check a WebSocket's token");
                true
            }
        }
    }
}

/// The close frame of a socket whose token was revoked.
pub(crate) fn revoked_frame() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1008,
        reason: "M_UNKNOWN_TOKEN".into(),
    }))
}

/// Why a client frame is refused, if it is; for an acknowledgement, the stream position it
/// acknowledges.
fn check_client_frame(message: &Message) -> Result<Option<i64>, &'static str> {
    match message {
        Message::Text(text) => match serde_json::from_str::<serde_json::Value>(text.as_str()) {
            Ok(serde_json::Value::Object(object))
                if object.get("type").is_some_and(|t| t == "ack") =>
            {
                object
                    .get("next_batch")
                    .and_then(|t| t.as_str())
                    .and_then(|t| parse_token(t).ok())
                    .map(|token| Some(token.position))
                    .ok_or("ack frames need a valid \"next_batch\"")
            }
            Ok(serde_json::Value::Object(object))
                if object.get("type").is_some_and(|t| t.is_string()) =>
            {
                Ok(None)
            }
            _ => Err("frames must be JSON objects with a string \"type\""),
        },
        Message::Binary(_) => Err("binary frames are not supported"),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => Ok(None),
    }
}

async fn serve(
    state: AppState,
    socket: WebSocket,
    mut session: Session,
    since: Option<super::Token>,
    filter: SyncFilter,
) {
    let sender = session.sender.clone();
    let (mut sink, mut stream) = socket.split();
    // The reader watches client frames and tells the writer when to stop (and why).
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<Option<&'static str>>();
    let (ack_state, ack_user, ack_device) = (
        state.clone(),
        sender.user_id.to_string(),
        sender.device_id.to_string(),
    );
    let reader = tokio::spawn(async move {
        let reason = loop {
            match stream.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break None,
                Some(Ok(message)) => match check_client_frame(&message) {
                    Err(reason) => break Some(reason),
                    Ok(Some(position)) => {
                        super::e2ee::acknowledge(&ack_state, &ack_user, &ack_device, position).await
                    }
                    Ok(None) => {}
                },
            }
        };
        let _ = stop_tx.send(reason);
    });

    // An open socket keeps its user online.
    let user = sender.user_id.to_string();
    let presence = state.config.presence.enabled;
    if presence {
        crate::presence_connected(&state, &user, "online").await;
    }
    let mut since = since;
    // The key counts in the last frame sent (see below).
    let mut counts_sent: Option<serde_json::Value> = None;
    loop {
        let request = SyncRequest {
            user: &sender.user_id,
            device: &sender.device_id,
            since: since.map(|t| t.position),
            since_typing: since.map_or(0, |t| t.typing),
            since_presence: since.map_or(0, |t| t.presence),
            full_state: false,
            filter: filter.clone(),
            timeout: IDLE,
        };
        let outcome = tokio::select! {
            stop = &mut stop_rx => {
                if let Ok(Some(reason)) = stop {
                    let frame = CloseFrame { code: 1003, reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                }
                break;
            }
            () = session.token_may_have_changed() => {
                if session.still_valid(&state).await {
                    // Another device of the user: compute this frame again from `since`.
                    continue;
                }
                let _ = sink.send(revoked_frame()).await;
                break;
            }
            outcome = sync(&state, &request) => outcome,
        };
        let response = match outcome {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(error = %e, "sync over WebSocket failed");
                let frame = CloseFrame {
                    code: 1011,
                    reason: "internal error".into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                break;
            }
        };
        // A revocation that landed while the frame was computed: nothing more goes out.
        if session.changes_pending() && !session.still_valid(&state).await {
            let _ = sink.send(revoked_frame()).await;
            break;
        }
        let next = parse_token(&response.next_batch).ok();
        // Lower one-time key counts (another user claimed keys) are news too: the client
        // should upload more without waiting for a message.
        let counts = response.rest.get("device_one_time_keys_count").cloned();
        let is_news = since.is_none() || !response.is_empty() || counts != counts_sent;
        let sent = if is_news {
            counts_sent = counts;
            // The engine writes JSON from strings, which is UTF-8; checked, not copied.
            let text = String::from_utf8(response.to_json())
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            sink.send(Message::Text(text.into())).await
        } else {
            sink.send(Message::Ping(Vec::new().into())).await
        };
        if sent.is_err() {
            break;
        }
        // An empty answer's token is safe too: nothing for this user happened up to it.
        since = next.or(since);
    }
    reader.abort();
    if presence {
        state.presence.disconnected(&user, crate::auth::now_ms());
    }
}
