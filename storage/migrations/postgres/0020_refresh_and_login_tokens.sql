-- Refresh tokens (POST /refresh) and login tokens (POST /login/get_token, m.login.token).
-- Only SHA-256 hashes of the tokens are stored, as for access tokens.

-- An access token issued with a refresh token expires (NULL: never) and names the refresh
-- token it came with, so that using it can retire the refresh token that came before.
ALTER TABLE access_tokens ADD COLUMN expires_ts BIGINT;
ALTER TABLE access_tokens ADD COLUMN refresh_token_hash TEXT;
CREATE INDEX access_tokens_refresh ON access_tokens (refresh_token_hash);

-- A refresh token is single-use: refreshing with it issues a new one whose `predecessor` it
-- becomes. The predecessor stays valid (a client whose response was lost can retry) until
-- the new refresh token or its access token is used; then it and its access token go.
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    predecessor TEXT,
    created_ts  BIGINT NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_predecessor ON refresh_tokens (predecessor);

-- Short-lived, single-use tokens to log in another device (m.login.token).
CREATE TABLE login_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX login_tokens_expiry ON login_tokens (expires_ts);
