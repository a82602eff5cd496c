//! Events from other servers into the one write pipeline.
//!
//! A received PDU is checked as the spec orders
//! (<https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu>):
//! 1. format and event ID, 2. signatures and content hash ([`verify`]: the signing servers'
//!    keys are fetched as needed; a wrong hash keeps the event redacted);
//!
//! then, under the room's write lock like a local send ([`receive`] → `write_remote`):
//!
//! 3. authorization against its own auth events; 4. against the state before it: the state
//!    after its one parent, or the state resolution of its parents' states; 5. soft failure
//!    against the room's current state. Then the room's forward extremities move (its parents
//!    leave, it joins) and the current state becomes the state resolution of the new
//!    extremities' states; both are written with the event in one transaction.
//!
//! A run of received events that each extend the head without changing state
//! ([`extends_head`]) takes a shorter path ([`place_received`]): the state before each is the
//! current state, checked from the head's parsed events, and the writer commits the run in
//! one transaction, as it does local sends.
//!
//! Parents we do not hold are fetched from the sending server before the event is placed
//! ([`fetch_missing_prevs`]: the gap with `/get_missing_events`, up to [`MAX_GAP_FILLED`]
//! in pages, then one by one with `/event`); what is served to others for the
//! same is [`missing_events`].
//!
//! Missing so far (the next issue's gap handling): a gap longer than that is refused rather
//! than accepted with the state fetched (`/state_ids`); auth events we do not hold are not
//! fetched; rejected and soft-failed events are refused rather than stored as such.

use std::collections::{HashMap, HashSet};

use myelin_federation::{
    auth,
    incoming::{self, Checked, Incoming},
    pdu::Pdu,
    state_resolution,
};
use ruma::{
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    serde::Base64,
    signatures::PublicKeyMap,
    CanonicalJsonObject, OwnedEventId, RoomId,
};
use tokio::sync::oneshot;

use super::{parse_row, Prepared, RoomHead};
use crate::{auth::now_ms, error::Error, federation::keys::verify_key_at, AppState};

/// A received event waiting for its room's writer.
pub(super) struct RemoteJob {
    pub incoming: Incoming,
    pub reply: oneshot::Sender<Result<OwnedEventId, Error>>,
}

/// Steps 1 and 2: reads `object` as an event of a room with `rules` and checks its signatures
/// and content hash. An event whose hash is wrong comes back redacted.
pub async fn verify(
    state: &AppState,
    rules: &RoomVersionRules,
    object: CanonicalJsonObject,
) -> Result<Incoming, Error> {
    let mut incoming = incoming::read(object, rules).map_err(super::pdu_error)?;
    let signers = incoming::signers(&incoming.object, rules).map_err(super::pdu_error)?;
    let ts = i64::from(incoming.pdu.origin_server_ts.get());
    let mut keys = PublicKeyMap::new();
    for (server, key_ids) in signers {
        let mut found = std::collections::BTreeMap::new();
        for key_id in key_ids {
            if let Some(key) = verify_key_at(state, &server, &key_id, ts).await? {
                let key =
                    Base64::parse(&key).map_err(|_| Error::internal("stored key is not base64"))?;
                found.insert(key_id, key);
            }
        }
        if found.is_empty() {
            return Err(Error::forbidden(format!(
                "No usable key of {server} signs {}",
                incoming.event_id
            )));
        }
        keys.insert(server.to_string(), found);
    }
    match incoming::verify(&incoming.object, &keys, rules) {
        Ok(Checked::Intact) => Ok(incoming),
        Ok(Checked::Redact) => {
            tracing::info!(event_id = %incoming.event_id, "content hash mismatch: keeping the event redacted");
            incoming.object = myelin_federation::pdu::redact_pdu(&incoming.object, rules)
                .map_err(super::pdu_error)?;
            incoming.pdu = Pdu::from_canonical(
                incoming.event_id.clone(),
                incoming.room_id.clone(),
                &incoming.object,
            )
            .map_err(super::pdu_error)?;
            Ok(incoming)
        }
        Err(reason) => Err(Error::forbidden(format!(
            "Bad signature on {}: {reason}",
            incoming.event_id
        ))),
    }
}

/// Steps 3-5 and the commit, in the room's writer (serialised with local sends). Returns the
/// event's ID once it is stored (at once if it was stored before).
pub async fn receive(state: &AppState, incoming: Incoming) -> Result<OwnedEventId, Error> {
    let room_id = incoming.room_id.clone();
    let slot = state.room_locks.get(&room_id);
    let (reply, answer) = oneshot::channel();
    slot.push_remote(RemoteJob { incoming, reply });
    super::run_writer(state, &room_id, slot).await;
    answer
        .await
        .map_err(|_| Error::internal("the room writer stopped"))?
}

/// [`receive`] for several events of one room, handed to its writer together (in order) so
/// that it can commit a run of them at once. Returns each one's outcome, in order.
pub async fn receive_many(
    state: &AppState,
    events: Vec<Incoming>,
) -> Vec<Result<OwnedEventId, Error>> {
    let Some(room_id) = events.first().map(|e| e.room_id.clone()) else {
        return Vec::new();
    };
    let slot = state.room_locks.get(&room_id);
    let mut answers = Vec::with_capacity(events.len());
    for incoming in events {
        if incoming.room_id != room_id {
            answers.push(None);
            continue;
        }
        let (reply, answer) = oneshot::channel();
        slot.push_remote(RemoteJob { incoming, reply });
        answers.push(Some(answer));
    }
    super::run_writer(state, &room_id, slot).await;
    let mut out = Vec::with_capacity(answers.len());
    for answer in answers {
        out.push(match answer {
            Some(answer) => answer
                .await
                .map_err(|_| Error::internal("the room writer stopped"))
                .and_then(|r| r),
            None => Err(Error::internal(
                "a batch of received events spans several rooms",
            )),
        });
    }
    out
}

/// The full auth chain of the events in `ids` (their auth events, recursively), with every
/// event read (the events themselves included) parsed into `events`.
async fn auth_chain(
    state: &AppState,
    ids: impl Iterator<Item = String>,
    events: &mut HashMap<OwnedEventId, Pdu>,
) -> Result<HashSet<OwnedEventId>, Error> {
    let mut chain: HashSet<OwnedEventId> = HashSet::new();
    let mut frontier: Vec<OwnedEventId> = ids
        .filter_map(|id| OwnedEventId::try_from(id).ok())
        .collect();
    while !frontier.is_empty() {
        let wanted: Vec<String> = frontier
            .iter()
            .filter(|id| !events.contains_key(*id))
            .map(|id| id.to_string())
            .collect();
        for row in state.storage.get_events(&wanted).await? {
            let pdu = parse_row(&row)?;
            events.insert(pdu.event_id.clone(), pdu);
        }
        let mut next = Vec::new();
        for id in &frontier {
            if let Some(pdu) = events.get(id) {
                for parent in &pdu.auth_events {
                    if chain.insert(parent.clone()) {
                        next.push(parent.clone());
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(chain)
}

/// Resolves `states` (the states after the tips being merged) with the room's algorithm.
async fn resolve(
    state: &AppState,
    rules: &RoomVersionRules,
    states: &[&myelin_storage::StateMap],
) -> Result<myelin_storage::StateMap, Error> {
    if let Some(first) = states.first() {
        if states.iter().all(|s| s == first) {
            return Ok((*first).clone());
        }
    }
    let mut events = HashMap::new();
    let mut chains = Vec::with_capacity(states.len());
    for s in states {
        chains.push(auth_chain(state, s.values().cloned(), &mut events).await?);
    }
    // Every event of the states must be loaded too, not only their ancestors.
    let missing: Vec<String> = states
        .iter()
        .flat_map(|s| s.values())
        .filter(|id| {
            OwnedEventId::try_from(id.as_str())
                .map(|id| !events.contains_key(&id))
                .unwrap_or(false)
        })
        .cloned()
        .collect();
    for row in state.storage.get_events(&missing).await? {
        let pdu = parse_row(&row)?;
        events.insert(pdu.event_id.clone(), pdu);
    }
    state_resolution::resolve(rules, states, chains, &events).map_err(|e| {
        tracing::warn!(error = %e, "state resolution failed");
        Error::forbidden(format!("State resolution failed: {e}"))
    })
}

/// The parsed events of `ids` the authorization rules may read from a state: every auth type
/// but members, plus the members the event is about.
async fn auth_state_pdus(
    state: &AppState,
    map: &myelin_storage::StateMap,
    pdu: &Pdu,
) -> Result<HashMap<String, Pdu>, Error> {
    let wanted = auth_state_ids(map, pdu);
    let mut out = HashMap::new();
    for row in state.storage.get_events(&wanted).await? {
        out.insert(row.event_id.clone(), parse_row(&row)?);
    }
    Ok(out)
}

/// The IDs in `map` of the events the authorization rules may read for `pdu`: every auth
/// type but members, plus the members the event is about.
fn auth_state_ids(map: &myelin_storage::StateMap, pdu: &Pdu) -> Vec<String> {
    let mut users = vec![pdu.sender.to_string()];
    if let Some(key) = &pdu.state_key {
        users.push(key.clone());
    }
    if let Some(via) = pdu.content_json()["join_authorised_via_users_server"].as_str() {
        users.push(via.to_owned());
    }
    map.iter()
        .filter(|((t, k), _)| {
            if t == "m.room.member" {
                users.contains(k)
            } else {
                super::AUTH_TYPES.contains(&t.as_str())
            }
        })
        .map(|(_, id)| id.clone())
        .collect()
}

fn check_state(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    map: &myelin_storage::StateMap,
    pdus: &HashMap<String, Pdu>,
) -> Result<(), String> {
    auth::check_state(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
        map.get(&(t.to_string(), k.to_owned()))
            .and_then(|id| pdus.get(id))
    })
}

/// What a received redaction rewrites, if it may: its target must be an event of the room
/// we hold, and the redaction's server must be the target sender's server or its sender
/// must have the `redact` power level (the check the authorization rules leave to servers,
/// <https://spec.matrix.org/latest/rooms/v11/#handling-redactions>). A redaction that may not
/// apply (or whose target we do not hold) is still stored, as an event that redacts nothing.
async fn remote_redaction(
    state: &AppState,
    room_id: &RoomId,
    head: &mut RoomHead,
    pdu: &Pdu,
) -> Result<Option<(String, String)>, Error> {
    let Some(target) = pdu.redacts.as_deref() else {
        return Ok(None);
    };
    let Some(row) = state
        .storage
        .get_event(target.as_str())
        .await?
        .filter(|row| row.room_id == room_id.as_str())
    else {
        return Ok(None);
    };
    if row.redacted_by.is_some() {
        return Ok(None);
    }
    let same_server = ruma::UserId::parse(&row.sender)
        .is_ok_and(|target_sender| target_sender.server_name() == pdu.sender.server_name());
    if !same_server {
        // The power check reads the room's create and power levels events from the head.
        let wanted: Vec<String> = ["m.room.create", "m.room.power_levels"]
            .iter()
            .filter_map(|t| head.current.get(&(t.to_string(), String::new())).cloned())
            .filter(|id| !head.pdus.contains_key(id))
            .collect();
        for event in state.storage.get_events(&wanted).await? {
            head.pdus.insert(event.event_id.clone(), parse_row(&event)?);
        }
        if super::redaction(state, room_id, head, &pdu.sender, Some(target))
            .await
            .is_err()
        {
            return Ok(None);
        }
    }
    let original: CanonicalJsonObject = row.parse_pdu().map_err(Error::internal)?;
    let redacted =
        myelin_federation::pdu::redact_pdu(&original, &head.rules).map_err(Error::internal)?;
    let text = serde_json::to_string(&redacted).map_err(Error::internal)?;
    Ok(Some((row.event_id, text)))
}

/// Whether a received event can take the fast path of [`place_received`]: it changes no
/// state, redacts nothing, was sent by another server's user, and its parents are exactly
/// the head's tips (the usual case: the next message of a room both servers are in).
pub(super) fn extends_head(head: &RoomHead, incoming: &Incoming, ours: &str) -> bool {
    let pdu = &incoming.pdu;
    if pdu.state_key.is_some()
        || pdu.kind == TimelineEventType::RoomRedaction
        || pdu.sender.server_name() == ours
        || head.extremities.is_empty()
    {
        return false;
    }
    let prevs: HashSet<&str> = pdu.prev_events.iter().map(|e| e.as_str()).collect();
    prevs.len() == head.extremities.len()
        && head
            .extremities
            .iter()
            .all(|(id, _)| prevs.contains(id.as_str()))
}

/// Steps 3 and 4 for an event that [`extends_head`]: the state before it is the room's
/// current state, so both checks read the head's parsed events (loaded as needed), and
/// there is no soft failure to check. Moves the head past the event in memory; the writer
/// commits a run of such events together (`write_received_batch`).
pub(super) async fn place_received(
    state: &AppState,
    room_id: &RoomId,
    head: &mut RoomHead,
    incoming: &Incoming,
) -> Result<Prepared, Error> {
    let pdu = &incoming.pdu;
    let rules = head.rules.clone();
    // The current events the rules read, and the event's own auth events.
    let mut needed = auth_state_ids(&head.current, pdu);
    needed.extend(pdu.auth_events.iter().map(|e| e.to_string()));
    needed.sort_unstable();
    needed.dedup();
    let mut missing: Vec<String> = needed
        .iter()
        .filter(|id| !head.pdus.contains_key(id.as_str()))
        .cloned()
        .collect();
    // Cited auth events that are no longer current are kept aside: the head keeps only
    // current ones.
    let mut others: HashMap<String, Pdu> = HashMap::new();
    if !missing.is_empty() {
        if head.pdus.len() + missing.len() > super::MAX_HEAD_PDUS {
            head.pdus.clear();
            missing = needed.clone();
        }
        let current: HashSet<&String> = head.current.values().collect();
        let mut load = Vec::new();
        for row in state.storage.get_events(&missing).await? {
            if row.rejected {
                return Err(Error::forbidden(format!(
                    "{}: auth_events this server does not hold",
                    incoming.event_id
                )));
            }
            let parsed = parse_row(&row)?;
            if current.contains(&row.event_id) {
                load.push((row.event_id, parsed));
            } else {
                others.insert(row.event_id, parsed);
            }
        }
        head.pdus.extend(load);
    }
    let find = |id: &str| head.pdus.get(id).or_else(|| others.get(id));
    if pdu.auth_events.iter().any(|id| find(id.as_str()).is_none()) {
        return Err(Error::forbidden(format!(
            "{}: auth_events this server does not hold",
            incoming.event_id
        )));
    }
    // 3. Against its own auth events.
    auth::check_auth_events(&rules.authorization, pdu, |id| find(id.as_str())).map_err(
        |reason| {
            Error::forbidden(format!(
                "{} fails its auth events: {reason}",
                incoming.event_id
            ))
        },
    )?;
    // 4. Against the state before it, the current state.
    check_state(&rules, pdu, &head.current, &head.pdus).map_err(|reason| {
        Error::forbidden(format!(
            "{} is not allowed by the state before it: {reason}",
            incoming.event_id
        ))
    })?;
    let built = myelin_federation::pdu::BuiltEvent {
        event_id: incoming.event_id.clone(),
        room_id: incoming.room_id.clone(),
        pdu: incoming.object.clone(),
    };
    let mut prepared = Prepared::new(&built, pdu, &pdu.prev_events, None)?;
    prepared.push_actions = super::push_actions::evaluate(state, room_id, head, &prepared).await?;
    head.extremities = vec![(incoming.event_id.clone(), pdu.depth as i64)];
    Ok(prepared)
}

/// Writes one received event (steps 3-5 and the commit) on the room's head.
pub(super) async fn write_remote(
    state: &AppState,
    room_id: &RoomId,
    head: &mut RoomHead,
    job: &RemoteJob,
) -> Result<(OwnedEventId, i64, Vec<String>), Error> {
    let incoming = &job.incoming;
    let pdu = &incoming.pdu;
    let rules = head.rules.clone();
    if state
        .storage
        .get_event(incoming.event_id.as_str())
        .await?
        .is_some()
    {
        return Ok((incoming.event_id.clone(), 0, Vec::new()));
    }
    // Its parents, each with the state after it.
    let prev_ids: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
    let prevs = state.storage.get_events(&prev_ids).await?;
    if prevs.len() != prev_ids.len() || prevs.iter().any(|p| p.stream_ordering.is_none()) {
        return Err(Error::forbidden(format!(
            "{}: prev_events this server does not hold",
            incoming.event_id
        )));
    }
    // 3. Against its own auth events.
    let auth_ids: Vec<String> = pdu.auth_events.iter().map(|e| e.to_string()).collect();
    let auth_rows = state.storage.get_events(&auth_ids).await?;
    if auth_rows.len() != auth_ids.len() || auth_rows.iter().any(|r| r.rejected) {
        return Err(Error::forbidden(format!(
            "{}: auth_events this server does not hold",
            incoming.event_id
        )));
    }
    let mut auth_pdus: HashMap<OwnedEventId, Pdu> = HashMap::new();
    for row in &auth_rows {
        let p = parse_row(row)?;
        auth_pdus.insert(p.event_id.clone(), p);
    }
    // The create event is needed even where (v12) it is not cited.
    if let Some(create) = head
        .current
        .get(&("m.room.create".to_owned(), String::new()))
        .cloned()
    {
        if let Ok(id) = OwnedEventId::try_from(create.as_str()) {
            if let std::collections::hash_map::Entry::Vacant(slot) = auth_pdus.entry(id) {
                if let Some(row) = state.storage.get_event(&create).await? {
                    slot.insert(parse_row(&row)?);
                }
            }
        }
    }
    auth::check_auth_events(&rules.authorization, pdu, |id| auth_pdus.get(id)).map_err(
        |reason| {
            Error::forbidden(format!(
                "{} fails its auth events: {reason}",
                incoming.event_id
            ))
        },
    )?;

    // 4. The state before it.
    let head_ids: HashSet<String> = head
        .extremities
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    let prev_set: HashSet<String> = prev_ids.iter().cloned().collect();
    let (base, before): (Option<i64>, myelin_storage::StateMap) = if prev_set == head_ids {
        (head.state_after, head.current.clone())
    } else {
        let mut maps = Vec::with_capacity(prevs.len());
        for p in &prevs {
            let snapshot = p
                .state_after
                .ok_or_else(|| Error::internal("a timeline event without a snapshot"))?;
            maps.push((snapshot, state.snapshot(snapshot).await?));
        }
        let refs: Vec<&myelin_storage::StateMap> = maps.iter().map(|(_, m)| m.as_ref()).collect();
        let resolved = resolve(state, &rules, &refs).await?;
        (Some(maps[0].0), resolved)
    };
    // The snapshot the event's state is written on top of (without the head's pending
    // resolution: that is part of the delta).
    let base_map: myelin_storage::StateMap = match base {
        Some(id) => (*state.snapshot(id).await?).clone(),
        None => Default::default(),
    };
    let before_pdus = auth_state_pdus(state, &before, pdu).await?;
    check_state(&rules, pdu, &before, &before_pdus).map_err(|reason| {
        Error::forbidden(format!(
            "{} is not allowed by the state before it: {reason}",
            incoming.event_id
        ))
    })?;
    // 5. Soft failure: also allowed by the room's current state.
    if prev_set != head_ids {
        let current_pdus = auth_state_pdus(state, &head.current, pdu).await?;
        check_state(&rules, pdu, &head.current, &current_pdus).map_err(|reason| {
            Error::forbidden(format!(
                "{} is not allowed by the current state (soft failure): {reason}",
                incoming.event_id
            ))
        })?;
    }

    // The state after it, the new tips and the room's new current state.
    let mut after = before.clone();
    if let Some(key) = &pdu.state_key {
        after.insert(
            (pdu.kind.to_string(), key.clone()),
            incoming.event_id.to_string(),
        );
    }
    let mut tips: Vec<(OwnedEventId, i64)> = head
        .extremities
        .iter()
        .filter(|(id, _)| !prev_set.contains(id.as_str()))
        .cloned()
        .collect();
    let mut current = after.clone();
    if !tips.is_empty() {
        let rows = state
            .storage
            .get_events(
                &tips
                    .iter()
                    .map(|(id, _)| id.to_string())
                    .collect::<Vec<_>>(),
            )
            .await?;
        let mut maps = vec![after.clone()];
        for row in &rows {
            if let Some(snapshot) = row.state_after {
                maps.push((*state.snapshot(snapshot).await?).clone());
            }
        }
        let refs: Vec<&myelin_storage::StateMap> = maps.iter().collect();
        current = resolve(state, &rules, &refs).await?;
    }
    tips.push((incoming.event_id.clone(), pdu.depth as i64));
    tips.truncate(20);

    // What the state before the event adds to its base snapshot, and how current changes.
    // A snapshot only adds to the one it is built on: if the resolution dropped a key the
    // base has, the state is written whole on a new line instead.
    let (base, delta): (Option<i64>, Vec<(String, String, String)>) =
        if base_map.keys().all(|k| before.contains_key(k)) {
            (
                base,
                before
                    .iter()
                    .filter(|(k, v)| base_map.get(*k) != Some(*v))
                    .map(|((t, k), v)| (t.clone(), k.clone(), v.clone()))
                    .collect(),
            )
        } else {
            (
                None,
                before
                    .iter()
                    .map(|((t, k), v)| (t.clone(), k.clone(), v.clone()))
                    .collect(),
            )
        };
    let mut expected = head.current.clone();
    if let Some(key) = &pdu.state_key {
        expected.insert(
            (pdu.kind.to_string(), key.clone()),
            incoming.event_id.to_string(),
        );
    }
    // What changes in the current state: set entries, and (`None`) keys the resolution
    // dropped.
    let mut current_changes: Vec<(String, String, Option<String>)> = current
        .iter()
        .filter(|(k, v)| head.current.get(*k) != Some(*v))
        .map(|((t, k), v)| (t.clone(), k.clone(), Some(v.clone())))
        .collect();
    current_changes.extend(
        head.current
            .keys()
            .filter(|k| !current.contains_key(*k))
            .map(|(t, k)| (t.clone(), k.clone(), None)),
    );
    let usual = expected == current;

    let built = myelin_federation::pdu::BuiltEvent {
        event_id: incoming.event_id.clone(),
        room_id: incoming.room_id.clone(),
        pdu: incoming.object.clone(),
    };
    let mut prepared = Prepared::new(&built, pdu, &pdu.prev_events, None)?;
    if let Some(key) = &pdu.state_key {
        prepared.replaces_state = Some(
            before
                .get(&(pdu.kind.to_string(), key.clone()))
                .cloned()
                .unwrap_or_default(),
        );
    }
    if pdu.kind == TimelineEventType::RoomRedaction {
        prepared.redacts = remote_redaction(state, room_id, head, pdu).await?;
    }
    prepared.push_actions = super::push_actions::evaluate(state, room_id, head, &prepared).await?;

    // Memberships of the changed member entries, for the current-state rows.
    let changed_members: Vec<String> = current_changes
        .iter()
        .filter(|(t, _, _)| t == "m.room.member")
        .filter_map(|(_, _, id)| id.clone())
        .collect();
    let mut memberships: HashMap<String, String> = HashMap::new();
    for row in state.storage.get_events(&changed_members).await? {
        let content: serde_json::Value = serde_json::from_str::<serde_json::Value>(&row.pdu)
            .ok()
            .map(|p| p["content"].clone())
            .unwrap_or_default();
        if let Some(m) = content["membership"].as_str() {
            memberships.insert(row.event_id.clone(), m.to_owned());
        }
    }
    if let Some(m) = &prepared.membership {
        memberships.insert(incoming.event_id.to_string(), m.clone());
    }
    let delta_refs: Vec<(&str, &str, &str)> = delta
        .iter()
        .map(|(t, k, v)| (t.as_str(), k.as_str(), v.as_str()))
        .collect();
    let change_refs: Vec<myelin_storage::CurrentChange<'_>> = current_changes
        .iter()
        .map(|(t, k, v)| myelin_storage::CurrentChange {
            event_type: t,
            state_key: k,
            event_id: v.as_deref(),
            membership: v
                .as_ref()
                .and_then(|v| memberships.get(v))
                .map(String::as_str),
        })
        .collect();
    let mut row = prepared.row(room_id.as_str(), base);
    row.state_delta = &delta_refs;
    if !usual {
        row.current_delta = Some(&change_refs);
    }
    let persisted = state
        .storage
        .persist_events(std::slice::from_ref(&row), now_ms())
        .await;
    let persisted = persisted?
        .pop()
        .ok_or_else(|| Error::internal("persisting an event returned nothing"))?;
    if let Some((target, _)) = &prepared.redacts {
        // Events formatted for sync with the original (or as its `prev_content`) are
        // formatted again.
        super::format::forget_replaced(state, target);
    }

    // Move the head.
    // The head's state: the snapshot after the event plus what the resolution of the tips
    // changed (or, if it dropped a key, the whole current state on no snapshot).
    head.extremities = tips;
    if after.keys().all(|k| current.contains_key(k)) {
        head.state_after = Some(persisted.state_after);
        head.pending = current
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(*v))
            .map(|((t, k), v)| (t.clone(), k.clone(), v.clone()))
            .collect();
    } else {
        head.state_after = None;
        head.pending = current
            .iter()
            .map(|((t, k), v)| (t.clone(), k.clone(), v.clone()))
            .collect();
    }
    let mut targets = Vec::new();
    for (t, k, v) in &current_changes {
        if t == "m.room.member" {
            match v.as_ref().and_then(|v| memberships.get(v)) {
                Some(m) => head.members.insert(k.clone(), m.clone()),
                None => head.members.remove(k),
            };
            targets.push(k.clone());
        }
    }
    if let Some(key) = &pdu.state_key {
        if pdu.kind == TimelineEventType::RoomMember && usual {
            head.members
                .insert(key.clone(), prepared.membership.clone().unwrap_or_default());
            targets.push(key.clone());
        }
    }
    head.current = current;
    head.remote_servers = None;
    head.pdus.clear();
    head.push_power = None;
    head.display_names.clear();
    let notified = super::notified_users(std::iter::once(&prepared));
    crate::push::sender::wake_when_safe(state, persisted.stream_ordering, notified);
    Ok((
        incoming.event_id.clone(),
        persisted.stream_ordering,
        targets,
    ))
}

/// Stores a room joined through another server (`federation/join.rs`): the state and auth
/// chain it sent as outliers, then, in one transaction, the room (if new here), its state
/// (`room_state`, the state before our join) and our `join` on it. The room's cached head
/// is dropped and reloaded on next use.
pub async fn write_joined_room(
    state: &AppState,
    version: &ruma::RoomVersionId,
    events: &[&Incoming],
    room_state: &HashMap<(String, String), String>,
    join: Incoming,
) -> Result<(), Error> {
    let room_id = join.room_id.clone();
    let texts: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(&e.object).map_err(Error::internal))
        .collect::<Result<_, _>>()?;
    let kinds: Vec<String> = events.iter().map(|e| e.pdu.kind.to_string()).collect();
    let senders: Vec<String> = events.iter().map(|e| e.pdu.sender.to_string()).collect();
    let outliers: Vec<myelin_storage::Outlier<'_>> = events
        .iter()
        .enumerate()
        .map(|(i, e)| myelin_storage::Outlier {
            event_id: e.event_id.as_str(),
            depth: e.pdu.depth as i64,
            event_type: &kinds[i],
            state_key: e.pdu.state_key.as_deref(),
            sender: &senders[i],
            origin_server_ts: i64::from(e.pdu.origin_server_ts.get()),
            pdu: &texts[i],
        })
        .collect();
    state
        .storage
        .store_outliers(room_id.as_str(), &outliers)
        .await?;

    let slot = state.room_locks.get(&room_id);
    let mut guard = slot.lock().await;
    let exists = state.storage.get_room(room_id.as_str()).await?.is_some();
    let by_id: HashMap<&str, &Incoming> =
        events.iter().map(|e| (e.event_id.as_str(), *e)).collect();
    let creator = room_state
        .get(&("m.room.create".to_owned(), String::new()))
        .and_then(|id| by_id.get(id.as_str()))
        .map(|e| e.pdu.sender.to_string())
        .ok_or_else(|| Error::internal("joined state without a create event"))?;
    let membership_of = |id: &str| -> Option<String> {
        by_id.get(id).and_then(|e| {
            e.pdu.content_json()["membership"]
                .as_str()
                .map(str::to_owned)
        })
    };
    let memberships: HashMap<String, String> = room_state
        .iter()
        .filter(|((t, _), _)| t == "m.room.member")
        .filter_map(|(_, id)| Some((id.clone(), membership_of(id)?)))
        .collect();

    let built = myelin_federation::pdu::BuiltEvent {
        event_id: join.event_id.clone(),
        room_id: room_id.clone(),
        pdu: join.object.clone(),
    };
    let user = join.pdu.sender.to_string();
    let mut prepared = Prepared::new(&built, &join.pdu, &join.pdu.prev_events, None)?;
    prepared.replaces_state = Some(
        room_state
            .get(&("m.room.member".to_owned(), user.clone()))
            .cloned()
            .unwrap_or_default(),
    );
    let delta: Vec<(&str, &str, &str)> = room_state
        .iter()
        .map(|((t, k), id)| (t.as_str(), k.as_str(), id.as_str()))
        .collect();
    let join_id = join.event_id.to_string();
    let mut changes: Vec<myelin_storage::CurrentChange<'_>> = room_state
        .iter()
        .filter(|((t, k), _)| !(t == "m.room.member" && *k == user))
        .map(|((t, k), id)| myelin_storage::CurrentChange {
            event_type: t,
            state_key: k,
            event_id: Some(id),
            membership: memberships.get(id).map(String::as_str),
        })
        .collect();
    changes.push(myelin_storage::CurrentChange {
        event_type: "m.room.member",
        state_key: &user,
        event_id: Some(&join_id),
        membership: Some("join"),
    });
    let new_room = myelin_storage::NewRoom {
        version: version.as_str(),
        creator: &creator,
        alias: None,
        public: false,
        replaces: None,
    };
    let mut row = prepared.row(room_id.as_str(), None);
    row.state_delta = &delta;
    row.current_delta = Some(&changes);
    if !exists {
        row.new_room = Some(new_room);
    }
    let persisted = state
        .storage
        .persist_events(std::slice::from_ref(&row), now_ms())
        .await;
    let persisted = persisted?
        .pop()
        .ok_or_else(|| Error::internal("persisting the join returned nothing"))?;
    *guard = None;
    drop(guard);
    state
        .storage
        .delete_remote_invite(room_id.as_str(), &user)
        .await?;
    state.notify_when_safe(persisted.stream_ordering, std::iter::once(user.as_str()));
    // Every server in the room is sent our join and what follows.
    let ours = state.server_name.as_str();
    let mut servers: Vec<String> = memberships
        .iter()
        .filter(|(_, m)| m.as_str() == "join")
        .filter_map(|(id, _)| by_id.get(id.as_str()))
        .filter_map(|e| {
            e.pdu
                .state_key
                .as_deref()?
                .split_once(':')
                .map(|(_, s)| s.to_owned())
        })
        .filter(|s| s != ours)
        .collect();
    servers.sort_unstable();
    servers.dedup();
    state.storage.wait_safe(persisted.stream_ordering).await;
    crate::federation::sender::wake(state, &servers, persisted.stream_ordering - 1).await;
    Ok(())
}

/// The state before `event_id` and the auth chain of that state and the event, as full PDUs
/// (what `send_join` answers).
pub async fn state_and_auth_chain(
    state: &AppState,
    event_id: &str,
) -> Result<(Vec<serde_json::Value>, Vec<serde_json::Value>), Error> {
    let (ids, chain) = state_ids_and_auth_chain(state, event_id, true).await?;
    Ok((pdus(state, &ids).await?, pdus(state, &chain).await?))
}

/// The stored PDUs of `ids` (those we hold), as JSON.
pub async fn pdus(state: &AppState, ids: &[String]) -> Result<Vec<serde_json::Value>, Error> {
    state
        .storage
        .get_events(ids)
        .await?
        .iter()
        .map(|row| row.parse_pdu().map_err(Error::internal))
        .collect()
}

/// The stripped state sent with an invite to another server: the room's name, avatar, join
/// rules, create event, canonical alias, encryption and topic, and the inviter's member event.
pub async fn stripped_room_state(
    state: &AppState,
    room_id: &RoomId,
    inviter: &ruma::UserId,
) -> Result<Vec<serde_json::Value>, Error> {
    let current = state.storage.current_state(room_id.as_str()).await?;
    let mut ids: Vec<String> = super::STRIPPED_STATE_TYPES
        .iter()
        .filter_map(|t| current.get(&(t.to_string(), String::new())).cloned())
        .collect();
    ids.extend(
        current
            .get(&("m.room.member".to_owned(), inviter.to_string()))
            .cloned(),
    );
    let mut out = Vec::new();
    for row in state.storage.get_events(&ids).await? {
        let pdu: serde_json::Value = row.parse_pdu().map_err(Error::internal)?;
        out.push(serde_json::json!({
            "type": row.event_type,
            "state_key": row.state_key,
            "content": pdu["content"],
            "sender": row.sender,
        }));
    }
    Ok(out)
}

/// Whether `server` may read `row` (an event of a room we hold), as the spec's history
/// visibility rules apply to servers
/// (<https://spec.matrix.org/latest/server-server-api/#retrieving-events>): `world_readable`
/// always; otherwise a server with a user joined at the event (for `invited`, also invited;
/// for `shared`, also one joined now).
pub async fn server_may_see(
    state: &AppState,
    server: &ruma::ServerName,
    row: &myelin_storage::EventRow,
) -> Result<bool, Error> {
    let Some(snapshot) = row.state_after.or(row.state_before) else {
        return Ok(false);
    };
    let at = state.snapshot(snapshot).await?;
    let visibility_id = at.get(&("m.room.history_visibility".to_owned(), String::new()));
    let visibility = match visibility_id {
        Some(id) => state
            .storage
            .get_event(id)
            .await?
            .and_then(|r| r.parse_pdu::<serde_json::Value>().ok())
            .and_then(|p| {
                p["content"]["history_visibility"]
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "shared".to_owned()),
        None => "shared".to_owned(),
    };
    if visibility == "world_readable" {
        return Ok(true);
    }
    let suffix = format!(":{server}");
    let members: Vec<String> = at
        .iter()
        .filter(|((t, k), _)| t == "m.room.member" && k.ends_with(&suffix))
        .map(|(_, id)| id.clone())
        .collect();
    let mut joined = false;
    let mut invited = false;
    for member in state.storage.get_events(&members).await? {
        let content: serde_json::Value = member
            .parse_pdu::<serde_json::Value>()
            .map(|p| p["content"].clone())
            .unwrap_or_default();
        match content["membership"].as_str() {
            Some("join") => joined = true,
            Some("invite") => invited = true,
            _ => {}
        }
    }
    if joined || (invited && visibility != "joined") {
        return Ok(true);
    }
    if visibility == "shared" {
        let now = state.storage.room_members(&row.room_id).await?;
        return Ok(now
            .iter()
            .any(|(u, m, _)| m == "join" && u.ends_with(&suffix)));
    }
    Ok(false)
}

/// The state before `event_id` and its auth chain (of that state, and of the event itself
/// when `with_event`), as event IDs.
pub async fn state_ids_and_auth_chain(
    state: &AppState,
    event_id: &str,
    with_event: bool,
) -> Result<(Vec<String>, Vec<String>), Error> {
    let row = state
        .storage
        .get_event(event_id)
        .await?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let before = match row.state_before {
        Some(snapshot) => state.snapshot(snapshot).await?,
        None => Default::default(),
    };
    let ids: Vec<String> = before.values().cloned().collect();
    let event = with_event.then(|| event_id.to_owned());
    let mut events = HashMap::new();
    let chain = auth_chain(state, ids.iter().cloned().chain(event), &mut events).await?;
    Ok((ids, chain.iter().map(|id| id.to_string()).collect()))
}

/// The auth chain of one event, as full PDUs.
pub async fn event_auth_chain(
    state: &AppState,
    event_id: &str,
) -> Result<Vec<serde_json::Value>, Error> {
    let mut events = HashMap::new();
    let chain = auth_chain(state, std::iter::once(event_id.to_owned()), &mut events).await?;
    let ids: Vec<String> = chain.iter().map(|id| id.to_string()).collect();
    pdus(state, &ids).await
}

/// Most parents one received PDU may make us fetch (all its missing ancestors together).
pub const MAX_FETCHED_PREVS: usize = 20;

/// Fetches the parents of `incoming` we do not hold from `origin`, checks and writes them
/// oldest first like any received event, so the event itself can then be placed. The first
/// call for a received PDU (`budget` still [`MAX_FETCHED_PREVS`]) asks for the whole gap with
/// `/get_missing_events` ([`fill_gap`]); what that did not bring is fetched one by one
/// (`/event`), at most `budget` in all; beyond it (a longer gap: the next issue fetches the
/// state instead) the event is refused.
pub async fn fetch_missing_prevs(
    state: &AppState,
    origin: &ruma::ServerName,
    rules: &RoomVersionRules,
    incoming: &Incoming,
    budget: &mut usize,
) -> Result<(), Error> {
    let ids: Vec<String> = incoming
        .pdu
        .prev_events
        .iter()
        .map(|e| e.to_string())
        .collect();
    let held: HashSet<String> = state
        .storage
        .get_events(&ids)
        .await?
        .into_iter()
        .filter(|r| r.stream_ordering.is_some())
        .map(|r| r.event_id)
        .collect();
    let mut missing: Vec<&String> = ids.iter().filter(|id| !held.contains(*id)).collect();
    if !missing.is_empty() && *budget == MAX_FETCHED_PREVS {
        // First ask for the whole gap at once; what that does not bring is fetched one by one.
        match fill_gap(state, origin, rules, incoming).await {
            Ok(written) => missing.retain(|id| !written.contains(id.as_str())),
            Err(e) => tracing::info!(%origin, event_id = %incoming.event_id, error = %e,
                "get_missing_events failed; fetching the parents one by one"),
        }
    }
    for id in missing {
        if *budget == 0 {
            return Err(Error::forbidden(format!(
                "{}: too many missing prev_events to fetch",
                incoming.event_id
            )));
        }
        *budget -= 1;
        let path = format!(
            "/_matrix/federation/v1/event/{}",
            crate::federation::client::query_value(id)
        );
        let answer = state
            .federation
            .get_json(origin, &path)
            .await
            .map_err(|e| {
                Error::forbidden(format!("cannot fetch the missing prev event {id}: {e}"))
            })?;
        let object: CanonicalJsonObject = serde_json::from_value(answer["pdus"][0].clone())
            .map_err(|_| Error::forbidden(format!("{origin} sent no event for {id}")))?;
        let parent = verify(state, rules, object).await?;
        if parent.event_id.as_str() != id || parent.room_id != incoming.room_id {
            return Err(Error::forbidden(format!(
                "{origin} sent another event for {id}"
            )));
        }
        Box::pin(fetch_missing_prevs(state, origin, rules, &parent, budget)).await?;
        receive(state, parent).await?;
    }
    Ok(())
}

/// Asks `origin` for the events between the room's forward extremities and `incoming`
/// (`/get_missing_events`, pages of [`MAX_MISSING_EVENTS`], at most [`MAX_GAP_FILLED`] in
/// all) and writes, oldest first, those
/// whose parents are then held, like any received event. Returns the IDs written.
async fn fill_gap(
    state: &AppState,
    origin: &ruma::ServerName,
    rules: &RoomVersionRules,
    incoming: &Incoming,
) -> Result<HashSet<String>, Error> {
    let room_id = incoming.room_id.as_str();
    let extremities = state.storage.forward_extremities(room_id).await?;
    let min_depth = extremities.iter().map(|(_, d, _)| *d).min().unwrap_or(0);
    let earliest: Vec<&str> = extremities.iter().map(|(id, _, _)| id.as_str()).collect();
    let path = format!(
        "/_matrix/federation/v1/get_missing_events/{}",
        crate::federation::client::query_value(room_id)
    );
    // Page back from the event: each request starts at those of the last answer whose
    // parents are neither held nor had yet.
    let mut events: Vec<Incoming> = Vec::new();
    let mut had: HashSet<String> = HashSet::from([incoming.event_id.to_string()]);
    let mut latest: Vec<String> = vec![incoming.event_id.to_string()];
    while !latest.is_empty() && events.len() < MAX_GAP_FILLED {
        let body = serde_json::json!({
            "earliest_events": earliest,
            "latest_events": latest,
            "limit": MAX_MISSING_EVENTS,
            "min_depth": min_depth,
        });
        let answer = state
            .federation
            .post_json(origin, &path, &body)
            .await
            .map_err(|e| Error::forbidden(format!("get_missing_events from {origin}: {e}")))?;
        let mut page = Vec::new();
        for value in answer["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .take(MAX_MISSING_EVENTS)
        {
            let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(value.clone()) else {
                continue;
            };
            match verify(state, rules, object).await {
                Ok(event)
                    if event.room_id == incoming.room_id
                        && had.insert(event.event_id.to_string()) =>
                {
                    page.push(event)
                }
                Ok(_) => {}
                Err(e) => tracing::info!(%origin, error = %e, "refused a missing event"),
            }
        }
        let unknown: Vec<String> = page
            .iter()
            .flat_map(|e| e.pdu.prev_events.iter().map(|p| p.to_string()))
            .filter(|p| !had.contains(p))
            .collect();
        let held: HashSet<String> = state
            .storage
            .get_events(&unknown)
            .await?
            .into_iter()
            .filter(|r| r.stream_ordering.is_some())
            .map(|r| r.event_id)
            .collect();
        latest = page
            .iter()
            .filter(|e| {
                e.pdu
                    .prev_events
                    .iter()
                    .any(|p| !had.contains(p.as_str()) && !held.contains(p.as_str()))
            })
            .map(|e| e.event_id.to_string())
            .collect();
        events.extend(page);
    }
    events.sort_by_key(|e| e.pdu.depth);
    events.dedup_by(|a, b| a.event_id == b.event_id);
    // Only those that connect to what is held (or to one before them in the answer).
    let prevs: Vec<String> = events
        .iter()
        .flat_map(|e| e.pdu.prev_events.iter().map(|p| p.to_string()))
        .collect();
    let mut connected: HashSet<String> = state
        .storage
        .get_events(&prevs)
        .await?
        .into_iter()
        .filter(|r| r.stream_ordering.is_some())
        .map(|r| r.event_id)
        .collect();
    let mut batch = Vec::new();
    for event in events {
        let id = event.event_id.to_string();
        if connected.contains(&id) {
            continue;
        }
        if event
            .pdu
            .prev_events
            .iter()
            .all(|p| connected.contains(p.as_str()))
        {
            connected.insert(id);
            batch.push(event);
        }
    }
    let mut written = HashSet::new();
    for result in receive_many(state, batch).await {
        match result {
            Ok(id) => {
                written.insert(id.to_string());
            }
            Err(e) => tracing::info!(%origin, error = %e, "refused a missing event"),
        }
    }
    Ok(written)
}

/// Whether `server` has a user joined to `room_id` (only such a server may send into the
/// room or read its DAG).
pub async fn server_joined(
    state: &AppState,
    room_id: &str,
    server: &ruma::ServerName,
) -> Result<bool, Error> {
    Ok(state
        .storage
        .room_members(room_id)
        .await?
        .iter()
        .any(|(user, m, _)| {
            m == "join"
                && user
                    .split_once(':')
                    .is_some_and(|(_, s)| s == server.as_str())
        }))
}

/// Most events one `/get_missing_events` answer holds, whatever the asker's `limit`.
pub const MAX_MISSING_EVENTS: usize = 100;

/// Most events of a gap asked for (in pages of [`MAX_MISSING_EVENTS`]) for one received PDU.
pub const MAX_GAP_FILLED: usize = 1_000;

/// The events of `room_id` before `latest` and after `earliest` (walking `prev_events` back
/// from `latest`, stopping at `earliest` and below `min_depth`), at most `limit`, oldest
/// first, for `/get_missing_events`. Those `server` may not see (history visibility) are
/// given redacted, so the DAG still connects but their content stays here.
pub async fn missing_events(
    state: &AppState,
    server: &ruma::ServerName,
    room_id: &RoomId,
    earliest: &[String],
    latest: &[String],
    limit: usize,
    min_depth: i64,
) -> Result<Vec<serde_json::Value>, Error> {
    let limit = limit.min(MAX_MISSING_EVENTS);
    let (_, rules) = super::room_rules(state, room_id).await?;
    let mut seen: HashSet<String> = earliest.iter().chain(latest).cloned().collect();
    let in_dag = |row: &myelin_storage::EventRow| {
        row.room_id == room_id.as_str()
            && (row.stream_ordering.is_some() || row.state_before.is_some())
    };
    let mut frontier: Vec<String> = Vec::new();
    for row in state.storage.get_events(latest).await? {
        if in_dag(&row) {
            frontier.extend(prev_event_ids(&row));
        }
    }
    let mut found: Vec<myelin_storage::EventRow> = Vec::new();
    while !frontier.is_empty() && found.len() < limit {
        frontier.retain(|id| seen.insert(id.clone()));
        let mut rows = state.storage.get_events(&frontier).await?;
        // Newest first, so what the limit leaves out is the oldest.
        rows.sort_by_key(|r| std::cmp::Reverse((r.depth, r.stream_ordering)));
        frontier = Vec::new();
        for row in rows {
            if found.len() == limit {
                break;
            }
            if !in_dag(&row) || row.depth < min_depth {
                continue;
            }
            frontier.extend(prev_event_ids(&row));
            found.push(row);
        }
    }
    found.sort_by_key(|r| (r.depth, r.stream_ordering));
    let mut events = Vec::with_capacity(found.len());
    for row in &found {
        let pdu: CanonicalJsonObject = row.parse_pdu().map_err(Error::internal)?;
        let pdu = if server_may_see(state, server, row).await? {
            pdu
        } else {
            myelin_federation::pdu::redact_pdu(&pdu, &rules).map_err(Error::internal)?
        };
        events.push(serde_json::to_value(pdu).map_err(Error::internal)?);
    }
    Ok(events)
}

/// The `prev_events` of a stored event.
fn prev_event_ids(row: &myelin_storage::EventRow) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Prevs {
        #[serde(default)]
        prev_events: Vec<String>,
    }
    row.parse_pdu::<Prevs>()
        .map(|p| p.prev_events)
        .unwrap_or_default()
}
