//! What a room list needs of many rooms at once (simplified sliding sync, MSC4186): each
//! room's *bump stamp* (the position of its newest event of the kinds that move a room up
//! the list), each room's type (from its create event), and current state entries across
//! rooms, each in one statement for a whole window rather than one per room.
//!
//! Bump stamps and room types are kept per process ([`RoomFacts`]): a room type never
//! changes, and a bump stamp only grows, so the writers (`persist_events`, through
//! `recent.rs`) raise it after commit and a reader stores what it read as the larger of the
//! two; neither can go stale while this process is the one writer. Several processes would
//! need the same change notifications as the recent-changes cache (ARCHITECTURE.md).

use std::{collections::HashMap, sync::Mutex};

use sqlx::Row;

use crate::{rooms::placeholders_from, Result, Storage};

/// The event types that bump a room in the list (MSC4186's "proper activity").
pub const BUMP_EVENT_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// Rooms per statement.
const ROOMS_PER_STATEMENT: usize = 200;
/// Rooms remembered before the maps start over (~100 bytes each).
const MAX_ROOMS: usize = 1_000_000;

/// Per-process facts about rooms; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct RoomFacts {
    bumps: Mutex<HashMap<String, i64>>,
    /// `None`: a room without a type (the usual chat room).
    types: Mutex<HashMap<String, Option<String>>>,
}

impl RoomFacts {
    /// Raises a room's bump stamp (a writer, after commit).
    pub(crate) fn bumped(&self, room_id: &str, position: i64) {
        let mut bumps = self.bumps.lock().unwrap_or_else(|e| e.into_inner());
        if bumps.len() >= MAX_ROOMS {
            bumps.clear();
        }
        let entry = bumps.entry(room_id.to_owned()).or_default();
        *entry = (*entry).max(position);
    }
}

impl Storage {
    /// The bump stamp of each room that has one: the stream position of its newest event of
    /// [`BUMP_EVENT_TYPES`]. Rooms without such an event (a federated room joined after its
    /// last message, say) are missing from the answer.
    pub async fn bump_stamps(&self, rooms: &[&str]) -> Result<HashMap<String, i64>> {
        let mut out = HashMap::with_capacity(rooms.len());
        let mut missing = Vec::new();
        {
            let bumps = self.facts.bumps.lock().unwrap_or_else(|e| e.into_inner());
            for room in rooms {
                match bumps.get(*room) {
                    Some(p) => {
                        out.insert(room.to_string(), *p);
                    }
                    None => missing.push(*room),
                }
            }
        }
        let types = BUMP_EVENT_TYPES
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        for chunk in missing.chunks(ROOMS_PER_STATEMENT) {
            // Each room walks its `(room_id, stream_ordering)` index backwards to its newest
            // bumping event: usually the newest event of all.
            let sql = (0..chunk.len())
                .map(|i| {
                    format!(
                        "SELECT * FROM (SELECT room_id, stream_ordering FROM events
                                        WHERE room_id = ${} AND stream_ordering IS NOT NULL
                                          AND rejected_reason IS NULL AND event_type IN ({types})
                                        ORDER BY stream_ordering DESC LIMIT 1) AS q{i}",
                        i + 1
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for room in chunk {
                query = query.bind(*room);
            }
            let rows = query.fetch_all(&self.pool).await?;
            let mut bumps = self.facts.bumps.lock().unwrap_or_else(|e| e.into_inner());
            for row in rows {
                let room: String = row.try_get("room_id")?;
                let position: i64 = row.try_get("stream_ordering")?;
                // A writer may have raised it meanwhile: keep the larger.
                let entry = bumps.entry(room.clone()).or_default();
                *entry = (*entry).max(position);
                out.insert(room, *entry);
            }
        }
        Ok(out)
    }

    /// Each room's type (`content.type` of its create event; `None` for none), for the rooms
    /// whose create event is known here.
    pub async fn room_types(&self, rooms: &[&str]) -> Result<HashMap<String, Option<String>>> {
        let mut out = HashMap::with_capacity(rooms.len());
        let mut missing = Vec::new();
        {
            let types = self.facts.types.lock().unwrap_or_else(|e| e.into_inner());
            for room in rooms {
                match types.get(*room) {
                    Some(t) => {
                        out.insert(room.to_string(), t.clone());
                    }
                    None => missing.push(*room),
                }
            }
        }
        for chunk in missing.chunks(ROOMS_PER_STATEMENT) {
            let sql = format!(
                "SELECT e.room_id, e.pdu FROM current_state c JOIN events e ON e.event_id = c.event_id
                 WHERE c.room_id IN ({}) AND c.event_type = 'm.room.create' AND c.state_key = ''",
                placeholders_from(1, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for room in chunk {
                query = query.bind(*room);
            }
            let rows = query.fetch_all(&self.pool).await?;
            let mut types = self.facts.types.lock().unwrap_or_else(|e| e.into_inner());
            if types.len() >= MAX_ROOMS {
                types.clear();
            }
            for row in rows {
                let room: String = row.try_get("room_id")?;
                let pdu: String = row.try_get("pdu")?;
                let room_type = serde_json::from_str::<serde_json::Value>(&pdu)
                    .ok()
                    .and_then(|v| v["content"]["type"].as_str().map(str::to_owned));
                types.insert(room.clone(), room_type.clone());
                out.insert(room, room_type);
            }
        }
        Ok(out)
    }

    /// The current state entries of `event_types` (every state key) in `rooms`:
    /// `(room, type, state key, event ID)`.
    pub async fn current_state_of_types(
        &self,
        rooms: &[&str],
        event_types: &[&str],
    ) -> Result<Vec<(String, String, String, String)>> {
        let mut out = Vec::new();
        if event_types.is_empty() {
            return Ok(out);
        }
        for chunk in rooms.chunks(ROOMS_PER_STATEMENT) {
            let sql = format!(
                "SELECT room_id, event_type, state_key, event_id FROM current_state
                 WHERE room_id IN ({}) AND event_type IN ({})",
                placeholders_from(1, chunk.len()),
                placeholders_from(1 + chunk.len(), event_types.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for room in chunk {
                query = query.bind(*room);
            }
            for t in event_types {
                query = query.bind(*t);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push((
                    row.try_get("room_id")?,
                    row.try_get("event_type")?,
                    row.try_get("state_key")?,
                    row.try_get("event_id")?,
                ));
            }
        }
        Ok(out)
    }
}
