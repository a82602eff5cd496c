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
