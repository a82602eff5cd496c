//! Pushers: the push gateways a user's devices registered.
//!
//! <https://spec.matrix.org/latest/client-server-api/#pushers>
//!
//! A pusher belongs to the device whose access token set it (deleting the device deletes it,
//! see `storage::delete_devices`). Setting one starts its task in [`crate::push::sender`],
//! which delivers the user's notifications from then on.

use axum::extract::State;
use http::StatusCode;
use myelin_storage::{NewPusher, PusherRow};
use ruma::{
    api::client::push::{
        get_pushers,
        set_pusher::{self, v3::PusherAction},
        Pusher, PusherIds, PusherInit, PusherKind,
    },
    push::{HttpPusherData, PushFormat},
};

use crate::{
    api::ruma::Ruma,
    auth::now_ms,
    error::{Error, Result},
    push::sender,
    AppState,
};

/// The path every push gateway URL must have (Push Gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// The spec's limits on the identifiers.
const MAX_APP_ID_CHARS: usize = 64;
const MAX_PUSHKEY_BYTES: usize = 512;
/// Pushers one user may have (each is a task and a request per notification).
pub const MAX_PUSHERS_PER_USER: i64 = 100;

/// GET /_matrix/client/v3/pushers
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3pushers>
pub async fn get_pushers(
    State(state): State<AppState>,
    req: Ruma<get_pushers::v3::Request>,
) -> Result<get_pushers::v3::Response> {
    let rows = state
        .storage
        .pushers_for_user(req.sender().user_id.as_str())
        .await?;
    Ok(get_pushers::v3::Response::new(
        rows.iter().filter_map(pusher_of).collect(),
    ))
}

/// A stored pusher as the API shows it (rows are only ever written from a valid request).
fn pusher_of(row: &PusherRow) -> Option<Pusher> {
    let kind = match row.kind.as_str() {
        "http" => PusherKind::Http(serde_json::from_str::<HttpPusherData>(&row.data).ok()?),
        _ => return None,
    };
    Some(
        PusherInit {
            ids: PusherIds::new(row.pushkey.clone(), row.app_id.clone()),
            kind,
            app_display_name: row.app_display_name.clone(),
            device_display_name: row.device_display_name.clone(),
            profile_tag: row.profile_tag.clone(),
            lang: row.lang.clone(),
        }
        .into(),
    )
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
}

/// Checks an HTTP pusher's gateway URL: http or https, with the notify path. (Whether its
/// address may be reached is decided when sending, by `push.ip_range_allowlist`.)
fn check_url(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|_| invalid("'url' is not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid("'url' must be an http or https URL"));
    }
    if parsed.path() != NOTIFY_PATH {
        return Err(invalid(format!(
            "'url' must have a path of '{NOTIFY_PATH}'"
        )));
    }
    Ok(())
}

/// POST /_matrix/client/v3/pushers/set
///
/// Creates, updates (same app ID and pushkey) or, with `kind: null`, deletes a pusher. Only
/// `http` pushers are supported; `email` is refused.
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3pushersset>
pub async fn set_pusher(
    State(state): State<AppState>,
    req: Ruma<set_pusher::v3::Request>,
) -> Result<set_pusher::v3::Response> {
    let sender = req.sender();
    let user_id = sender.user_id.as_str();
    let (pusher, append) = match &req.body.action {
        PusherAction::Delete(ids) => {
            let existing = state.storage.pushers_for_user(user_id).await?;
            if state
                .storage
                .delete_pusher(user_id, &ids.app_id, &ids.pushkey)
                .await?
            {
                for row in existing
                    .iter()
                    .filter(|p| p.app_id == ids.app_id && p.pushkey == ids.pushkey)
                {
                    state.pushers.stop(user_id, row.id);
                }
            }
            return Ok(set_pusher::v3::Response::new());
        }
        PusherAction::Post(post) => (&post.pusher, post.append),
        _ => return Err(invalid("Unknown pusher action")),
    };
    let http = match &pusher.kind {
        PusherKind::Http(http) => http,
        PusherKind::Email(_) => {
            return Err(invalid("Email pushers are not supported by this server"));
        }
        _ => return Err(invalid("Unknown pusher kind: only 'http' is supported")),
    };
    if pusher.ids.app_id.is_empty() || pusher.ids.app_id.chars().count() > MAX_APP_ID_CHARS {
        return Err(invalid(format!(
            "'app_id' must be 1 to {MAX_APP_ID_CHARS} characters"
        )));
    }
    if pusher.ids.pushkey.is_empty() || pusher.ids.pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(invalid(format!(
            "'pushkey' must be 1 to {MAX_PUSHKEY_BYTES} bytes"
        )));
    }
    check_url(&http.url)?;
    if let Some(format) = &http.format {
        if *format != PushFormat::EventIdOnly {
            return Err(invalid("'format' must be 'event_id_only' or absent"));
        }
    }
    let existing = state.storage.pushers_for_user(user_id).await?;
    let replaces = existing
        .iter()
        .any(|p| p.app_id == pusher.ids.app_id && p.pushkey == pusher.ids.pushkey);
    if !replaces && existing.len() as i64 >= MAX_PUSHERS_PER_USER {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_TOO_LARGE",
            format!("A user may have at most {MAX_PUSHERS_PER_USER} pushers"),
        ));
    }
    let data = serde_json::to_string(http).map_err(Error::internal)?;
    let now = now_ms();
    let id = state
        .storage
        .set_pusher(
            &NewPusher {
                user_id,
                device_id: sender.device_id.as_str(),
                kind: "http",
                app_id: &pusher.ids.app_id,
                pushkey: &pusher.ids.pushkey,
                app_display_name: &pusher.app_display_name,
                device_display_name: &pusher.device_display_name,
                profile_tag: pusher.profile_tag.as_deref(),
                lang: &pusher.lang,
                data: &data,
            },
            append,
            now,
            sender::OWNER,
            now + sender::CLAIM_MS,
        )
        .await?;
    if let Some(row) = state.storage.claimed_pusher(id, sender::OWNER).await? {
        sender::ensure_running(&state, &row);
    }
    Ok(set_pusher::v3::Response::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_need_the_notify_path() {
        assert!(check_url("https://push.example/_matrix/push/v1/notify").is_ok());
        assert!(check_url("http://127.0.0.1:5000/_matrix/push/v1/notify").is_ok());
        for bad in [
            "https://push.example/notify",
            "https://push.example/_matrix/push/v1/notify/extra",
            "ftp://push.example/_matrix/push/v1/notify",
            "/_matrix/push/v1/notify",
            "not a url",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
