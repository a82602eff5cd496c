//! The black-box scenario suite: one test binary, one module per area.
//!
//! Scenario tests are named after the acceptance list
//! (`/work/shared/design/acceptance-scenarios.md` in the project's shared
//! notes): `aNN_…` covers scenario NN. Each runs once per storage backend as
//! `<module>::sqlite::aNN_…` and `<module>::postgres::aNN_…`. Tests without a
//! number check the operational contract (configuration, shutdown, rate
//! limits, shared-secret registration) and run on SQLite only where the
//! backend does not matter.
//!
//! Handy filters: `cargo test -p complement-tests a07`,
//! `cargo test -p complement-tests sqlite::`.

// matrix-sdk's futures are deep: proving its sync loop `Send` for `tokio::spawn` needs more
// than the default 128 levels.
#![recursion_limit = "256"]

#[path = "suite/account.rs"]
mod account;
#[path = "suite/admin.rs"]
mod admin;
#[path = "suite/bounded.rs"]
mod bounded;
#[path = "suite/client_extras.rs"]
mod client_extras;
#[path = "suite/config.rs"]
mod config;
#[path = "suite/consistency.rs"]
mod consistency;
#[path = "suite/delivered.rs"]
mod delivered;
#[path = "suite/devices.rs"]
mod devices;
#[path = "suite/directory.rs"]
mod directory;
#[path = "suite/e2ee.rs"]
mod e2ee;
#[path = "suite/element_x.rs"]
mod element_x;
#[path = "suite/ephemeral.rs"]
mod ephemeral;
#[path = "suite/errors.rs"]
mod errors;
#[path = "suite/fake_peer.rs"]
mod fake_peer;
#[path = "suite/federation.rs"]
mod federation;
#[path = "suite/federation_e2ee.rs"]
mod federation_e2ee;
#[path = "suite/federation_peer.rs"]
mod federation_peer;
#[path = "suite/filters.rs"]
mod filters;
#[path = "suite/login.rs"]
mod login;
#[path = "suite/matrix_js_sdk.rs"]
mod matrix_js_sdk;
#[path = "suite/matrix_sdk_e2ee.rs"]
mod matrix_sdk_e2ee;
#[path = "suite/media.rs"]
mod media;
#[path = "suite/pagination.rs"]
mod pagination;
#[path = "suite/presence.rs"]
mod presence;
#[path = "suite/privacy.rs"]
mod privacy;
#[path = "suite/push_counts.rs"]
mod push_counts;
#[path = "suite/push_rules.rs"]
mod push_rules;
#[path = "suite/pushers.rs"]
mod pushers;
#[path = "suite/register.rs"]
mod register;
#[path = "suite/restart.rs"]
mod restart;
#[path = "suite/rooms.rs"]
mod rooms;
#[path = "suite/rooms_advanced.rs"]
mod rooms_advanced;
#[path = "suite/search.rs"]
mod search;
#[path = "suite/sliding_sync.rs"]
mod sliding_sync;
#[path = "suite/sliding_sync_sdk.rs"]
mod sliding_sync_sdk;
#[path = "suite/spaces.rs"]
mod spaces;
#[path = "suite/state_history.rs"]
mod state_history;
#[path = "suite/sync.rs"]
mod sync;
#[path = "suite/sync_consistency.rs"]
mod sync_consistency;
#[path = "suite/threads.rs"]
mod threads;
#[path = "suite/user_directory.rs"]
mod user_directory;
#[path = "suite/versions.rs"]
mod versions;
#[path = "suite/websocket.rs"]
mod websocket;
