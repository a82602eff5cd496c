-- A room's forward extremities as one row per room instead of one row per extremity.
--
-- Every send replaced a room's extremity: a DELETE and an INSERT per transaction. Deleted
-- rows cannot be reused in place, so between two autovacuum runs a table of ten live rows
-- grew to thousands of dead ones, and the DELETE became a sequential scan over all of them
-- (0.15 ms of a 1 ms send in the send benchmark). One row per room, rewritten with an UPDATE
-- of a column no index covers, is a heap-only update: the old version is pruned in place on
-- the next visit of its page, so the table stays a few pages whatever the write rate.
CREATE TABLE room_extremities (
    room_id   TEXT PRIMARY KEY,
    -- The extremities' event IDs, a JSON array of strings.
    event_ids TEXT NOT NULL
) WITH (fillfactor = 50);

INSERT INTO room_extremities (room_id, event_ids)
SELECT room_id, json_agg(event_id ORDER BY event_id)::text
FROM forward_extremities
GROUP BY room_id;

DROP TABLE forward_extremities;
