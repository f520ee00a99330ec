-- The event log and projection checkpoints (PostgreSQL).
-- Times are microseconds since the Unix epoch (UTC).

CREATE TABLE events (
    -- Global order. Every append takes LOCK TABLE events IN EXCLUSIVE MODE before choosing
    -- positions, so transactions commit in position order and a reader tailing by position can
    -- never pass an event that commits later (the sequence-gap bug). Readers still treat
    -- positions as opaque and never assume density.
    position       BIGINT  PRIMARY KEY,
    id             UUID    NOT NULL UNIQUE,   -- the event's id and idempotency key
    stream         TEXT    NOT NULL,
    version        BIGINT  NOT NULL,          -- 0-based version within the stream
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at    BIGINT  NOT NULL,
    metadata       TEXT    NOT NULL,          -- JSON
    payload        TEXT    NOT NULL,          -- JSON, exactly as written (not jsonb: bytes matter)
    UNIQUE (stream, version)
);

-- Where each projection has got to. Written in the same transaction as the projection's rows.
CREATE TABLE projection_checkpoints (
    name       TEXT   PRIMARY KEY,
    position   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
