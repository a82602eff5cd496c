-- Reports users make to the server's admins (an event, a room or a user), kept until an
-- admin deals with them (the admin API reads them), and OpenID tokens that let a third
-- party (an integration manager, a widget) confirm who a user is.

CREATE TABLE reports (
    report_id      BIGSERIAL PRIMARY KEY,
    received_ts    BIGINT NOT NULL,
    -- Who reported.
    reporter       TEXT NOT NULL,
    -- The room of an event or room report; NULL for a user report.
    room_id        TEXT,
    -- The event of an event report; NULL otherwise.
    event_id       TEXT,
    -- The reported user of a user report; NULL otherwise.
    target_user_id TEXT,
    reason         TEXT NOT NULL,
    -- The event report's score (-100 most offensive .. 0), when the client sent one.
    score          BIGINT
);
CREATE INDEX reports_by_time ON reports (received_ts);

-- Only a hash of each token is kept, as for access tokens.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);

-- Profile fields beyond displayname and avatar_url (spec v1.16: m.tz and custom, namespaced
-- keys), each value as JSON text. displayname and avatar_url stay in `profiles`, which the
-- member events are made from.
CREATE TABLE profile_fields (
    user_id TEXT NOT NULL,
    field   TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (user_id, field)
);
