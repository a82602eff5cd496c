-- Storage per message (issue 10: at most 1.2 KB per 40-byte message). The unique index on
-- (sender, txn_device, txn_id) held three strings per client-sent event, about 100 bytes an
-- event. A retry is now found through an 8-byte hash of the three (the first 8 bytes of
-- SHA-256, computed by the server: `storage/src/rooms.rs::txn_hash`), and the row it finds is
-- compared in full, so a collision costs a row read, never a wrong answer. Retries of one
-- transaction are serialised by the room's send lock, which is what found them before the
-- write, so the uniqueness the old index added was never what caught a retry.
--
-- Rows written before this migration keep the old key in a partial index that only they are
-- in (new rows always have a hash), so their retries are still found without rewriting them.
ALTER TABLE events ADD COLUMN txn_hash BIGINT;
DROP INDEX events_txn;
CREATE INDEX events_txn_hash ON events (txn_hash) WHERE txn_hash IS NOT NULL;
CREATE INDEX events_txn_before_hash ON events (sender, txn_device, txn_id)
    WHERE txn_id IS NOT NULL AND txn_hash IS NULL;
