//! Push (issue 11): each user's push rules, their evaluation for every new event, and the
//! unread counts that follow from it.
//!
//! <https://spec.matrix.org/latest/client-server-api/#push-notifications>
//!
//! - `rules.rs`: a user's ruleset, stored as their `m.push_rules` global account data (so
//!   `/sync` and `GET /account_data/m.push_rules` deliver it through the one account-data
//!   path) and cached per user; the changes the rules API makes, with its limits.
//! - `eval.rs`: evaluating a new event for every local member, in the write pipeline
//!   (`rooms::place`); the result is stored with the event (`event_push_actions`).
//! - `sender.rs`: the pusher worker, one task per pusher, delivering those notifications to
//!   push gateways durably and in order; `gateway.rs`: the Push Gateway API's request body and
//!   the guarded HTTP client that sends it.
//!
//! The protocol itself (the predefined rules, conditions, evaluation) is ruma's
//! (`ruma::push`); this module decides only where rules live and when they are evaluated.

pub mod eval;
pub mod gateway;
pub mod rules;
pub mod sender;
