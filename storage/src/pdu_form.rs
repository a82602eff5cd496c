//! The form a PDU takes in `events.pdu`: the PDU without the fields that are columns of the
//! same row (`room_id`, `sender`, `type`, `origin_server_ts`, `depth`).
//!
//! Those five fields are about 120 bytes of a typical message's PDU, and every one of them is
//! already stored (and indexed) as a column, so keeping them twice made storage per message
//! about a tenth bigger (issue 10's budget is 1.2 KB per 40-byte message). The redaction
//! algorithm keeps all five, so a redacted PDU is stored the same way.
//!
//! [`strip`] checks that each field it drops equals its column, so nothing is lost; [`restore`]
//! puts back the fields that are missing, which also makes rows written before this form (the
//! whole PDU) read unchanged. Create events are kept whole (see [`kept_whole`]). Both only
//! split the top level of the object (`RawValue` keeps every value as its text), which costs
//! no recursion however deep the content nests.

use std::collections::BTreeMap;

use serde_json::value::{to_raw_value, RawValue};

use crate::{Error, Result};

/// The columns of `events` that a PDU's fields duplicate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Columns<'a> {
    pub room_id: &'a str,
    pub sender: &'a str,
    pub event_type: &'a str,
    pub origin_server_ts: i64,
    pub depth: i64,
}

/// The PDU (canonical JSON) as it is stored: without the fields equal to `columns`.
///
/// Errors if a field differs from its column (a caller bug: the columns are read from the PDU).
pub(crate) fn strip(pdu: &str, columns: Columns<'_>) -> Result<String> {
    if kept_whole(columns) {
        return Ok(pdu.to_owned());
    }
    let mut object: BTreeMap<String, &RawValue> = serde_json::from_str(pdu)
        .map_err(|e| Error::Corrupt(format!("a PDU that is not a JSON object: {e}")))?;
    for (key, expected) in expected_fields(columns)? {
        match object.remove(key) {
            Some(value) if same_json(value, &expected) => {}
            found => {
                return Err(Error::Corrupt(format!(
                    "the PDU's `{key}` ({}) differs from its column ({})",
                    found.map(RawValue::get).unwrap_or("missing"),
                    expected.get()
                )))
            }
        }
    }
    serde_json::to_string(&object).map_err(|e| Error::Corrupt(e.to_string()))
}

/// The whole PDU again from its stored form and its row's columns. Fields the stored form has
/// (a row written before [`strip`] existed) are kept as they are.
pub(crate) fn restore(stored: &str, columns: Columns<'_>) -> Result<String> {
    if kept_whole(columns) {
        return Ok(stored.to_owned());
    }
    let mut object: BTreeMap<String, Box<RawValue>> = serde_json::from_str(stored)
        .map_err(|e| Error::Corrupt(format!("a stored PDU that is not a JSON object: {e}")))?;
    for (key, value) in expected_fields(columns)? {
        object.entry(key.to_owned()).or_insert(value);
    }
    serde_json::to_string(&object).map_err(|e| Error::Corrupt(e.to_string()))
}

/// Create events are stored whole: from room version 12 on, a create event has no `room_id`
/// (the room's ID is derived from it), so putting the column back would change the PDU. There
/// is one per room, so this costs nothing that matters.
fn kept_whole(columns: Columns<'_>) -> bool {
    columns.event_type == "m.room.create"
}

fn expected_fields(columns: Columns<'_>) -> Result<[(&'static str, Box<RawValue>); 5]> {
    let raw =
        |value: serde_json::Value| to_raw_value(&value).map_err(|e| Error::Corrupt(e.to_string()));
    Ok([
        ("depth", raw(columns.depth.into())?),
        ("origin_server_ts", raw(columns.origin_server_ts.into())?),
        ("room_id", raw(columns.room_id.into())?),
        ("sender", raw(columns.sender.into())?),
        ("type", raw(columns.event_type.into())?),
    ])
}

/// Whether two JSON scalars are equal as values (a string may be escaped differently).
fn same_json(a: &RawValue, b: &RawValue) -> bool {
    a.get() == b.get()
        || matches!(
            (
                serde_json::from_str::<serde_json::Value>(a.get()),
                serde_json::from_str::<serde_json::Value>(b.get()),
            ),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Parses a stored PDU (a JSON object) as `T`, also when it nests deeper than serde_json's
/// recursion limit of 128 allows in one piece.
///
/// Request bodies are refused past 64 levels today, but servers before that accepted bodies
/// up to serde_json's own limit, and a PDU wraps the body in one level more: such an event
/// could never be parsed again, and every response that covered it failed. So when the whole
/// object is too deep, its top level is split first (`RawValue` costs no recursion) and each
/// field parsed on its own, which gives the one level back. Deeper input than that (which
/// nothing accepted could reach) still fails, with an error, never a stack overflow.
pub fn parse_stored<T: serde::de::DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    match serde_json::from_str(text) {
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
            let fields: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
            let mut object = serde_json::Map::new();
            for (key, value) in fields {
                object.insert(key, serde_json::from_str(value.get())?);
            }
            serde_json::from_value(serde_json::Value::Object(object))
        }
        parsed => parsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: Columns<'static> = Columns {
        room_id: "!r:example.org",
        sender: "@alice:example.org",
        event_type: "m.room.message",
        origin_server_ts: 1_700_000_000_000,
        depth: 42,
    };

    const PDU: &str = r#"{"auth_events":["$a","$b"],"content":{"body":"hi","msgtype":"m.text"},"depth":42,"hashes":{"sha256":"x"},"origin_server_ts":1700000000000,"prev_events":["$p"],"room_id":"!r:example.org","sender":"@alice:example.org","signatures":{},"type":"m.room.message"}"#;

    #[test]
    fn strip_then_restore_gives_the_same_pdu() {
        let stored = strip(PDU, COLUMNS).unwrap();
        assert!(stored.len() + 100 < PDU.len(), "{stored}");
        for key in [
            "\"depth\"",
            "\"room_id\"",
            "\"sender\"",
            "\"type\"",
            "origin_server_ts",
        ] {
            assert!(!stored.contains(key), "{stored}");
        }
        // Canonical JSON sorts keys, and so does the restored form: byte for byte the same.
        assert_eq!(restore(&stored, COLUMNS).unwrap(), PDU);
    }

    #[test]
    fn a_create_event_without_room_id_is_kept_whole() {
        let columns = Columns {
            event_type: "m.room.create",
            ..COLUMNS
        };
        let create = r#"{"content":{"room_version":"12"},"depth":1,"origin_server_ts":1700000000000,"sender":"@alice:example.org","type":"m.room.create"}"#;
        let stored = strip(create, columns).unwrap();
        assert_eq!(restore(&stored, columns).unwrap(), create);
    }

    #[test]
    fn a_whole_pdu_from_before_reads_unchanged() {
        assert_eq!(restore(PDU, COLUMNS).unwrap(), PDU);
    }

    #[test]
    fn a_field_that_differs_from_its_column_is_refused() {
        let other_room = Columns {
            room_id: "!other:example.org",
            ..COLUMNS
        };
        assert!(strip(PDU, other_room).is_err());
        let other_depth = Columns {
            depth: 43,
            ..COLUMNS
        };
        assert!(strip(PDU, other_depth).is_err());
    }

    #[test]
    fn escaped_strings_compare_as_values() {
        let pdu = PDU.replace(
            r#""sender":"@alice:example.org""#,
            r#""sender":"@alic\u0065:example.org""#,
        );
        let stored = strip(&pdu, COLUMNS).unwrap();
        assert!(!stored.contains("sender"));
    }

    #[test]
    fn deep_content_costs_no_recursion() {
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let pdu = PDU.replace(
            r#"{"body":"hi","msgtype":"m.text"}"#,
            &format!(r#"{{"x":{deep}}}"#),
        );
        let stored = strip(&pdu, COLUMNS).unwrap();
        assert_eq!(restore(&stored, COLUMNS).unwrap(), pdu);
    }

    #[test]
    fn stored_json_one_level_past_serde_jsons_limit_still_parses() {
        let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        // A body at serde_json's limit, inside a PDU: one level too deep for one parse.
        let pdu = format!(r#"{{"content":{{"x":{}}},"type":"m"}}"#, deep(126));
        assert!(serde_json::from_str::<serde_json::Value>(&pdu).is_err());
        let parsed: serde_json::Value = parse_stored(&pdu).unwrap();
        assert_eq!(parsed["type"], "m");
        // Much deeper fails cleanly.
        let pdu = format!(r#"{{"content":{{"x":{}}}}}"#, deep(10_000));
        assert!(parse_stored::<serde_json::Value>(&pdu).is_err());
    }
}
