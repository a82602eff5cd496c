//! Server-side message search.
//!
//! <https://spec.matrix.org/latest/client-server-api/#server-side-search>
//!
//! Storage finds and ranks the matches (`storage/src/search.rs`: the same words and the same
//! order on PostgreSQL and SQLite); this module decides which rooms are searched (those the
//! user is joined to, narrowed by the filter), drops what the user may not see (history
//! visibility at each event, the filter's senders and types) and builds the response:
//! context, profiles, room state, groups, highlights and the next page's token.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::{extract::State, Json};
use myelin_storage::{
    words::{distinct_words, words_as_written},
    EventRow, SearchMatch, SearchQuery, TextToIndex,
};
use ruma::api::client::search::search_events::{
    self,
    v3::{GroupingKey, OrderBy, SearchKeys},
};
use serde_json::{json, Map, Value};

use super::{
    message::format_token,
    relations::{around, Around},
};
use crate::{
    api::ruma::{RumaRaw, Sender},
    error::{Error, Result},
    rooms::{
        format::client_events,
        visibility::{load_many, Visibility},
        SEARCHABLE,
    },
    sync::filter::EventCheck,
    AppState,
};

/// Results per page when the filter names no limit (as Synapse).
const DEFAULT_LIMIT: usize = 10;
/// The most results per page.
const MAX_LIMIT: usize = 100;
/// The most context events on either side of a result.
const MAX_CONTEXT: i64 = 20;
/// The most matches one request looks at: a user who may see few of many matches gets a
/// short page and a token to go on rather than a request that reads them all.
const MAX_EXAMINED: usize = 2000;

/// POST /_matrix/client/v3/search
///
/// <https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3search>
pub async fn search(
    State(state): State<AppState>,
    req: RumaRaw<search_events::v3::Request>,
) -> Result<Json<Value>> {
    let raw: Value = serde_json::from_slice(&req.raw).unwrap_or_default();
    let sender = req.request.sender().clone();
    let body = req.request.body;
    let Some(criteria) = body.search_categories.room_events else {
        return Ok(Json(json!({ "search_categories": {} })));
    };
    // ruma fills in a default event_context; the spec gives context only when asked.
    let wants_context = raw["search_categories"]["room_events"]
        .get("event_context")
        .is_some();

    let order = match &criteria.order_by {
        None | Some(OrderBy::Rank) => SearchOrder::Rank,
        Some(OrderBy::Recent) => SearchOrder::Recent,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown order_by {:?}",
                other.as_str()
            )))
        }
    };
    let keys: Vec<&str> = match &criteria.keys {
        None => Vec::new(),
        Some(keys) => keys
            .iter()
            .map(|key| match key {
                SearchKeys::ContentBody => Ok("content.body"),
                SearchKeys::ContentName => Ok("content.name"),
                SearchKeys::ContentTopic => Ok("content.topic"),
                other => Err(Error::invalid_param(format!(
                    "Unknown search key {:?}",
                    other.as_str()
                ))),
            })
            .collect::<Result<_>>()?,
    };
    let mut group_by = Vec::new();
    for grouping in &criteria.groupings.group_by {
        match &grouping.key {
            Some(GroupingKey::RoomId) => group_by.push("room_id"),
            Some(GroupingKey::Sender) => group_by.push("sender"),
            Some(other) => {
                return Err(Error::invalid_param(format!(
                    "Unknown grouping key {:?}",
                    other.as_str()
                )))
            }
            None => {}
        }
    }
    let after = body
        .next_batch
        .as_deref()
        .map(|token| Cursor::parse(token, order))
        .transpose()?;
    let check = EventCheck::from_room_event_filter(&criteria.filter);
    let limit = check.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);

    let terms = distinct_words(&criteria.search_term);
    let rooms: Vec<String> = state
        .storage
        .rooms_for_user(sender.user_id.as_str(), "join")
        .await?
        .into_iter()
        .filter(|room| check.allows_room(room))
        .collect();
    let query = SearchQuery {
        terms: &terms,
        rooms: &rooms,
        keys: &keys,
    };
    let mut visibility = Visibilities::new(&state, &sender);
    // The newest matches: the count comes from them, and the first page of either order
    // starts with them.
    let filters_events = check.filters_senders() || check.filters_types();
    let newest = state
        .storage
        .search_window(query, None, WINDOW, filters_events)
        .await?;
    let count = visible_count(&state, &mut visibility, query, &check, &newest).await?;
    let page = find_page(
        &state,
        &mut visibility,
        query,
        after.unwrap_or(match order {
            SearchOrder::Rank => Cursor::Rank(None),
            SearchOrder::Recent => Cursor::Recent(None),
        }),
        newest,
        limit,
        &check,
    )
    .await?;

    let viewer = Some((&*sender.user_id, &*sender.device_id));
    let events = client_events(&state, &page.rows, viewer).await?;
    let mut results = Vec::with_capacity(page.rows.len());
    for ((row, rank), event) in page.rows.iter().zip(&page.ranks).zip(events) {
        let mut result = json!({ "rank": *rank as f64 / 1_000_000.0, "result": event });
        if wants_context {
            let context = &criteria.event_context;
            let before = (u64::from(context.before_limit) as i64).min(MAX_CONTEXT);
            let after = (u64::from(context.after_limit) as i64).min(MAX_CONTEXT);
            result["context"] =
                event_context(&state, &sender, row, before, after, context.include_profile).await?;
        }
        results.push(result);
    }

    let next_batch = page.next.map(|cursor| cursor.to_token());
    let mut room_events = json!({
        "count": count,
        "results": results,
        "highlights": highlights(&page.rows, &terms),
    });
    if let Some(next) = &next_batch {
        room_events["next_batch"] = next.clone().into();
    }
    if criteria.include_state == Some(true) {
        room_events["state"] = room_state(&state, &sender, &page.rows).await?;
    }
    if !group_by.is_empty() {
        room_events["groups"] = groups(&page.rows, &group_by, next_batch.as_deref());
    }
    Ok(Json(
        json!({ "search_categories": { "room_events": room_events } }),
    ))
}

/// How results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SearchOrder {
    /// Best match first: the newest [`WINDOW`] matches by rank (newest first among equals),
    /// then the next older window by rank, and so on.
    Rank,
    /// Newest first.
    Recent,
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// In the window of the newest matches below stream position `top`, after the match
    /// with this rank and position (`None`: the first page).
    Rank(Option<RankCursor>),
    /// Below this stream position (`None`: the first page).
    Recent(Option<i64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RankCursor {
    top: i64,
    /// The last match returned (`None`: none of this window yet).
    after: Option<(i64, i64)>,
}

impl Cursor {
    /// `next_batch` tokens: `k<top>_<rank>_<stream>` (or `k<top>` at a window's start) by
    /// rank, `r<stream>` by recency.
    fn to_token(self) -> String {
        match self {
            Cursor::Rank(Some(RankCursor { top, after: None })) => format!("k{top}"),
            Cursor::Rank(Some(RankCursor {
                top,
                after: Some((rank, stream)),
            })) => format!("k{top}_{rank}_{stream}"),
            Cursor::Recent(Some(stream)) => format!("r{stream}"),
            // Never handed out: a next page always has a position.
            Cursor::Rank(None) | Cursor::Recent(None) => String::new(),
        }
    }

    fn parse(token: &str, order: SearchOrder) -> Result<Cursor> {
        let bad = || Error::invalid_param("Invalid next_batch token");
        let number = |text: &str| text.parse::<i64>().map_err(|_| bad());
        match (order, token.split_at_checked(1)) {
            (SearchOrder::Rank, Some(("k", rest))) => {
                let mut parts = rest.split('_');
                let top = number(parts.next().unwrap_or_default())?;
                let after = match (parts.next(), parts.next(), parts.next()) {
                    (None, _, _) => None,
                    (Some(rank), Some(stream), None) => Some((number(rank)?, number(stream)?)),
                    _ => return Err(bad()),
                };
                Ok(Cursor::Rank(Some(RankCursor { top, after })))
            }
            (SearchOrder::Recent, Some(("r", stream))) => Ok(Cursor::Recent(Some(number(stream)?))),
            _ => Err(bad()),
        }
    }
}

/// How many matches make a window (see [`SearchOrder::Rank`]), and how many are counted
/// exactly before the count becomes an estimate.
const WINDOW: usize = 200;

/// Who may see what in each room searched (all rooms the user is joined to), decided once
/// per state snapshot, in batches.
struct Visibilities<'a> {
    state: &'a AppState,
    sender: &'a Sender,
    rooms: HashMap<String, Visibility<'a>>,
}

impl<'a> Visibilities<'a> {
    fn new(state: &'a AppState, sender: &'a Sender) -> Self {
        Visibilities {
            state,
            sender,
            rooms: HashMap::new(),
        }
    }

    fn room(&mut self, room_id: &str) -> &mut Visibility<'a> {
        let (state, user) = (self.state, &*self.sender.user_id);
        self.rooms
            .entry(room_id.to_owned())
            .or_insert_with(|| Visibility::joined(state, user))
    }

    /// Decides the snapshots of `matches` in one batch, so checking them costs no more
    /// queries.
    async fn preload(&mut self, matches: &[SearchMatch]) -> Result<()> {
        let wanted: Vec<(&str, i64)> = matches
            .iter()
            .filter_map(|m| Some((m.room_id.as_str(), m.snapshot?)))
            .collect();
        for (room, _) in &wanted {
            self.room(room);
        }
        load_many(self.state, &self.sender.user_id, &mut self.rooms, &wanted).await
    }
}

/// How many matches the user may see (and the filter lets through), the spec's "approximate
/// count". `newest` is the first window of matches: when it holds every match, the count
/// is exact; otherwise the visible matches of the window are scaled by how many of the
/// rooms' indexed events the window spans (assuming matches are as frequent in the rest). Visibility depends only on
/// a match's room and state snapshot, so nothing hidden is counted. (`contains_url` is not
/// counted: it would need every event's content.)
async fn visible_count(
    state: &AppState,
    visibility: &mut Visibilities<'_>,
    query: SearchQuery<'_>,
    check: &EventCheck,
    newest: &[SearchMatch],
) -> Result<i64> {
    visibility.preload(newest).await?;
    let mut visible = 0;
    for m in newest {
        if check.filters_senders() && !check.allows_sender(&m.sender) {
            continue;
        }
        if check.filters_types() && !check.allows_type(&m.event_type) {
            continue;
        }
        let Some(snapshot) = m.snapshot else {
            continue;
        };
        if visibility.room(&m.room_id).allows_at(snapshot).await? {
            visible += 1;
        }
    }
    let Some(last) = newest.last() else {
        return Ok(0);
    };
    if newest.len() < WINDOW {
        return Ok(visible);
    }
    // The window's matches among the rooms' events since its oldest, scaled to all their
    // events.
    let since = state
        .storage
        .search_rooms_events_since(query.rooms, last.stream_ordering)
        .await?
        .max(1);
    let all = state
        .storage
        .search_room_sizes(query.rooms)
        .await?
        .max(since);
    Ok(((visible as i128 * all as i128) / since as i128) as i64)
}

/// A page of results: the events the user may see with their ranks, and where the next
/// page starts (`None`: nothing after).
struct Page {
    ranks: Vec<i64>,
    rows: Vec<EventRow>,
    next: Option<Cursor>,
}

/// Reads matches in order from `from` until `limit` the user may see are found and one more
/// exists (so a next page is promised only when it has something), or the matches end.
/// `newest` is the window of the newest matches, already read.
async fn find_page(
    state: &AppState,
    visibility: &mut Visibilities<'_>,
    query: SearchQuery<'_>,
    mut from: Cursor,
    newest: Vec<SearchMatch>,
    limit: usize,
    check: &EventCheck,
) -> Result<Page> {
    let mut page = Page {
        ranks: Vec::new(),
        rows: Vec::new(),
        next: None,
    };
    let mut newest = Some(newest);
    let mut examined = 0;
    loop {
        // The next matches in page order, and where the ones after them start.
        let (candidates, after_these) = match from {
            Cursor::Recent(below) => {
                let window = match (below, newest.take()) {
                    (None, Some(window)) => window,
                    _ => {
                        state
                            .storage
                            .search_window(query, below, WINDOW, false)
                            .await?
                    }
                };
                let after = (window.len() == WINDOW)
                    .then(|| {
                        window
                            .last()
                            .map(|m| Cursor::Recent(Some(m.stream_ordering)))
                    })
                    .flatten();
                (window, after)
            }
            Cursor::Rank(cursor) => {
                let top = cursor.map(|c| c.top);
                let mut window = match (top, newest.take()) {
                    (None, Some(window)) => window,
                    _ => {
                        state
                            .storage
                            .search_window(query, top, WINDOW, false)
                            .await?
                    }
                };
                let Some(newest_match) = window.first() else {
                    return Ok(page);
                };
                // The first page pins its window: later matches do not move it.
                let top = top.unwrap_or(newest_match.stream_ordering + 1);
                let after = (window.len() == WINDOW)
                    .then(|| {
                        window.last().map(|m| {
                            Cursor::Rank(Some(RankCursor {
                                top: m.stream_ordering,
                                after: None,
                            }))
                        })
                    })
                    .flatten();
                window.sort_by_key(|m| std::cmp::Reverse((m.rank, m.stream_ordering)));
                if let Some((rank, stream)) = cursor.and_then(|c| c.after) {
                    window.retain(|m| (m.rank, m.stream_ordering) < (rank, stream));
                }
                from = Cursor::Rank(Some(RankCursor { top, after: None }));
                (window, after)
            }
        };
        visibility.preload(&candidates).await?;
        for chunk in candidates.chunks((limit + 1).max(20)) {
            let ids: Vec<String> = chunk.iter().map(|m| m.event_id.clone()).collect();
            let mut rows: HashMap<String, EventRow> = state
                .storage
                .get_events(&ids)
                .await?
                .into_iter()
                .map(|r| (r.event_id.clone(), r))
                .collect();
            for m in chunk {
                examined += 1;
                let here = position(from, m);
                let Some(row) = rows.remove(&m.event_id) else {
                    continue;
                };
                if row.rejected || row.redacted_by.is_some() || !check.allows_event(&row) {
                    continue;
                }
                if !visibility.room(&row.room_id).allows(&row).await? {
                    continue;
                }
                if page.rows.len() == limit {
                    // One more visible result exists: the next page starts after the last one.
                    return Ok(page);
                }
                page.ranks.push(m.rank);
                page.rows.push(row);
                page.next = Some(here);
            }
            if examined >= MAX_EXAMINED {
                // Too many hidden matches to look at now: go on from the last one looked at.
                page.next = chunk.last().map(|m| position(from, m));
                return Ok(page);
            }
        }
        match after_these {
            Some(next) => from = next,
            None => {
                page.next = None;
                return Ok(page);
            }
        }
    }
}

/// The cursor just after match `m` read from `from`.
fn position(from: Cursor, m: &SearchMatch) -> Cursor {
    match from {
        Cursor::Rank(cursor) => Cursor::Rank(Some(RankCursor {
            top: cursor.map_or(m.stream_ordering + 1, |c| c.top),
            after: Some((m.rank, m.stream_ordering)),
        })),
        Cursor::Recent(_) => Cursor::Recent(Some(m.stream_ordering)),
    }
}

/// The words of the results that matched, as written there (the client highlights them).
fn highlights(rows: &[EventRow], terms: &[String]) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    for row in rows {
        let Ok(pdu) = row.parse_pdu::<Value>() else {
            continue;
        };
        let Some((_, key)) = SEARCHABLE.iter().find(|(t, _)| *t == row.event_type) else {
            continue;
        };
        let field = key.trim_start_matches("content.");
        let Some(text) = pdu["content"][field].as_str() else {
            continue;
        };
        for (written, folded) in words_as_written(text) {
            if folded
                .iter()
                .any(|word| terms.iter().any(|term| word.starts_with(term.as_str())))
            {
                found.insert(written);
            }
        }
    }
    found.into_iter().collect()
}

/// A result's `context`: the events around it the user may see, the tokens to page on from
/// them, and (when asked) the senders' display names and avatars as of the result.
async fn event_context(
    state: &AppState,
    sender: &Sender,
    row: &EventRow,
    before_n: i64,
    after_n: i64,
    include_profile: bool,
) -> Result<Value> {
    let mut visibility = Visibility::new(state, &sender.user_id, &row.room_id).await?;
    let Around {
        before,
        after,
        start,
        end,
    } = around(
        state,
        &mut visibility,
        row,
        before_n,
        after_n,
        &EventCheck::default(),
    )
    .await?;
    let viewer = Some((&*sender.user_id, &*sender.device_id));
    let mut context = json!({
        "events_before": client_events(state, &before, viewer).await?,
        "events_after": client_events(state, &after, viewer).await?,
        "start": format_token(start),
        "end": format_token(end),
    });
    if include_profile {
        let senders: HashSet<&str> = before
            .iter()
            .chain(&after)
            .chain(std::iter::once(row))
            .map(|r| r.sender.as_str())
            .collect();
        let mut profiles = Map::new();
        if let Some(snapshot) = row.state_after {
            let map = state.snapshot(snapshot).await?;
            let ids: Vec<String> = senders
                .iter()
                .filter_map(|user| {
                    map.get(&("m.room.member".to_owned(), (*user).to_owned()))
                        .cloned()
                })
                .collect();
            for member in state.storage.get_events(&ids).await? {
                let Ok(pdu) = member.parse_pdu::<Value>() else {
                    continue;
                };
                let mut profile = Map::new();
                for field in ["displayname", "avatar_url"] {
                    if let Some(value) = pdu["content"][field].as_str() {
                        profile.insert(field.into(), value.into());
                    }
                }
                if let Some(user) = member.state_key {
                    profiles.insert(user, Value::Object(profile));
                }
            }
        }
        context["profile_info"] = Value::Object(profiles);
    }
    Ok(context)
}

/// `state`: the current state of each room with a result (the user is joined to all of them).
async fn room_state(state: &AppState, sender: &Sender, rows: &[EventRow]) -> Result<Value> {
    let rooms: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.room_id.as_str()).collect();
    let viewer = Some((&*sender.user_id, &*sender.device_id));
    let mut out = Map::new();
    for room in rooms {
        let ids: Vec<String> = state
            .storage
            .current_state(room)
            .await?
            .into_values()
            .collect();
        let events = state.storage.get_events(&ids).await?;
        out.insert(
            room.to_owned(),
            Value::Array(client_events(state, &events, viewer).await?),
        );
    }
    Ok(Value::Object(out))
}

/// `groups`: the page's results by room and/or sender, each group's events in result order,
/// the groups in the order their first result comes.
fn groups(rows: &[EventRow], group_by: &[&str], next_batch: Option<&str>) -> Value {
    let mut out = Map::new();
    for key in group_by {
        let mut groups: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
        for (i, row) in rows.iter().enumerate() {
            let value = if *key == "room_id" {
                &row.room_id
            } else {
                &row.sender
            };
            groups
                .entry(value.clone())
                .or_insert_with(|| (i + 1, Vec::new()))
                .1
                .push(row.event_id.clone());
        }
        let mut map = Map::new();
        for (value, (order, results)) in groups {
            let mut group = json!({ "order": order, "results": results });
            if let Some(next) = next_batch {
                group["next_batch"] = next.into();
            }
            map.insert(value, group);
        }
        out.insert((*key).to_owned(), Value::Object(map));
    }
    Value::Object(out)
}

/// At start-up: indexes the events stored before the search index existed, newest first, a
/// batch per transaction, so a restart goes on where it stopped. Runs in the background;
/// until it is done, search finds only the newer part of the older history.
pub async fn backfill(state: AppState) {
    let types: Vec<&str> = SEARCHABLE.iter().map(|(t, _)| *t).collect();
    let mut total = 0usize;
    loop {
        let step = async {
            let up_to = state.storage.search_backfill_position().await?;
            if up_to <= 0 {
                return Ok::<_, Error>(None);
            }
            let rows = state.storage.events_to_index(up_to, &types, 500).await?;
            let next = rows
                .last()
                .and_then(|r| r.stream_ordering)
                .map_or(0, |s| s - 1);
            let texts: Vec<TextToIndex> = rows
                .iter()
                .filter_map(|row| {
                    let pdu: Value = row.parse_pdu().ok()?;
                    let (key, text) = crate::rooms::searchable_text(
                        &row.event_type,
                        row.state_key.as_deref(),
                        &pdu["content"],
                    )?;
                    Some(TextToIndex {
                        event_id: row.event_id.clone(),
                        room_id: row.room_id.clone(),
                        stream_ordering: row.stream_ordering?,
                        snapshot: row.state_before,
                        key,
                        text,
                    })
                })
                .collect();
            state.storage.index_backfilled(&texts, next).await?;
            Ok(Some(texts.len()))
        };
        match step.await {
            Ok(Some(n)) => total += n,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "could not index older events for search");
                return;
            }
        }
    }
    if total > 0 {
        tracing::info!(events = total, "indexed older events for search");
    }
}
