-- Message search (POST /search): the searchable text of each event (content.body of
-- m.room.message, content.name of m.room.name, content.topic of m.room.topic; never of
-- encrypted events, whose text the server cannot read), written in the event's own transaction
-- and deleted in its redaction's.
--
-- `words` is the text's folded words (storage/src/words.rs) between single spaces, with a
-- space before the first and after the last: both engines match and rank from it alone, so
-- results come in the same order on PostgreSQL and SQLite. The rank of an event for prefixes
-- t1..tn is (number of words starting with some ti) * 1000000 / word_count, in integers: the
-- count is (length(words) - length(replace(words, ' ' || ti, ''))) / (length(ti) + 1).
CREATE TABLE event_search (
    stream_ordering INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    room_id         TEXT NOT NULL,
    -- content.body, content.name or content.topic
    search_key      TEXT NOT NULL,
    word_count      INTEGER NOT NULL,
    -- The state snapshot the event was sent on: who may see it depends only on that and the
    -- room, so a search counts what a user may see from these rows alone.
    snapshot        INTEGER,
    words           TEXT NOT NULL
);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);

-- The FTS5 index over `words`, kept by triggers (an external-content table: the text is
-- stored once). The ascii tokenizer splits only at ASCII non-alphanumerics, so it splits the
-- folded words exactly at the spaces between them and keeps each word whole, as PostgreSQL's
-- tsvector does.
CREATE VIRTUAL TABLE event_search_fts USING fts5(
    words, content = 'event_search', content_rowid = 'stream_ordering', tokenize = 'ascii'
);
CREATE TRIGGER event_search_insert AFTER INSERT ON event_search BEGIN
    INSERT INTO event_search_fts (rowid, words) VALUES (new.stream_ordering, new.words);
END;
CREATE TRIGGER event_search_delete AFTER DELETE ON event_search BEGIN
    INSERT INTO event_search_fts (event_search_fts, rowid, words)
    VALUES ('delete', old.stream_ordering, old.words);
END;

-- Events stored before this migration are indexed at start-up, newest first, down from
-- this position (0: done).
CREATE TABLE event_search_backfill (
    up_to INTEGER NOT NULL
);
INSERT INTO event_search_backfill (up_to) SELECT COALESCE(MAX(stream_ordering), 0) FROM events;
