-- State snapshots as delta lines (replaces state_snapshots / state_snapshot_entries).
--
-- The old scheme wrote a full copy of the state every 32 changes, so storage grew with
-- (state size x changes) and the send that wrote a copy paid for the whole state. Now every
-- state change is exactly one row, and reads are bounded by two helpers:
--
-- * A *line* is a run of snapshots each built on the one before. A snapshot is a position in
--   a line (`line_pos`); its state is the latest entry per key at or before that position,
--   over the state the line started from (`state_lines.parent_snapshot`). Local sends extend
--   one line per room; a snapshot built on a non-tip (a fork, e.g. after state resolution)
--   starts a new line. So one key at any snapshot is one index probe per line
--   (`state_entries_lookup`), never a walk.
-- * A *checkpoint* is a full copy of the state at one position, written after commit by a
--   background task, and only once the line has grown by at least twice the state's size
--   since the previous one. A full read is then one checkpoint plus at most ~2x state size
--   deltas, and checkpoints cost at most half a row per state change.

CREATE SEQUENCE state_snapshot_ids;

CREATE TABLE state_lines (
    -- The snapshot ID of the line's first snapshot.
    line_id         BIGINT PRIMARY KEY,
    room_id         TEXT NOT NULL,
    -- The snapshot this line was built on (NULL: the line starts from the empty state).
    parent_snapshot BIGINT,
    -- The newest checkpoint's position, -1 for none.
    checkpoint_pos  BIGINT NOT NULL DEFAULT -1,
    -- The position at which the background task looks again whether a checkpoint is due.
    next_check      BIGINT NOT NULL
);

-- One row per state change. Several rows share a snapshot only for snapshots migrated from
-- the old full copies (all at the same position).
CREATE TABLE state_entries (
    snapshot_id BIGINT NOT NULL,
    line_id     BIGINT NOT NULL,
    line_pos    BIGINT NOT NULL,
    event_type  TEXT NOT NULL,
    state_key   TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    -- Full reads: a line's deltas in a position range.
    PRIMARY KEY (line_id, line_pos, event_type, state_key)
);
-- Snapshot ID -> (line, position), for every read and for extending a line.
CREATE INDEX state_entries_snapshot ON state_entries (snapshot_id);
-- One key at a position: the newest entry of (type, key) at or before it.
CREATE INDEX state_entries_lookup ON state_entries (line_id, event_type, state_key, line_pos);

CREATE TABLE state_checkpoints (
    line_id    BIGINT NOT NULL,
    line_pos   BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    PRIMARY KEY (line_id, line_pos, event_type, state_key)
);

-- Existing data: each old chain (a full copy with chain_length 0, then deltas) becomes a
-- line of its own whose first snapshot holds the full state, so nothing needs a parent.
-- Snapshot IDs are kept: events name them.
INSERT INTO state_lines (line_id, room_id, parent_snapshot, checkpoint_pos, next_check)
SELECT snapshot_id, room_id, NULL, -1, 0 FROM state_snapshots WHERE parent_id IS NULL;

WITH RECURSIVE walk (snapshot_id, line_id, line_pos) AS (
    SELECT snapshot_id, snapshot_id, chain_length FROM state_snapshots WHERE parent_id IS NULL
    UNION ALL
    SELECT s.snapshot_id, w.line_id, s.chain_length
    FROM state_snapshots s JOIN walk w ON s.parent_id = w.snapshot_id
)
INSERT INTO state_entries (snapshot_id, line_id, line_pos, event_type, state_key, event_id)
SELECT e.snapshot_id, w.line_id, w.line_pos, e.event_type, e.state_key, e.event_id
FROM walk w JOIN state_snapshot_entries e ON e.snapshot_id = w.snapshot_id;

SELECT setval('state_snapshot_ids', (SELECT coalesce(max(snapshot_id), 0) + 1 FROM state_snapshots), false);

DROP TABLE state_snapshot_entries;
DROP TABLE state_snapshots;

-- Storage per message (issue 10: ~2.2 KB of PostgreSQL per 40-byte message). What a message
-- no longer pays for:
-- * `event_edges` (a row and two index entries per parent): no query reads it; an event's
--   parents are its PDU's `prev_events`, and the DAG's tips are `forward_extremities`.
-- * `outlier` and `soft_failed`: never set or read (an outlier is an event without a stream
--   position; soft-failing will come with federation, as a rare nullable column if needed).
DROP TABLE event_edges;
ALTER TABLE events DROP COLUMN outlier;
ALTER TABLE events DROP COLUMN soft_failed;
-- * The unique index on `stream_ordering`: positions come from one sequence, so they are
--   unique by construction, and no query looks an event up by its position alone (sync and
--   /messages go through (room_id, stream_ordering) and the topological index).
ALTER TABLE events DROP CONSTRAINT events_stream_ordering_key;
-- * `event_txns` (a row and two indexes per message sent by a client): the device and
--   transaction ID become two nullable columns of the event, looked up by one partial index
--   (retries: sender, device, transaction ID); showing a device its own transaction IDs reads
--   the events it formats anyway. The uniqueness the old primary key gave is kept.
ALTER TABLE events ADD COLUMN txn_device TEXT;
ALTER TABLE events ADD COLUMN txn_id TEXT;
UPDATE events SET txn_device = t.device_id, txn_id = t.txn_id
FROM event_txns t WHERE t.event_id = events.event_id AND t.user_id = events.sender;
CREATE UNIQUE INDEX events_txn ON events (sender, txn_device, txn_id) WHERE txn_id IS NOT NULL;
DROP TABLE event_txns;
