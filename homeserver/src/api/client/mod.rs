//! The client-server API, one module per chapter of the spec.
//!
//! <https://spec.matrix.org/latest/client-server-api/>

mod account;
mod account_data;
mod device;
mod discovery;
mod profile;
pub(crate) mod register;
mod session;

use axum::Router;

pub use register::user_id_for_new_username;

use super::ruma::route;
use crate::AppState;

/// Every client-server endpoint, each registered from its ruma metadata.
pub fn routes(r: Router<AppState>) -> Router<AppState> {
    let r = discovery::routes(r);
    let r = route(r, register::register);
    let r = route(r, register::get_username_availability);
    let r = route(r, register::check_registration_token_validity);
    let r = route(r, session::get_login_types);
    let r = route(r, session::login);
    let r = route(r, session::logout);
    let r = route(r, session::logout_all);
    let r = route(r, account::whoami);
    let r = route(r, account::change_password);
    let r = route(r, account::deactivate);
    let r = route(r, device::get_devices);
    let r = route(r, device::get_device);
    let r = route(r, device::update_device);
    let r = route(r, device::delete_device);
    let r = route(r, device::delete_devices);
    let r = route(r, profile::get_profile);
    let r = route(r, profile::get_profile_field);
    let r = route(r, profile::set_profile_field);
    let r = route(r, profile::delete_profile_field);
    let r = route(r, account_data::get_global_account_data);
    route(r, account_data::set_global_account_data)
}
