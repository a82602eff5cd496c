//! The Push Gateway API as Myelin speaks it: the notification a pusher's gateway is sent, and
//! the HTTP client that sends it.
//!
//! <https://spec.matrix.org/latest/push-gateway-api/#post_matrixpushv1notify>
//!
//! The body follows the spec and what Synapse sends: the event's IDs, type, sender, the
//! sender's and the room's names, its content (not with `format: event_id_only`), a priority
//! (`high` for encrypted events and for actions with a sound or highlight tweak), the badge
//! (`counts.unread`), and the one device: app ID, pushkey, `pushkey_ts` in seconds, the
//! pusher's `data` without its `url`, and the tweaks. Requests go through
//! [`crate::outbound`], so a pusher's URL cannot reach private addresses unless
//! `push.ip_range_allowlist` allows them.

use std::{sync::Arc, time::Duration};

use myelin_storage::PusherRow;
use reqwest::Url;
use ruma::push::Action;
use serde_json::{json, Map, Value};

use crate::outbound::{blocked_literal, find_blocked, GuardedResolver, IpFilter};

/// A gateway that takes longer than this to answer is treated as failing (and retried), so a
/// slow gateway holds up only its own pushers.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The largest answer read from a gateway (it is a short JSON object).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What is known about the event a notification is for.
#[derive(Debug, Default, Clone)]
pub struct EventDetails {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub sender: String,
    pub state_key: Option<String>,
    pub content: Value,
    pub sender_display_name: Option<String>,
    pub room_name: Option<String>,
    pub room_alias: Option<String>,
}

/// The pusher's `data` as sent to the gateway: everything but `url`.
fn device_data(pusher: &PusherRow) -> Value {
    let mut data: Map<String, Value> = serde_json::from_str(&pusher.data).unwrap_or_default();
    data.remove("url");
    Value::Object(data)
}

fn device(pusher: &PusherRow, tweaks: Option<Value>) -> Value {
    let mut device = json!({
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.pushkey_ts / 1000,
        "data": device_data(pusher),
    });
    if let Some(tweaks) = tweaks {
        device["tweaks"] = tweaks;
    }
    device
}

/// The tweaks of a rule's actions (`{"sound": "default", "highlight": true}`): each
/// `set_tweak` action's name and value, as the spec writes them (a `highlight` without a
/// value is `true`).
pub fn tweaks(actions: &[Action]) -> Map<String, Value> {
    let mut tweaks = Map::new();
    for action in actions {
        if !matches!(action, Action::SetTweak(_)) {
            continue;
        }
        let Ok(Value::Object(tweak)) = serde_json::to_value(action) else {
            continue;
        };
        if let Some(name) = tweak.get("set_tweak").and_then(Value::as_str) {
            let value = tweak.get("value").cloned().unwrap_or(Value::Bool(true));
            tweaks.insert(name.to_owned(), value);
        }
    }
    tweaks
}

fn is_event_id_only(pusher: &PusherRow) -> bool {
    serde_json::from_str::<Value>(&pusher.data)
        .ok()
        .and_then(|d| d["format"].as_str().map(|f| f == "event_id_only"))
        .unwrap_or(false)
}

/// The body for one notification of `event` to `pusher`, with the user's badge.
pub fn notification(
    pusher: &PusherRow,
    event: &EventDetails,
    actions: &[Action],
    badge: i64,
) -> Value {
    let tweaks = tweaks(actions);
    let high = event.event_type == "m.room.encrypted"
        || tweaks.get("highlight").and_then(Value::as_bool) == Some(true)
        || tweaks.contains_key("sound");
    let prio = if high { "high" } else { "low" };
    let device = device(pusher, Some(Value::Object(tweaks)));
    if is_event_id_only(pusher) {
        return json!({ "notification": {
            "event_id": event.event_id,
            "room_id": event.room_id,
            "counts": { "unread": badge },
            "prio": prio,
            "devices": [device],
        }});
    }
    let mut n = json!({
        "event_id": event.event_id,
        "room_id": event.room_id,
        "type": event.event_type,
        "sender": event.sender,
        "prio": prio,
        "counts": { "unread": badge },
        "devices": [device],
    });
    if event.event_type == "m.room.member" {
        if let Some(key) = &event.state_key {
            n["membership"] = event.content["membership"].clone();
            n["user_is_target"] = json!(*key == pusher.user_id);
        }
    }
    if event.content.as_object().is_some_and(|c| !c.is_empty()) {
        n["content"] = event.content.clone();
    }
    for (key, value) in [
        ("sender_display_name", &event.sender_display_name),
        ("room_name", &event.room_name),
        ("room_alias", &event.room_alias),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            n[key] = json!(value);
        }
    }
    json!({ "notification": n })
}

/// A badge update: the new count, no event, low priority (sent when the user read something
/// on another device).
pub fn badge_update(pusher: &PusherRow, badge: i64) -> Value {
    json!({ "notification": {
        "id": "",
        "type": null,
        "sender": "",
        "prio": "low",
        "counts": { "unread": badge },
        "devices": [device(pusher, None)],
    }})
}

/// Why a gateway did not take a notification (it is retried either way).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the pusher's URL is not usable: {0}")]
    BadUrl(String),
    #[error("{0}")]
    Blocked(String),
    #[error("{0}")]
    Failed(String),
}

/// The HTTP client for gateways.
pub struct Gateway {
    client: reqwest::Client,
    filter: Arc<IpFilter>,
}

impl Gateway {
    /// A client that reaches only public addresses and the operator's `allowed` ranges.
    pub fn new(allowed: &[String]) -> Result<Gateway, reqwest::Error> {
        let filter = Arc::new(IpFilter::new(allowed));
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                filter: filter.clone(),
            }))
            // A gateway answers; it does not send us elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("Myelin/", env!("CARGO_PKG_VERSION"), " (push)"))
            .build()?;
        Ok(Gateway { client, filter })
    }

    /// POSTs `body` to the gateway at `url`. On a 2xx answer, returns the pushkeys it
    /// rejected (`rejected` in its answer); anything else is a failure.
    pub async fn send(&self, url: &str, body: &Value) -> Result<Vec<String>, GatewayError> {
        let url = Url::parse(url).map_err(|e| GatewayError::BadUrl(e.to_string()))?;
        if let Some(blocked) = blocked_literal(&url, &self.filter) {
            return Err(GatewayError::Blocked(blocked.to_string()));
        }
        let mut response =
            self.client
                .post(url)
                .json(body)
                .send()
                .await
                .map_err(|e| match find_blocked(&e) {
                    Some(why) => GatewayError::Blocked(why),
                    None => GatewayError::Failed(e.without_url().to_string()),
                })?;
        let status = response.status();
        if !status.is_success() {
            return Err(GatewayError::Failed(format!(
                "the gateway answered {status}"
            )));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| GatewayError::Failed(e.without_url().to_string()))?
        {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                break;
            }
            answer.extend_from_slice(&chunk);
        }
        // An answer that is not the expected object still means "accepted".
        let rejected = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| {
                v["rejected"].as_array().map(|keys| {
                    keys.iter()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default();
        Ok(rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pusher(data: Value) -> PusherRow {
        PusherRow {
            id: 1,
            user_id: "@bob:x".into(),
            device_id: "D".into(),
            kind: "http".into(),
            app_id: "app".into(),
            pushkey: "key".into(),
            app_display_name: "App".into(),
            device_display_name: "Phone".into(),
            profile_tag: None,
            lang: "en".into(),
            data: data.to_string(),
            pushkey_ts: 1_700_000_123_456,
            last_stream_ordering: 0,
            failing_since: None,
        }
    }

    fn event() -> EventDetails {
        EventDetails {
            event_id: "$e".into(),
            room_id: "!r:x".into(),
            event_type: "m.room.message".into(),
            sender: "@alice:x".into(),
            content: json!({ "msgtype": "m.text", "body": "hi" }),
            sender_display_name: Some("Alice".into()),
            room_name: Some("Lunch".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_notification_carries_the_event_and_the_device() {
        let p = pusher(json!({ "url": "https://push.example/_matrix/push/v1/notify", "x": 1 }));
        let actions: Vec<Action> = serde_json::from_value(json!([
            "notify", { "set_tweak": "sound", "value": "default" }
        ]))
        .unwrap();
        let n = notification(&p, &event(), &actions, 3);
        let n = &n["notification"];
        assert_eq!(n["event_id"], "$e");
        assert_eq!(n["type"], "m.room.message");
        assert_eq!(n["sender_display_name"], "Alice");
        assert_eq!(n["room_name"], "Lunch");
        assert_eq!(n["content"]["body"], "hi");
        assert_eq!(n["prio"], "high", "a sound makes it high priority");
        assert_eq!(n["counts"]["unread"], 3);
        let d = &n["devices"][0];
        assert_eq!(d["pushkey"], "key");
        assert_eq!(d["pushkey_ts"], 1_700_000_123);
        assert_eq!(d["data"], json!({ "x": 1 }), "the url is not sent");
        assert_eq!(d["tweaks"], json!({ "sound": "default" }));
    }

    #[test]
    fn event_id_only_leaves_the_content_out() {
        let p =
            pusher(json!({ "url": "https://p/_matrix/push/v1/notify", "format": "event_id_only" }));
        let actions: Vec<Action> = serde_json::from_value(json!(["notify"])).unwrap();
        let n = notification(&p, &event(), &actions, 1);
        let n = n["notification"].as_object().unwrap();
        assert!(!n.contains_key("content") && !n.contains_key("sender"));
        assert_eq!(n["prio"], "low");
        assert_eq!(n["room_id"], "!r:x");
    }

    #[test]
    fn encrypted_events_are_high_priority_and_badges_low() {
        let p = pusher(json!({ "url": "https://p/_matrix/push/v1/notify" }));
        let mut e = event();
        e.event_type = "m.room.encrypted".into();
        let actions: Vec<Action> = serde_json::from_value(json!(["notify"])).unwrap();
        assert_eq!(
            notification(&p, &e, &actions, 1)["notification"]["prio"],
            "high"
        );
        let b = badge_update(&p, 0);
        assert_eq!(b["notification"]["prio"], "low");
        assert_eq!(b["notification"]["counts"]["unread"], 0);
        assert!(b["notification"]["devices"][0].get("tweaks").is_none());
    }
}
