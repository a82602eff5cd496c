-- Threads (GET /rooms/{id}/threads and the thread summaries bundled with root events): one row
-- per thread root with its latest reply's stream position and its number of replies, kept by
-- the transactions that store a reply or redact one (a redacted reply no longer counts).
-- The latest reply's event ID is not stored: events.stream_ordering is unique.
CREATE TABLE threads (
    root_event_id TEXT PRIMARY KEY,
    room_id       TEXT NOT NULL,
    latest_stream BIGINT NOT NULL,
    reply_count   BIGINT NOT NULL
);
-- A room's threads by latest activity.
CREATE INDEX threads_room_latest ON threads (room_id, latest_stream);

-- The threads already in event_relations.
INSERT INTO threads (root_event_id, room_id, latest_stream, reply_count)
SELECT r.relates_to, e.room_id, MAX(r.stream_ordering), COUNT(*)
FROM event_relations r JOIN events e ON e.event_id = r.event_id
WHERE r.rel_type = 'm.thread' AND e.redacted_by IS NULL
GROUP BY r.relates_to, e.room_id;
