-- Push actions as one row per event instead of one row per recipient.
--
-- A message into a room of 50 wrote 49 `event_push_actions` rows (with their primary-key
-- entries): about 8 µs of PostgreSQL time each, most of the database's work per message in
-- the push benchmark. One row per event carries the recipients as JSON, grouped by the
-- actions their rules chose:
--
--   [{"a": ["notify"], "n": 1, "h": 0, "u": ["@alice:example.org", "@bob:example.org"]},
--    {"a": ["notify", {"set_tweak": "highlight"}], "n": 1, "h": 1, "u": ["@carol:example.org"]}]
--
-- An event that notifies no one has no row. Readers ask for one user's rows in the rooms they
-- are in, by room and position (the index below), and pick the user's group out of the JSON
-- (`storage/src/push.rs`). Unread counts are kept incrementally per process on top of that,
-- so a user who never reads a busy room does not rescan it on every sync.
CREATE TABLE push_events (
    stream_ordering BIGINT PRIMARY KEY,
    room_id         TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    -- 'main', or the root event of the thread the event is in.
    thread_id       TEXT NOT NULL,
    recipients      TEXT NOT NULL,
    ts              BIGINT NOT NULL
);

CREATE INDEX push_events_room ON push_events (room_id, stream_ordering);
-- Housekeeping by age; rows arrive in time order, so BRIN is enough.
CREATE INDEX push_events_ts ON push_events USING brin (ts);

INSERT INTO push_events (stream_ordering, room_id, event_id, thread_id, recipients, ts)
SELECT stream_ordering, MIN(room_id), MIN(event_id), MIN(thread_id),
       '[' || string_agg('{"a":' || actions || ',"n":' || notify || ',"h":' || highlight
                         || ',"u":[' || to_json(user_id)::text || ']}', ',' ORDER BY user_id) || ']',
       MIN(ts)
FROM event_push_actions
GROUP BY stream_ordering;

DROP TABLE event_push_actions;
