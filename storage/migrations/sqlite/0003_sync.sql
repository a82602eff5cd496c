-- SQLite twin of migrations/postgres/0003_sync.sql.
-- Sync: stored filters, and account data placed on the global stream so that an incremental
-- sync can return exactly what changed since its token.

CREATE TABLE filters (
    user_id     TEXT NOT NULL,
    filter_id   INTEGER NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

ALTER TABLE account_data ADD COLUMN stream_ordering INTEGER NOT NULL DEFAULT 0;
-- "What changed for this user since position N".
CREATE INDEX account_data_stream ON account_data (user_id, stream_ordering);

-- Read receipts (m.read, m.read.private, and the project's delivered type): one row per
-- user, room, type and thread, moved forward in place, so a busy room costs one row per
-- reader rather than one per event read. Each update takes a stream position so sync can
-- send exactly the receipts that moved.
CREATE TABLE receipts (
    room_id         TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    receipt_type    TEXT NOT NULL,
    -- '' for unthreaded receipts.
    thread_id       TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    ts              INTEGER NOT NULL,
    stream_ordering INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_ordering);
