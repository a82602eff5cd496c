-- PostgreSQL's migration 0021 drops event_search's unique index on event_id, since a
-- redaction now finds the index row through the event's stream position. SQLite keeps it:
-- dropping a column constraint would mean rebuilding the table and its FTS5 index, for
-- little gain on the embedded default. Nothing to change here.
SELECT 1;
