//! The server-server (federation) API, served on its own TLS listener
//! (`federation_listen`): version, keys, OpenID lookup, queries, joins, leaves, invites,
//! transactions (PDUs and EDUs), event and state reads, the public room directory; the
//! encryption endpoints are in `e2ee`, media in `media`.
//!
//! <https://spec.matrix.org/latest/server-server-api/>

use axum::{
    extract::State,
    routing::{get, post, put},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;

use myelin_federation::incoming::Incoming;
use ruma::room_version_rules::RoomVersionRules;

use super::{key, method_not_allowed, timed_to_completion, unknown_endpoint};

mod e2ee;
mod media;
use crate::{error::Error, federation::inbound::ServerRequest, AppState};

/// The routes of the federation listener.
pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/_matrix/federation/v1/version", get(version))
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(super::client::openid::openid_userinfo),
        )
        .route("/_matrix/federation/v1/query/profile", get(query_profile))
        .route(
            "/_matrix/federation/v1/query/directory",
            get(query_directory),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(make_join),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            put(send_join),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(make_leave),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            put(send_leave),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            put(invite),
        )
        .route(
            "/_matrix/federation/v1/hierarchy/{room_id}",
            get(get_hierarchy),
        )
        .route(
            "/_matrix/federation/v1/make_knock/{room_id}/{user_id}",
            get(make_knock),
        )
        .route(
            "/_matrix/federation/v1/send_knock/{room_id}/{event_id}",
            put(send_knock),
        )
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(send_transaction),
        )
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(public_rooms).post(public_rooms),
        )
        .route("/_matrix/federation/v1/event/{event_id}", get(get_event))
        .route(
            "/_matrix/federation/v1/state/{room_id}",
            get(get_room_state),
        )
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            get(get_room_state_ids),
        )
        .route(
            "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
            get(get_event_authorization),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(get_missing_events),
        );
    key::routes(media::routes(e2ee::routes(router)))
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(timed_to_completion))
        .with_state(state)
}

/// GET /_matrix/federation/v1/version
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1version>
async fn version() -> Json<Value> {
    Json(json!({
        "server": { "name": "Myelin", "version": env!("CARGO_PKG_VERSION") }
    }))
}

#[derive(Deserialize)]
struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

/// GET /_matrix/federation/v1/query/profile
///
/// A local user's display name and avatar (or the one `field`), for an authenticated server.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1queryprofile>
async fn query_profile(
    State(state): State<AppState>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let query = axum::extract::Query::<ProfileQuery>::try_from_uri(&request.parts.uri)
        .map_err(|e| Error::missing_param(format!("Invalid query: {e}")))?
        .0;
    let user_id = ruma::UserId::parse(&query.user_id)
        .map_err(|e| Error::invalid_param(format!("Invalid user_id: {e}")))?;
    if user_id.server_name() != state.server_name {
        return Err(Error::invalid_param(
            "The user is not hosted on this server",
        ));
    }
    let (displayname, avatar_url) = state
        .storage
        .get_profile(user_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Profile not found"))?;
    let mut profile = serde_json::Map::new();
    let wanted = |name: &str| query.field.as_deref().is_none_or(|f| f == name);
    if let (true, Some(name)) = (wanted("displayname"), displayname) {
        profile.insert("displayname".into(), name.into());
    }
    if let (true, Some(url)) = (wanted("avatar_url"), avatar_url) {
        profile.insert("avatar_url".into(), url.into());
    }
    Ok(Json(Value::Object(profile)))
}

/// The room of a path, which must be one this server is in (a local user joined).
async fn resident_room(state: &AppState, room_id: &str) -> Result<ruma::OwnedRoomId, Error> {
    let room_id = ruma::OwnedRoomId::try_from(room_id)
        .map_err(|_| Error::invalid_param("Invalid room ID"))?;
    if state.storage.get_room(room_id.as_str()).await?.is_none() {
        return Err(Error::not_found("Unknown room"));
    }
    let ours = state.server_name.as_str();
    let resident = state
        .storage
        .room_members(room_id.as_str())
        .await?
        .iter()
        .any(|(user, m, _)| m == "join" && user.split_once(':').is_some_and(|(_, s)| s == ours));
    if !resident {
        return Err(Error::not_found("This server is not in the room"));
    }
    Ok(room_id)
}

/// GET /_matrix/federation/v1/make_join/{roomId}/{userId}
///
/// A join template for a user of the asking server, in a room version it supports.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1make_joinroomiduserid>
async fn make_join(
    State(state): State<AppState>,
    axum::extract::Path((room_id, user_id)): axum::extract::Path<(String, String)>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    make_membership(&state, &room_id, &user_id, &request, "join").await
}

/// GET /_matrix/federation/v1/make_leave/{roomId}/{userId}
///
/// A leave template (to reject an invite, or leave) for a user of the asking server.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1make_leaveroomiduserid>
async fn make_leave(
    State(state): State<AppState>,
    axum::extract::Path((room_id, user_id)): axum::extract::Path<(String, String)>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    make_membership(&state, &room_id, &user_id, &request, "leave").await
}

/// A `membership` template for `user_id` (of the asking server) in `room_id`.
async fn make_membership(
    state: &AppState,
    room_id: &str,
    user_id: &str,
    request: &ServerRequest,
    membership: &str,
) -> Result<Json<Value>, Error> {
    let state = state.clone();
    let user = ruma::OwnedUserId::try_from(user_id)
        .map_err(|_| Error::invalid_param("Invalid user ID"))?;
    if user.server_name() != request.origin {
        return Err(Error::forbidden("The user is not of the asking server"));
    }
    let room_id = resident_room(&state, room_id).await?;
    let (version, _) = crate::rooms::room_rules(&state, &room_id).await?;
    let offered: Vec<String> = url_pairs(&request.parts.uri)
        .into_iter()
        .filter(|(k, _)| k == "ver")
        .map(|(_, v)| v)
        .collect();
    // A server that names no version supports only version 1 (make_leave names none: the
    // asking server knows the version from the invite).
    let supported = if offered.is_empty() {
        vec!["1".to_owned()]
    } else {
        offered
    };
    let knocking_version = membership == "knock"
        && !crate::rooms::room_rules(&state, &room_id)
            .await?
            .1
            .authorization
            .knocking;
    if (membership != "leave" && !supported.iter().any(|v| v == version.as_str()))
        || knocking_version
    {
        let mut body = serde_json::Map::new();
        body.insert("errcode".into(), "M_INCOMPATIBLE_ROOM_VERSION".into());
        body.insert(
            "error".into(),
            "Your server does not support this room's version".into(),
        );
        body.insert("room_version".into(), version.as_str().into());
        return Err(Error::with_body(http::StatusCode::BAD_REQUEST, body));
    }
    let mut content = json!({ "membership": membership });
    if membership == "join" {
        // A restricted room: one of our members who may invite vouches for the user (who must
        // be in one of the rooms the join rule allows, as far as we know); we sign the join
        // in send_join.
        if let Some(authoriser) =
            crate::api::client::membership::restricted_join_authoriser(&state, &room_id, &user)
                .await?
        {
            content["join_authorised_via_users_server"] = authoriser.into();
        }
    }
    let content = crate::rooms::Send::state(
        "m.room.member",
        user.as_str(),
        match ruma::CanonicalJsonValue::try_from(content) {
            Ok(ruma::CanonicalJsonValue::Object(o)) => o,
            _ => ruma::CanonicalJsonObject::new(),
        },
    );
    let (version, template) = crate::rooms::template(&state, &room_id, &user, content).await?;
    Ok(Json(json!({ "room_version": version, "event": template })))
}

/// PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}
///
/// Accepts a join made from our template and answers with the room's state before it and
/// the auth chain.
///
/// <https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv2send_joinroomideventid>
async fn send_join(
    State(state): State<AppState>,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let (event, event_id) = send_membership(&state, &room_id, &event_id, &request, "join").await?;
    let (state_events, auth_chain) =
        crate::rooms::remote::state_and_auth_chain(&state, event_id.as_str()).await?;
    Ok(Json(json!({
        "origin": state.server_name,
        "event": event,
        "state": state_events,
        "auth_chain": auth_chain,
        "members_omitted": false,
    })))
}

/// GET /_matrix/federation/v1/hierarchy/{roomId}
///
/// A space (or room) we hold and its children, as far as the asking server may see them.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1hierarchyroomid>
async fn get_hierarchy(
    State(state): State<AppState>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let room_id = ruma::OwnedRoomId::try_from(room_id.as_str())
        .map_err(|_| Error::not_found("Room not found or not visible"))?;
    let suggested_only = url_pairs(&request.parts.uri)
        .iter()
        .any(|(k, v)| k == "suggested_only" && v == "true");
    Ok(Json(
        crate::api::client::space::federation_hierarchy(
            &state,
            &room_id,
            &request.origin,
            suggested_only,
        )
        .await?,
    ))
}

/// GET /_matrix/federation/v1/make_knock/{roomId}/{userId}
///
/// A knock template for a user of the asking server, if the room's version has knocking and
/// the asking server supports it.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1make_knockroomiduserid>
async fn make_knock(
    State(state): State<AppState>,
    axum::extract::Path((room_id, user_id)): axum::extract::Path<(String, String)>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    make_membership(&state, &room_id, &user_id, &request, "knock").await
}

/// PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}
///
/// Accepts a knock made from our template (only a knock of its sender, from its server; the
/// room's join rules decide through the authorization rules) and answers with the room's
/// stripped state for the knocker's client.
///
/// <https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv1send_knockroomideventid>
async fn send_knock(
    State(state): State<AppState>,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let (event, _) = send_membership(&state, &room_id, &event_id, &request, "knock").await?;
    let room_id = ruma::OwnedRoomId::try_from(room_id.as_str()).map_err(Error::internal)?;
    let knocker = event["sender"]
        .as_str()
        .and_then(|s| ruma::OwnedUserId::try_from(s).ok())
        .ok_or_else(|| Error::internal("a knock without its sender"))?;
    let stripped = crate::rooms::remote::stripped_room_state(&state, &room_id, &knocker).await?;
    Ok(Json(json!({ "knock_room_state": stripped })))
}

/// PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}
///
/// <https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv2send_leaveroomideventid>
async fn send_leave(
    State(state): State<AppState>,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    send_membership(&state, &room_id, &event_id, &request, "leave").await?;
    Ok(Json(json!({})))
}

/// A join naming one of our users in `join_authorised_via_users_server` (a restricted room)
/// gets our signature, if we still vouch for it: the joining user is in one of the rooms the
/// join rule allows. Other joins are left as they are.
async fn authorise_restricted_join(
    state: &AppState,
    room_id: &ruma::RoomId,
    object: &mut ruma::CanonicalJsonObject,
) -> Result<(), Error> {
    let field = |object: &ruma::CanonicalJsonObject, name: &str| match object.get(name) {
        Some(ruma::CanonicalJsonValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let authoriser = match object.get("content") {
        Some(ruma::CanonicalJsonValue::Object(content)) => {
            field(content, "join_authorised_via_users_server")
        }
        _ => None,
    };
    let Some(authoriser) = authoriser else {
        return Ok(());
    };
    let Ok(authoriser) = ruma::UserId::parse(authoriser) else {
        return Err(Error::bad_json("Invalid join_authorised_via_users_server"));
    };
    if authoriser.server_name() != state.server_name {
        return Ok(());
    }
    let joiner = field(object, "state_key")
        .and_then(|s| ruma::UserId::parse(s).ok())
        .ok_or_else(|| Error::bad_json("A join without a valid state_key"))?;
    if crate::api::client::membership::restricted_join_authoriser(state, room_id, &joiner)
        .await?
        .is_none()
    {
        return Err(Error::forbidden(
            "This server cannot vouch for this join: the user is in none of the allowed rooms",
        ));
    }
    // Our signature over the event as the room version redacts it for signing. The content
    // hash is computed again on the way: if it differs from the one sent, the joiner's server
    // signed other content than we would vouch for.
    let (_, rules) = crate::rooms::room_rules(state, room_id).await?;
    let sent_hashes = object.get("hashes").cloned();
    let mut signed = object.clone();
    ruma::signatures::hash_and_sign_event(
        state.server_name.as_str(),
        state.signing_key.key_pair(),
        &mut signed,
        &rules.redaction,
    )
    .map_err(Error::internal)?;
    if signed.get("hashes") != sent_hashes.as_ref() {
        return Err(Error::bad_json(
            "The join's content hash does not match its content",
        ));
    }
    *object = signed;
    Ok(())
}

/// Checks and writes a `membership` event of a user of the asking server made from our
/// template: only that membership, only of its own sender, only from the sender's server.
async fn send_membership(
    state: &AppState,
    room_id: &str,
    event_id: &str,
    request: &ServerRequest,
    membership: &str,
) -> Result<(Value, ruma::OwnedEventId), Error> {
    let room_id = resident_room(state, room_id).await?;
    let (_, rules) = crate::rooms::room_rules(state, &room_id).await?;
    let mut object: ruma::CanonicalJsonObject = serde_json::from_slice(&request.body)
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
    if membership == "join" {
        authorise_restricted_join(state, &room_id, &mut object).await?;
    }
    let incoming = crate::rooms::remote::verify(state, &rules, object).await?;
    let pdu = &incoming.pdu;
    if incoming.event_id.as_str() != event_id || incoming.room_id != room_id {
        return Err(Error::invalid_param("The event does not match the path"));
    }
    let given = pdu.content_json()["membership"].as_str().map(str::to_owned);
    if pdu.kind.to_string() != "m.room.member"
        || given.as_deref() != Some(membership)
        || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
    {
        return Err(Error::bad_json(format!(
            "This endpoint takes only a {membership} of its sender"
        )));
    }
    if pdu.sender.server_name() != request.origin {
        return Err(Error::forbidden("The user is not of the asking server"));
    }
    let event = serde_json::to_value(&incoming.object).map_err(Error::internal)?;
    let event_id = crate::rooms::remote::receive(state, incoming).await?;
    Ok((event, event_id))
}

/// PUT /_matrix/federation/v2/invite/{roomId}/{eventId}
///
/// Another server invites one of our users: the invite is checked (signed by the inviting
/// server, an invite of a local user), signed by us and returned. For a room we are not in,
/// the invite and the room's stripped state are kept so the user's sync shows it.
///
/// <https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv2inviteroomideventid>
async fn invite(
    State(state): State<AppState>,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|e| Error::bad_json(format!("Invalid body: {e}")))?;
    let version = body["room_version"].as_str().unwrap_or("1");
    let version = ruma::RoomVersionId::try_from(version)
        .map_err(|_| Error::bad_json("Invalid room_version"))?;
    let rules = match myelin_federation::pdu::rules_for(&version) {
        Ok(rules) if crate::federation::join::VERSIONS.contains(&version.as_str()) => rules,
        _ => {
            let mut error = serde_json::Map::new();
            error.insert("errcode".into(), "M_INCOMPATIBLE_ROOM_VERSION".into());
            error.insert("error".into(), "Unsupported room version".into());
            error.insert("room_version".into(), version.as_str().into());
            return Err(Error::with_body(http::StatusCode::BAD_REQUEST, error));
        }
    };
    let object: ruma::CanonicalJsonObject = serde_json::from_value(body["event"].clone())
        .map_err(|_| Error::bad_json("Invalid event"))?;
    let incoming = crate::rooms::remote::verify(&state, &rules, object).await?;
    let pdu = &incoming.pdu;
    let target = pdu
        .state_key
        .as_deref()
        .and_then(|k| ruma::OwnedUserId::try_from(k).ok())
        .ok_or_else(|| Error::bad_json("An invite names its invitee in state_key"))?;
    if incoming.event_id.as_str() != event_id
        || incoming.room_id.as_str() != room_id
        || pdu.kind.to_string() != "m.room.member"
        || pdu.content_json()["membership"] != "invite"
    {
        return Err(Error::bad_json("Not an invite for this path"));
    }
    if pdu.sender.server_name() != request.origin {
        return Err(Error::forbidden("The inviter is not of the asking server"));
    }
    if target.server_name() != state.server_name
        || state.storage.get_profile(target.as_str()).await?.is_none()
    {
        return Err(Error::not_found("No such user here"));
    }
    // Our signature, over the event as the room version redacts it for signing.
    let mut signed = incoming.object.clone();
    ruma::signatures::hash_and_sign_event(
        state.server_name.as_str(),
        state.signing_key.key_pair(),
        &mut signed,
        &rules.redaction,
    )
    .map_err(Error::internal)?;
    let resident = state.storage.get_room(&room_id).await?.is_some()
        && state
            .storage
            .room_members(&room_id)
            .await?
            .iter()
            .any(|(u, m, _)| {
                m == "join"
                    && u.split_once(':')
                        .is_some_and(|(_, s)| s == state.server_name.as_str())
            });
    if !resident {
        let stripped = crate::federation::join::stripped_invite_state(&body["invite_room_state"]);
        let text = serde_json::to_string(&signed).map_err(Error::internal)?;
        let kind = pdu.kind.to_string();
        let sender = pdu.sender.to_string();
        let position = state
            .storage
            .record_remote_membership(
                incoming.room_id.as_str(),
                target.as_str(),
                myelin_storage::Outlier {
                    event_id: incoming.event_id.as_str(),
                    depth: pdu.depth as i64,
                    event_type: &kind,
                    state_key: pdu.state_key.as_deref(),
                    sender: &sender,
                    origin_server_ts: i64::from(pdu.origin_server_ts.get()),
                    pdu: &text,
                },
                "invite",
                Some(&stripped),
            )
            .await?;
        state.notify_when_safe(position, std::iter::once(target.as_str()));
    }
    Ok(Json(json!({ "event": signed })))
}

/// Most PDUs and EDUs in one received transaction (the spec's limits).
const MAX_TXN_PDUS: usize = 50;
const MAX_TXN_EDUS: usize = 100;

/// PUT /_matrix/federation/v1/send/{txnId}
///
/// A transaction of PDUs (and EDUs) from another server. Each PDU is checked and written
/// through the write pipeline; the answer says, per PDU, whether it was accepted. A
/// transaction received before is answered as the first time.
///
/// <https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv1sendtxnid>
async fn send_transaction(
    State(state): State<AppState>,
    axum::extract::Path(txn_id): axum::extract::Path<String>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let origin = request.origin.to_string();
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|e| Error::bad_json(format!("Invalid transaction: {e}")))?;
    let pdus = body["pdus"].as_array().cloned().unwrap_or_default();
    let edus = body["edus"].as_array().map_or(0, Vec::len);
    if pdus.len() > MAX_TXN_PDUS || edus > MAX_TXN_EDUS {
        return Err(Error::bad_json(format!(
            "At most {MAX_TXN_PDUS} PDUs and {MAX_TXN_EDUS} EDUs per transaction"
        )));
    }
    // One transaction per origin at a time, so a retry waits for the first and is answered
    // from its record.
    let lock = state.federation.origin_lock(&origin);
    let _held = lock.lock().await;
    if let Some(answer) = state.storage.received_txn(&origin, &txn_id).await? {
        let answer: Value = serde_json::from_str(&answer).map_err(Error::internal)?;
        return Ok(Json(answer));
    }
    // Each room's PDUs in the order sent, different rooms at once: rooms do not depend on
    // each other, and their commits then share the database's flushes.
    let mut by_room: Vec<(Option<String>, Vec<Value>)> = Vec::new();
    for pdu in pdus {
        let room = pdu["room_id"].as_str().map(str::to_owned);
        match by_room.iter_mut().find(|(r, _)| *r == room) {
            Some((_, list)) => list.push(pdu),
            None => by_room.push((room, vec![pdu])),
        }
    }
    let origin_name = &request.origin;
    let state_ref = &state;
    let outcomes = futures_util::future::join_all(
        by_room
            .into_iter()
            .map(|(_, list)| receive_room_pdus(state_ref, origin_name, list)),
    )
    .await;
    let mut results = serde_json::Map::new();
    for (event_id, result) in outcomes.into_iter().flatten() {
        if let Some(event_id) = event_id {
            let entry = match result {
                Ok(()) => json!({}),
                Err(e) => json!({ "error": e }),
            };
            results.insert(event_id, entry);
        }
    }
    // EDUs after the PDUs, so a receipt can name an event of the same transaction.
    for edu in body["edus"].as_array().into_iter().flatten() {
        if let Err(e) = receive_edu(&state, &request.origin, edu).await {
            tracing::info!(%origin, error = %e, "ignored an EDU");
        }
    }
    let answer = json!({ "pdus": results });
    state
        .storage
        .record_received_txn(&origin, &txn_id, &answer.to_string(), crate::auth::now_ms())
        .await?;
    Ok(Json(answer))
}

/// Whether `user` (of `origin`) is joined to `room_id` here.
async fn joined_from(
    state: &AppState,
    origin: &ruma::ServerName,
    room_id: &str,
    user: &str,
) -> Result<bool, Error> {
    let of_origin = user
        .split_once(':')
        .is_some_and(|(_, s)| s == origin.as_str());
    Ok(of_origin
        && state
            .storage
            .membership(room_id, user)
            .await?
            .is_some_and(|(m, _)| m == "join"))
}

/// Most receipts one `m.receipt` EDU may move.
const MAX_RECEIPTS_PER_EDU: usize = 100;

/// One EDU of a received transaction: typing and read receipts of the origin's users in
/// rooms they are joined to. Anything else (or anything about another server's users) is
/// ignored.
async fn receive_edu(
    state: &AppState,
    origin: &ruma::ServerName,
    edu: &Value,
) -> Result<(), Error> {
    let content = &edu["content"];
    match edu["edu_type"].as_str() {
        Some("m.typing") => {
            let (Some(room_id), Some(user)) =
                (content["room_id"].as_str(), content["user_id"].as_str())
            else {
                return Ok(());
            };
            if !joined_from(state, origin, room_id, user).await? {
                return Ok(());
            }
            let typing = content["typing"].as_bool().unwrap_or(false);
            if state.typing.set(
                room_id,
                user,
                typing,
                crate::typing::DEFAULT_TIMEOUT,
                std::time::Instant::now(),
            ) {
                state.wake_room(room_id).await?;
            }
        }
        Some("m.presence") if state.config.presence.receive_from_federation => {
            for update in content["push"].as_array().into_iter().flatten().take(100) {
                let (Some(user), Some(presence)) =
                    (update["user_id"].as_str(), update["presence"].as_str())
                else {
                    continue;
                };
                let of_origin = user
                    .split_once(':')
                    .is_some_and(|(_, s)| s == origin.as_str());
                if !of_origin || !matches!(presence, "online" | "unavailable" | "offline") {
                    continue;
                }
                // Only users who share a room with us.
                let shares = state
                    .storage
                    .memberships_for_user(user)
                    .await?
                    .iter()
                    .any(|m| m.membership == "join");
                if !shares {
                    continue;
                }
                let status = update["status_msg"].as_str().map(str::to_owned);
                let now = crate::auth::now_ms();
                let ago = update["last_active_ago"]
                    .as_i64()
                    .unwrap_or(0)
                    .clamp(0, now);
                if state
                    .presence
                    .set_remote(user, presence, status, now - ago, now)
                {
                    crate::announce_presence(state, user).await;
                }
            }
        }
        Some("m.receipt") => {
            let mut budget = MAX_RECEIPTS_PER_EDU;
            for (room_id, by_type) in content.as_object().into_iter().flatten() {
                let mut moved = false;
                // Public read receipts, and Myelin's delivered ticks (between Myelins).
                for (receipt_type, users) in ["m.read", crate::sync::delivery::DELIVERED]
                    .into_iter()
                    .filter_map(|t| Some((t, by_type[t].as_object()?)))
                {
                    for (user, receipt) in users {
                        if budget == 0 {
                            break;
                        }
                        budget -= 1;
                        let Some(event_id) = receipt["event_ids"]
                            .as_array()
                            .and_then(|ids| ids.first())
                            .and_then(|id| id.as_str())
                        else {
                            continue;
                        };
                        if !joined_from(state, origin, room_id, user).await? {
                            continue;
                        }
                        let in_room = state.storage.get_event(event_id).await?.is_some_and(|row| {
                            row.room_id == *room_id && row.stream_ordering.is_some()
                        });
                        if !in_room {
                            continue;
                        }
                        let ts = receipt["data"]["ts"]
                            .as_i64()
                            .unwrap_or_else(crate::auth::now_ms);
                        let thread_id = receipt["data"]["thread_id"].as_str().map(str::to_owned);
                        moved |= state
                            .storage
                            .set_receipt(&myelin_storage::ReceiptRow {
                                room_id: room_id.clone(),
                                user_id: user.clone(),
                                receipt_type: receipt_type.to_owned(),
                                thread_id,
                                event_id: event_id.to_owned(),
                                ts,
                            })
                            .await?
                            .is_some();
                    }
                }
                if moved {
                    state.wake_room(room_id).await?;
                }
            }
        }
        Some("m.direct_to_device") => {
            crate::federation::e2ee::receive_to_device(state, origin, content).await?;
        }
        Some("m.device_list_update" | "m.signing_key_update") => {
            crate::federation::e2ee::receive_device_change(state, origin, content).await?;
        }
        _ => {}
    }
    Ok(())
}

/// The PDUs of one room in a received transaction, in the order sent: each is checked
/// ([`check_pdu`]) and those that pass go to the room's writer together, so that a run of
/// messages is committed at once. Before a PDU whose parents are neither stored nor earlier
/// in the transaction, what is queued is written and the missing parents are fetched from
/// the origin. Returns each PDU's event ID (when it can be computed) and whether it was
/// accepted.
async fn receive_room_pdus(
    state: &AppState,
    origin: &ruma::ServerName,
    pdus: Vec<Value>,
) -> Vec<(Option<String>, Result<(), String>)> {
    let mut out: Vec<(Option<String>, Result<(), String>)> = Vec::with_capacity(pdus.len());
    let mut queued: Vec<(usize, Incoming)> = Vec::new();
    let mut in_batch: HashSet<String> = HashSet::new();
    for pdu in pdus {
        let (event_id, checked) = check_pdu(state, origin, pdu).await;
        let incoming = match checked {
            Ok((incoming, rules)) => {
                let parents_here = incoming
                    .pdu
                    .prev_events
                    .iter()
                    .all(|p| in_batch.contains(p.as_str()));
                if parents_here {
                    Ok(incoming)
                } else {
                    write_queued(state, &mut queued, &mut out).await;
                    let mut budget = crate::rooms::remote::MAX_FETCHED_PREVS;
                    crate::rooms::remote::fetch_missing_prevs(
                        state,
                        origin,
                        &rules,
                        &incoming,
                        &mut budget,
                    )
                    .await
                    .map(|()| incoming)
                }
            }
            Err(e) => Err(e),
        };
        match incoming {
            Ok(incoming) => {
                in_batch.insert(incoming.event_id.to_string());
                queued.push((out.len(), incoming));
                out.push((event_id, Ok(())));
            }
            Err(e) => out.push((event_id, Err(e.to_string()))),
        }
    }
    write_queued(state, &mut queued, &mut out).await;
    for (event_id, result) in &out {
        if let Err(reason) = result {
            tracing::info!(%origin, event_id = ?event_id, %reason, "refused a PDU");
        }
    }
    out
}

/// Hands `queued` (checked PDUs of one room, each with its place in `out`) to the room's
/// writer and records the outcomes.
async fn write_queued(
    state: &AppState,
    queued: &mut Vec<(usize, Incoming)>,
    out: &mut [(Option<String>, Result<(), String>)],
) {
    let (places, incoming): (Vec<usize>, Vec<Incoming>) =
        std::mem::take(queued).into_iter().unzip();
    let results = crate::rooms::remote::receive_many(state, incoming).await;
    for (place, result) in places.into_iter().zip(results) {
        if let Err(e) = result {
            out[place].1 = Err(e.to_string());
        }
    }
}

/// Steps 1 and 2 for one PDU of a received transaction (format, signatures, hashes), after
/// checking that its origin has a member in the room. Returns its event ID (when it can be
/// computed) and the checked event with its room's rules.
async fn check_pdu(
    state: &AppState,
    origin: &ruma::ServerName,
    pdu: Value,
) -> (Option<String>, Result<(Incoming, RoomVersionRules), Error>) {
    let Ok(object) = serde_json::from_value::<ruma::CanonicalJsonObject>(pdu) else {
        return (None, Err(Error::bad_json("not a JSON object")));
    };
    let Some(room_id) = object.get("room_id").and_then(|r| match r {
        ruma::CanonicalJsonValue::String(s) => ruma::OwnedRoomId::try_from(s.as_str()).ok(),
        _ => None,
    }) else {
        return (None, Err(Error::bad_json("no room_id")));
    };
    let Ok((_, rules)) = crate::rooms::room_rules(state, &room_id).await else {
        return (None, Err(Error::not_found("unknown room")));
    };
    let event_id = myelin_federation::incoming::read(object.clone(), &rules)
        .ok()
        .map(|i| i.event_id.to_string());
    let result = async {
        // Only a server with a member in the room may send into it.
        if !crate::rooms::remote::server_joined(state, room_id.as_str(), origin).await? {
            return Err(Error::forbidden("The sending server is not in the room"));
        }
        let incoming = crate::rooms::remote::verify(state, &rules, object).await?;
        Ok((incoming, rules))
    }
    .await;
    (event_id, result)
}

/// GET /_matrix/federation/v1/query/directory
///
/// The room a local alias names and the servers in it.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1querydirectory>
async fn query_directory(
    State(state): State<AppState>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let alias = url_pairs(&request.parts.uri)
        .into_iter()
        .find(|(k, _)| k == "room_alias")
        .map(|(_, v)| v)
        .ok_or_else(|| Error::missing_param("room_alias is required"))?;
    let alias = ruma::OwnedRoomAliasId::try_from(alias)
        .map_err(|_| Error::invalid_param("Invalid room alias"))?;
    if alias.server_name() != state.server_name {
        return Err(Error::invalid_param("The alias is not of this server"));
    }
    let (room_id, _) = state
        .storage
        .resolve_alias(alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let mut servers = vec![state.server_name.to_string()];
    for (user, membership, _) in state.storage.room_members(&room_id).await?.iter() {
        if membership != "join" {
            continue;
        }
        if let Some((_, server)) = user.split_once(':') {
            if !servers.iter().any(|s| s == server) {
                servers.push(server.to_owned());
            }
        }
    }
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

/// The query string's pairs, percent-decoded (repeated keys kept).
fn url_pairs(uri: &http::Uri) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// An event of a room we hold that the asking server may see (history visibility for
/// servers); 404 otherwise, so nothing tells it the event exists.
async fn visible_event(
    state: &AppState,
    origin: &ruma::ServerName,
    event_id: &str,
    room_id: Option<&str>,
) -> Result<myelin_storage::EventRow, Error> {
    let row = state
        .storage
        .get_event(event_id)
        .await?
        .filter(|row| room_id.is_none_or(|r| r == row.room_id))
        .filter(|row| row.stream_ordering.is_some() || row.state_before.is_some())
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if !crate::rooms::remote::server_may_see(state, origin, &row).await? {
        return Err(Error::not_found("Event not found"));
    }
    Ok(row)
}

/// GET /_matrix/federation/v1/event/{eventId}
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1eventeventid>
async fn get_event(
    State(state): State<AppState>,
    axum::extract::Path(event_id): axum::extract::Path<String>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let row = visible_event(&state, &request.origin, &event_id, None).await?;
    let pdu: Value = row.parse_pdu().map_err(Error::internal)?;
    Ok(Json(json!({
        "origin": state.server_name,
        "origin_server_ts": crate::auth::now_ms(),
        "pdus": [pdu],
    })))
}

/// The `event_id` query parameter of `/state` and `/state_ids`.
fn event_id_param(request: &ServerRequest) -> Result<String, Error> {
    url_pairs(&request.parts.uri)
        .into_iter()
        .find(|(k, _)| k == "event_id")
        .map(|(_, v)| v)
        .ok_or_else(|| Error::missing_param("event_id is required"))
}

/// GET /_matrix/federation/v1/state_ids/{roomId}
///
/// The state at an event (before it) and its auth chain, as event IDs.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1state_idsroomid>
async fn get_room_state_ids(
    State(state): State<AppState>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let event_id = event_id_param(&request)?;
    visible_event(&state, &request.origin, &event_id, Some(&room_id)).await?;
    let (pdu_ids, auth_chain_ids) =
        crate::rooms::remote::state_ids_and_auth_chain(&state, &event_id, false).await?;
    Ok(Json(
        json!({ "pdu_ids": pdu_ids, "auth_chain_ids": auth_chain_ids }),
    ))
}

/// GET /_matrix/federation/v1/state/{roomId}
///
/// The state at an event (before it) and its auth chain, as full PDUs.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1stateroomid>
async fn get_room_state(
    State(state): State<AppState>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let event_id = event_id_param(&request)?;
    visible_event(&state, &request.origin, &event_id, Some(&room_id)).await?;
    let (pdu_ids, auth_chain_ids) =
        crate::rooms::remote::state_ids_and_auth_chain(&state, &event_id, false).await?;
    let pdus = crate::rooms::remote::pdus(&state, &pdu_ids).await?;
    let auth_chain = crate::rooms::remote::pdus(&state, &auth_chain_ids).await?;
    Ok(Json(json!({ "pdus": pdus, "auth_chain": auth_chain })))
}

/// GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}
///
/// The full auth chain of an event.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1event_authroomideventid>
async fn get_event_authorization(
    State(state): State<AppState>,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    visible_event(&state, &request.origin, &event_id, Some(&room_id)).await?;
    let auth_chain = crate::rooms::remote::event_auth_chain(&state, &event_id).await?;
    Ok(Json(json!({ "auth_chain": auth_chain })))
}

#[derive(serde::Deserialize)]
struct MissingEventsBody {
    earliest_events: Vec<String>,
    latest_events: Vec<String>,
    #[serde(default = "default_missing_limit")]
    limit: u64,
    #[serde(default)]
    min_depth: i64,
}

fn default_missing_limit() -> u64 {
    10
}

/// POST /_matrix/federation/v1/get_missing_events/{roomId}
///
/// The events between what the asking server has (`earliest_events`) and what it was sent
/// (`latest_events`), so it can fill a gap; only for a server with a member in the room.
///
/// <https://spec.matrix.org/latest/server-server-api/#post_matrixfederationv1get_missing_eventsroomid>
async fn get_missing_events(
    State(state): State<AppState>,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let room_id =
        ruma::RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let body: MissingEventsBody = serde_json::from_slice(&request.body)
        .map_err(|e| Error::bad_json(format!("Invalid body: {e}")))?;
    if body.latest_events.len() + body.earliest_events.len() > 1_000 {
        return Err(Error::invalid_param("Too many events named"));
    }
    if !crate::rooms::remote::server_joined(&state, room_id.as_str(), &request.origin).await? {
        return Err(Error::forbidden("The asking server is not in the room"));
    }
    let events = crate::rooms::remote::missing_events(
        &state,
        &request.origin,
        &room_id,
        &body.earliest_events,
        &body.latest_events,
        usize::try_from(body.limit).unwrap_or(usize::MAX),
        body.min_depth,
    )
    .await?;
    Ok(Json(json!({ "events": events })))
}

/// GET and POST /_matrix/federation/v1/publicRooms
///
/// This server's public room directory for another server (the POST form filters by a
/// search term), in the client API's page format.
///
/// <https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1publicrooms>
async fn public_rooms(
    State(state): State<AppState>,
    request: ServerRequest,
) -> Result<Json<Value>, Error> {
    let (limit, since, search) = if request.parts.method == http::Method::POST {
        let body: Value = if request.body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&request.body)
                .map_err(|e| Error::bad_json(format!("Invalid body: {e}")))?
        };
        (
            body["limit"].as_u64(),
            body["since"].as_str().map(str::to_owned),
            body["filter"]["generic_search_term"]
                .as_str()
                .map(str::to_owned),
        )
    } else {
        let pairs = url_pairs(&request.parts.uri);
        let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        (
            get("limit").and_then(|l| l.parse().ok()),
            get("since"),
            None,
        )
    };
    let limit = limit.and_then(ruma::UInt::new);
    let (chunk, next, prev, total) = crate::api::client::directory::directory_page(
        &state,
        limit,
        since.as_deref(),
        search.as_deref(),
    )
    .await?;
    let mut answer = json!({ "chunk": chunk, "total_room_count_estimate": total });
    if let Some(next) = next {
        answer["next_batch"] = next.into();
    }
    if let Some(prev) = prev {
        answer["prev_batch"] = prev.into();
    }
    Ok(Json(answer))
}
