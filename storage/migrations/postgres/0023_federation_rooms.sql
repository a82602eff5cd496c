-- Rooms shared with other servers (federation).

-- Each server we send room events to, with how far it has been sent: the sender reads the
-- room events our users wrote after stream_position in the rooms the destination is in, and
-- moves the position only after the destination accepted a transaction holding them. So
-- nothing is queued per event (a send into a federated room writes no extra row) and a
-- restart resumes from here. The claim columns let several processes share destinations
-- later (each destination worked by one process at a time).
CREATE TABLE federation_destinations (
    destination     TEXT PRIMARY KEY,
    stream_position BIGINT NOT NULL,
    -- Consecutive failed attempts, and when to try again (ms); 0 / NULL when healthy.
    failures        BIGINT NOT NULL DEFAULT 0,
    retry_at        BIGINT,
    claimed_by      TEXT,
    claim_until     BIGINT
);

-- Transactions received from other servers, so a retried transaction (same origin, same ID)
-- is answered as the first time without processing its PDUs again.
CREATE TABLE federation_received_txns (
    origin      TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    response    TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

-- Invites of our users into rooms held elsewhere (federation v2 invite): what the inviting
-- server sent about the room (its stripped state, JSON array), shown with the invite until
-- the user joins, rejects or the invite is withdrawn. The invite event itself is an outlier
-- in events, and the membership a row of room_memberships like any other.
CREATE TABLE remote_invites (
    room_id       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    invite_state  TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
