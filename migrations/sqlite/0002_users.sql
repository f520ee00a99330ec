-- The users read model (SQLite): a projection of DeviceRegistered and UserRenamed.

CREATE TABLE users (
    user_id    BLOB    PRIMARY KEY,
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Device tokens are stored only as SHA-256 hashes.
CREATE TABLE devices (
    token_hash TEXT    PRIMARY KEY,
    device_id  BLOB    NOT NULL,
    user_id    BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX devices_by_user ON devices (user_id);
