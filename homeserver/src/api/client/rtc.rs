//! MatrixRTC transport discovery ([MSC4143], unstable).
//!
//! matrix-js-sdk asks for the homeserver's RTC transports (the LiveKit SFUs Element Call would
//! use) as soon as its client starts. Myelin runs no SFU and has no option to name one, so it
//! answers with none: the same answer Synapse gives with MSC4143 on and no
//! `matrix_rtc.transports` configured. Clients then fall back to their own configuration, as
//! they do after a 404, without a failed request at every start-up.
//!
//! [MSC4143]: https://github.com/matrix-org/matrix-spec-proposals/pull/4143

use axum::extract::State;
use ruma::api::client::rtc::transports;

use crate::{api::ruma::Ruma, error::Result, AppState};

/// GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports
///
/// The transports this homeserver offers for MatrixRTC sessions: none.
pub async fn get_rtc_transports(
    State(_state): State<AppState>,
    _req: Ruma<transports::v1::Request>,
) -> Result<transports::v1::Response> {
    Ok(transports::v1::Response::new(Vec::new()))
}
