//! Third-party networks (application-service bridges).
//!
//! <https://spec.matrix.org/latest/client-server-api/#third-party-networks>
//!
//! Myelin has no application services yet, so no bridge offers a protocol. Element asks at
//! every start (to decide whether to show "dial pad" and bridge lookups); the answer is the
//! spec's "none", not a 404.

use axum::extract::State;
use ruma::api::client::thirdparty::get_protocols;

use crate::{api::ruma::Ruma, error::Result, AppState};

/// GET /_matrix/client/v3/thirdparty/protocols
///
/// <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3thirdpartyprotocols>
pub async fn get_protocols(
    State(_state): State<AppState>,
    _req: Ruma<get_protocols::v3::Request>,
) -> Result<get_protocols::v3::Response> {
    Ok(get_protocols::v3::Response::new(Default::default()))
}
