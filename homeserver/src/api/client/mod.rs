//! The client-server API, one module per chapter of the spec.
//!
//! <https://spec.matrix.org/latest/client-server-api/>

mod account;
mod account_data;
mod backup;
mod device;
pub(crate) mod directory;
pub(crate) mod discovery;
mod initial_sync;
pub(crate) mod keys;
mod media;
pub(crate) mod membership;
mod message;
pub(crate) mod openid;
mod presence;
mod profile;
mod push;
mod pushers;
mod receipts;
pub(crate) mod register;
mod relations;
mod report;
mod room;
mod rtc;
pub(crate) mod search;
mod session;
pub(crate) mod space;
pub(crate) mod sync;
mod thirdparty;
mod threads;
pub(crate) mod to_device;
pub(crate) mod user_directory;
mod voip;

use axum::Router;

pub(crate) use account_data::write_account_data;
pub use register::user_id_for_new_username;

use super::ruma::{route, route_raw, route_stream, route_with_body};
use crate::AppState;

/// Every client-server endpoint, each registered from its ruma metadata.
pub fn routes(r: Router<AppState>) -> Router<AppState> {
    let r = discovery::routes(r);
    let r = route_raw(r, register::register_http);
    let r = route(r, register::get_username_availability);
    let r = route(r, register::check_registration_token_validity);
    let r = route(r, session::get_login_types);
    let r = route(r, session::login);
    let r = route(r, session::refresh);
    let r = route(r, session::get_login_token);
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
    let r = route(r, account_data::set_global_account_data);
    let r = route(r, room::create_room);
    let r = route(r, membership::join_room_by_id);
    let r = route(r, membership::join_room_by_id_or_alias);
    let r = route(r, membership::invite_user);
    let r = route(r, membership::leave_room);
    let r = route(r, membership::kick_user);
    let r = route(r, membership::ban_user);
    let r = route(r, membership::unban_user);
    let r = route(r, membership::forget_room);
    let r = route(r, membership::joined_rooms);
    let r = route(r, membership::joined_members);
    let r = route(r, membership::get_member_events);
    let r = route(r, message::send_message_event);
    let r = route(r, message::send_state_event);
    let r = route(r, message::get_state_event_for_key);
    let r = route(r, message::get_state_events);
    let r = route(r, message::get_room_event);
    let r = route(r, message::get_message_events);
    let r = route(r, message::redact_event);
    let r = route(r, directory::create_alias);
    let r = route(r, directory::get_alias);
    let r = route(r, directory::delete_alias);
    let r = route(r, directory::get_room_aliases);
    let r = route(r, directory::get_room_visibility);
    let r = route(r, directory::set_room_visibility);
    let r = route(r, directory::get_public_rooms);
    let r = route(r, directory::get_public_rooms_filtered);
    let r = route(r, user_directory::search_user_directory);
    let r = route_with_body(r, search::search);
    let r = route(r, threads::get_threads);
    let r = route_raw(r, initial_sync::room_initial_sync);
    let r = route_raw(r, space::get_hierarchy);
    let r = route_raw(r, space::get_room_summary);
    let r = route(r, account_data::get_room_account_data);
    let r = route(r, account_data::set_room_account_data);
    let r = route(r, account_data::get_tags);
    let r = route(r, account_data::create_tag);
    let r = route(r, account_data::delete_tag);
    let r = route(r, relations::get_context);
    let r = route(r, relations::get_relating_events);
    let r = route(r, relations::get_relating_events_with_rel_type);
    let r = route(
        r,
        relations::get_relating_events_with_rel_type_and_event_type,
    );
    let r = route(r, membership::knock_room);
    let r = route(r, room::upgrade_room);
    let r = route_raw(r, |state, req| sync::sync_events(state, Box::new(req)));
    let r = route_with_body(r, |state, req| sync::sync_events_v5(state, Box::new(req)));
    let r = route(r, sync::create_filter);
    let r = route(r, sync::get_filter);
    let r = route(r, receipts::create_typing_event);
    let r = route(r, receipts::create_receipt);
    let r = route(r, receipts::set_read_marker);
    let r = route(r, push::get_pushrules_all);
    let r = route(r, push::get_pushrules_global_scope);
    let r = route(r, push::get_pushrule);
    let r = route(r, push::set_pushrule);
    let r = route(r, push::delete_pushrule);
    let r = route(r, push::get_pushrule_enabled);
    let r = route(r, push::set_pushrule_enabled);
    let r = route(r, push::get_pushrule_actions);
    let r = route(r, push::set_pushrule_actions);
    let r = route(r, push::get_notifications);
    let r = route(r, pushers::get_pushers);
    let r = route(r, pushers::set_pusher);
    let r = route(r, rtc::get_rtc_transports);
    let r = route(r, thirdparty::get_protocols);
    let r = route(r, report::report_event);
    let r = route(r, report::report_room);
    let r = route(r, report::report_user);
    let r = route(r, openid::request_openid_token);
    let r = route_raw(r, account::get_3pids);
    let r = route(r, membership::get_mutual_rooms);
    let r = route(r, membership::get_mutual_rooms_unstable);
    let r = route(r, message::get_event_by_timestamp);
    let r = route_raw(r, voip::get_turn_server_info);
    let r = route(r, presence::get_presence);
    let r = route(r, presence::set_presence);
    let r = route(r, keys::upload_keys);
    let r = route(r, keys::get_keys);
    let r = route(r, keys::claim_keys);
    let r = route(r, keys::get_key_changes);
    let r = route(r, keys::upload_signing_keys);
    let r = route(r, keys::upload_signatures);
    let r = route(r, to_device::send_event_to_device);
    let r = route(r, backup::create_backup_version);
    let r = route(r, backup::get_latest_backup_info);
    let r = route(r, backup::get_backup_info);
    let r = route(r, backup::update_backup_version);
    let r = route(r, backup::delete_backup_version);
    let r = route(r, backup::add_backup_keys);
    let r = route(r, backup::add_backup_keys_for_room);
    let r = route(r, backup::add_backup_keys_for_session);
    let r = route(r, backup::get_backup_keys);
    let r = route(r, backup::get_backup_keys_for_room);
    let r = route(r, backup::get_backup_keys_for_session);
    let r = route(r, backup::delete_backup_keys);
    let r = route(r, backup::delete_backup_keys_for_room);
    let r = route(r, backup::delete_backup_keys_for_session);
    let r = route_stream(r, media::create_content);
    let r = route(r, media::create_mxc_uri);
    let r = route_stream(r, media::create_content_async);
    let r = route_raw(r, media::get_content_authenticated);
    let r = route_raw(r, media::get_content_as_filename_authenticated);
    let r = route_raw(r, media::get_content);
    let r = route_raw(r, media::get_content_as_filename);
    let r = route_raw(r, media::get_content_thumbnail_authenticated);
    let r = route_raw(r, media::get_content_thumbnail);
    let r = route(r, media::get_media_config_authenticated);
    let r = route(r, media::get_media_config);
    let r = route(r, media::get_media_preview_authenticated);
    let r = route(r, media::get_media_preview);
    r.route(
        "/_matrix/client/unstable/io.myelin/sync/ws",
        axum::routing::get(crate::sync::ws::sync_ws),
    )
    .route(
        "/_matrix/federation/v1/openid/userinfo",
        axum::routing::get(openid::openid_userinfo),
    )
    .route(
        "/_matrix/client/unstable/io.myelin/sliding_sync/ws",
        axum::routing::get(crate::sync::sliding::ws::sliding_sync_ws),
    )
}
