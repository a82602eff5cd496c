-- Pushers (issue 11): where a user's devices want their notifications sent, and how far each
-- has been sent.
--
-- A pusher is identified by (user_id, app_id, pushkey), as `POST /pushers/set` names it. It
-- belongs to the device whose access token set it: deleting the device (logout, device
-- deletion, a password change that logs the others out, deactivation) deletes its pushers in
-- the same transaction.
--
-- Delivery is durable per pusher: `last_stream_ordering` is the stream position up to which
-- the user's notifications have been accepted by the gateway (or given up on), moved only
-- after the gateway answered 2xx. A new pusher starts at the stream position it was set at,
-- so it is not sent the user's old notifications.
--
-- `claimed_by` / `claim_until`: the process that sends for this pusher, and until when its
-- claim holds (renewed while it runs). One process claims every pusher today; with several
-- processes on one database, each claims pushers whose claim lapsed, so a pusher is worked by
-- one process at a time and a dead process's pushers move on.
CREATE TABLE pushers (
    id                   BIGSERIAL PRIMARY KEY,
    user_id              TEXT NOT NULL,
    device_id            TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    app_id               TEXT NOT NULL,
    pushkey              TEXT NOT NULL,
    app_display_name     TEXT NOT NULL,
    device_display_name  TEXT NOT NULL,
    profile_tag          TEXT,
    lang                 TEXT NOT NULL,
    -- `data` of the request as JSON (`url`, `format`, and whatever else the app put there).
    data                 TEXT NOT NULL,
    pushkey_ts           BIGINT NOT NULL,
    last_stream_ordering BIGINT NOT NULL,
    last_success         BIGINT,
    -- When the gateway started failing (NULL while it works); notifications are given up on
    -- after a day of failures.
    failing_since        BIGINT,
    claimed_by           TEXT,
    claim_until          BIGINT,
    UNIQUE (user_id, app_id, pushkey)
);

-- `append: false` removes other users' pushers with the same app and pushkey.
CREATE INDEX pushers_app_pushkey ON pushers (app_id, pushkey);
-- Deleting a device's pushers.
CREATE INDEX pushers_device ON pushers (user_id, device_id);
