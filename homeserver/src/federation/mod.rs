//! Federation's I/O: reaching other servers (discovery, TLS, X-Matrix signing), fetching and
//! caching their keys, and authenticating their requests to us. What the protocol says about
//! the bytes (signatures, key documents, events) is the `myelin-federation` crate's.

pub mod client;
pub mod e2ee;
pub mod inbound;
pub mod join;
pub mod keys;
pub mod sender;

pub use client::{FederationClient, FederationError};
