-- Cheaper writes of push actions: a message into a room of 50 writes 49 rows, and with
-- bench_push the insert into this table was most of PostgreSQL's time per message, paid
-- mostly in index entries.
--
-- No query reads `event_push_actions` by room: unread counts, `/notifications`, the badge and
-- the pusher worker all read one user's rows in stream order, which the primary key
-- (user_id, stream_ordering) serves. The (user_id, room_id, stream_ordering) index of 0010,
-- the widest entry of each row, goes.
DROP INDEX event_push_actions_room;

-- Housekeeping deletes by age (`ts`) once an hour. Rows are inserted in time order, so a
-- BRIN index (a few pages for the whole table, next to free to keep up) finds old rows as
-- well as the B-tree did, which cost an entry per row.
DROP INDEX event_push_actions_ts;
CREATE INDEX event_push_actions_ts ON event_push_actions USING brin (ts);
