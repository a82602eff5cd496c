//! Send-to-device messaging.
//!
//! <https://spec.matrix.org/latest/client-server-api/#send-to-device-messaging>
//!
//! Messages wait in each target device's inbox until the device has synced past them
//! (storage's `to_device` module says how that makes delivery exactly once). Only users of
//! this server are reachable until federation exists; messages for others are dropped.

use axum::extract::State;
use ruma::{api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices};

use crate::{
    api::ruma::Ruma,
    auth::now_ms,
    e2ee::is_local,
    error::{Error, Result},
    AppState,
};
use myelin_storage::OutgoingToDevice;

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
    for (user, devices) in &req.body.messages {
        if !is_local(&state, user) {
            tracing::debug!(%user, "to-device message for another server dropped (no federation yet)");
            continue;
        }
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
            messages.push(OutgoingToDevice {
                user_id: user.to_string(),
                device_id: match device {
                    DeviceIdOrAllDevices::DeviceId(id) => Some(id.to_string()),
                    DeviceIdOrAllDevices::AllDevices => None,
                },
                content: content.to_string(),
            });
        }
        targets.push(user.as_str());
    }
    let sent = state
        .storage
        .send_to_device(
            sender.user_id.as_str(),
            sender.device_id.as_str(),
            req.body.txn_id.as_str(),
            &req.body.event_type.to_string(),
            &messages,
            now_ms(),
        )
        .await?;
    if sent.is_some() {
        state.notifier.notify(targets);
    }
    Ok(send_event_to_device::v3::Response::new())
}
