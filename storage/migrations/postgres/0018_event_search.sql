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
--
-- `vector` is the same words as a tsvector, made with array_to_tsvector so that PostgreSQL's
-- locale-dependent parser never sees them, plus the room ID as one more lexeme (it starts with
-- `!`, which no word does). Queries are tsqueries written out in full ('t1':* & 't2':* &
-- ('!room1' | '!room2' ...)), equally unparsed: the GIN index then intersects a word with the
-- searcher's rooms inside the index, and a common word costs its matches in those rooms, not
-- in every room.
CREATE TABLE event_search (
    stream_ordering BIGINT PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    room_id         TEXT NOT NULL,
    -- content.body, content.name or content.topic
    search_key      TEXT NOT NULL,
    word_count      BIGINT NOT NULL,
    -- The state snapshot the event was sent on: who may see it depends only on that and the
    -- room, so a search counts what a user may see from these rows alone.
    snapshot        BIGINT,
    words           TEXT NOT NULL,
    vector          TSVECTOR NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
-- "Newest first in these rooms" without the text index, when the rooms are few and quiet.
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);

-- Events stored before this migration are indexed at start-up, newest first, down from
-- this position (0: done).
CREATE TABLE event_search_backfill (
    up_to BIGINT NOT NULL
);
INSERT INTO event_search_backfill (up_to) SELECT COALESCE(MAX(stream_ordering), 0) FROM events;
