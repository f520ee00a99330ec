-- The users read model (PostgreSQL): a projection of DeviceRegistered and UserRenamed.

CREATE TABLE users (
    user_id    UUID   PRIMARY KEY,
    name       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Device tokens are stored only as SHA-256 hashes.
CREATE TABLE devices (
    token_hash TEXT   PRIMARY KEY,
    device_id  UUID   NOT NULL,
    user_id    UUID   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX devices_by_user ON devices (user_id);
