-- SQLite twin of migrations/postgres/0001_accounts.sql: same tables and keys; INTEGER is 64-bit here.
-- Accounts: users, devices, access tokens, profiles, account data, registration tokens,
-- the server's signing keys, and the short-lived rows behind user-interactive auth and
-- shared-secret registration. Timestamps are milliseconds since the Unix epoch (INTEGER),
-- the unit the Matrix protocol uses everywhere, so no conversion happens on the way out.

CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    -- argon2id PHC string; NULL once the account is deactivated (or for password-less users).
    password_hash TEXT,
    -- Flags are 0/1 integers rather than BOOLEAN: sqlx's Any driver, which runs the same
    -- queries on both engines, cannot decode SQLite booleans.
    is_admin      INTEGER NOT NULL DEFAULT 0,
    -- Deactivated users keep their row forever so the user ID is never handed out again.
    deactivated   INTEGER NOT NULL DEFAULT 0,
    created_ts    INTEGER NOT NULL
);

CREATE TABLE devices (
    user_id      TEXT NOT NULL REFERENCES users (user_id),
    device_id    TEXT NOT NULL,
    display_name TEXT,
    last_seen_ip TEXT,
    last_seen_ts INTEGER,
    created_ts   INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Only a SHA-256 of each token is stored: a leaked database does not leak sessions.
CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
-- Logging out a device or a whole user deletes by these columns.
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE profiles (
    user_id     TEXT PRIMARY KEY REFERENCES users (user_id),
    displayname TEXT,
    avatar_url  TEXT
);

-- Global account data has room_id = '' (a primary key column cannot be NULL in PostgreSQL).
CREATE TABLE account_data (
    user_id    TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    data_type  TEXT NOT NULL,
    content    TEXT NOT NULL,
    updated_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);

CREATE TABLE registration_tokens (
    token        TEXT PRIMARY KEY,
    -- NULL means unlimited.
    uses_allowed INTEGER,
    completed    INTEGER NOT NULL DEFAULT 0,
    -- NULL means it never expires.
    expiry_ts    INTEGER,
    created_ts   INTEGER NOT NULL
);

-- The server's ed25519 signing keys. Exactly one is current (valid_until_ts IS NULL); old
-- keys stay so that signatures made with them can still be checked by peers.
CREATE TABLE server_signing_keys (
    key_id         TEXT PRIMARY KEY,
    -- base64 (unpadded) of the 32-byte ed25519 seed.
    secret_key     TEXT NOT NULL,
    created_ts     INTEGER NOT NULL,
    valid_until_ts INTEGER
);

-- User-interactive auth sessions live in the database, not in memory, so that any server
-- process sharing this database can continue a flow another one started.
CREATE TABLE uia_sessions (
    session_id TEXT PRIMARY KEY,
    -- The authenticated user for account endpoints; NULL during registration.
    user_id    TEXT,
    -- JSON array of completed stage types.
    completed  TEXT NOT NULL,
    created_ts INTEGER NOT NULL
);

-- Nonces handed out by GET /_synapse/admin/v1/register; each may be used once.
CREATE TABLE registration_nonces (
    nonce      TEXT PRIMARY KEY,
    created_ts INTEGER NOT NULL
);
