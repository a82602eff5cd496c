-- SQLite twin of migrations/postgres/0014_push_events.sql: push actions as one row per event,
-- the recipients as JSON grouped by the actions their rules chose.
CREATE TABLE push_events (
    stream_ordering INTEGER PRIMARY KEY,
    room_id         TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    thread_id       TEXT NOT NULL,
    recipients      TEXT NOT NULL,
    ts              INTEGER NOT NULL
);

CREATE INDEX push_events_room ON push_events (room_id, stream_ordering);
CREATE INDEX push_events_ts ON push_events (ts);

INSERT INTO push_events (stream_ordering, room_id, event_id, thread_id, recipients, ts)
SELECT stream_ordering, MIN(room_id), MIN(event_id), MIN(thread_id),
       '[' || group_concat('{"a":' || actions || ',"n":' || notify || ',"h":' || highlight
                           || ',"u":[' || json_quote(user_id) || ']}', ',') || ']',
       MIN(ts)
FROM event_push_actions
GROUP BY stream_ordering;

DROP TABLE event_push_actions;
