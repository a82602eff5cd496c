-- The media repository: what was uploaded (and, with federation, what other servers' media we
-- cached), and the thumbnails made from it. The bytes themselves are files named by their
-- SHA-256 under <data_dir>/media/; rows only point at them, so identical uploads share one file.

-- One row per mxc://<origin>/<media_id>. Local uploads have origin = our server name and an
-- uploader; remote media cached over federation will be rows with the remote origin, no
-- uploader, and created_ts = when we cached it (what the spec's "freeze" of unauthenticated
-- media counts). The primary key is the URI itself, so the same media ID on two servers never
-- collides.
CREATE TABLE media (
    origin            TEXT NOT NULL,
    media_id          TEXT NOT NULL,
    uploader          TEXT,
    content_type      TEXT,
    filename          TEXT,
    -- NULL while the ID is pending (POST /create without the upload yet).
    size              BIGINT,
    -- Lowercase hex SHA-256 of the content, which names the file. NULL while pending.
    sha256            TEXT,
    -- Image dimensions (after EXIF orientation) once the content was decoded for thumbnails,
    -- so later thumbnail requests can be planned without decoding again.
    width             BIGINT,
    height            BIGINT,
    created_ts        BIGINT NOT NULL,
    -- Pending IDs only: when the unused ID lapses (the spec's unused_expires_at).
    unused_expires_ts BIGINT,
    -- Remote media: last time it was served, for evicting the cache. Unused for local media.
    last_access_ts    BIGINT,
    PRIMARY KEY (origin, media_id)
);
-- Counting a user's pending uploads (the spec's limit on concurrent pending IDs) and
-- expiring lapsed ones.
CREATE INDEX media_pending ON media (uploader, unused_expires_ts) WHERE sha256 IS NULL;
-- Which rows share a file: a file may be deleted only when nothing points at it.
CREATE INDEX media_sha256 ON media (sha256);

-- Thumbnails, keyed by the media and what the thumbnail is: its actual size, method
-- ('crop' or 'scale') and content type. The bytes are content-addressed files like the media.
CREATE TABLE media_thumbnails (
    origin       TEXT NOT NULL,
    media_id     TEXT NOT NULL,
    width        BIGINT NOT NULL,
    height       BIGINT NOT NULL,
    method       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    created_ts   BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method, content_type),
    FOREIGN KEY (origin, media_id) REFERENCES media (origin, media_id) ON DELETE CASCADE
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);
