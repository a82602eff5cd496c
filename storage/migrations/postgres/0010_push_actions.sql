-- Push actions (issue 11): for every new event, each local member (not the sender) whose push
-- rules made it notify or highlight has one row, written in the event's own transaction.
-- Events whose actions neither notify nor highlight leave no row, so a room muted by a rule
-- costs nothing here.
--
-- Unread counts are the rows after the user's newest `m.read` / `m.read.private` receipt in
-- the room (per thread for threaded receipts). The table is kept bounded by housekeeping,
-- which deletes rows that are read and older than a day, and every row older than 30 days
-- (as Synapse forgets its push actions after 30 days).
--
-- A pusher worker reads a user's notifying events in stream order after its own position:
-- the primary key is that index.
CREATE TABLE event_push_actions (
    user_id         TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    room_id         TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    -- 'main', or the root event of the thread the event is in.
    thread_id       TEXT NOT NULL,
    notify          BIGINT NOT NULL,
    highlight       BIGINT NOT NULL,
    -- The matched rule's actions as JSON (tweaks such as `sound` are for the pusher).
    actions         TEXT NOT NULL,
    ts              BIGINT NOT NULL,
    PRIMARY KEY (user_id, stream_ordering)
);

-- Unread counts per room, and `/notifications` per user.
CREATE INDEX event_push_actions_room ON event_push_actions (user_id, room_id, stream_ordering);
-- Housekeeping by age.
CREATE INDEX event_push_actions_ts ON event_push_actions (ts);
