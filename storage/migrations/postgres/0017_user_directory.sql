-- The user directory (POST /user_directory/search): which local users a searcher may find, by
-- the words of their user ID and display name.
--
-- The spec lets a user find the users they share a room with and the users in public rooms.
-- The second needs to know which rooms are public, which is in their state: the write
-- pipeline copies the two settings that decide it onto the room's row (the homeserver reads
-- them from the events; storage only copies). Rooms created before this migration have
-- directory_indexed = 0 until start-up has copied them from their current state.
ALTER TABLE rooms ADD COLUMN join_rule TEXT;
ALTER TABLE rooms ADD COLUMN history_visibility TEXT;
ALTER TABLE rooms ADD COLUMN directory_indexed BIGINT NOT NULL DEFAULT 0;

-- One row per local user in the directory (deactivated users are not); users registered
-- before this migration are added at start-up. in_public_room is 1 while the user is joined
-- to a room with join rule public or history visibility world_readable, kept by the
-- transactions that change memberships or those settings.
CREATE TABLE user_directory (
    user_id        TEXT PRIMARY KEY,
    in_public_room BIGINT NOT NULL DEFAULT 0
);

-- Each directory user's folded words (storage/src/words.rs), with in_public_room copied so
-- that "public users whose word starts with x" is one index range read in order. Words are
-- compared in code point order (the "C" collation: a linguistic collation does not keep
-- every word that starts with x between x and x + U+10FFFF).
CREATE TABLE user_directory_words (
    word           TEXT COLLATE "C" NOT NULL,
    user_id        TEXT NOT NULL,
    in_public_room BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (word, user_id)
);
CREATE INDEX user_directory_words_public ON user_directory_words (in_public_room, word, user_id);
-- Re-indexing a user (a new display name, a membership change) finds their rows.
CREATE INDEX user_directory_words_user ON user_directory_words (user_id);
