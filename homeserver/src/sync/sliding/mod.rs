//! Simplified sliding sync (MSC4186): the room list Element X and matrix-sdk-ui sync with.
//!
//! <https://github.com/matrix-org/matrix-spec-proposals/pull/4186>
//!
//! One request, computed against the state its `pos` names ([`conn`]):
//!
//! 1. The *server list*: the rooms the user is joined to, invited to or knocking on, the
//!    rooms they were kicked or banned from (so they can see why, as in Synapse), plus rooms
//!    they left that this connection was sent before (so it hears of the leave); forgotten
//!    rooms never. Ordered by bump stamp (the position of the room's newest message-
//!    like event; for rooms the user is not in, of their membership), newest first.
//! 2. Each list filters the server list (`is_dm`, `is_invite`, `is_encrypted`, `room_types`,
//!    `not_room_types`), reports its `count`, and selects the rooms in its `ranges`. Room
//!    subscriptions add rooms by ID (only rooms the user has a membership in).
//! 3. A selected room's configs are combined (largest timeline limit, union of required
//!    state). It is sent when the connection never had it, had it with another membership
//!    or a smaller config (then it is sent whole again: `initial`), or has events since it
//!    was sent, or the user's own read receipt in it moved (its unread counts did).
//! 4. Extensions: `to_device` (its own `since`; presenting it acknowledges the messages
//!    before it, as a `/sync` token does), `e2ee`, `account_data`, `receipts`, `typing`.
//! 5. With a `pos` and nothing to send, the request waits on the same notifier as `/sync`
//!    until something is, or its timeout.
//!
//! Per room: `membership`, `initial`, `name`, `avatar`, `heroes` (when unnamed), `is_dm`,
//! `required_state` (`*` wildcards, `$ME`, `$LAZY` members: the timeline's senders and
//! member-event targets), `timeline` (newest first cut to the limit, `limited` when more
//! were left out), `prev_batch` (a `/messages` token), `num_live` (timeline events newer
//! than the connection's previous response), `joined_count`, `invited_count`, the unread
//! counts, `bump_stamp`; invites and knocks carry only their stripped state.

pub mod conn;
pub mod ws;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use myelin_storage::{EventRow, MembershipRow};
use ruma::{OwnedDeviceId, OwnedUserId};
use serde_json::{json, Map, Value};

use super::{e2ee, receipt_event, stripped_state, token_before, unread_counts};
use crate::{
    error::Error,
    push::rules::PUSH_RULES,
    rooms::{format::sync_events_aligned, visibility::Visibility},
    AppState,
};
use conn::{Base, ConnState, RequiredState, SentRoom, MAX_LAZY_REMEMBERED};

/// What a room of a list or subscription asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomConfig {
    pub timeline_limit: u64,
    /// `(type, state key)`; `*` matches any, `$ME` is the user, `$LAZY` (members) lazy.
    pub required_state: BTreeSet<(String, String)>,
}

impl RoomConfig {
    /// The superset of two configs (MSC4186, "Combining room configs").
    fn combine(&mut self, other: &RoomConfig) {
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
        self.required_state
            .extend(other.required_state.iter().cloned());
    }

    fn lazy_members(&self) -> bool {
        self.required_state
            .iter()
            .any(|(t, k)| t == "m.room.member" && k == "$LAZY")
    }

    /// Whether the state entry `(event_type, state_key)` is asked for (lazy members aside).
    fn wants(&self, user: &str, event_type: &str, state_key: &str) -> bool {
        wants(&self.required_state, user, event_type, state_key)
    }
}

/// Whether `required_state` asks for the state entry `(event_type, state_key)`.
fn wants(
    required_state: &BTreeSet<(String, String)>,
    user: &str,
    event_type: &str,
    state_key: &str,
) -> bool {
    required_state.iter().any(|(t, k)| {
        (t == "*" || t == event_type)
            && (k == "*" || k == state_key || (k == "$ME" && state_key == user))
    })
}

/// A list's filters (MSC4186 `SlidingRoomFilter`).
#[derive(Debug, Clone, Default)]
pub struct ListFilters {
    pub is_dm: Option<bool>,
    pub is_encrypted: Option<bool>,
    pub is_invite: Option<bool>,
    /// `None` in these is "a room without a type".
    pub room_types: Vec<Option<String>>,
    pub not_room_types: Vec<Option<String>>,
    /// Rooms that are `m.space.child` of one of these spaces (ones the user is joined to;
    /// subspaces are not walked).
    pub spaces: Option<Vec<String>>,
    /// Rooms with one of these tags (`m.tag` room account data)...
    pub tags: Option<Vec<String>>,
    /// ...and none of these, which wins over `tags`.
    pub not_tags: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ListSpec {
    pub key: String,
    /// Inclusive, already checked `start <= end`.
    pub ranges: Vec<(u64, u64)>,
    pub filters: ListFilters,
    pub config: RoomConfig,
}

/// Which rooms an extension covers: `None` for each means all lists / all subscriptions.
#[derive(Debug, Clone, Default)]
pub struct ExtensionScope {
    pub lists: Option<Vec<String>>,
    /// `None`: every subscription; `Some`: these rooms, `"*"` for every subscription.
    pub rooms: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct Extensions {
    /// `(since, limit)` when enabled.
    pub to_device: Option<(Option<i64>, usize)>,
    pub e2ee: bool,
    pub account_data: Option<ExtensionScope>,
    pub receipts: Option<ExtensionScope>,
    pub typing: Option<ExtensionScope>,
}

/// A checked request.
#[derive(Debug)]
pub struct SlidingRequest {
    pub user: OwnedUserId,
    pub device: OwnedDeviceId,
    pub conn_id: String,
    pub pos: Option<String>,
    pub timeout: Duration,
    pub lists: Vec<ListSpec>,
    pub subscriptions: BTreeMap<String, RoomConfig>,
    pub extensions: Extensions,
    /// Whether the to-device `since` acknowledges the messages before it (the client sent
    /// it; on the WebSocket the server also advances it by itself, which acknowledges
    /// nothing).
    pub acknowledge_to_device: bool,
}

/// `400 M_UNKNOWN_POS`: the client must start the connection over.
fn unknown_pos() -> Error {
    Error::new(
        axum::http::StatusCode::BAD_REQUEST,
        "M_UNKNOWN_POS",
        "Unknown or expired pos: start the connection again without one",
    )
}

/// Runs a request: computes the response and, with a `pos` and nothing new, waits (up to
/// the timeout) for the notifier. Returns the response's JSON; with `quiet`, `None` instead
/// of a response with nothing new (the WebSocket pings then, and keeps its `pos`).
pub async fn sliding_sync(
    state: &AppState,
    req: &SlidingRequest,
    quiet: bool,
) -> Result<Option<Vec<u8>>, Error> {
    let (user, device) = (req.user.as_str(), req.device.as_str());
    let base = state
        .sliding
        .base(user, device, &req.conn_id, req.pos.as_deref())
        .map_err(|_| unknown_pos())?;
    if let (Some((Some(since), _)), true) = (req.extensions.to_device, req.acknowledge_to_device) {
        // Presenting a to-device token acknowledges the messages up to it.
        e2ee::acknowledge(state, user, device, since).await;
    }
    let deadline = tokio::time::Instant::now() + req.timeout;
    let handle = state.notifier.handle(user);
    // The e2ee extension's key counts when the wait began: a change (another user claimed a
    // one-time key, which wakes us) is news, so the client can upload more at once.
    let mut counts_before: Option<Value> = None;
    loop {
        // Subscribe before reading, so a commit in between still wakes us.
        let notified = handle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let upto = state.storage.safe_stream_position();
        let typing = state.typing.serial();
        let mut computed = Box::pin(compute(state, req, &base, upto, typing)).await?;
        let counts = computed
            .body
            .get("extensions")
            .and_then(|e| e.get("e2ee"))
            .map(|e| e["device_one_time_keys_count"].clone());
        match (&counts_before, counts) {
            (None, counts) => counts_before = Some(counts.unwrap_or_default()),
            (Some(before), Some(counts)) if *before != counts => computed.has_news = true,
            _ => {}
        }
        let timed_out = tokio::time::Instant::now() >= deadline;
        if quiet && timed_out && base.seq.is_some() && !computed.has_news {
            return Ok(None);
        }
        if computed.ahead && base.seq.is_some() && !timed_out {
            // A selected room was bumped by an event committed but not yet safe to read (a
            // position below it is still in flight): answering now would move the room up
            // with its old latest event. Its notification comes once it is safe.
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(AHEAD_RECHECK) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            continue;
        }
        if base.seq.is_none() || computed.has_news || timed_out {
            let pos = state
                .sliding
                .store(user, device, &req.conn_id, &base, computed.next);
            if state.config.delivery_receipts {
                super::delivery::record(state, user, computed.delivered);
            }
            let mut body = computed.body;
            body.insert("pos".into(), pos.into());
            return serde_json::to_vec(&body).map(Some).map_err(Error::internal);
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// How soon a request that saw a room bumped past the safe position looks again, should no
/// notification come.
const AHEAD_RECHECK: Duration = Duration::from_millis(20);

struct Computed {
    /// A selected room's bump stamp is past the position the response reads up to.
    ahead: bool,
    body: Map<String, Value>,
    next: ConnState,
    /// Per room sent, the newest timeline event from someone else: `(room, event, position)`
    /// for the delivered receipt, recorded once the response goes out.
    delivered: Vec<(String, String, Option<i64>)>,
    /// Anything a waiting client should be woken for.
    has_news: bool,
}

/// A room of the server list.
struct Candidate<'a> {
    m: &'a MembershipRow,
    bump: i64,
}

/// A room selected by lists or subscriptions, with its combined config.
struct Selected<'a> {
    m: &'a MembershipRow,
    bump: i64,
    config: RoomConfig,
    lists: Vec<String>,
}

async fn compute(
    state: &AppState,
    req: &SlidingRequest,
    base: &Base,
    upto: i64,
    typing_serial: u64,
) -> Result<Computed, Error> {
    let user = req.user.as_str();
    let fresh = base.seq.is_none();
    let since = base.state.upto;
    let memberships = state.storage.memberships_for_user(user).await?;
    let banned_unjoined = banned_without_joining(state, user, &memberships, base).await?;

    // 1. The server list.
    let mut candidates: Vec<&MembershipRow> = memberships
        .iter()
        .filter(|m| match m.membership.as_str() {
            "join" | "invite" | "knock" => true,
            "ban" => !m.forgotten && !banned_unjoined.contains(m.room_id.as_str()),
            // Kicked (the leave was someone else's), or a leave this connection must hear of.
            "leave" => {
                !m.forgotten
                    && (m.sender != user || base.state.rooms.contains_key(m.room_id.as_str()))
            }
            _ => false,
        })
        .collect();
    let joined: Vec<&str> = candidates
        .iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id.as_str())
        .collect();
    let bumps = state.storage.bump_stamps(&joined).await?;
    let bump_of = |m: &MembershipRow| match m.membership.as_str() {
        "join" => bumps.get(&m.room_id).copied().unwrap_or(m.stream_ordering),
        _ => m.stream_ordering,
    };
    candidates.sort_by(|a, b| {
        bump_of(b)
            .cmp(&bump_of(a))
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    let candidates: Vec<Candidate> = candidates
        .into_iter()
        .map(|m| Candidate {
            m,
            bump: bump_of(m),
        })
        .collect();

    // What the filters need, read once for all lists.
    let any = |f: &dyn Fn(&ListFilters) -> bool| req.lists.iter().any(|l| f(&l.filters));
    let dm_rooms = direct_rooms(state, user).await?;
    let encrypted: HashSet<String> = if any(&|f| f.is_encrypted.is_some()) {
        state
            .storage
            .current_state_of_types(&joined, &["m.room.encryption"])
            .await?
            .into_iter()
            .map(|(room, ..)| room)
            .collect()
    } else {
        HashSet::new()
    };
    let room_types = if any(&|f| !f.room_types.is_empty() || !f.not_room_types.is_empty()) {
        state.storage.room_types(&joined).await?
    } else {
        HashMap::new()
    };
    let space_children = if any(&|f| f.spaces.is_some()) {
        let spaces: BTreeSet<&str> = req
            .lists
            .iter()
            .filter_map(|l| l.filters.spaces.as_ref())
            .flatten()
            .map(String::as_str)
            .filter(|s| joined.contains(s))
            .collect();
        space_children(state, &spaces.into_iter().collect::<Vec<_>>()).await?
    } else {
        HashMap::new()
    };
    let room_tags = if any(&|f| f.tags.is_some() || !f.not_tags.is_empty()) {
        room_tags(state, user, upto).await?
    } else {
        HashMap::new()
    };
    let tagged = |room: &str, tags: &[String]| {
        room_tags
            .get(room)
            .is_some_and(|have| tags.iter().any(|t| have.contains(t)))
    };

    // 2. Lists and subscriptions.
    let mut selected: BTreeMap<&str, Selected> = BTreeMap::new();
    let mut lists_out = Map::new();
    let mut list_rooms: HashMap<&str, Vec<&str>> = HashMap::new();
    for list in &req.lists {
        let f = &list.filters;
        let matching: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| {
                let room = c.m.room_id.as_str();
                let room_type = room_types.get(room).cloned().flatten();
                f.is_dm.is_none_or(|want| dm_rooms.contains(room) == want)
                    && f.is_invite
                        .is_none_or(|want| (c.m.membership == "invite") == want)
                    && f.is_encrypted
                        .is_none_or(|want| encrypted.contains(room) == want)
                    && (f.room_types.is_empty() || f.room_types.contains(&room_type))
                    && !f.not_room_types.contains(&room_type)
                    && f.spaces.as_ref().is_none_or(|spaces| {
                        spaces.iter().any(|s| {
                            space_children
                                .get(s.as_str())
                                .is_some_and(|c| c.contains(room))
                        })
                    })
                    && f.tags.as_ref().is_none_or(|tags| tagged(room, tags))
                    && !tagged(room, &f.not_tags)
            })
            .collect();
        lists_out.insert(list.key.clone(), json!({ "count": matching.len() }));
        let mut in_window = Vec::new();
        for (i, c) in matching.iter().enumerate() {
            let i = i as u64;
            if list
                .ranges
                .iter()
                .any(|(start, end)| i >= *start && i <= *end)
            {
                in_window.push(c.m.room_id.as_str());
                let entry = selected.entry(c.m.room_id.as_str()).or_insert(Selected {
                    m: c.m,
                    bump: c.bump,
                    config: RoomConfig::default(),
                    lists: Vec::new(),
                });
                entry.config.combine(&list.config);
                entry.lists.push(list.key.clone());
            }
        }
        list_rooms.insert(list.key.as_str(), in_window);
    }
    let mut subscribed = Vec::new();
    for (room, config) in &req.subscriptions {
        // Only rooms the user is (or was, on this connection) in, invited to or knocking on.
        let Some(c) = candidates.iter().find(|c| c.m.room_id == *room) else {
            continue;
        };
        subscribed.push(c.m.room_id.as_str());
        let entry = selected.entry(c.m.room_id.as_str()).or_insert(Selected {
            m: c.m,
            bump: c.bump,
            config: RoomConfig::default(),
            lists: Vec::new(),
        });
        entry.config.combine(config);
    }

    let ahead = selected.values().any(|s| s.bump > upto);

    // 3. The rooms to send.
    let own_receipts_moved: HashSet<String> = if fresh {
        HashSet::new()
    } else {
        state
            .storage
            .receipts_in_range(since, upto)
            .await?
            .iter()
            .filter(|r| {
                r.user_id == user
                    && (r.receipt_type == "m.read" || r.receipt_type == "m.read.private")
            })
            .map(|r| r.room_id.clone())
            .collect()
    };
    let mut next = ConnState {
        upto,
        typing: typing_serial,
        rooms: base.state.rooms.clone(),
    };
    // Configs shared by many rooms are stored once (and kept from the previous state when
    // unchanged), so a connection's memory grows with its rooms, not their configs.
    let mut interned: Vec<RequiredState> = Vec::new();
    let mut plans = Vec::new();
    for (room, sel) in &selected {
        let sent = base.state.rooms.get(*room);
        let limit = sel.config.timeline_limit;
        let is_member_view = matches!(sel.m.membership.as_str(), "join" | "leave" | "ban");
        // A new membership (or a room never sent) is sent whole; a grown config expands
        // what was sent (MSC4186 "Changing room configs"): the latest `limit` events again
        // (`expanded_timeline`) and the state the new config asks for and the old did not.
        let initial = sent.is_none_or(|s| *s.membership != *sel.m.membership);
        let expanded = !initial && is_member_view && sent.is_some_and(|s| limit > s.timeline_limit);
        let state_grew = !initial
            && is_member_view
            && sent.is_some_and(|s| !sel.config.required_state.is_subset(&s.required_state));
        let after = match sent {
            Some(s) if !initial => s.upto,
            _ => 0,
        };
        let timeline_after = if expanded { 0 } else { after };
        let end = match sel.m.membership.as_str() {
            "leave" | "ban" => upto.min(sel.m.stream_ordering),
            _ => upto,
        };
        let rows = if is_member_view && (limit > 0 || !initial) && timeline_after < end {
            state
                .storage
                .room_events_in_range(
                    room,
                    timeline_after,
                    end,
                    limit.min(i64::MAX as u64 - 1) as i64 + 1,
                )
                .await?
        } else {
            Vec::new()
        };
        if !initial
            && !expanded
            && !state_grew
            && rows.is_empty()
            && !own_receipts_moved.contains(*room)
        {
            continue;
        }
        let required_state = match sent {
            Some(s) if *s.required_state == sel.config.required_state => s.required_state.clone(),
            _ => match interned.iter().find(|r| ***r == sel.config.required_state) {
                Some(r) => r.clone(),
                None => {
                    let r = Arc::new(sel.config.required_state.clone());
                    interned.push(r.clone());
                    r
                }
            },
        };
        next.rooms.insert(
            Arc::from(*room),
            SentRoom {
                upto: end,
                timeline_limit: limit,
                required_state,
                membership: Arc::from(sel.m.membership.as_str()),
                // Set from what is sent (below).
                lazy_members: Arc::default(),
            },
        );
        plans.push(Plan {
            sel,
            initial,
            expanded,
            after,
            old_required: sent.filter(|_| !initial).map(|s| s.required_state.clone()),
            old_lazy: sent
                .filter(|_| !initial)
                .map(|s| s.lazy_members.clone())
                .unwrap_or_default(),
            rows,
        });
    }

    let (rooms_out, delivered, lazy_sent) =
        build_rooms(state, req, base, upto, &plans, &dm_rooms).await?;
    for (room, members) in lazy_sent {
        if let Some(sent) = next.rooms.get_mut(room.as_str()) {
            sent.lazy_members = members;
        }
    }

    // 4. Extensions, over the rooms in their scope.
    let in_scope = |scope: &ExtensionScope| -> BTreeSet<&str> {
        let mut rooms = BTreeSet::new();
        match &scope.lists {
            None => rooms.extend(list_rooms.values().flatten().copied()),
            Some(keys) => {
                for key in keys {
                    if key == "*" {
                        rooms.extend(list_rooms.values().flatten().copied());
                    } else if let Some(r) = list_rooms.get(key.as_str()) {
                        rooms.extend(r.iter().copied());
                    }
                }
            }
        }
        match &scope.rooms {
            None => rooms.extend(subscribed.iter().copied()),
            Some(ids) => {
                for id in ids {
                    if id == "*" {
                        rooms.extend(subscribed.iter().copied());
                    } else if let Some(r) = subscribed.iter().find(|r| **r == id.as_str()) {
                        rooms.insert(r);
                    }
                }
            }
        }
        rooms
    };
    let initial_rooms: HashSet<&str> = plans
        .iter()
        .filter(|p| p.initial)
        .map(|p| p.sel.m.room_id.as_str())
        .collect();
    let mut extensions = Map::new();
    let mut has_news = !rooms_out.is_empty();
    if let Some((to_device_since, limit)) = req.extensions.to_device {
        let since = to_device_since.unwrap_or(0).clamp(0, upto);
        let (user, device) = (req.user.as_str(), req.device.as_str());
        let cut = state
            .storage
            .to_device_cut(user, device, since, upto, limit)
            .await?
            .map_or(upto, |cut| cut.clamp(since, upto));
        let messages = state
            .storage
            .to_device_messages(user, device, since, cut)
            .await?;
        let events: Vec<Value> = messages
            .into_iter()
            .filter_map(|m| {
                let content: Value = serde_json::from_str(&m.content).ok()?;
                Some(json!({ "sender": m.sender, "type": m.event_type, "content": content }))
            })
            .collect();
        has_news |= !events.is_empty();
        extensions.insert(
            "to_device".into(),
            json!({ "next_batch": cut.to_string(), "events": events }),
        );
    }
    if req.extensions.e2ee {
        let mut e2ee_out = Map::new();
        if !fresh {
            let (changed, left) = e2ee::device_list_changes(state, user, since, upto).await?;
            if !changed.is_empty() || !left.is_empty() {
                has_news = true;
                e2ee_out.insert(
                    "device_lists".into(),
                    json!({ "changed": changed, "left": left }),
                );
            }
        }
        let (counts, unused_fallback) = state.storage.key_counts(user, req.device.as_str()).await?;
        e2ee_out.insert(
            "device_one_time_keys_count".into(),
            json!(crate::e2ee::key_counts_with_default(counts)),
        );
        e2ee_out.insert(
            "device_unused_fallback_key_types".into(),
            json!(unused_fallback),
        );
        extensions.insert("e2ee".into(), Value::Object(e2ee_out));
    }
    if let Some(scope) = &req.extensions.account_data {
        let rooms = in_scope(scope);
        let out = account_data(state, req, fresh, since, upto, &rooms, &initial_rooms).await?;
        has_news |= !out.is_empty();
        extensions.insert("account_data".into(), Value::Object(out));
    }
    if let Some(scope) = &req.extensions.receipts {
        let rooms = in_scope(scope);
        let out = receipts(state, user, fresh, since, upto, &rooms, &initial_rooms).await?;
        has_news |= !out.is_empty();
        extensions.insert("receipts".into(), json!({ "rooms": out }));
    }
    if let Some(scope) = &req.extensions.typing {
        let mut out = Map::new();
        for room in in_scope(scope) {
            let users = if fresh || initial_rooms.contains(room) {
                Some(state.typing.current(room)).filter(|u| !u.is_empty())
            } else {
                state.typing.changed_since(room, base.state.typing)
            };
            if let Some(users) = users {
                out.insert(
                    room.to_owned(),
                    json!({ "type": "m.typing", "content": { "user_ids": users } }),
                );
            }
        }
        has_news |= !out.is_empty();
        extensions.insert("typing".into(), json!({ "rooms": out }));
    }

    let mut body = Map::new();
    body.insert("lists".into(), Value::Object(lists_out));
    body.insert("rooms".into(), Value::Object(rooms_out));
    body.insert("extensions".into(), Value::Object(extensions));
    Ok(Computed {
        ahead,
        body,
        next,
        delivered,
        has_news,
    })
}

/// One room to send.
struct Plan<'a, 'b> {
    sel: &'b Selected<'a>,
    initial: bool,
    /// The timeline limit grew: `rows` are the latest events, some of them sent before.
    expanded: bool,
    /// Where the room was sent up to (0 when `initial`): state changes after it are sent.
    after: i64,
    /// The required state the room was sent with (`None` when `initial`): entries the new
    /// config asks for and this one did not are sent whole.
    old_required: Option<RequiredState>,
    /// Members already sent by lazy loading (empty when `initial`).
    old_lazy: Arc<BTreeSet<Arc<str>>>,
    /// Newest first, at most `limit + 1`.
    rows: Vec<EventRow>,
}

/// Per room, the lazily loaded members the connection holds after this response.
type LazySent = Vec<(String, Arc<BTreeSet<Arc<str>>>)>;

/// The rooms the user was banned from without being joined when the ban came (banned while
/// invited, knocking or away): MSC4186 leaves those out of the server list, since there is
/// nothing of the room the user was shown. Rooms this connection was sent already stay.
/// Three reads for all such bans at once, and none without bans.
async fn banned_without_joining(
    state: &AppState,
    user: &str,
    memberships: &[MembershipRow],
    base: &Base,
) -> Result<HashSet<String>, Error> {
    let bans: Vec<String> = memberships
        .iter()
        .filter(|m| {
            m.membership == "ban"
                && !m.forgotten
                && !base.state.rooms.contains_key(m.room_id.as_str())
        })
        .map(|m| m.event_id.clone())
        .collect();
    if bans.is_empty() {
        return Ok(HashSet::new());
    }
    let ban_events = state.storage.get_events(&bans).await?;
    let lookups: Vec<(i64, String, String)> = ban_events
        .iter()
        .filter_map(|e| Some((e.state_before?, "m.room.member".to_owned(), user.to_owned())))
        .collect();
    let before = state.storage.state_lookups(&lookups).await?;
    let prior_ids: Vec<String> = before.iter().flatten().cloned().collect();
    let prior = state.storage.get_events(&prior_ids).await?;
    let joined_at_ban: HashSet<&str> = prior
        .iter()
        .filter(|e| {
            e.parse_pdu::<Value>()
                .is_ok_and(|pdu| pdu["content"]["membership"] == "join")
        })
        .map(|e| e.room_id.as_str())
        .collect();
    Ok(ban_events
        .iter()
        .map(|e| e.room_id.clone())
        .filter(|room| !joined_at_ban.contains(room.as_str()))
        .collect())
}

/// Per space, its children: the state keys of its `m.space.child` events whose `via` is a
/// non-empty list (an event without one removes the child).
async fn space_children(
    state: &AppState,
    spaces: &[&str],
) -> Result<HashMap<String, HashSet<String>>, Error> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    if spaces.is_empty() {
        return Ok(out);
    }
    let entries = state
        .storage
        .current_state_of_types(spaces, &["m.space.child"])
        .await?;
    let ids: Vec<String> = entries.iter().map(|(.., id)| id.clone()).collect();
    for event in state.storage.get_events(&ids).await? {
        let Ok(pdu) = event.parse_pdu::<Value>() else {
            continue;
        };
        let has_via = pdu["content"]["via"]
            .as_array()
            .is_some_and(|via| !via.is_empty());
        if let (true, Some(child)) = (has_via, event.state_key) {
            out.entry(event.room_id).or_default().insert(child);
        }
    }
    Ok(out)
}

/// Per room, the user's tags (`m.tag` room account data).
async fn room_tags(
    state: &AppState,
    user: &str,
    upto: i64,
) -> Result<HashMap<String, HashSet<String>>, Error> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for a in state.storage.account_data_changes(user, 0, upto).await? {
        let Some(room) = a.room_id.filter(|_| a.data_type == "m.tag") else {
            continue;
        };
        let content: Value = serde_json::from_str(&a.content).unwrap_or_default();
        if let Some(tags) = content["tags"].as_object() {
            out.insert(room, tags.keys().cloned().collect());
        }
    }
    Ok(out)
}

/// The rooms of `m.direct` account data.
async fn direct_rooms(state: &AppState, user: &str) -> Result<HashSet<String>, Error> {
    let Some(content) = state
        .storage
        .get_account_data(user, None, "m.direct")
        .await?
    else {
        return Ok(HashSet::new());
    };
    let value: Value = serde_json::from_str(&content).unwrap_or_default();
    Ok(value
        .as_object()
        .into_iter()
        .flat_map(|users| users.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect())
}

/// A room's members: `(user, membership, member event ID)`, as storage caches them.
type Members = Arc<Vec<(String, String, String)>>;

/// What one room of the response holds before its events are formatted.
struct Draft<'p> {
    room: Map<String, Value>,
    room_id: &'p str,
    /// Timeline rows, oldest first; `None` for invites and knocks.
    timeline: Option<Vec<EventRow>>,
    /// Event IDs of the required state to send (read for all rooms at once).
    state_ids: Vec<String>,
    /// State IDs to send although older than `after`: newly asked for, or lazy members.
    always: HashSet<String>,
    initial: bool,
    after: i64,
    /// Name and avatar event IDs.
    name_avatar: Vec<String>,
    /// Hero candidates `(user, member event ID)` when the room may need heroes.
    heroes: Option<Vec<(String, String)>>,
    joined: bool,
}

/// Builds the rooms of the response. Everything that needs the database is read for all
/// rooms at once (state entries, the events behind them, their formatting), so a response
/// of a hundred rooms costs a handful of statements, not a handful per room.
async fn build_rooms(
    state: &AppState,
    req: &SlidingRequest,
    base: &Base,
    upto: i64,
    plans: &[Plan<'_, '_>],
    dm_rooms: &HashSet<String>,
) -> Result<
    (
        Map<String, Value>,
        Vec<(String, String, Option<i64>)>,
        LazySent,
    ),
    Error,
> {
    let user = req.user.as_str();
    let viewer = (req.user.as_ref(), req.device.as_ref());
    let joined: Vec<(&str, i64)> = plans
        .iter()
        .filter(|p| p.sel.m.membership == "join")
        .map(|p| (p.sel.m.room_id.as_str(), p.sel.m.stream_ordering))
        .collect();
    let unread = if joined.is_empty() {
        Vec::new()
    } else {
        state.storage.unread_counts_in(user, upto, &joined).await?
    };

    // The state every room's config and naming needs, in one read for all rooms (rooms that
    // ask for every type read their whole state).
    let member_view: Vec<&Plan> = plans
        .iter()
        .filter(|p| matches!(p.sel.m.membership.as_str(), "join" | "leave" | "ban"))
        .collect();
    let mut types: BTreeSet<&str> = ["m.room.name", "m.room.avatar"].into_iter().collect();
    let mut whole_state_rooms = Vec::new();
    for p in &member_view {
        for (t, _) in &p.sel.config.required_state {
            if t == "*" {
                whole_state_rooms.push(p.sel.m.room_id.as_str());
            } else if t != "m.room.member" {
                // Members come from the room's member list (cached), not this read.
                types.insert(t.as_str());
            }
        }
    }
    let room_ids: Vec<&str> = member_view
        .iter()
        .map(|p| p.sel.m.room_id.as_str())
        .collect();
    let types: Vec<&str> = types.into_iter().collect();
    // (room) -> (type, key) -> event ID
    let mut current: HashMap<String, BTreeMap<(String, String), String>> = HashMap::new();
    for (room, t, k, id) in state
        .storage
        .current_state_of_types(&room_ids, &types)
        .await?
    {
        current.entry(room).or_default().insert((t, k), id);
    }
    for room in whole_state_rooms {
        let all = state.storage.current_state(room).await?;
        let entry = current.entry(room.to_owned()).or_default();
        for ((t, k), id) in all {
            entry.insert((t, k), id);
        }
    }

    // 1. Per room: the timeline, and which events it needs.
    let mut drafts: Vec<Draft> = Vec::with_capacity(plans.len());
    let mut delivered = Vec::new();
    let mut lazy_sent = Vec::new();
    let mut members_of: HashMap<&str, Members> = HashMap::new();
    for p in plans {
        let m = p.sel.m;
        let room_id = m.room_id.as_str();
        let mut room = Map::new();
        room.insert("membership".into(), m.membership.clone().into());
        room.insert("bump_stamp".into(), p.sel.bump.into());
        if p.initial {
            room.insert("initial".into(), true.into());
        }
        if !p.sel.lists.is_empty() {
            room.insert("lists".into(), json!(p.sel.lists));
        }
        if dm_rooms.contains(room_id) {
            room.insert("is_dm".into(), true.into());
        }
        let mut draft = Draft {
            room,
            room_id,
            timeline: None,
            state_ids: Vec::new(),
            always: HashSet::new(),
            initial: p.initial,
            after: p.after,
            name_avatar: Vec::new(),
            heroes: None,
            joined: m.membership == "join",
        };
        if matches!(m.membership.as_str(), "invite" | "knock") {
            if p.initial {
                let stripped = stripped_state(state, m).await?;
                draft.room.insert("invite_state".into(), json!(stripped));
                draft.room.insert("stripped_state".into(), json!(stripped));
            }
            drafts.push(draft);
            continue;
        }

        // Timeline.
        let limit = p.sel.config.timeline_limit as usize;
        let mut rows = p.rows.clone();
        // An expanded timeline replaces what the client holds: `limited` makes matrix-sdk
        // (which predates `expanded_timeline`) reset its timeline rather than append events
        // it already has.
        let limited = rows.len() > limit || p.expanded;
        rows.truncate(limit);
        rows.reverse();
        let joined_at = (m.membership == "join").then_some(m.stream_ordering);
        let all_after_join = rows
            .first()
            .zip(joined_at)
            .is_some_and(|(first, joined)| first.stream_ordering.unwrap_or(0) > joined);
        if !all_after_join && !rows.is_empty() {
            rows = Visibility::new(state, &req.user, room_id)
                .await?
                .filter(rows)
                .await?;
        }
        if m.membership == "join" {
            if let Some(newest) = rows.iter().rev().find(|r| r.sender != user) {
                delivered.push((
                    room_id.to_owned(),
                    newest.event_id.clone(),
                    newest.stream_ordering,
                ));
            }
        }
        let num_live = if base.seq.is_none() {
            0
        } else {
            rows.iter()
                .filter(|r| r.stream_ordering.unwrap_or(0) > base.state.upto)
                .count()
        };
        if let Some(first) = rows.first() {
            draft
                .room
                .insert("prev_batch".into(), token_before(first).into());
        }
        if limited {
            draft.room.insert("limited".into(), true.into());
        }
        if p.expanded {
            draft.room.insert("expanded_timeline".into(), true.into());
        }
        draft.room.insert("num_live".into(), num_live.into());

        let members = state.storage.room_members(room_id).await?;
        let count = |which: &str| members.iter().filter(|(_, m, _)| m == which).count();
        draft
            .room
            .insert("joined_count".into(), count("join").into());
        draft
            .room
            .insert("invited_count".into(), count("invite").into());

        // Required state: all that matches on a first send; otherwise what changed since,
        // and whole what a grown config asks for that the old one did not. Members are in
        // the room's member list.
        let room_state = current.get(room_id);
        let config = &p.sel.config;
        let members_wanted = config
            .required_state
            .iter()
            .any(|(t, k)| (t == "*" || t == "m.room.member") && k != "$LAZY");
        let entries = room_state
            .into_iter()
            .flatten()
            .filter(|((t, _), _)| t != "m.room.member")
            .map(|((t, k), id)| (t.as_str(), k.as_str(), id))
            .chain(
                members
                    .iter()
                    .filter(|_| members_wanted)
                    .map(|(u, _, id)| ("m.room.member", u.as_str(), id)),
            );
        for (t, k, id) in entries {
            if config.wants(user, t, k) {
                draft.state_ids.push(id.clone());
                if p.old_required
                    .as_ref()
                    .is_some_and(|old| !wants(old, user, t, k))
                {
                    draft.always.insert(id.clone());
                }
            }
        }
        // Lazy members (MSC4186): the member events of the timeline's senders and targets
        // that the connection does not hold yet. A limited timeline makes the client drop
        // its member cache, so then they are all sent again.
        if config.lazy_members() {
            let mut wanted: BTreeSet<&str> = rows.iter().map(|r| r.sender.as_str()).collect();
            for r in &rows {
                if r.event_type == "m.room.member" {
                    if let Some(k) = &r.state_key {
                        wanted.insert(k);
                    }
                }
            }
            let mut held: BTreeSet<Arc<str>> = if limited || p.initial {
                BTreeSet::new()
            } else {
                (*p.old_lazy).clone()
            };
            for (u, _, id) in members.iter().filter(|(u, ..)| wanted.contains(u.as_str())) {
                let known = !limited && !p.initial && p.old_lazy.contains(u.as_str());
                // Whether its event is older than what was sent is seen once it is read:
                // a known member's event is sent only if it changed since.
                if !known {
                    draft.always.insert(id.clone());
                }
                draft.state_ids.push(id.clone());
                held.insert(Arc::from(u.as_str()));
            }
            if held.len() > MAX_LAZY_REMEMBERED {
                held.clear();
            }
            lazy_sent.push((room_id.to_owned(), Arc::new(held)));
        }
        let timeline_ids: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
        draft
            .state_ids
            .retain(|id| !timeline_ids.contains(id.as_str()));
        draft.state_ids.sort();
        draft.state_ids.dedup();

        // Name, avatar and heroes.
        draft.name_avatar = ["m.room.name", "m.room.avatar"]
            .iter()
            .filter_map(|t| room_state.and_then(|s| s.get(&(t.to_string(), String::new()))))
            .cloned()
            .collect();
        // Heroes are read along with the rest for a room without a name event; a room whose
        // name is empty (rare) reads them when it finds out.
        if draft.name_avatar.is_empty()
            || room_state.is_none_or(|s| !s.contains_key(&("m.room.name".into(), String::new())))
        {
            draft.heroes = Some(hero_candidates(user, &members));
        }
        members_of.insert(room_id, members);
        draft.timeline = Some(rows);
        drafts.push(draft);
    }

    // 2. Every event the rooms need, in one read.
    let mut ids: Vec<String> = drafts
        .iter()
        .flat_map(|d| {
            d.state_ids
                .iter()
                .chain(&d.name_avatar)
                .chain(d.heroes.iter().flatten().map(|(_, id)| id))
        })
        .cloned()
        .collect();
    ids.sort();
    ids.dedup();
    let events = events_by_id(state, &ids).await?;

    // 3. Which state rows each room sends; then all rows formatted at once.
    let mut all_rows: Vec<EventRow> = Vec::new();
    // Per draft: (timeline range, state range) in `all_rows`.
    let mut ranges = Vec::with_capacity(drafts.len());
    for d in &drafts {
        let timeline_start = all_rows.len();
        if let Some(rows) = &d.timeline {
            all_rows.extend(rows.iter().cloned());
        }
        let state_start = all_rows.len();
        let mut state_rows: Vec<&EventRow> = d
            .state_ids
            .iter()
            .filter_map(|id| events.get(id))
            .filter(|r| {
                d.initial
                    || r.stream_ordering.unwrap_or(0) > d.after
                    || d.always.contains(&r.event_id)
            })
            .collect();
        state_rows.sort_by_key(|r| r.stream_ordering);
        all_rows.extend(state_rows.into_iter().cloned());
        ranges.push((timeline_start..state_start, state_start..all_rows.len()));
    }
    let mut formatted = sync_events_aligned(state, &all_rows, viewer)
        .await?
        .into_iter()
        .map(Some)
        .collect::<Vec<_>>();
    let mut take = |range: std::ops::Range<usize>| -> Vec<super::SyncEvent> {
        formatted[range]
            .iter_mut()
            .filter_map(|e| e.take().flatten())
            .collect()
    };

    // 4. The rooms.
    let mut out = Map::new();
    for (d, (timeline_range, state_range)) in drafts.into_iter().zip(ranges) {
        let Draft {
            mut room, room_id, ..
        } = d;
        let Some(timeline) = &d.timeline else {
            out.insert(room_id.to_owned(), Value::Object(room));
            continue;
        };
        let state_rows = &all_rows[state_range.clone()];
        let mut named = false;
        for id in &d.name_avatar {
            let Some(row) = events.get(id) else { continue };
            let content = row
                .parse_pdu::<Value>()
                .map_err(Error::internal)?
                .get("content")
                .cloned()
                .unwrap_or_default();
            let changed = d.initial || row.stream_ordering.unwrap_or(0) > d.after;
            match row.event_type.as_str() {
                "m.room.name" => {
                    let name = content["name"].as_str().filter(|n| !n.is_empty());
                    named = name.is_some();
                    if changed {
                        room.insert("name".into(), name.into());
                    }
                }
                _ => {
                    if changed {
                        room.insert("avatar".into(), content["url"].as_str().into());
                    }
                }
            }
        }
        let members_changed = timeline
            .iter()
            .chain(state_rows)
            .any(|r| r.event_type == "m.room.member");
        if !named && (d.initial || members_changed) {
            let value = match &d.heroes {
                Some(candidates) => heroes(candidates, &events)?,
                None => {
                    let candidates = members_of
                        .get(room_id)
                        .map(|m| hero_candidates(user, m))
                        .unwrap_or_default();
                    let ids: Vec<String> = candidates.iter().map(|(_, id)| id.clone()).collect();
                    heroes(&candidates, &events_by_id(state, &ids).await?)?
                }
            };
            room.insert("heroes".into(), value);
        }
        if d.joined {
            let (counts, _) = unread_counts(unread.iter().filter(|c| c.room_id == room_id), false);
            room.insert(
                "notification_count".into(),
                counts["notification_count"].clone(),
            );
            room.insert("highlight_count".into(), counts["highlight_count"].clone());
        }
        room.insert("timeline".into(), events_json(&take(timeline_range))?);
        room.insert("required_state".into(), events_json(&take(state_range))?);
        out.insert(room_id.to_owned(), Value::Object(room));
    }
    Ok((out, delivered, lazy_sent))
}

/// The events of `ids` that exist, by ID, in one read.
async fn events_by_id(
    state: &AppState,
    ids: &[String],
) -> Result<HashMap<String, EventRow>, Error> {
    Ok(state
        .storage
        .get_events(ids)
        .await?
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect())
}

/// Up to five other members to name an unnamed room by: joined first, then invited, then
/// those who left: `(user, member event ID)`.
fn hero_candidates(user: &str, members: &[(String, String, String)]) -> Vec<(String, String)> {
    let mut picked: Vec<(String, String)> = Vec::new();
    for wanted in ["join", "invite", "leave"] {
        for (u, _, id) in members
            .iter()
            .filter(|(u, m, _)| u != user && m == wanted)
            .take(5 - picked.len())
        {
            picked.push((u.clone(), id.clone()));
        }
        if picked.len() >= 5 {
            break;
        }
    }
    picked
}

/// The heroes, with the display name and avatar of their member events.
fn heroes(
    candidates: &[(String, String)],
    events: &HashMap<String, EventRow>,
) -> Result<Value, Error> {
    let mut out = Vec::new();
    for (u, id) in candidates {
        let mut hero = json!({ "user_id": u });
        if let Some(row) = events.get(id) {
            let pdu: Value = row.parse_pdu().map_err(Error::internal)?;
            if let Some(name) = pdu["content"]["displayname"].as_str() {
                hero["displayname"] = name.into();
            }
            if let Some(url) = pdu["content"]["avatar_url"].as_str() {
                hero["avatar_url"] = url.into();
            }
        }
        out.push(hero);
    }
    Ok(Value::Array(out))
}

fn events_json(events: &[super::SyncEvent]) -> Result<Value, Error> {
    let mut bytes = Vec::new();
    bytes.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        e.write_json(&mut bytes);
    }
    bytes.push(b']');
    serde_json::from_slice(&bytes).map_err(Error::internal)
}

/// The account-data extension: global account data (all of it on a fresh connection, with
/// the push rules as they are now), and per room in scope: all of a room's on its first
/// send, what changed since otherwise.
async fn account_data(
    state: &AppState,
    req: &SlidingRequest,
    fresh: bool,
    since: i64,
    upto: i64,
    rooms: &BTreeSet<&str>,
    initial_rooms: &HashSet<&str>,
) -> Result<Map<String, Value>, Error> {
    let user = req.user.as_str();
    let changes = state
        .storage
        .account_data_changes(user, if fresh { 0 } else { since }, upto)
        .await?;
    let whole = if !fresh && rooms.iter().any(|r| initial_rooms.contains(r)) {
        state.storage.account_data_changes(user, 0, upto).await?
    } else {
        Vec::new()
    };
    let event = |a: &myelin_storage::AccountDataChange| {
        serde_json::from_str::<Value>(&a.content)
            .ok()
            .map(|c| json!({ "type": a.data_type, "content": c }))
    };
    let mut global: Vec<Value> = changes
        .iter()
        .filter(|a| a.room_id.is_none() && a.data_type != PUSH_RULES)
        .filter_map(event)
        .collect();
    let rules_changed = changes
        .iter()
        .any(|a| a.room_id.is_none() && a.data_type == PUSH_RULES);
    if fresh || rules_changed {
        let rules = state.push_rules.get(state, &req.user).await?;
        global.push(json!({ "type": PUSH_RULES, "content": { "global": *rules } }));
    }
    let mut by_room: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for a in &changes {
        if let Some(room) = a.room_id.as_deref().and_then(|r| rooms.get(r)) {
            if fresh || !initial_rooms.contains(room) {
                by_room.entry(room).or_default().extend(event(a));
            }
        }
    }
    for a in &whole {
        if let Some(room) = a.room_id.as_deref().and_then(|r| rooms.get(r)) {
            if initial_rooms.contains(room) {
                by_room.entry(room).or_default().extend(event(a));
            }
        }
    }
    let mut out = Map::new();
    if !global.is_empty() {
        out.insert("global".into(), json!(global));
    }
    if !by_room.is_empty() {
        out.insert("rooms".into(), json!(by_room));
    }
    Ok(out)
}

/// The receipts extension: per room in scope, every receipt on its first send, the receipts
/// that moved since otherwise. Private receipts go only to their owner.
async fn receipts(
    state: &AppState,
    user: &str,
    fresh: bool,
    since: i64,
    upto: i64,
    rooms: &BTreeSet<&str>,
    initial_rooms: &HashSet<&str>,
) -> Result<Map<String, Value>, Error> {
    let visible = |r: &myelin_storage::ReceiptRow| {
        (r.receipt_type != "m.read.private" || r.user_id == user)
            && !(r.receipt_type == super::delivery::DELIVERED && r.user_id == user)
    };
    let moved = if fresh {
        Vec::new()
    } else {
        state.storage.receipts_in_range(since, upto).await?
    };
    let mut out = Map::new();
    for room in rooms {
        let event = if fresh || initial_rooms.contains(room) {
            let rows = state.storage.receipts_for_room(room, upto).await?;
            receipt_event(rows.iter().filter(|r| visible(r)))
        } else {
            receipt_event(
                moved
                    .iter()
                    .map(|r| r.as_ref())
                    .filter(|r| r.room_id == *room && visible(r)),
            )
        };
        if let Some(event) = event {
            out.insert((*room).to_owned(), event);
        }
    }
    Ok(out)
}
