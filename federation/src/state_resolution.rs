//! State resolution: the state of a room where forks of its DAG meet, with ruma's
//! implementation of the room version's algorithm (v2 for room versions 2-11, v2.1 for 12).
//!
//! <https://spec.matrix.org/latest/rooms/v2/#state-resolution>
//!
//! Pure: the caller passes the states to merge, and the events (a lookup) with their auth
//! chains already loaded. [`conflicted_subgraph`] is the v2.1 input ruma asks for: the events
//! on auth-event paths between two conflicted events.

use std::collections::{HashMap, HashSet};

use ruma::{
    events::StateEventType, room_version_rules::RoomVersionRules,
    state_res::utils::event_id_set::EventIdSet, EventId, OwnedEventId,
};

use crate::pdu::Pdu;

/// A state map as stored: `(type, state key)` → event ID.
pub type State = HashMap<(String, String), String>;

/// Why states could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("room version without state resolution v2")]
    Unsupported,
    #[error("invalid event ID {0}")]
    BadId(String),
    #[error("{0}")]
    Failed(String),
}

/// Merges `states` (each the state after one of the forks' tips). `auth_chains[i]` is the full
/// auth chain of the events in `states[i]`; `events` must hold every event of the states and
/// of their auth chains. States that agree on every key need no events at all.
pub fn resolve(
    rules: &RoomVersionRules,
    states: &[&State],
    auth_chains: Vec<HashSet<OwnedEventId>>,
    events: &HashMap<OwnedEventId, Pdu>,
) -> Result<State, ResolveError> {
    if let Some(first) = states.first() {
        if states.iter().all(|s| s == first) {
            return Ok((*first).clone());
        }
    }
    let v2 = rules
        .state_res
        .v2_rules()
        .ok_or(ResolveError::Unsupported)?;
    let maps = states
        .iter()
        .map(|state| {
            state
                .iter()
                .map(|((t, k), id)| {
                    let id = OwnedEventId::try_from(id.as_str())
                        .map_err(|_| ResolveError::BadId(id.clone()))?;
                    Ok(((StateEventType::from(t.as_str()), k.clone()), id))
                })
                .collect::<Result<HashMap<_, _>, ResolveError>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let chains: Vec<EventIdSet<OwnedEventId>> = auth_chains
        .into_iter()
        .map(|chain| chain.into_iter().collect())
        .collect();
    let fetch = |id: &EventId| events.get(id).cloned();
    let subgraph = |conflicted: &HashMap<(StateEventType, String), Vec<OwnedEventId>>| {
        let ids: Vec<&OwnedEventId> = conflicted.values().flatten().collect();
        Some(
            conflicted_subgraph(&ids, |id| events.get(id))
                .into_iter()
                .collect(),
        )
    };
    let resolved = ruma::state_res::resolve(
        &rules.authorization,
        v2,
        maps.iter(),
        chains,
        fetch,
        subgraph,
    )
    .map_err(|e| ResolveError::Failed(e.to_string()))?;
    Ok(resolved
        .into_iter()
        .map(|((t, k), id)| ((t.to_string(), k), id.to_string()))
        .collect())
}

/// The events that lie on an auth-event path from one of `conflicted` to another (both ends
/// included): the ancestors (through `auth_events`) of a conflicted event that themselves
/// reach a conflicted event. Events `event` does not know are left out.
pub fn conflicted_subgraph<'a>(
    conflicted: &[&OwnedEventId],
    event: impl Fn(&EventId) -> Option<&'a Pdu>,
) -> HashSet<OwnedEventId> {
    let targets: HashSet<&EventId> = conflicted.iter().map(|id| &***id).collect();
    // Whether each visited event reaches a conflicted event through its auth events.
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    // Iterative post-order walk from every conflicted event.
    for start in conflicted {
        let mut stack: Vec<(OwnedEventId, bool)> = vec![((*start).clone(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if reaches.contains_key(&id) && !expanded {
                continue;
            }
            let Some(pdu) = event(&id) else {
                reaches.insert(id, false);
                continue;
            };
            if expanded {
                let hit = pdu
                    .auth_events
                    .iter()
                    .any(|a| targets.contains::<EventId>(a) || reaches.get(a) == Some(&true));
                reaches.insert(id, hit);
                continue;
            }
            reaches.insert(id.clone(), false);
            stack.push((id, true));
            for parent in &pdu.auth_events {
                if !reaches.contains_key(parent) {
                    stack.push((parent.clone(), false));
                }
            }
        }
    }
    reaches
        .into_iter()
        .filter(|(id, hit)| *hit || targets.contains::<EventId>(id))
        .map(|(id, _)| id)
        .collect()
}
