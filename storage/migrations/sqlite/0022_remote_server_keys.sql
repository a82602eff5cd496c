-- Other servers' signing keys (federation), as fetched from them and checked
-- (federation/src/server_keys.rs), so a request or event they signed is verified without
-- asking again until valid_until_ts. A key the server has retired (its old_verify_keys) is
-- kept with expired_ts: it still verifies what was signed before then.
CREATE TABLE remote_server_keys (
    server_name    TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    public_key     TEXT NOT NULL,
    -- Until when the key may be used without fetching the server's keys again (ms).
    valid_until_ts BIGINT NOT NULL,
    -- When the server stopped using the key (old_verify_keys), or NULL for a current key.
    expired_ts     BIGINT,
    fetched_ts     BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
