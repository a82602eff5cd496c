-- End-to-end encryption across servers, and the key documents a notary hands out.

-- EDUs that must reach another server exactly once, even across restarts of either side:
-- to-device messages (written in the same transaction as the client's send and its
-- transaction ID) and device-list / signing-key updates. The destination's sender task reads
-- them in id order with its next transaction and deletes them once the peer answered 2xx (or,
-- for a server that stays away, beyond the newest 10,000: see federation/sender.rs); a
-- resend after a crash carries the same message_id, which the peer deduplicates. Typing,
-- receipts and presence stay in memory: losing one of those costs nothing lasting.
CREATE TABLE federation_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    edu_type    TEXT NOT NULL,
    content     TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX federation_outbox_destination ON federation_outbox (destination, id);

-- Device lists of other servers' users, as their server answered /user/keys/query (JSON:
-- device_keys, master_key, self_signing_key). Kept only for users who share a room with one of
-- ours, since only then does their server tell us of changes (m.device_list_update,
-- m.signing_key_update), which delete the row; the next /keys/query asks again.
CREATE TABLE remote_device_lists (
    user_id    TEXT PRIMARY KEY,
    answer     TEXT NOT NULL,
    cached_ts  BIGINT NOT NULL
);

-- Other servers' key documents as they served them (their own signatures intact, checked
-- when fetched), the latest per server: a notary query (/_matrix/key/v2/query) for another
-- server is answered with this document countersigned by us.
CREATE TABLE remote_server_key_documents (
    server_name    TEXT PRIMARY KEY,
    document       TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts     BIGINT NOT NULL
);
