//! Sync filters: what the client asked to see, reduced to the checks the engine makes.
//!
//! <https://spec.matrix.org/latest/client-server-api/#filtering>

use std::collections::HashSet;

use myelin_storage::EventRow;
use ruma::api::client::filter::FilterDefinition;

/// Timeline events per room when the filter gives no limit (Synapse's default).
const DEFAULT_TIMELINE_LIMIT: i64 = 10;
/// The most timeline events per room a filter may ask for.
const MAX_TIMELINE_LIMIT: i64 = 1000;

#[derive(Debug, Clone)]
pub struct SyncFilter {
    pub timeline_limit: i64,
    pub lazy_load_members: bool,
    /// With lazy-loading: send member events the device already has, too.
    pub include_redundant_members: bool,
    pub include_leave: bool,
    rooms: Option<HashSet<String>>,
    not_rooms: HashSet<String>,
    timeline_types: Option<Vec<String>>,
    timeline_not_types: Vec<String>,
    account_data_types: Option<Vec<String>>,
    account_data_not_types: Vec<String>,
}

impl Default for SyncFilter {
    fn default() -> Self {
        SyncFilter::from_definition(&FilterDefinition::default())
    }
}

/// Event type patterns allow a trailing `*`.
fn matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

fn type_allowed(types: &Option<Vec<String>>, not_types: &[String], event_type: &str) -> bool {
    types
        .as_ref()
        .is_none_or(|t| t.iter().any(|p| matches(p, event_type)))
        && !not_types.iter().any(|p| matches(p, event_type))
}

impl SyncFilter {
    pub fn from_definition(def: &FilterDefinition) -> SyncFilter {
        let room = &def.room;
        SyncFilter {
            timeline_limit: room
                .timeline
                .limit
                .map(|l| u64::from(l) as i64)
                .unwrap_or(DEFAULT_TIMELINE_LIMIT)
                .clamp(1, MAX_TIMELINE_LIMIT),
            lazy_load_members: !room.state.lazy_load_options.is_disabled()
                || !room.timeline.lazy_load_options.is_disabled(),
            include_redundant_members: [
                room.state.lazy_load_options,
                room.timeline.lazy_load_options,
            ]
            .iter()
            .any(|o| {
                matches!(
                    o,
                    ruma::api::client::filter::LazyLoadOptions::Enabled {
                        include_redundant_members: true
                    }
                )
            }),
            include_leave: room.include_leave,
            rooms: room
                .rooms
                .as_ref()
                .map(|r| r.iter().map(|id| id.to_string()).collect()),
            not_rooms: room.not_rooms.iter().map(|id| id.to_string()).collect(),
            timeline_types: room.timeline.types.clone(),
            timeline_not_types: room.timeline.not_types.clone(),
            account_data_types: def.account_data.types.clone(),
            account_data_not_types: def.account_data.not_types.clone(),
        }
    }

    pub fn wants_room(&self, room_id: &str) -> bool {
        self.rooms.as_ref().is_none_or(|r| r.contains(room_id)) && !self.not_rooms.contains(room_id)
    }

    pub fn wants_timeline_event(&self, row: &EventRow) -> bool {
        type_allowed(
            &self.timeline_types,
            &self.timeline_not_types,
            &row.event_type,
        )
    }

    pub fn wants_account_data(&self, data_type: &str) -> bool {
        type_allowed(
            &self.account_data_types,
            &self.account_data_not_types,
            data_type,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_types() {
        let def: FilterDefinition = serde_json::from_value(serde_json::json!({
            "room": {
                "timeline": { "limit": 5, "not_types": ["m.room.member"] },
                "state": { "lazy_load_members": true },
                "not_rooms": ["!a:x"]
            },
            "account_data": { "types": ["m.direct", "im.vector.*"] }
        }))
        .unwrap();
        let f = SyncFilter::from_definition(&def);
        assert_eq!(f.timeline_limit, 5);
        assert!(f.lazy_load_members);
        assert!(!f.wants_room("!a:x") && f.wants_room("!b:x"));
        assert!(f.wants_account_data("im.vector.setting") && f.wants_account_data("m.direct"));
        assert!(!f.wants_account_data("m.other"));
        assert_eq!(SyncFilter::default().timeline_limit, DEFAULT_TIMELINE_LIMIT);
    }
}
