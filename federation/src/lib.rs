//! The Matrix server-server protocol as data and pure functions.
//!
//! Today this crate owns the server's ed25519 signing key ([`keys`]): generating it, loading it
//! from its stored seed, signing canonical JSON with it and publishing it. As federation grows it
//! will hold PDU building, hashing, redaction, authorization rules, state resolution and request
//! signing. It has no HTTP server and no database: the homeserver crate passes in what it needs.

pub mod auth;
pub mod keys;
pub mod pdu;

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod pdu_tests;
