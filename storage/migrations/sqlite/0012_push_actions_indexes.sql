-- SQLite twin of migrations/postgres/0012_push_actions_indexes.sql.
-- No query reads `event_push_actions` by room: unread counts, `/notifications`, the badge and
-- the pusher worker all read one user's rows in stream order, which the primary key
-- (user_id, stream_ordering) serves. The (user_id, room_id, stream_ordering) index of 0010,
-- the widest entry of each row, goes. (PostgreSQL also turns the `ts` index into a BRIN
-- index; SQLite has none, so its B-tree stays.)
DROP INDEX event_push_actions_room;
