//! The Matrix server-server protocol as data and pure functions.
//!
//! It owns the server's ed25519 signing key ([`keys`]: generating it, loading it from its
//! stored seed, signing canonical JSON with it and publishing it), PDU building and hashing
//! ([`pdu`]), the authorization rules ([`auth`]), X-Matrix request signing and checking
//! ([`request_auth`]), reading and checking received PDUs ([`incoming`]) and the checking of peers' published keys ([`server_keys`]). It has no
//! HTTP server and no database: the homeserver crate passes in what it needs (a peer's key
//! it fetched, the bytes it received).

pub mod auth;
pub mod incoming;
pub mod keys;
pub mod pdu;
pub mod request_auth;
pub mod server_keys;
pub mod server_policy;
pub mod state_resolution;

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod pdu_tests;
