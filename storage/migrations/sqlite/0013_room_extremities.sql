-- SQLite twin of migrations/postgres/0013_room_extremities.sql: a room's forward extremities
-- as one row per room (a JSON array of event IDs), rewritten in place by each send instead
-- of a DELETE and an INSERT.
CREATE TABLE room_extremities (
    room_id   TEXT PRIMARY KEY,
    event_ids TEXT NOT NULL
);

INSERT INTO room_extremities (room_id, event_ids)
SELECT room_id, json_group_array(event_id)
FROM (SELECT room_id, event_id FROM forward_extremities ORDER BY room_id, event_id)
GROUP BY room_id;

DROP TABLE forward_extremities;
