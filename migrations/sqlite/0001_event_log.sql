-- The event log and projection checkpoints (SQLite).
-- Times are microseconds since the Unix epoch (UTC). Ids are 16-byte UUID blobs.

CREATE TABLE events (
    -- Global order. Assigned by the single writer inside BEGIN IMMEDIATE, so position order is
    -- commit order. Readers must still treat positions as opaque and never assume density.
    position       INTEGER PRIMARY KEY,
    id             BLOB    NOT NULL UNIQUE,   -- the event's id and idempotency key
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,          -- 0-based version within the stream
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    metadata       TEXT    NOT NULL,          -- JSON
    payload        TEXT    NOT NULL,          -- JSON, exactly as written
    UNIQUE (stream, version)
);

-- Where each projection has got to. Written in the same transaction as the projection's rows.
CREATE TABLE projection_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
