//! Reporting content to the server's admins: an event, a room, a user.
//!
//! <https://spec.matrix.org/latest/client-server-api/#reporting-content>
//!
//! Reports are stored (`reports` table) for the admins, who read them through the admin API
//! (`GET /_synapse/admin/v1/event_reports` for event reports). A report reveals nothing the
//! reporter could not see: an event they may not see, or one in a room they were never in, is
//! "not found", as is an unknown room or local user.

use axum::extract::State;
use myelin_storage::NewReport;
use ruma::api::client::{
    reporting::report_user,
    room::{report_content, report_room},
};

use super::room::membership_of;
use crate::{
    api::ruma::Ruma,
    auth::now_ms,
    error::{Error, Result},
    rooms::visibility::Visibility,
    AppState,
};

/// Longest reason stored, in characters.
const MAX_REASON_CHARS: usize = 10_000;

fn check_reason(reason: &str) -> Result<()> {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(Error::invalid_param(format!(
            "The reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    Ok(())
}

/// POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidreporteventid>
pub async fn report_event(
    State(state): State<AppState>,
    req: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response> {
    let sender = &req.sender().user_id;
    let (room_id, event_id) = (&req.body.room_id, &req.body.event_id);
    let reason = req.body.reason.as_deref().unwrap_or("");
    check_reason(reason)?;
    let not_found = || {
        Error::not_found("Unable to report event: it does not exist or you aren't able to see it.")
    };
    // Only someone who is or was in the room (not merely invited) reports its events.
    let membership = membership_of(&state, room_id, sender).await?;
    if !matches!(membership.as_deref(), Some("join" | "leave" | "ban")) {
        return Err(not_found());
    }
    let row = state
        .storage
        .get_event(event_id.as_str())
        .await?
        .filter(|row| {
            row.room_id == room_id.as_str() && !row.rejected && row.stream_ordering.is_some()
        })
        .ok_or_else(not_found)?;
    let mut visibility = Visibility::new(&state, sender, room_id.as_str()).await?;
    if !visibility.allows(&row).await? {
        return Err(not_found());
    }
    let report = NewReport {
        reporter: sender.as_str(),
        room_id: Some(room_id.as_str()),
        event_id: Some(event_id.as_str()),
        reason,
        ..NewReport::default()
    };
    state.storage.add_report(&report, now_ms()).await?;
    Ok(report_content::v3::Response::new())
}

/// POST /_matrix/client/v3/rooms/{roomId}/report
///
/// Any user may report a room this server knows (a room seen in the directory, say).
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3roomsroomidreport>
pub async fn report_room(
    State(state): State<AppState>,
    req: Ruma<report_room::v3::Request>,
) -> Result<report_room::v3::Response> {
    let sender = &req.sender().user_id;
    check_reason(&req.body.reason)?;
    if state
        .storage
        .get_room(req.body.room_id.as_str())
        .await?
        .is_none()
    {
        return Err(Error::not_found("Room not found"));
    }
    let report = NewReport {
        reporter: sender.as_str(),
        room_id: Some(req.body.room_id.as_str()),
        reason: &req.body.reason,
        ..NewReport::default()
    };
    state.storage.add_report(&report, now_ms()).await?;
    Ok(report_room::v3::Response::new())
}

/// POST /_matrix/client/v3/users/{userId}/report
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3usersuseridreport>
pub async fn report_user(
    State(state): State<AppState>,
    req: Ruma<report_user::v3::Request>,
) -> Result<report_user::v3::Response> {
    let sender = &req.sender().user_id;
    let target = &req.body.user_id;
    check_reason(&req.body.reason)?;
    if target.server_name() == state.server_name
        && state.storage.get_user(target.as_str()).await?.is_none()
    {
        return Err(Error::not_found("User not found"));
    }
    let report = NewReport {
        reporter: sender.as_str(),
        target_user_id: Some(target.as_str()),
        reason: &req.body.reason,
        ..NewReport::default()
    };
    state.storage.add_report(&report, now_ms()).await?;
    Ok(report_user::v3::Response::new())
}
