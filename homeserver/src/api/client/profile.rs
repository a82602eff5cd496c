//! User profiles: display name and avatar.
//!
//! <https://spec.matrix.org/latest/client-server-api/#profiles>
//!
//! Profiles are public: reading one needs no access token. Only the user may change their own,
//! and a change is carried into every room they are joined to by a new `m.room.member` event.
//! (Profiles of users on other servers come with federation.)

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

/// The stored profile of a local user, or 404.
async fn load(state: &AppState, user_id: &UserId) -> Result<(Option<String>, Option<String>)> {
    if user_id.server_name() != state.server_name {
        return Err(Error::not_found(
            "Profile lookup over federation is not supported yet",
        ));
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
        _ => None,
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
        _ => {
            return Err(Error::forbidden(
                "Only displayname and avatar_url can be set on this server",
            ))
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
        _ => {
            return Err(Error::forbidden(
                "Only displayname and avatar_url can be changed on this server",
            ))
        }
    };
    rooms::profile::propagate(&state, user_id, mark).await?;
    Ok(delete_profile_field::v3::Response::new())
}
