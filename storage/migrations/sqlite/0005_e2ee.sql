-- SQLite twin of migrations/postgres/0005_e2ee.sql.
-- End-to-end encryption: device keys, one-time and fallback keys, cross-signing keys and the
-- signatures uploaded for them, device-list changes on the global stream, to-device messages,
-- and server-side key backup. The server never sees a private key or a plaintext room key:
-- everything here is public keys, signatures, or ciphertext stored for the client.
--
-- Rows keyed by a device reference `devices` with ON DELETE CASCADE: deleting a device (or
-- logging it out, or deactivating the account) removes its keys and its undelivered
-- to-device messages in the same transaction, and a key upload racing with the deletion
-- cannot leave orphans behind.

-- A device's identity keys: the signed DeviceKeys object as uploaded, stored as canonical
-- JSON without `unsigned`. Signatures made later by cross-signing keys are kept apart in
-- key_signatures and merged in when the keys are queried.
CREATE TABLE device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- One-time keys. A claim deletes the key it hands out. key_seq orders a device's keys by
-- upload, so claims hand out the oldest first (the keys of one upload in key ID order).
CREATE TABLE one_time_keys (
    -- INTEGER PRIMARY KEY is the rowid: always above every existing key of the table, so
    -- later uploads sort after earlier ones.
    key_seq   INTEGER PRIMARY KEY,
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    -- The part of the key ID after `algorithm:`.
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    -- Re-uploading a key is idempotent; a different key under the same ID is refused. Claims
    -- and counts also find a device's keys through this index.
    UNIQUE (user_id, device_id, algorithm, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- Fallback keys: at most one per device and algorithm, replaced by a new upload. `used`
-- (0/1) is set when a claim hands the key out because no one-time key was left; sync reports
-- the algorithms whose fallback key is still unused.
CREATE TABLE fallback_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    used      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- Cross-signing keys: the current master, self_signing and user_signing key of each user,
-- as canonical JSON (with the signatures they were uploaded with).
CREATE TABLE cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded with /keys/signatures/upload, after the server checked them. The
-- target is a device (target_key_id = device ID) or a master key (target_key_id = its
-- unpadded base64 public key, so signatures of a replaced master key never attach to the
-- new one).
CREATE TABLE key_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id  TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    -- e.g. `ed25519:<public key or device ID>`.
    signer_key_id  TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- The stream position of each user's latest device-list change (a device added or removed,
-- device keys, master or self-signing key, or a signature on them changed). One row per
-- user, moved forward in place: a sync reports the users whose row moved into its window
-- and who share a room with the syncing user. Only the latest change matters, since the
-- client answers any change by querying the user's keys again.
CREATE TABLE device_lists (
    user_id         TEXT PRIMARY KEY,
    stream_ordering INTEGER NOT NULL
);
CREATE INDEX device_lists_stream ON device_lists (stream_ordering);

-- Changes that concern a single viewer only: a new user-signing key (private to its owner)
-- and the viewer's own signatures of other users' master keys. Reported in the viewer's
-- device_lists.changed as changes of `changed_user_id`.
CREATE TABLE device_list_notices (
    viewer_user_id  TEXT NOT NULL,
    changed_user_id TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    PRIMARY KEY (viewer_user_id, changed_user_id)
);

-- Sync finds the members of the user's rooms whose membership changed within its window
-- (joins are device-list changes for co-members; leaves may end sharing a room).
CREATE INDEX room_memberships_room_stream ON room_memberships (room_id, stream_ordering);

-- To-device messages waiting for a device. All messages of one request share the request's
-- stream position and are ordered by seq within it. A row stays until the device syncs
-- with a token at or past its position: delivery is exactly once even if a response is
-- lost on the way.
CREATE TABLE to_device_inbox (
    user_id         TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    sender          TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    content         TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_ordering, seq),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- Transaction IDs of PUT /sendToDevice, per sending device, so a retried request sends
-- nothing twice. Expired with the other short-lived rows (as Synapse's transaction cache).
CREATE TABLE to_device_txns (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- Server-side key backup versions. Version numbers count up per user and are never reused:
-- a deleted version keeps its row (deleted = 1) and loses its keys. The current version is
-- the highest one not deleted. etag counts changes to the version's keys.
CREATE TABLE backup_versions (
    user_id    TEXT NOT NULL,
    version    INTEGER NOT NULL,
    -- {"algorithm": ..., "auth_data": ...} as uploaded.
    algorithm  TEXT NOT NULL,
    etag       INTEGER NOT NULL DEFAULT 0,
    deleted    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

-- Backed-up room keys: the client's ciphertext plus the three fields the server needs to
-- decide whether an upload replaces the stored key.
CREATE TABLE backup_keys (
    user_id             TEXT NOT NULL,
    version             INTEGER NOT NULL,
    room_id             TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    first_message_index INTEGER NOT NULL,
    forwarded_count     INTEGER NOT NULL,
    is_verified         INTEGER NOT NULL,
    -- The whole KeyBackupData object as uploaded (JSON text).
    session_data        TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
