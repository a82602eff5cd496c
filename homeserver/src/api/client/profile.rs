//! User profiles: display name, avatar, and the other fields of spec v1.16 (`m.tz`, custom
//! namespaced keys).
//!
//! <https://spec.matrix.org/latest/client-server-api/#profiles>
//!
//! Profiles are public: reading one needs no access token. Only the user may change their own.
//! A change of display name or avatar is carried into every room they are joined to by a new
//! `m.room.member` event; the other fields live in the profile only. (Profiles of users on
//! other servers come with federation.)

use axum::extract::State;
use ruma::{
    api::client::profile::{
        delete_profile_field, get_profile, get_profile_field, set_profile_field,
    },
    profile::{ProfileFieldName, ProfileFieldValue},
    OwnedMxcUri, UserId,
};

use crate::{
    api::ruma::Ruma,
    error::{Error, Result},
    rooms, AppState,
};

/// Longest display name accepted, in characters (Synapse's limit).
const MAX_DISPLAYNAME_LEN: usize = 256;
/// Longest profile field name, in bytes (the spec's limit).
const MAX_FIELD_NAME_BYTES: usize = 255;
/// Most a user's other profile fields may take together (names and values, in characters):
/// the spec's 64 KiB for a whole profile.
const MAX_PROFILE_CHARS: i64 = 65_536;

/// The stored value of a field other than displayname and avatar_url.
async fn other_field(
    state: &AppState,
    user_id: &UserId,
    field: &str,
) -> Result<Option<serde_json::Value>> {
    Ok(state
        .storage
        .profile_fields(user_id.as_str())
        .await?
        .into_iter()
        .find(|(name, _)| name == field)
        .and_then(|(_, value)| serde_json::from_str(&value).ok()))
}

fn profile_error(errcode: &'static str, message: impl Into<String>) -> Error {
    Error::new(axum::http::StatusCode::BAD_REQUEST, errcode, message)
}

/// The stored profile of a local user, or a remote user's from their server
/// (`/_matrix/federation/v1/query/profile`); 404 when there is none (or their server
/// cannot be reached).
async fn load(state: &AppState, user_id: &UserId) -> Result<(Option<String>, Option<String>)> {
    if user_id.server_name() != state.server_name {
        let path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            crate::federation::client::query_value(user_id.as_str())
        );
        let profile = state
            .federation
            .get_json(user_id.server_name(), &path)
            .await
            .map_err(|e| {
                tracing::info!(%user_id, error = %e, "remote profile lookup failed");
                Error::not_found("Profile not found")
            })?;
        let text = |field: &str| {
            profile
                .get(field)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        return Ok((text("displayname"), text("avatar_url")));
    }
    state
        .storage
        .get_profile(user_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Profile not found"))
}

fn check_own(sender: &UserId, target: &UserId) -> Result<()> {
    if sender != target {
        return Err(Error::forbidden("You cannot change another user's profile"));
    }
    Ok(())
}

/// GET /_matrix/client/v3/profile/{userId}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3profileuserid>
pub async fn get_profile(
    State(state): State<AppState>,
    req: Ruma<get_profile::v3::Request>,
) -> Result<get_profile::v3::Response> {
    let (displayname, avatar_url) = load(&state, &req.body.user_id).await?;
    let mut response = get_profile::v3::Response::new();
    if let Some(name) = displayname {
        response.data.set("displayname".into(), name.into());
    }
    if let Some(url) = avatar_url {
        response.data.set("avatar_url".into(), url.into());
    }
    for (field, value) in state
        .storage
        .profile_fields(req.body.user_id.as_str())
        .await?
    {
        if let Ok(value) = serde_json::from_str(&value) {
            response.data.set(field, value);
        }
    }
    Ok(response)
}

/// GET /_matrix/client/v3/profile/{userId}/{keyName}
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3profileuseridkeyname>
pub async fn get_profile_field(
    State(state): State<AppState>,
    req: Ruma<get_profile_field::v3::Request>,
) -> Result<get_profile_field::v3::Response> {
    let (displayname, avatar_url) = load(&state, &req.body.user_id).await?;
    let value = match req.body.field {
        ProfileFieldName::DisplayName => displayname.map(ProfileFieldValue::DisplayName),
        ProfileFieldName::AvatarUrl => {
            avatar_url.map(|url| ProfileFieldValue::AvatarUrl(OwnedMxcUri::from(url)))
        }
        ref other => other_field(&state, &req.body.user_id, other.as_str())
            .await?
            .and_then(|value| ProfileFieldValue::new(other.as_str(), value).ok()),
    };
    value
        .map(get_profile_field::v3::Response::new)
        .ok_or_else(|| Error::not_found("Profile field not set"))
}

/// PUT /_matrix/client/v3/profile/{userId}/{keyName}
///
/// <https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3profileuseridkeyname>
pub async fn set_profile_field(
    State(state): State<AppState>,
    req: Ruma<set_profile_field::v3::Request>,
) -> Result<set_profile_field::v3::Response> {
    let user_id = &req.sender().user_id;
    check_own(user_id, &req.body.user_id)?;
    let mark = match &req.body.value {
        ProfileFieldValue::DisplayName(name) => {
            if name.chars().count() > MAX_DISPLAYNAME_LEN {
                return Err(Error::invalid_param(format!(
                    "Display name is longer than {MAX_DISPLAYNAME_LEN} characters"
                )));
            }
            // An empty name clears it, as in Synapse.
            let name = Some(name.as_str()).filter(|n| !n.is_empty());
            state
                .storage
                .set_displayname(user_id.as_str(), name)
                .await?
        }
        ProfileFieldValue::AvatarUrl(url) => {
            let url = Some(url.as_str()).filter(|u| !u.is_empty());
            if let Some(url) = url {
                if !url.starts_with("mxc://") {
                    return Err(Error::invalid_param("avatar_url must be an mxc:// URI"));
                }
            }
            state.storage.set_avatar_url(user_id.as_str(), url).await?
        }
        other => {
            let field = other.field_name();
            let field = field.as_str();
            if field.len() > MAX_FIELD_NAME_BYTES {
                return Err(profile_error(
                    "M_KEY_TOO_LARGE",
                    format!("Profile field names are at most {MAX_FIELD_NAME_BYTES} bytes"),
                ));
            }
            if field.is_empty() {
                return Err(Error::invalid_param("The profile field name is empty"));
            }
            let value = serde_json::to_string(&other.value()).map_err(Error::internal)?;
            let stored = state
                .storage
                .set_profile_field(user_id.as_str(), field, &value, MAX_PROFILE_CHARS)
                .await?;
            if stored.is_err() {
                return Err(profile_error(
                    "M_PROFILE_TOO_LARGE",
                    "The profile would be larger than 64 KiB",
                ));
            }
            return Ok(set_profile_field::v3::Response::new());
        }
    };
    rooms::profile::propagate(&state, user_id, mark).await?;
    Ok(set_profile_field::v3::Response::new())
}

/// DELETE /_matrix/client/v3/profile/{userId}/{keyName}
///
/// <https://spec.matrix.org/latest/client-server-api/#delete_matrixclientv3profileuseridkeyname>
pub async fn delete_profile_field(
    State(state): State<AppState>,
    req: Ruma<delete_profile_field::v3::Request>,
) -> Result<delete_profile_field::v3::Response> {
    let user_id = &req.sender().user_id;
    check_own(user_id, &req.body.user_id)?;
    let mark = match req.body.field {
        ProfileFieldName::DisplayName => {
            state
                .storage
                .set_displayname(user_id.as_str(), None)
                .await?
        }
        ProfileFieldName::AvatarUrl => state.storage.set_avatar_url(user_id.as_str(), None).await?,
        ref other => {
            // Deleting a field that is not set is not an error (as for displayname).
            state
                .storage
                .delete_profile_field(user_id.as_str(), other.as_str())
                .await?;
            return Ok(delete_profile_field::v3::Response::new());
        }
    };
    rooms::profile::propagate(&state, user_id, mark).await?;
    Ok(delete_profile_field::v3::Response::new())
}
