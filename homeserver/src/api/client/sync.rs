//! `GET /sync` and filters.
//!
//! <https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3sync>
//! <https://spec.matrix.org/latest/client-server-api/#filtering>

use std::time::Duration;

use axum::{extract::State, response::IntoResponse};
use ruma::api::client::{
    filter::{create_filter, get_filter, FilterDefinition},
    sync::sync_events,
};

use crate::{
    api::ruma::{Ruma, RumaRaw},
    auth::now_ms,
    error::{Error, Result},
    sync::{filter::SyncFilter, parse_token, sync, SyncRequest},
    AppState,
};

/// The longest a sync may wait; longer timeouts are shortened to this.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

async fn load_filter(state: &AppState, user: &str, filter_id: &str) -> Result<FilterDefinition> {
    let id: i64 = filter_id
        .parse()
        .map_err(|_| Error::invalid_param("Unknown filter"))?;
    let json = state
        .storage
        .get_filter(user, id)
        .await?
        .ok_or_else(|| Error::invalid_param("Unknown filter"))?;
    serde_json::from_str(&json).map_err(Error::internal)
}

/// GET /_matrix/client/v3/sync
///
/// The request comes boxed (see `client::routes`): an `async fn`'s arguments stay in its
/// future, and a waiting long-poll would keep the whole parsed request (1.1 KiB) for nothing.
pub async fn sync_events(
    State(state): State<AppState>,
    req: Box<Ruma<sync_events::v3::Request>>,
) -> Result<axum::response::Response> {
    // Only what the sync needs is kept while it waits: the parsed request and the filter
    // definition are dropped here, which keeps an idle long-poll small (see the benchmark).
    // The steps before the wait are boxed: a future is as large as its largest state, so
    // inline they would make every waiting sync carry their space (4 KiB instead of 1).
    let parsed = Box::pin(parse_request(&state, req)).await?;
    if let Some(since) = parsed.since {
        // Presenting a token acknowledges the to-device messages up to it.
        Box::pin(crate::sync::e2ee::acknowledge(
            &state,
            parsed.user.as_str(),
            parsed.device.as_str(),
            since.position,
        ))
        .await;
    }
    let request = SyncRequest {
        user: &parsed.user,
        device: &parsed.device,
        since: parsed.since.map(|t| t.position),
        since_typing: parsed.since.map_or(0, |t| t.typing),
        since_presence: parsed.since.map_or(0, |t| t.presence),
        full_state: parsed.full_state,
        filter: parsed.filter,
        timeout: parsed.timeout,
    };
    // Syncing marks the user active (unless they ask otherwise) and, while it waits, counts
    // as an open connection for presence.
    let presence = parsed.set_presence.filter(|p| p != "offline");
    if let Some(set) = &presence {
        Box::pin(crate::presence_connected(&state, parsed.user.as_str(), set)).await;
    }
    let response = sync(&state, &request).await;
    if presence.is_some() {
        state.presence.disconnected(parsed.user.as_str(), now_ms());
    }
    let body = response?.to_json();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// A `/sync` request, reduced to what the engine needs.
struct ParsedSync {
    user: ruma::OwnedUserId,
    device: ruma::OwnedDeviceId,
    since: Option<crate::sync::Token>,
    full_state: bool,
    filter: SyncFilter,
    timeout: Duration,
    /// `None` when presence is disabled.
    set_presence: Option<String>,
}

async fn parse_request(
    state: &AppState,
    req: Box<Ruma<sync_events::v3::Request>>,
) -> Result<ParsedSync> {
    let sender = req.sender();
    let filter = match &req.body.filter {
        None => SyncFilter::from_definition(&FilterDefinition::default()),
        Some(sync_events::v3::Filter::FilterDefinition(def)) => {
            validate_filter(def)?;
            SyncFilter::from_definition(def)
        }
        Some(sync_events::v3::Filter::FilterId(id)) => {
            SyncFilter::from_definition(&load_filter(state, sender.user_id.as_str(), id).await?)
        }
        Some(_) => SyncFilter::from_definition(&FilterDefinition::default()),
    };
    Ok(ParsedSync {
        user: sender.user_id.clone(),
        device: sender.device_id.clone(),
        since: req.body.since.as_deref().map(parse_token).transpose()?,
        full_state: req.body.full_state,
        filter,
        timeout: req.body.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        set_presence: state
            .config
            .presence
            .enabled
            .then(|| req.body.set_presence.to_string()),
    })
}

/// POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync
///
/// Simplified sliding sync (MSC4186): see [`crate::sync::sliding`]. The request comes boxed,
/// as for `/sync`, so a waiting request keeps only what it needs.
pub async fn sync_events_v5(
    State(state): State<AppState>,
    req: Box<RumaRaw<sync_events::v5::Request>>,
) -> Result<axum::response::Response> {
    let RumaRaw { request: req, raw } = *req;
    let req = Box::new(req);
    let set_presence = state
        .config
        .presence
        .enabled
        .then(|| req.body.set_presence.to_string())
        .filter(|p| p != "offline");
    let req = *req;
    let sender = req.sender();
    let (user, device) = (sender.user_id.clone(), sender.device_id.clone());
    let request = Box::new(sliding_request(user, device, req.body, &raw)?);
    if let Some(set) = &set_presence {
        Box::pin(crate::presence_connected(
            &state,
            request.user.as_str(),
            set,
        ))
        .await;
    }
    let response = crate::sync::sliding::sliding_sync(&state, &request, false)
        .await
        .map(Option::unwrap_or_default);
    if set_presence.is_some() {
        state.presence.disconnected(request.user.as_str(), now_ms());
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        response?,
    )
        .into_response())
}

/// Most lists a request may carry (MSC4186's limit).
const MAX_LISTS: usize = 100;
/// Most ranges per list, room subscriptions, and required-state entries per config.
const MAX_RANGES: usize = 100;
const MAX_SUBSCRIPTIONS: usize = 1_000;
const MAX_REQUIRED_STATE: usize = 1_000;
/// Longest list key and `conn_id`.
const MAX_KEY_LEN: usize = 128;
/// Timeline limits above this are cut to it (the MSC lets the server cap them).
const MAX_TIMELINE_LIMIT: u64 = 1_000;
/// To-device messages per response unless the client asks for fewer.
const TO_DEVICE_LIMIT: usize = 100;

/// Most spaces and tags a list's filters may name.
const MAX_FILTER_ITEMS: usize = 100;

/// The list filters MSC4186 names that ruma's request type does not carry: `spaces`,
/// `tags`, `not_tags`. Read from the same body.
#[derive(Debug, Default, serde::Deserialize)]
struct ExtraBody {
    #[serde(default)]
    lists: std::collections::BTreeMap<String, ExtraList>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ExtraList {
    #[serde(default)]
    filters: Option<ExtraFilters>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ExtraFilters {
    #[serde(default)]
    spaces: Option<Vec<String>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    not_tags: Option<Vec<String>>,
}

/// Checks a request and reduces it to what the engine needs; `raw` is the body it was
/// parsed from (for the filters ruma does not carry).
pub(crate) fn sliding_request(
    user: ruma::OwnedUserId,
    device: ruma::OwnedDeviceId,
    body: sync_events::v5::Request,
    raw: &[u8],
) -> Result<crate::sync::sliding::SlidingRequest> {
    let mut extra: ExtraBody = if raw.is_empty() {
        ExtraBody::default()
    } else {
        serde_json::from_slice(raw)
            .map_err(|e| Error::bad_json(format!("Invalid list filters: {e}")))?
    };
    use crate::sync::sliding::{
        ExtensionScope, Extensions, ListFilters, ListSpec, RoomConfig, SlidingRequest,
    };
    use sync_events::v5::request::ExtensionRoomConfig;

    let conn_id = body.conn_id.unwrap_or_default();
    if conn_id.len() > MAX_KEY_LEN {
        return Err(Error::invalid_param("conn_id is too long"));
    }
    if body.lists.len() > MAX_LISTS {
        return Err(Error::invalid_param(format!("At most {MAX_LISTS} lists")));
    }
    if body.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(Error::invalid_param(format!(
            "At most {MAX_SUBSCRIPTIONS} room subscriptions"
        )));
    }
    let config = |required: &[(ruma::events::StateEventType, String)], limit: ruma::UInt| {
        if required.len() > MAX_REQUIRED_STATE {
            return Err(Error::invalid_param(format!(
                "At most {MAX_REQUIRED_STATE} required_state entries"
            )));
        }
        Ok(RoomConfig {
            timeline_limit: u64::from(limit).min(MAX_TIMELINE_LIMIT),
            required_state: required
                .iter()
                .map(|(t, k)| (t.to_string(), k.clone()))
                .collect(),
        })
    };
    let mut lists = Vec::with_capacity(body.lists.len());
    for (key, list) in &body.lists {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(Error::invalid_param(
                "A list key must be 1 to 128 characters",
            ));
        }
        if list.ranges.len() > MAX_RANGES {
            return Err(Error::invalid_param(format!(
                "At most {MAX_RANGES} ranges a list"
            )));
        }
        let mut ranges = Vec::with_capacity(list.ranges.len());
        for (start, end) in &list.ranges {
            let (start, end) = (u64::from(*start), u64::from(*end));
            if start > end {
                return Err(Error::invalid_param("A range's start is after its end"));
            }
            ranges.push((start, end));
        }
        let more = extra
            .lists
            .remove(key)
            .and_then(|l| l.filters)
            .unwrap_or_default();
        for items in [&more.spaces, &more.tags, &more.not_tags]
            .into_iter()
            .flatten()
        {
            if items.len() > MAX_FILTER_ITEMS {
                return Err(Error::invalid_param(format!(
                    "At most {MAX_FILTER_ITEMS} spaces or tags in a filter"
                )));
            }
        }
        let mut filters = list
            .filters
            .as_ref()
            .map(|f| ListFilters {
                is_dm: f.is_dm,
                is_encrypted: f.is_encrypted,
                is_invite: f.is_invite,
                room_types: f
                    .room_types
                    .iter()
                    .map(|t| t.as_str().map(str::to_owned))
                    .collect(),
                not_room_types: f
                    .not_room_types
                    .iter()
                    .map(|t| t.as_str().map(str::to_owned))
                    .collect(),
                ..ListFilters::default()
            })
            .unwrap_or_default();
        filters.spaces = more.spaces;
        filters.tags = more.tags;
        filters.not_tags = more.not_tags.unwrap_or_default();
        lists.push(ListSpec {
            key: key.clone(),
            ranges,
            filters,
            config: config(
                &list.room_details.required_state,
                list.room_details.timeline_limit,
            )?,
        });
    }
    let mut subscriptions = std::collections::BTreeMap::new();
    for (room, sub) in &body.room_subscriptions {
        subscriptions.insert(
            room.to_string(),
            config(&sub.required_state, sub.timeline_limit)?,
        );
    }
    let ext = &body.extensions;
    let scope = |enabled: Option<bool>,
                 lists: &Option<Vec<String>>,
                 rooms: &Option<Vec<ExtensionRoomConfig>>| {
        (enabled == Some(true)).then(|| ExtensionScope {
            lists: lists.clone(),
            rooms: rooms.as_ref().map(|rooms| {
                rooms
                    .iter()
                    .map(|r| match r {
                        ExtensionRoomConfig::Room(id) => id.to_string(),
                        _ => "*".to_owned(),
                    })
                    .collect()
            }),
        })
    };
    let to_device = if ext.to_device.enabled == Some(true) {
        let since = ext
            .to_device
            .since
            .as_deref()
            .map(|s| {
                s.parse::<i64>()
                    .ok()
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| Error::invalid_param("Unknown to_device since token"))
            })
            .transpose()?;
        let limit = ext.to_device.limit.map_or(TO_DEVICE_LIMIT, |l| {
            u64::from(l).clamp(1, TO_DEVICE_LIMIT as u64) as usize
        });
        Some((since, limit))
    } else {
        None
    };
    let extensions = Extensions {
        to_device,
        e2ee: ext.e2ee.enabled == Some(true),
        account_data: scope(
            ext.account_data.enabled,
            &ext.account_data.lists,
            &ext.account_data.rooms,
        ),
        receipts: scope(
            ext.receipts.enabled,
            &ext.receipts.lists,
            &ext.receipts.rooms,
        ),
        typing: scope(ext.typing.enabled, &ext.typing.lists, &ext.typing.rooms),
    };
    Ok(SlidingRequest {
        user,
        device,
        conn_id,
        // Without a pos there is nothing to wait for: the first response comes at once.
        timeout: if body.pos.is_some() {
            body.timeout.unwrap_or_default().min(MAX_TIMEOUT)
        } else {
            Duration::ZERO
        },
        pos: body.pos,
        acknowledge_to_device: true,
        lists,
        subscriptions,
        extensions,
    })
}

/// POST /_matrix/client/v3/user/{userId}/filter
pub async fn create_filter(
    State(state): State<AppState>,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    let user = &req.sender().user_id;
    if *user != req.body.user_id {
        return Err(Error::forbidden(
            "You cannot create filters for other users",
        ));
    }
    validate_filter(&req.body.filter)?;
    let json = serde_json::to_string(&req.body.filter).map_err(Error::internal)?;
    let id = state.storage.create_filter(user.as_str(), &json).await?;
    Ok(create_filter::v3::Response::new(id.to_string()))
}

/// Checks what ruma's types let through but the spec's filter schema does not: an
/// `event_format` other than `client` or `federation`, and `event_fields` entries that are not
/// dotted field paths (empty, or an empty part between dots). Synapse validates the same
/// against its JSON schema and answers 400 `M_BAD_JSON`.
fn validate_filter(filter: &FilterDefinition) -> Result<()> {
    use ruma::api::client::filter::EventFormat;
    if !matches!(
        filter.event_format,
        EventFormat::Client | EventFormat::Federation
    ) {
        return Err(Error::bad_json(
            "event_format must be \"client\" or \"federation\"",
        ));
    }
    for field in filter.event_fields.iter().flatten() {
        if !valid_event_field(field) {
            return Err(Error::bad_json(format!(
                "Invalid event_fields entry {field:?}"
            )));
        }
    }
    Ok(())
}

/// An `event_fields` entry: field names separated by `.`, where `\.` and `\\` escape a dot or a
/// backslash inside a name; no name may be empty.
fn valid_event_field(field: &str) -> bool {
    let mut part_len = 0;
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if chars.next().is_none() {
                    return false;
                }
                part_len += 1;
            }
            '.' => {
                if part_len == 0 {
                    return false;
                }
                part_len = 0;
            }
            _ => part_len += 1,
        }
    }
    part_len > 0
}

/// GET /_matrix/client/v3/user/{userId}/filter/{filterId}
pub async fn get_filter(
    State(state): State<AppState>,
    req: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response> {
    let user = &req.sender().user_id;
    if *user != req.body.user_id {
        return Err(Error::forbidden("You cannot read other users' filters"));
    }
    let id: i64 = req
        .body
        .filter_id
        .parse()
        .map_err(|_| Error::not_found("No such filter"))?;
    let json = state
        .storage
        .get_filter(user.as_str(), id)
        .await?
        .ok_or_else(|| Error::not_found("No such filter"))?;
    let def: FilterDefinition = serde_json::from_str(&json).map_err(Error::internal)?;
    Ok(get_filter::v3::Response::new(def))
}
