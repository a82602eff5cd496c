//! Server discovery and capabilities: `/versions`, `/.well-known/matrix/*`, `/capabilities`.
//!
//! <https://spec.matrix.org/latest/client-server-api/#server-discovery>

use std::collections::BTreeMap;

use axum::{extract::State, routing::get, Json, Router};
use ruma::{
    api::client::discovery::{
        discover_homeserver::{self, HomeserverInfo},
        get_capabilities::{
            self,
            v3::{Capabilities, ProfileFieldsCapability, RoomVersionStability},
        },
        get_supported_versions,
    },
    RoomVersionId,
};

use crate::{
    api::ruma::{route, Ruma},
    error::Result,
    AppState,
};

/// The spec versions advertised to clients.
pub const SPEC_VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
    "v1.11", "v1.12",
];

/// The room versions this server creates rooms in, and the default.
pub const DEFAULT_ROOM_VERSION: RoomVersionId = RoomVersionId::V12;
pub const SUPPORTED_ROOM_VERSIONS: &[RoomVersionId] =
    &[RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

pub fn routes(r: Router<AppState>) -> Router<AppState> {
    let r = route(r, get_supported_versions);
    let r = route(r, discover_homeserver);
    let r = route(r, get_capabilities);
    r.route("/.well-known/matrix/server", get(well_known_server))
}

/// GET /_matrix/client/versions
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientversions>
async fn get_supported_versions(
    _: State<AppState>,
    _: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    let mut response = get_supported_versions::Response::new(
        SPEC_VERSIONS.iter().map(|v| v.to_string()).collect(),
    );
    // Only features that work: simplified sliding sync (MSC4186: Element X will not log in
    // without it) and mutual rooms (MSC2666, both paths; matrix-js-sdk asks for it by these
    // names before calling).
    response.unstable_features = [
        "org.matrix.simplified_msc3575",
        "uk.half-shot.msc2666.query_mutual_rooms",
        "uk.half-shot.msc2666.query_mutual_rooms.stable",
    ]
    .into_iter()
    .map(|feature| (feature.to_owned(), true))
    .collect::<BTreeMap<_, _>>();
    Ok(response)
}

/// GET /.well-known/matrix/client
///
/// <https://spec.matrix.org/latest/client-server-api/#getwell-knownmatrixclient>
async fn discover_homeserver(
    State(state): State<AppState>,
    _: Ruma<discover_homeserver::Request>,
) -> Result<discover_homeserver::Response> {
    let mut response =
        discover_homeserver::Response::new(HomeserverInfo::new(state.config.public_baseurl()));
    // MatrixRTC foci (MSC4143), when the operator runs a LiveKit JWT service.
    response.rtc_foci = super::rtc::configured_transports(&state);
    Ok(response)
}

/// GET /.well-known/matrix/server
///
/// <https://spec.matrix.org/latest/server-server-api/#getwell-knownmatrixserver>
async fn well_known_server(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "m.server": state.config.federation_public_address() }))
}

/// GET /_matrix/client/v3/capabilities
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3capabilities>
async fn get_capabilities(
    State(state): State<AppState>,
    _: Ruma<get_capabilities::v3::Request>,
) -> Result<get_capabilities::v3::Response> {
    let mut capabilities = Capabilities::new();
    capabilities.change_password.enabled = true;
    // Older clients read these instead of profile_fields.
    #[allow(deprecated)]
    {
        capabilities.set_displayname.enabled = true;
        capabilities.set_avatar_url.enabled = true;
    }
    capabilities.thirdparty_id_changes.enabled = false;
    capabilities.get_login_token.enabled = state.config.login_get_token_enabled;
    capabilities.room_versions.default = DEFAULT_ROOM_VERSION;
    capabilities.room_versions.available = SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| (v.clone(), RoomVersionStability::Stable))
        .collect();
    // Every field may be set (displayname and avatar_url, m.tz, custom namespaced keys).
    capabilities.profile_fields = Some(ProfileFieldsCapability::new(true));
    Ok(get_capabilities::v3::Response::new(capabilities))
}
