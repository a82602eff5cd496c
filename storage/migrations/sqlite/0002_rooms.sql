-- SQLite twin of migrations/postgres/0002_rooms.sql.
-- Rooms as a DAG of events, with state stored as shared snapshots.

-- The one stream every sync token is built from: each persisted event (and later account
-- data, receipts, ...) takes the next position. SQLite has one writer at a time, so a
-- counter row updated inside the write transaction is enough.
CREATE TABLE stream_positions (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
INSERT INTO stream_positions (id, position) VALUES (1, 0);

CREATE TABLE rooms (
    room_id      TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator      TEXT NOT NULL,
    -- 1 when published in the public room directory.
    is_public    INTEGER NOT NULL DEFAULT 0,
    created_ts   INTEGER NOT NULL
);

CREATE TABLE events (
    event_id         TEXT PRIMARY KEY,
    room_id          TEXT NOT NULL,
    -- Position in the global stream; NULL for outliers (events we hold without their place in
    -- the DAG, e.g. auth events fetched over federation).
    stream_ordering  INTEGER UNIQUE,
    depth            INTEGER NOT NULL,
    event_type       TEXT NOT NULL,
    state_key        TEXT,
    sender           TEXT NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    -- The full PDU as canonical JSON; replaced by its redacted form when redacted.
    pdu              TEXT NOT NULL,
    -- State snapshots before and after the event (equal for non-state events).
    state_before     INTEGER,
    state_after      INTEGER,
    outlier          INTEGER NOT NULL DEFAULT 0,
    -- Why the event failed authorization; rejected events are kept but never served.
    rejected_reason  TEXT,
    soft_failed      INTEGER NOT NULL DEFAULT 0,
    redacted_by      TEXT
);
-- /messages walks a room in topological order (depth, then stream).
CREATE INDEX events_room_topological ON events (room_id, depth, stream_ordering);
-- Sync reads a room's new events by stream position.
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);

-- The DAG: one row per (event, parent).
CREATE TABLE event_edges (
    event_id      TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

-- Events with no children yet: the prev_events of the room's next event.
CREATE TABLE forward_extremities (
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- State snapshots. A snapshot stores only the entries that differ from its parent; every
-- so often (chain_length reset to 0) a full copy bounds the walk a read needs. A message
-- event creates no snapshot: it points at the one its state event created, so a busy room's
-- state costs one row per state change, not one per event.
CREATE TABLE state_snapshots (
    snapshot_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id      TEXT NOT NULL,
    parent_id    INTEGER,
    chain_length INTEGER NOT NULL
);

CREATE TABLE state_snapshot_entries (
    snapshot_id INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    state_key   TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, event_type, state_key)
);

-- The room's current state, for the reads that need it now (send, join, /state).
CREATE TABLE current_state (
    room_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    PRIMARY KEY (room_id, event_type, state_key)
);

-- Each user's current membership of each room, denormalised from current_state for
-- "which rooms am I in" and member lists.
CREATE TABLE room_memberships (
    room_id         TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    membership      TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    -- 1 once the user forgot the room (after leaving).
    forgotten       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_memberships_user ON room_memberships (user_id, membership);

-- Client transaction IDs, so a retried send returns the same event (per device).
CREATE TABLE event_txns (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
-- Clients see their own events' transaction IDs; formatting a page looks them up by event.
CREATE INDEX event_txns_event ON event_txns (event_id);

CREATE TABLE room_aliases (
    alias      TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    creator    TEXT NOT NULL,
    created_ts INTEGER NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- Relations (`m.relates_to`: edits, replies in threads, reactions), for /relations and
-- thread summaries. Keyed by the parent so "children of X" is one index range.
CREATE TABLE event_relations (
    event_id        TEXT PRIMARY KEY,
    relates_to      TEXT NOT NULL,
    rel_type        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (relates_to, rel_type, stream_ordering);
