//! MatrixRTC transport discovery ([MSC4143], unstable).
//!
//! matrix-js-sdk asks for the homeserver's RTC transports (the LiveKit SFUs Element Call would
//! use) as soon as its client starts. Myelin runs no SFU itself: the operator names their
//! LiveKit JWT services with `rtc.livekit_service_urls`, and these are the answer here and in
//! `/.well-known/matrix/client` (`org.matrix.msc4143.rtc_foci`). With none configured the
//! answer is empty, as Synapse's with MSC4143 on and no `matrix_rtc.transports`; clients then
//! fall back to their own configuration, without a failed request at every start-up.
//!
//! [MSC4143]: https://github.com/matrix-org/matrix-spec-proposals/pull/4143

use axum::extract::State;
use ruma::api::client::rtc::{transports, RtcTransport};

use crate::{api::ruma::Ruma, error::Result, AppState};

/// GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports
///
/// The transports this homeserver offers for MatrixRTC sessions.
pub async fn get_rtc_transports(
    State(state): State<AppState>,
    _req: Ruma<transports::v1::Request>,
) -> Result<transports::v1::Response> {
    Ok(transports::v1::Response::new(configured_transports(&state)))
}

/// The LiveKit transports the operator configured, in their order.
pub(super) fn configured_transports(state: &AppState) -> Vec<RtcTransport> {
    state
        .config
        .rtc
        .livekit_service_urls
        .iter()
        .filter_map(|url| {
            let mut data = serde_json::Map::new();
            data.insert("livekit_service_url".into(), url.clone().into());
            RtcTransport::new("livekit", data).ok()
        })
        .collect()
}
