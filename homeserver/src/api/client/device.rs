//! Device management.
//!
//! <https://spec.matrix.org/latest/client-server-api/#device-management>

use axum::extract::State;
use ruma::{
    api::client::device::{
        self, delete_device, delete_devices, get_device, get_devices, update_device,
    },
    MilliSecondsSinceUnixEpoch, UInt,
};

use crate::{
    api::ruma::Ruma,
    e2ee::announce_device_list_change,
    error::{Error, Result},
    uia, AppState,
};

fn to_device(row: myelin_storage::DeviceRow) -> device::Device {
    let mut device = device::Device::new(row.device_id.into());
    device.display_name = row.display_name;
    device.last_seen_ip = row.last_seen_ip;
    device.last_seen_ts = row
        .last_seen_ts
        .and_then(|ts| UInt::new(ts.max(0) as u64))
        .map(MilliSecondsSinceUnixEpoch);
    device
}

/// GET /_matrix/client/v3/devices
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3devices>
pub async fn get_devices(
    State(state): State<AppState>,
    req: Ruma<get_devices::v3::Request>,
) -> Result<get_devices::v3::Response> {
    let rows = state
        .storage
        .list_devices(req.sender().user_id.as_str())
        .await?;
    Ok(get_devices::v3::Response::new(
        rows.into_iter().map(to_device).collect(),
    ))
}

/// GET /_matrix/client/v3/devices/{deviceId}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3devicesdeviceid>
pub async fn get_device(
    State(state): State<AppState>,
    req: Ruma<get_device::v3::Request>,
) -> Result<get_device::v3::Response> {
    let row = state
        .storage
        .get_device(req.sender().user_id.as_str(), req.body.device_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Device not found"))?;
    Ok(get_device::v3::Response::new(to_device(row)))
}

/// PUT /_matrix/client/v3/devices/{deviceId}
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3devicesdeviceid>
pub async fn update_device(
    State(state): State<AppState>,
    req: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response> {
    let found = state
        .storage
        .set_device_display_name(
            req.sender().user_id.as_str(),
            req.body.device_id.as_str(),
            req.body.display_name.as_deref(),
        )
        .await?;
    if !found {
        return Err(Error::not_found("Device not found"));
    }
    Ok(update_device::v3::Response::new())
}

/// DELETE /_matrix/client/v3/devices/{deviceId}
///
/// Requires UIA. Deleting a device also invalidates its access token and removes its
/// encryption keys and undelivered to-device messages; users sharing a room see the change
/// in `device_lists`.
/// <https://spec.matrix.org/latest/client-server-api/#delete_matrixclientv3devicesdeviceid>
pub async fn delete_device(
    State(state): State<AppState>,
    req: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response> {
    let sender = req.sender();
    if state
        .storage
        .get_device(sender.user_id.as_str(), req.body.device_id.as_str())
        .await?
        .is_none()
    {
        return Err(Error::not_found("Device not found"));
    }
    uia::authorize(
        &state,
        req.body.auth.as_ref(),
        &[&[uia::PASSWORD]],
        Some(&sender.user_id),
    )
    .await?;
    if state
        .storage
        .delete_devices(sender.user_id.as_str(), &[req.body.device_id.to_string()])
        .await?
    {
        announce_device_list_change(
            &state,
            sender.user_id.as_str(),
            Some(req.body.device_id.as_str()),
        )
        .await;
    }
    state
        .sliding
        .forget_device(sender.user_id.as_str(), req.body.device_id.as_str());
    Ok(delete_device::v3::Response::new())
}

/// POST /_matrix/client/v3/delete_devices
///
/// Requires UIA.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3delete_devices>
pub async fn delete_devices(
    State(state): State<AppState>,
    req: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response> {
    let sender = req.sender();
    uia::authorize(
        &state,
        req.body.auth.as_ref(),
        &[&[uia::PASSWORD]],
        Some(&sender.user_id),
    )
    .await?;
    let ids: Vec<String> = req.body.devices.iter().map(|d| d.to_string()).collect();
    if state
        .storage
        .delete_devices(sender.user_id.as_str(), &ids)
        .await?
    {
        announce_device_list_change(
            &state,
            sender.user_id.as_str(),
            ids.first().map(String::as_str),
        )
        .await;
    }
    for device in &ids {
        state.sliding.forget_device(sender.user_id.as_str(), device);
    }
    Ok(delete_devices::v3::Response::new())
}
