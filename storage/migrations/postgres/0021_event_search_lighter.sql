-- Cheaper message indexing (issue 13's send-throughput budget): a redaction finds the index
-- row through the event's stream position (events.event_id is the primary key there), so
-- event_search needs no unique index on event_id, one B-tree insert less per message. New
-- rows' tsvectors no longer carry the room ID lexeme either (see storage/src/search.rs):
-- searches name rooms in an IN list; the lexemes of older rows stay, unused.
ALTER TABLE event_search DROP CONSTRAINT event_search_event_id_key;
