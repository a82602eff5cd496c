//! Send-to-device messaging.
//!
//! <https://spec.matrix.org/latest/client-server-api/#send-to-device-messaging>
//!
//! Messages wait in each target device's inbox until the device has synced past them
//! (storage's `to_device` module says how that makes delivery exactly once). Messages for
//! other servers' users become one `m.direct_to_device` EDU per server, put in its durable
//! outbox in the same transaction (federation::sender sends it; the receiving server
//! deduplicates by `message_id`).

use axum::extract::State;
use ruma::{api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices};

use crate::{
    api::ruma::Ruma,
    auth::{now_ms, random_string},
    e2ee::is_local,
    error::{Error, Result},
    AppState,
};
use myelin_storage::{NewOutboxEdu, OutgoingToDevice};
use std::collections::BTreeMap;

/// Largest content of one to-device message, in bytes (a room key or a verification step is
/// a few hundred bytes). Every message waits in an inbox until its device syncs, so without a
/// bound one request could queue the whole body size for every device it names.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}
///
/// `*` as the device ID sends to every device of the user. A repeated transaction ID (from
/// the same device) sends nothing again. Sends are rate-limited per user, and each message's
/// content is at most [`MAX_MESSAGE_BYTES`] (413 `M_TOO_LARGE`).
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3sendtodeviceeventtypetxnid>
pub async fn send_event_to_device(
    State(state): State<AppState>,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response> {
    let sender = req.sender();
    state.limits.check_to_device(sender.user_id.as_str())?;
    let mut messages = Vec::new();
    let mut targets = Vec::new();
    // Server → user → device → content, for the EDUs.
    let mut remote: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    for (user, devices) in &req.body.messages {
        for (device, content) in devices {
            if content.json().get().len() > MAX_MESSAGE_BYTES {
                return Err(Error::too_large(format!(
                    "A to-device message's content may be at most {MAX_MESSAGE_BYTES} bytes"
                )));
            }
            let content: serde_json::Value = serde_json::from_str(content.json().get())
                .map_err(|e| Error::bad_json(format!("Invalid message content: {e}")))?;
            if !content.is_object() {
                return Err(Error::bad_json("Message content must be a JSON object"));
            }
            if !is_local(&state, user) {
                let by_device = remote
                    .entry(user.server_name().to_string())
                    .or_default()
                    .entry(user.to_string())
                    .or_insert_with(|| serde_json::json!({}));
                by_device[device.to_string()] = content;
                continue;
            }
            messages.push(OutgoingToDevice {
                user_id: user.to_string(),
                device_id: match device {
                    DeviceIdOrAllDevices::DeviceId(id) => Some(id.to_string()),
                    DeviceIdOrAllDevices::AllDevices => None,
                },
                content: content.to_string(),
            });
        }
        if is_local(&state, user) {
            targets.push(user.as_str());
        }
    }
    let event_type = req.body.event_type.to_string();
    let remote: Vec<NewOutboxEdu> = remote
        .into_iter()
        .map(|(destination, messages)| NewOutboxEdu {
            destination,
            edu_type: "m.direct_to_device".to_owned(),
            content: serde_json::json!({
                "sender": sender.user_id,
                "type": event_type,
                // The spec's limit is 32 characters; unique per message (the client's
                // transaction ID was deduplicated here already).
                "message_id": random_string(32),
                "messages": messages,
            })
            .to_string(),
        })
        .collect();
    let sent = state
        .storage
        .send_to_device(
            sender.user_id.as_str(),
            sender.device_id.as_str(),
            req.body.txn_id.as_str(),
            &event_type,
            &messages,
            &remote,
            now_ms(),
        )
        .await?;
    if sent.is_some() {
        state.notifier.notify(targets);
        let servers: Vec<String> = remote.into_iter().map(|e| e.destination).collect();
        crate::federation::sender::wake(&state, &servers, state.storage.safe_stream_position())
            .await;
    }
    Ok(send_event_to_device::v3::Response::new())
}
